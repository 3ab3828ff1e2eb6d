"""Cost of OPTIONS["DURABLE"]: sequential enqueue() latency against a local primary + replica.

    cd client-py && ../.venv/bin/python ../benchmarks/durable_enqueue.py [N]

Starts its own primary (AOF, appendfsync everysec) and replica with the module on free loopback
ports (stopped by PID), then times N enqueue() calls (and N/100 enqueue_many of 100) without the
option, with {"replicas": 1}, and with {"replicas": 1, "aof": True}. Prints mean microseconds per
call. Loopback only: a real network adds its round trip to the WAIT.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client-py"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

from tests.vtasks_servers import start_valkey, stop_process


def main(n: int) -> None:
    tmp = tempfile.mkdtemp(prefix="vtasks-durable-")
    primary, url = start_valkey(tmp, extra=["--appendonly", "yes", "--appendfsync", "everysec"])
    port = url.rsplit(":", 1)[1].split("/")[0]
    replica, replica_url = start_valkey(tmp, extra=["--replicaof", "127.0.0.1", port])
    try:
        django.setup()
        import valkey

        c = valkey.Valkey.from_url(replica_url)
        while c.info("replication").get("master_link_status") != "up":
            time.sleep(0.05)
        from django_vtasks.backends.valkey import ValkeyTaskBackend
        from tests.testapp.tasks import add

        modes = {
            "none": None,
            "replicas=1": {"replicas": 1, "timeout": 5},
            "replicas=1+aof": {"replicas": 1, "aof": True, "timeout": 5},
        }
        for name, durable in modes.items():
            options = {"BROKER_URL": url, "RESULT_TTL": 60}
            if durable:
                options["DURABLE"] = durable
            backend = ValkeyTaskBackend("bench", {"QUEUES": [], "OPTIONS": options})
            t = add.using(queue_name="bench")
            backend.enqueue(t, (0, 0), {})
            start = time.perf_counter()
            for i in range(n):
                backend.enqueue(t, (i, i), {})
            single = (time.perf_counter() - start) / n * 1e6
            items = [(t, (i, i), {}) for i in range(100)]
            start = time.perf_counter()
            for _ in range(max(1, n // 100)):
                backend.enqueue_many(items)
            many = (time.perf_counter() - start) / max(1, n // 100) * 1e6
            print(
                f"{name:16} enqueue(): {single:8.1f} us/call   enqueue_many(100): "
                f"{many:9.1f} us/call"
            )
    finally:
        stop_process(replica)
        stop_process(primary)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
