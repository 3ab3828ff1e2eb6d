"""The demo's steps: ``shop_demo enqueue``, ``shop_demo watch``, ``shop_demo info``."""

import json
import sys
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.tasks import default_task_backend
from django.tasks.base import TaskResultStatus
from django.utils import timezone

from django_vtasks.broker import get_broker
from django_vtasks.flows import group, step
from django_vtasks.management.commands.benchmark_vtasks import Progress
from shop.tasks import (
    charge_card,
    notify_customer,
    pack_item,
    place_order,
    send_newsletter,
    send_receipt,
    ship_order,
)

IDS_FILE = "enqueued.json"
ORDERS, RECEIPTS, NEWSLETTERS, DELAYED = 200, 10, 20, 3
ITEMS = ("book", "lamp", "mug")
DELAY_S = 3


def events() -> list[list[str]]:
    try:
        lines = (settings.RUN_DIR / "events.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split() for line in lines]


class Command(BaseCommand):
    help = "vtasks demo: enqueue a mix of tasks, watch the worker run them, show the queues."

    def add_arguments(self, parser):
        parser.add_argument("step", choices=["enqueue", "watch", "info"])
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args, step, timeout, **options):
        getattr(self, step)(timeout)

    # ------------------------------------------------------------------------------------------
    def enqueue(self, timeout):
        (settings.RUN_DIR / "events.log").unlink(missing_ok=True)
        ids = {
            "plain": [],
            "priority": [],
            "emails": [],
            "delayed": [],
            "failing": [],
            "cancelled": [],
            "flow": [],
        }
        start = time.monotonic()
        # enqueue_many: one round trip per queue
        results = default_task_backend.enqueue_many(
            [(place_order, [i, 10.0 + i], {}) for i in range(ORDERS)]
        )
        ids["plain"] = [r.id for r in results]
        ids["emails"] = [
            r.id
            for r in default_task_backend.enqueue_many(
                [(send_newsletter, [u], {}) for u in range(NEWSLETTERS)]
            )
        ]
        # enqueued after the orders, but priority 90: they run first
        ids["priority"] = [send_receipt.enqueue(i).id for i in range(RECEIPTS)]
        run_after = timezone.now() + timedelta(seconds=DELAY_S)
        ids["delayed"] = [
            place_order.using(run_after=run_after).enqueue(1000 + i, 1.0).id for i in range(DELAYED)
        ]
        ids["failing"] = [charge_card.enqueue(4242).id]
        # changed our mind: cancelled by id before it ran (one atomic broker command)
        doomed = place_order.using(run_after=run_after).enqueue(9999, 1.0)
        outcome = default_task_backend.cancel(doomed.id, "customer cancelled the order")
        ids["cancelled"] = [doomed.id]
        # a flow: the items packed in parallel, then ship (once all are packed), then notify;
        # the broker holds ship and notify until the tasks they wait for are acked
        flow = group([step(pack_item, 77, item) for item in ITEMS]).then(step(ship_order, 77))
        ids["flow"] = [r.id for r in flow.then(notify_customer).enqueue()]
        elapsed = time.monotonic() - start
        ids["enqueued_at"] = time.time()
        (settings.RUN_DIR / IDS_FILE).write_text(json.dumps(ids))
        total = sum(len(v) for v in ids.values() if isinstance(v, list))
        self.stdout.write(
            f"enqueued {total} tasks in {elapsed * 1000:.0f} ms: {ORDERS} orders (enqueue_many), "
            f"{NEWSLETTERS} newsletters on queue 'emails' (VTASKS_ROUTES; rate-limited to "
            f"{settings.RATE_LIMITS['emails']}), {RECEIPTS} priority-90 receipts, "
            f"{DELAYED} orders delayed {DELAY_S}s, 1 card charge that fails, 1 order cancelled "
            f"({outcome}), and a flow: {len(ITEMS)} items packed in parallel, then ship_order, "
            "then notify_customer"
        )
        broker = get_broker()
        for name in ("heartbeat", "nightly-report"):
            entry = settings.VTASKS_SCHEDULE[name]
            every = entry["schedule"]
            when = f"every {every}s" if isinstance(every, int) else f"cron {every}"
            self.stdout.write(
                f"schedule {name!r}: {entry['task']} {when} (registered by `runworker --scheduler`)"
            )
        self.stdout.write(f"queue 'default' now: {self._short_info(broker.info('default'))}")
        head = [
            f"{(r.envelope or {}).get('func', '?').rsplit('.', 1)[-1]}(p={r.priority})"
            for r in broker.peek("default", "ready", 0, 12)
        ]
        self.stdout.write(f"head of 'default' in fetch order: {' '.join(head)} ...")

    # ------------------------------------------------------------------------------------------
    def watch(self, timeout):
        ids = json.loads((settings.RUN_DIR / IDS_FILE).read_text())
        enqueued_at = ids.pop("enqueued_at")
        all_ids = [i for v in ids.values() for i in v]
        backend = default_task_backend
        bar = Progress(sys.stderr, "tasks", len(all_ids))
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        pending = set(all_ids)
        statuses = {}
        while True:
            for rid in list(pending):
                status = backend.get_result(rid).status
                if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
                    statuses[rid] = status
                    pending.discard(rid)
            bar.update(len(all_ids) - len(pending))
            beats = sum(1 for e in events() if e[1] == "heartbeat")
            if not pending and beats >= 2:
                break
            if time.monotonic() > deadline:
                raise CommandError(
                    f"timed out: {len(pending)} task(s) unfinished, {beats} heartbeat(s)"
                )
            time.sleep(0.05)
        bar.update(len(all_ids), final=True)
        elapsed = time.monotonic() - start
        ok = sum(1 for s in statuses.values() if s == TaskResultStatus.SUCCESSFUL)
        failed = len(statuses) - ok
        self.stdout.write(
            self.style.SUCCESS(
                f"all {len(all_ids)} tasks finished in {elapsed:.1f}s: {ok} succeeded, "
                f"{failed} failed"
            )
        )

        log = events()
        work = [e for e in log if e[1] in ("order", "receipt")]
        first = " ".join(f"{e[1]}#{e[2]}" for e in work[:12])
        self.stdout.write(f"first to start (receipts have priority 90): {first} ...")
        delayed = [e for e in log if e[1] == "order" and int(e[2]) >= 1000]
        if delayed:
            lag = min(float(e[0]) for e in delayed) - enqueued_at
            self.stdout.write(
                f"delayed orders ran {lag:.1f}s after they were enqueued (run_after = +{DELAY_S}s)"
            )
        result = backend.get_result(ids["priority"][0])
        self.stdout.write(
            f"a result: send_receipt -> {result.return_value!r} (worker {result.worker_ids[0]})"
        )
        packed = [float(e[0]) for e in log if e[1] == "pack"]
        shipped = [float(e[0]) for e in log if e[1] == "ship"]
        told = backend.get_result(ids["flow"][-1])
        self.stdout.write(
            f"flow: {len(packed)} item(s) packed in parallel, ship_order started "
            f"{(shipped[0] - max(packed)) * 1000:.0f} ms after the last one, then "
            f"notify_customer -> {told.return_value!r}"
        )
        beats = [e for e in log if e[1] == "heartbeat"]
        self.stdout.write(f"schedule 'heartbeat' fired {len(beats)} time(s) so far")

        broker = get_broker()
        for rec in broker.peek("default", "dead", 0, 10):
            env = rec.envelope or {}
            last = rec.error.strip().splitlines()[-1] if rec.error.strip() else ""
            self.stdout.write(
                self.style.WARNING(
                    f"dead-letter queue: {env.get('func')}{tuple(env.get('args', []))} "
                    f"after {rec.attempt} attempt(s): {last}"
                )
            )
        cancelled = backend.get_result(ids["cancelled"][0])
        self.stdout.write(f"cancelled order: {cancelled.status}, {cancelled.errors[-1].traceback}")
        failed_result = backend.get_result(ids["failing"][0])
        if failed_result.errors:
            self.stdout.write(
                f"its TaskResult: {failed_result.status}, "
                f"{failed_result.errors[0].exception_class_path}"
            )

    # ------------------------------------------------------------------------------------------
    def info(self, timeout):
        broker = get_broker()
        for queue in broker.queues():
            self.stdout.write(f"{queue}: {json.dumps(broker.info(queue))}")
            limit = broker.rate_limit_get(queue)
            if limit:
                self.stdout.write(
                    f"  rate limit: {limit['limit']} per {limit['per_ms']} ms "
                    f"(burst {limit['burst']}, {limit['tokens']} tokens now)"
                )
            for s in broker.schedule_list(queue):
                when = (
                    "paused"
                    if s.paused
                    else "next run "
                    + time.strftime("%H:%M:%S", time.gmtime(s.next_run_ms / 1000))
                    + " UTC"
                )
                self.stdout.write(f"  schedule {s.name}: {s.kind} {s.spec}, {when}")

    @staticmethod
    def _short_info(info):
        return ", ".join(f"{k}={info[k]}" for k in ("ready", "delayed", "inflight", "dead"))
