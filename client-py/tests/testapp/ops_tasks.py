"""Tasks of the operations tests (test_processes.py, test_metrics.py, test_dashboard_browser.py)."""

import os
import time

from django.tasks import task


def _append(path, line):
    with open(path, "a") as f:
        f.write(f"{line}\n")


@task(takes_context=True)
def gated(context, path, gate, value):
    """Records which worker started it, then waits (at most 120 s) until ``gate`` exists."""
    worker = context.task_result.worker_ids[-1]
    _append(path, f"start {value} {worker}")
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    _append(path, f"done {value} {worker}")
    return value


@task
def fails_unless(path):
    """Fails while ``path`` does not exist (a failed task that succeeds once retried)."""
    if not os.path.exists(path):
        raise RuntimeError(f"{path} does not exist yet")
    return "ok"


@task
def spin(n):
    """CPU-bound work holding the GIL (scripts/bench-processes)."""
    total = 0
    for i in range(n):
        total += i * i
    return total
