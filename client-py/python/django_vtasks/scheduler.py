"""Periodic schedules (VTASKS_SCHEDULE).

    VTASKS_SCHEDULE = {
        "cleanup": {"task": "app.tasks.cleanup", "schedule": crontab(minute="*/5")},
        "ping": {"task": "app.tasks.ping", "schedule": 30, "args": [1], "kwargs": {}},
    }

The broker fires the schedules (the Valkey module's timers, or Postgres' exactly-once ticks), so
any number of workers may run ``--scheduler``: each tick enqueues the task once.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _native

if TYPE_CHECKING:
    from .broker import ScheduleRecord


@dataclass(frozen=True)
class crontab:
    """A cron schedule in UTC, Celery-style fields (minute, hour, day_of_week, day_of_month,
    month_of_year) or one expression: ``crontab("*/5 * * * *")``, ``crontab("@daily")``.

    Both backends read it as crontab does (day of week 0 or 7 = Sunday, 1 = Monday, names
    MON..SUN; when day of month and day of week are both restricted, either matches; see
    PROTOCOL.md, VT.SCHEDULE). The rule lives in the Rust crate both backends use; it is not
    restated here: ``to_cron`` only assembles the fields and asks that crate whether they parse."""

    expression: str | None = None
    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    second: str = "0"

    def to_cron(self) -> str:
        """The expression sent to the broker; ValueError (with the reason) if it does not parse
        or never fires, so a bad VTASKS_SCHEDULE entry fails when the worker starts."""
        if self.expression:
            expr = " ".join(self.expression.split())
        else:
            expr = " ".join(
                str(f)
                for f in (
                    self.second,
                    self.minute,
                    self.hour,
                    self.day_of_month,
                    self.month_of_year,
                    self.day_of_week,
                )
            )
        _native.cron_check(expr)
        return expr

    def __str__(self):
        return self.to_cron()


def schedule_spec(schedule) -> tuple[str | None, int | None]:
    """(cron, every_ms) of a VTASKS_SCHEDULE entry's ``schedule``."""
    if isinstance(schedule, crontab):
        return schedule.to_cron(), None
    if isinstance(schedule, str):
        return crontab(schedule).to_cron(), None
    if isinstance(schedule, (int, float)) and schedule > 0:
        return None, max(1, int(schedule * 1000))
    if hasattr(schedule, "total_seconds"):
        return None, max(1, int(schedule.total_seconds() * 1000))
    raise ValueError(f"unsupported schedule {schedule!r}: use crontab(...) or seconds")


def schedule_queue(entry: dict, alias: str) -> str:
    """The queue a VTASKS_SCHEDULE entry enqueues on: its ``queue``, else its task's queue
    (after VTASKS_ROUTES). Raises when the task cannot be resolved."""
    from .results import resolve_task
    from .routes import route

    if entry.get("queue"):
        return entry["queue"]
    return route(resolve_task(entry["task"], backend=alias, strict=True)).queue_name


def broker_schedules(broker, alias: str) -> "list[tuple[str, ScheduleRecord]]":
    """(queue, ScheduleRecord) of every schedule the broker holds, by name: on the queues the
    broker lists and the queues VTASKS_SCHEDULE names (a queue with nothing but a schedule may
    not be listed)."""
    from .conf import settings

    queues = set(broker.queues())
    for entry in (settings.VTASKS_SCHEDULE or {}).values():
        try:
            queues.add(schedule_queue(entry, alias))
        except Exception:  # an invalid entry: the registrar logs it; here it names no queue
            pass
    out = [(q, s) for q in sorted(queues) for s in broker.schedule_list(q)]
    return sorted(out, key=lambda qs: (qs[1].name, qs[0]))
