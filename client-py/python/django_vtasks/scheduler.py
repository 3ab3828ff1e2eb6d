"""Periodic schedules (VTASKS_SCHEDULE).

    VTASKS_SCHEDULE = {
        "cleanup": {"task": "app.tasks.cleanup", "schedule": crontab(minute="*/5")},
        "ping": {"task": "app.tasks.ping", "schedule": 30, "args": [1], "kwargs": {}},
    }

The broker fires the schedules (the Valkey module's timers, or Postgres' exactly-once ticks), so
any number of workers may run ``--scheduler``: each tick enqueues the task once.
"""

import re
from dataclasses import dataclass

_DOW = {"0": "SUN", "1": "MON", "2": "TUE", "3": "WED", "4": "THU", "5": "FRI", "6": "SAT", "7": "SUN"}


@dataclass(frozen=True)
class crontab:  # noqa: N801 - the original's public name
    """A cron schedule in UTC, Celery-style fields (minute, hour, day_of_week, day_of_month,
    month_of_year) or one 5/6-field expression: ``crontab("*/5 * * * *")``."""

    expression: str | None = None
    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    second: str = "0"

    def to_cron(self) -> str:
        """6-field expression (sec min hour dom mon dow) for the broker's cron syntax."""
        if self.expression:
            fields = self.expression.split()
            if len(fields) == 5:
                fields = ["0", *fields]
            if len(fields) != 6:
                raise ValueError(f"invalid cron expression {self.expression!r}")
            sec, minute, hour, dom, mon, dow = fields
        else:
            sec, minute, hour, dom, mon, dow = (
                str(self.second),
                str(self.minute),
                str(self.hour),
                str(self.day_of_month),
                str(self.month_of_year),
                str(self.day_of_week),
            )
        # standard cron numbers Sunday 0 (or 7); the broker's syntax is safest with names
        dow = re.sub(r"(?<![/\w])[0-7](?!\w)", lambda m: _DOW[m.group(0)], dow)
        return " ".join((sec, minute, hour, dom, mon, dow))

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
