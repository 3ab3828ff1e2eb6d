"""The harness' own view of a broker, without Django: raw VT.* commands (Valkey) or the native
PgQueue (Postgres). Used to feed tasks, read counters and the DLQ at quiescence."""

from __future__ import annotations

import time

import orjson

PREFIX = "vt:"


def envelope(func: str, args: list, id: str, queue: str, kwargs: dict | None = None) -> dict:
    """The task envelope (django_vtasks.envelope), as the Django backend builds it."""
    return {
        "func": func,
        "args": args,
        "kwargs": kwargs or {},
        "queue": queue,
        "ts": time.time(),
        "id": id,
        "priority": 0,
        "run_after": None,
        "backend": "default",
        "takes_context": False,
    }


def encode(env: dict) -> bytes:
    try:
        from django_vtasks import _native

        return _native.encode_payload(orjson.dumps(env), 1024)
    except ImportError:  # native codec not built yet: plain JSON is a valid uncompressed payload
        return orjson.dumps(env)


def _s(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v))


def _pairs(reply) -> dict:
    if isinstance(reply, dict):
        return {_s(k): v for k, v in reply.items()}
    it = iter(reply or [])
    return {_s(k): v for k, v in zip(it, it, strict=True)}


class ValkeyHB:
    kind = "valkey"

    def __init__(self, port: int, cluster: bool = False):
        import valkey
        from valkey.cluster import ValkeyCluster

        self.port = port
        kind = ValkeyCluster if cluster else valkey.Valkey  # the cluster client follows MOVED
        self.c = kind(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2)

    def retarget(self, port: int):
        import valkey

        self.c.close()
        self.port = port
        self.c = valkey.Valkey(
            host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2
        )

    def key(self, queue: str) -> str:
        return f"{PREFIX}{{{queue}}}"

    def enqueue(
        self,
        queue: str,
        items: list[tuple[str, bytes]],
        max_attempts: int | None = None,
        unique: tuple[str, int] | None = None,
        at_ms: int | None = None,
    ) -> list:
        argv = ["VT.ENQUEUE", self.key(queue)]
        if at_ms is not None:
            argv += ["AT", at_ms]
        if unique:
            argv += ["UNIQUE", unique[0], unique[1]]
        if max_attempts:
            argv += ["MAXATTEMPTS", max_attempts]
        argv.append("ENTRIES")
        for i, p in items:
            argv += [i, p]
        return [_s(x) if x is not None else None for x in self.c.execute_command(*argv)]

    def info(self, queue: str) -> dict[str, int]:
        return {
            k: int(v) for k, v in _pairs(self.c.execute_command("VT.INFO", self.key(queue))).items()
        }

    def peek(self, queue: str, state: str, count: int = 1000) -> list[dict]:
        out, off = [], 0
        while True:
            rows = self.c.execute_command(
                "VT.PEEK", self.key(queue), state.upper(), "OFFSET", off, "COUNT", count
            )
            for r in rows or []:
                d = _pairs(r)
                out.append({k: (v if k == "payload" else _s(v)) for k, v in d.items()})
            if not rows or len(rows) < count:
                return out
            off += len(rows)

    def schedule_list(self, queue: str) -> list:
        return self.c.execute_command("VT.SCHEDULE", "LIST", self.key(queue)) or []

    def close(self):
        self.c.close()


class BrokerHB(ValkeyHB):
    """A ValkeyHB whose enqueue is django_vtasks' own ValkeyBroker (the producer path a Django
    backend takes), with its OPTIONS["DURABLE"] as ``durable`` = (replicas, aof, timeout ms) or
    None. A NotDurable (the tasks went in, the WAIT/WAITAOF fell short) raises like any failed
    enqueue: the feeder retries the batch with the same ids until it is confirmed."""

    def __init__(self, port: int, durable: tuple[int, bool, int] | None):
        super().__init__(port)
        self.durable = durable
        self._broker = None

    @property
    def broker(self):
        if self._broker is None:
            from django_vtasks.brokers.valkey import ValkeyBroker

            self._broker = ValkeyBroker(
                f"valkey://127.0.0.1:{self.port}/0",
                durable=self.durable,
                connect_options={"socket_timeout": 5, "socket_connect_timeout": 2},
            )
        return self._broker

    def retarget(self, port: int):
        super().retarget(port)
        self._broker = None

    def enqueue(
        self,
        queue: str,
        items: list[tuple[str, bytes]],
        max_attempts: int | None = None,
        unique: tuple[str, int] | None = None,
        at_ms: int | None = None,
    ) -> list:
        from django_vtasks.broker import EnqueueRequest

        reqs = [
            EnqueueRequest(queue, i, p, at_ms=at_ms, max_attempts=max_attempts, unique=unique)
            for i, p in items
        ]
        return self.broker.enqueue(reqs)


class PgHB:
    kind = "postgres"

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._q = None

    @property
    def q(self):
        if self._q is None:
            from django_vtasks import _native

            self._q = _native.PgQueue(self.dsn, pool_size=2)
        return self._q

    def reset(self):
        self._q = None

    def migrate(self):
        self.q.migrate()

    def _call(self, name, *a, **kw):
        try:
            return getattr(self.q, name)(*a, **kw)
        except Exception:
            self.reset()  # the pool may hold killed connections: one retry on a fresh pool
            return getattr(self.q, name)(*a, **kw)

    def enqueue(
        self,
        queue: str,
        items: list[tuple[str, bytes]],
        max_attempts: int | None = None,
        unique: tuple[str, int] | None = None,
    ) -> list:
        return self.q.enqueue(
            queue,
            [p for _, p in items],
            ids=[i for i, _ in items],
            max_attempts=max_attempts,
            unique=unique,
        )

    def info(self, queue: str) -> dict[str, int]:
        return {k: int(v) for k, v in self._call("info", queue).items()}

    def peek(self, queue: str, state: str, count: int = 1000) -> list[dict]:
        out, off = [], 0
        while True:
            rows = self._call("peek", queue, state.lower(), off, count)
            out += [{k: (v if k == "payload" else _s(v)) for k, v in r.items()} for r in rows]
            if len(rows) < count:
                return out
            off += len(rows)

    def schedule_list(self, queue: str) -> list:
        return self._call("schedule_list", queue)

    def close(self):
        self._q = None
