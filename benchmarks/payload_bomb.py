"""Peak RSS of a worker handed a compression bomb: a task whose envelope is N MB of one repeated
character (a few KB on the wire), next to the same worker idle.

    cd client-py && ../.venv/bin/python ../benchmarks/payload_bomb.py [MB]

Starts a Valkey with the module on a free loopback port and a `runworker` process (both stopped
by PID), enqueues the bomb raw (as a hostile producer would, bypassing enqueue()'s own check),
waits until the worker dead-lettered it, and prints the worker's VmHWM (peak RSS) before and
after, with the dead-letter reason.
"""

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[1] / "client-py"
sys.path.insert(0, str(CLIENT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from tests.vtasks_servers import start_valkey, stop_process  # noqa: E402


def hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(mb: int) -> None:
    tmp = tempfile.mkdtemp(prefix="vtasks-bomb-")
    server, url = start_valkey(tmp)
    os.environ["VTASKS_TEST_VALKEY_URL"] = url
    import django

    django.setup()
    import orjson

    from django_vtasks import _native
    from django_vtasks.backends.valkey import ValkeyBroker
    from django_vtasks.broker import EnqueueRequest

    broker = ValkeyBroker(url, prefix="vtt:")
    queue = "bomb"
    env = dict(os.environ, PYTHONPATH=str(CLIENT))
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "django",
            "runworker",
            "--backend",
            "valkey",
            "--queue",
            queue,
            "--concurrency",
            "4",
        ],
        cwd=CLIENT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)
        idle = hwm_kb(worker.pid)
        tid = uuid.uuid4().hex
        data = orjson.dumps(
            {
                "func": "tests.testapp.tasks.add",
                "args": ["a" * (mb << 20), "b"],
                "kwargs": {},
                "queue": queue,
                "id": tid,
            }
        )
        payload = _native.encode_payload(data, 0)
        del data
        broker.enqueue([EnqueueRequest(queue, tid, payload)])
        deadline = time.monotonic() + 120
        while broker.info(queue)["dead"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        peak = hwm_kb(worker.pid)
        reason = broker.peek(queue, "dead")[0].error if broker.info(queue)["dead"] else "(none)"
        print(f"bomb: {mb} MiB decoded, {len(payload)} bytes on the wire")
        print(f"worker peak RSS idle: {idle / 1024:.1f} MB, after the bomb: {peak / 1024:.1f} MB")
        print(f"dead-letter reason: {reason}")
    finally:
        worker.terminate()
        worker.wait(30)
        stop_process(server)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
