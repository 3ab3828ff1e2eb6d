"""ValkeyBroker: the Broker contract (broker.py) over the VT.* commands of the vtasks module
(PROTOCOL.md), with valkey-py's sync and per-event-loop async clients."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import valkey
import valkey.asyncio as avalkey

from ..broker import (
    INFO_FIELDS,
    Broker,
    BrokerError,
    Delivery,
    EnqueueFailed,
    EnqueueRequest,
    ScheduleRecord,
    TaskRecord,
    check_flow,
)
from ..redact import redact, redact_url
from .resp import arg, bulk, pack_ack_results, pack_enqueue, plain_utf8, send_packed
from .valkey_errors import CLIENT_ERRORS, NotDurable, describe_error


def _s(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return "" if v is None else str(v)


def _pairs(reply) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {_s(k): v for k, v in reply.items()}
    it = iter(reply or [])
    return {_s(k): v for k, v in zip(it, it, strict=False)}


def _group_key(r: EnqueueRequest):
    # tasks sharing these options go in one VT.ENQUEUE; a unique task goes alone (only the
    # first payload of a command can take the key)
    return (r.queue, r.priority, r.at_ms, r.max_attempts, r.unique, r.id if r.unique else None)


def queue_key(prefix: str, queue: str) -> str:
    """A queue's key: the queue name is the hash tag (one queue, one cluster slot) unless the
    prefix carries one (``vt:{app}:`` puts all queues in the slot of ``app``)."""
    return f"{prefix}{{{queue}}}"


class ValkeyBroker(Broker):
    kind = "valkey"
    supports_dlq_cap = True  # the module's vtasks.dlq-cap (CONFIG SET)
    supports_cancel = True  # VT.CANCEL
    supports_flows = True  # VT.FLOW
    client_errors = CLIENT_ERRORS
    #: the packed single-connection fast paths (resp.py) apply: the client has one connection
    #: pool. A cluster client routes per node: the same commands then go through pipelines.
    packs_commands = True

    def __init__(
        self,
        url: str | None = None,
        connection_pool=None,
        prefix: str = "vt:",
        max_connections: int = 50,
        connect_options: dict | None = None,
        durable: tuple[int, bool, int] | None = None,
    ):
        self.url = url
        #: (replicas, aof, timeout ms): what enqueue waits for (OPTIONS["DURABLE"])
        self.durable = durable
        #: the URL as messages show it (password masked)
        self.safe_url = redact_url(url) if url else "CONNECTION_POOL"
        self.connect_options = dict(connect_options or {})
        self.max_connections = max_connections
        self.prefix = prefix
        self._shared_pool = connection_pool
        self._client: valkey.Valkey | None
        if isinstance(connection_pool, valkey.ConnectionPool):
            self._client = valkey.Valkey(connection_pool=connection_pool)
        elif url:
            self._client = valkey.Valkey.from_url(url, **self.connect_options)
        else:
            self._client = None
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _redact(self, text) -> str:
        return redact(str(text), self.connect_options.get("password"))

    def error(self, e: BaseException, doing: str) -> BrokerError:
        """The BrokerError that says what went wrong with ``e`` (a client error raised while
        ``doing`` something) and what to do, without secrets or command arguments."""
        return describe_error(e, doing, self.safe_url, self._redact)

    # ---- keys -----------------------------------------------------------------------------------
    def key(self, queue: str) -> str:
        return queue_key(self.prefix, queue)

    def queue_name(self, key) -> str:
        key = _s(key)
        inner = key[len(self.prefix) :] if key.startswith(self.prefix) else key
        if inner.startswith("{") and inner.endswith("}"):
            return inner[1:-1]
        return inner

    def result_key(self, id: str) -> str:
        return f"{self.prefix}result:{id}"

    # ---- clients --------------------------------------------------------------------------------
    @property
    def client(self) -> valkey.Valkey:
        if self._client is None:
            raise BrokerError("ValkeyTaskBackend needs OPTIONS['BROKER_URL'] or CONNECTION_POOL")
        return self._client

    @property
    def aclient(self) -> avalkey.Valkey:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            if isinstance(self._shared_pool, avalkey.ConnectionPool):
                client = avalkey.Valkey(connection_pool=self._shared_pool)
            elif self.url:
                # bounded: a burst of aenqueue() calls waits for a connection instead of
                # opening one each
                pool = avalkey.BlockingConnectionPool.from_url(
                    self.url,
                    max_connections=self.max_connections,
                    timeout=None,
                    **self.connect_options,
                )
                client = avalkey.Valkey(connection_pool=pool)
            else:
                raise BrokerError(
                    "ValkeyTaskBackend needs OPTIONS['BROKER_URL'] or CONNECTION_POOL"
                )
            self._aclients[loop] = client
        return client

    # ---- command builders / parsers -------------------------------------------------------------
    def _enqueue_commands(self, requests: list[EnqueueRequest], entries: bool = True):
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_group_key(r), []).append(i)
        commands = []
        for (queue, priority, at_ms, max_attempts, unique, _), idxs in groups.items():
            args: list[Any] = ["VT.ENQUEUE", self.key(queue)]
            if priority:
                args += ["PRIORITY", priority]
            if at_ms is not None:
                args += ["AT", at_ms]
            if unique is not None:
                args += ["UNIQUE", unique[0], max(1, int(unique[1]))]
            if max_attempts:
                args += ["MAXATTEMPTS", max_attempts]
            args.append("ENTRIES")
            if entries:
                for i in idxs:
                    args += [requests[i].id, requests[i].payload]
            commands.append((args, idxs))
        return commands

    def _map_enqueue(self, requests, commands, replies) -> list[str | None]:
        """Ids per request. Each VT.ENQUEUE is atomic; when some of several were refused, raise
        EnqueueFailed with the outcome of every request (see EnqueueFailed)."""
        out: list[str | None] = [None] * len(requests)
        refused: dict[int, str] = {}
        for (_, idxs), reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                reason = str(self.error(reply, "enqueue"))
                for i in idxs:
                    refused[i] = reason
                continue
            for i, rid in zip(idxs, reply or [], strict=False):
                if rid is not None:  # the id sent (ENTRIES): no need to decode the reply's copy
                    out[i] = requests[i].id
        if refused:
            raise EnqueueFailed(requests, out, refused)
        return out

    def _fetch_args(self, queues, worker, count, lease_ms, block_ms):
        args: list[Any] = [
            "VT.FETCHBATCH",
            len(queues),
            *[self.key(q) for q in queues],
            "WORKER",
            worker,
            "COUNT",
            max(1, int(count)),
        ]
        if lease_ms is not None:
            args += ["LEASE", int(lease_ms)]
        if block_ms is not None:
            args += ["BLOCK", int(block_ms)]
        return args

    def _deliveries(self, reply) -> list[Delivery]:
        if not reply:
            return []
        return [
            Delivery(self.queue_name(q), _s(i), _s(t), int(a), bytes(p)) for q, i, t, a, p in reply
        ]

    @staticmethod
    def _info(reply) -> dict[str, int]:
        d = _pairs(reply)
        return {f: int(d.get(f, 0) or 0) for f in INFO_FIELDS} | {
            k: int(v) for k, v in d.items() if k not in INFO_FIELDS and _is_int(v)
        }

    def _record(self, reply, queue) -> TaskRecord | None:
        if reply is None:
            return None
        return TaskRecord.from_fields(_pairs(reply), queue=queue)

    @staticmethod
    def _schedules(reply) -> list[ScheduleRecord]:
        return [
            ScheduleRecord(
                _s(row[0]),
                _s(row[1]),
                _s(row[2]),
                int(row[3] or 0),
                bytes(row[4] or b""),
                bool(row[5]) if len(row) > 5 else False,
            )
            for row in reply or []
        ]

    @staticmethod
    def _schedule_set_args(key, name, payload, cron, every_ms, priority):
        args: list[Any] = ["VT.SCHEDULE", "SET", key, name]
        if cron is not None:
            args += ["CRON", cron]
        elif every_ms is not None:
            args += ["EVERY", int(every_ms)]
        else:
            raise ValueError("schedule_set needs cron or every_ms")
        if priority:
            args += ["PRIORITY", int(priority)]
        args += ["PAYLOAD", payload]
        return args

    # ---- producer -------------------------------------------------------------------------------
    def enqueue(self, requests):
        return self._enqueue_sync(requests)

    def _enqueue_sync(self, requests):
        commands = self._enqueue_commands(requests)
        waits = self._durable_commands()
        if len(commands) == 1 and not waits:
            replies = [self.client.execute_command(*commands[0][0])]
        else:
            # one pipeline, one connection: WAIT/WAITAOF count the writes of their connection
            pipe = self.client.pipeline(transaction=False)
            for args in [a for a, _ in commands] + waits:
                pipe.execute_command(*args)
            replies = pipe.execute(raise_on_error=False)
        ids = self._map_enqueue(requests, commands, replies[: len(commands)])
        if waits:
            self._check_durable(replies[len(commands) :], ids)
        return ids

    # ---- durable enqueue (OPTIONS["DURABLE"]) ---------------------------------------------------
    def _durable_commands(self) -> list[list]:
        """WAIT <replicas> <ms> and/or WAITAOF 1 0 <ms>, sent after the VT.ENQUEUEs on their
        connection, when OPTIONS["DURABLE"] asks for it."""
        if not self.durable:
            return []
        replicas, aof, timeout_ms = self.durable
        out = []
        if replicas:
            out.append(["WAIT", replicas, timeout_ms])
        if aof:
            out.append(["WAITAOF", 1, 0, timeout_ms])
        return out

    def _check_durable(self, replies, ids) -> None:
        if self.durable is None:  # no WAIT was sent
            return
        replicas, aof, timeout_ms = self.durable
        enqueued = [i for i in ids if i]
        problems = []
        for reply in replies:
            if isinstance(reply, Exception):
                problems.append(str(self.error(reply, "confirm durability")))
            elif isinstance(reply, list):  # WAITAOF: [local fsyncs, replica fsyncs]
                if int(reply[0]) < 1:
                    problems.append("the primary did not fsync its AOF")
            elif int(reply) < replicas:
                problems.append(f"{int(reply)} of {replicas} replica(s) acknowledged")
        if problems:
            raise NotDurable(
                f"{len(enqueued)} task(s) were enqueued on the primary at {self.safe_url} but "
                f"not confirmed durable within {timeout_ms} ms ({'; '.join(problems)}): they "
                "may run, or be lost if the primary fails now; check the replicas "
                "(INFO replication) and appendonly, or raise OPTIONS['DURABLE']['timeout']",
                enqueued,
            )

    async def aenqueue_now(self, requests):
        client = self.aclient
        if self.packs_commands and plain_utf8(client.connection_pool):
            # the same VT.ENQUEUE commands as below, packed here in one pass (valkey-py's
            # pack_command per argument was a third of the bulk enqueue time)
            commands, packed = pack_enqueue(self, requests)
            waits = self._durable_commands()
            if waits:
                packed += b"".join(
                    b"*%d\r\n" % len(w) + b"".join(bulk(arg(a)) for a in w) for w in waits
                )
            replies = await send_packed(
                client.connection_pool,
                packed,
                len(commands) + len(waits),
                "VT.ENQUEUE",
                raise_on_error=False,
            )
        else:
            commands = self._enqueue_commands(requests)
            waits = self._durable_commands()
            if len(commands) == 1 and not waits:
                replies = [await client.execute_command(*commands[0][0])]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for args in [a for a, _ in commands] + waits:
                        pipe.execute_command(*args)
                    replies = await pipe.execute(raise_on_error=False)
        ids = self._map_enqueue(requests, commands, replies[: len(commands)])
        if waits:
            self._check_durable(replies[len(commands) :], ids)
        return ids

    # ---- flows ----------------------------------------------------------------------------------
    def _flow_args(self, requests, parents) -> list[Any]:
        args: list[Any] = ["VT.FLOW", self.key(check_flow(requests, parents)), len(requests)]
        for r, ps in zip(requests, parents, strict=True):
            args += [r.id, r.priority, r.max_attempts or 0, r.at_ms or 0, len(ps), *ps, r.payload]
        return args

    @staticmethod
    def _flow_ids(reply) -> list[str] | None:
        """The ids of an added flow, or None when nothing was added (an id was taken)."""
        if not reply or any(i is None for i in reply):
            return None
        return [_s(i) for i in reply]

    def enqueue_flow(self, requests, parents):
        return self._flow_ids(self.client.execute_command(*self._flow_args(requests, parents)))

    async def aenqueue_flow(self, requests, parents):
        args = self._flow_args(requests, parents)
        return self._flow_ids(await self.aclient.execute_command(*args))

    # ---- consumer -------------------------------------------------------------------------------
    def fetch(self, queues, worker, count, lease_ms=None, block_ms=None):
        return self._deliveries(
            self.client.execute_command(
                *self._fetch_args(queues, worker, count, lease_ms, block_ms)
            )
        )

    async def afetch(self, queues, worker, count, lease_ms=None, block_ms=None):
        return self._deliveries(
            await self.aclient.execute_command(
                *self._fetch_args(queues, worker, count, lease_ms, block_ms)
            )
        )

    def ack(self, queue, pairs):
        if not pairs:
            return 0
        return int(
            self.client.execute_command("VT.ACK", self.key(queue), *[x for p in pairs for x in p])
        )

    async def aack(self, queue, pairs):
        if not pairs:
            return 0
        return int(
            await self.aclient.execute_command(
                "VT.ACK", self.key(queue), *[x for p in pairs for x in p]
            )
        )

    def _ack_results_pipe(self, pipe, queue, pairs, results):
        prefix = f"{self.prefix}result:"
        command = pipe.execute_command
        for rid, data, ttl in results:
            if ttl > 0 and data is not None:  # what pipe.set(key, data, px=ttl) sends
                command("SET", prefix + rid, data, "PX", ttl)
        if pairs:
            pipe.execute_command("VT.ACK", self.key(queue), *[x for p in pairs for x in p])

    def ack_with_results(self, queue, pairs, results):
        pipe = self.client.pipeline(transaction=False)
        self._ack_results_pipe(pipe, queue, pairs, results)
        if not len(pipe):
            return 0
        replies = pipe.execute(raise_on_error=True)
        return int(replies[-1]) if pairs and replies else 0

    async def aack_with_results(self, queue, pairs, results):
        client = self.aclient
        if not self.packs_commands or not plain_utf8(client.connection_pool):
            async with client.pipeline(transaction=False) as pipe:
                self._ack_results_pipe(pipe, queue, pairs, results)
                if not len(pipe):
                    return 0
                replies = await pipe.execute(raise_on_error=True)
            return int(replies[-1]) if pairs and replies else 0
        pool = client.connection_pool
        # The same commands as the pipeline above (SET key data PX ttl per result, then VT.ACK),
        # packed here in one pass: valkey-py's pack_command per SET was most of the flush.
        packed, n = pack_ack_results(f"{self.prefix}result:", self.key(queue), pairs, results)
        if not n:
            return 0
        replies = await send_packed(pool, packed, n, "VT.ACK")
        return int(replies[-1]) if pairs else 0

    @staticmethod
    def _fail_args(key, id, token, error, retry_ms):
        args: list[Any] = ["VT.FAIL", key, id, token, error]
        if retry_ms is not None:
            args += ["RETRY", max(0, int(retry_ms))]
        return args

    def fail(self, queue, id, token, error, retry_ms=None):
        r = self.client.execute_command(
            *self._fail_args(self.key(queue), id, token, error, retry_ms)
        )
        return _s(r) if r is not None else None

    async def afail(self, queue, id, token, error, retry_ms=None):
        r = await self.aclient.execute_command(
            *self._fail_args(self.key(queue), id, token, error, retry_ms)
        )
        return _s(r) if r is not None else None

    def rescue(self, queue, worker=None):
        args = ["VT.RESCUE", self.key(queue)] + (["WORKER", worker] if worker else [])
        return int(self.client.execute_command(*args))

    async def arescue(self, queue, worker=None):
        args = ["VT.RESCUE", self.key(queue)] + (["WORKER", worker] if worker else [])
        return int(await self.aclient.execute_command(*args))

    def extend(self, queue, worker, lease_ms):
        return int(self.client.execute_command("VT.EXTEND", self.key(queue), worker, int(lease_ms)))

    async def aextend(self, queue, worker, lease_ms):
        return int(
            await self.aclient.execute_command("VT.EXTEND", self.key(queue), worker, int(lease_ms))
        )

    @staticmethod
    def _extended(reply) -> tuple[int, list[str]]:
        return int(reply[0]), [_s(i) for i in reply[1] or []]

    def extend_cancelled(self, queue, worker, lease_ms):
        return self._extended(
            self.client.execute_command(
                "VT.EXTEND", self.key(queue), worker, int(lease_ms), "WITHCANCELLED"
            )
        )

    async def aextend_cancelled(self, queue, worker, lease_ms):
        return self._extended(
            await self.aclient.execute_command(
                "VT.EXTEND", self.key(queue), worker, int(lease_ms), "WITHCANCELLED"
            )
        )

    @staticmethod
    def _cancel_args(key, id, reason):
        return ("VT.CANCEL", key, id, *(("REASON", reason) if reason else ()))

    def cancel(self, queue, id, reason=""):
        r = self.client.execute_command(*self._cancel_args(self.key(queue), id, reason))
        return None if r is None else _s(r)

    async def acancel(self, queue, id, reason=""):
        r = await self.aclient.execute_command(*self._cancel_args(self.key(queue), id, reason))
        return None if r is None else _s(r)

    # ---- operator -------------------------------------------------------------------------------
    def info(self, queue):
        return self._info(self.client.execute_command("VT.INFO", self.key(queue)))

    async def ainfo(self, queue):
        return self._info(await self.aclient.execute_command("VT.INFO", self.key(queue)))

    def _queues(self, reply) -> list[str]:
        out = []
        for k in reply or []:
            k = _s(k)
            if k.startswith(self.prefix):
                out.append(self.queue_name(k))
        return sorted(out)

    def queues(self):
        return self._queues(self.client.execute_command("VT.QUEUES"))

    async def aqueues(self):
        return self._queues(await self.aclient.execute_command("VT.QUEUES"))

    def peek(self, queue, state, offset=0, count=10):
        reply = self.client.execute_command(
            "VT.PEEK", self.key(queue), state.upper(), "OFFSET", int(offset), "COUNT", int(count)
        )
        return [self._record(r, queue) for r in reply or []]

    async def apeek(self, queue, state, offset=0, count=10):
        reply = await self.aclient.execute_command(
            "VT.PEEK", self.key(queue), state.upper(), "OFFSET", int(offset), "COUNT", int(count)
        )
        return [self._record(r, queue) for r in reply or []]

    def get(self, queue, id):
        return self._record(self.client.execute_command("VT.GET", self.key(queue), id), queue)

    async def aget(self, queue, id):
        return self._record(
            await self.aclient.execute_command("VT.GET", self.key(queue), id), queue
        )

    def unique_holder(self, queue, key):
        return self._record(
            self.client.execute_command("VT.GET", self.key(queue), "UNIQUE", key), queue
        )

    async def aunique_holder(self, queue, key):
        return self._record(
            await self.aclient.execute_command("VT.GET", self.key(queue), "UNIQUE", key), queue
        )

    def retry_dead(self, queue, ids=None):
        return int(
            self.client.execute_command(
                "VT.RETRYDEAD", self.key(queue), *(ids if ids is not None else ["ALL"])
            )
        )

    async def aretry_dead(self, queue, ids=None):
        return int(
            await self.aclient.execute_command(
                "VT.RETRYDEAD", self.key(queue), *(ids if ids is not None else ["ALL"])
            )
        )

    def delete(self, queue, ids):
        if not ids:
            return 0
        return int(self.client.execute_command("VT.DELETE", self.key(queue), *ids))

    async def adelete(self, queue, ids):
        if not ids:
            return 0
        return int(await self.aclient.execute_command("VT.DELETE", self.key(queue), *ids))

    def clear(self, queue, what):
        return int(self.client.execute_command("VT.CLEAR", self.key(queue), what.upper()))

    async def aclear(self, queue, what):
        return int(await self.aclient.execute_command("VT.CLEAR", self.key(queue), what.upper()))

    # ---- schedules ------------------------------------------------------------------------------
    def schedule_set(self, queue, name, payload, cron=None, every_ms=None, priority=0):
        self.client.execute_command(
            *self._schedule_set_args(self.key(queue), name, payload, cron, every_ms, priority)
        )

    async def aschedule_set(self, queue, name, payload, cron=None, every_ms=None, priority=0):
        await self.aclient.execute_command(
            *self._schedule_set_args(self.key(queue), name, payload, cron, every_ms, priority)
        )

    def schedule_del(self, queue, name):
        return bool(self.client.execute_command("VT.SCHEDULE", "DEL", self.key(queue), name))

    async def aschedule_del(self, queue, name):
        return bool(await self.aclient.execute_command("VT.SCHEDULE", "DEL", self.key(queue), name))

    def schedule_list(self, queue):
        return self._schedules(self.client.execute_command("VT.SCHEDULE", "LIST", self.key(queue)))

    async def aschedule_list(self, queue):
        return self._schedules(
            await self.aclient.execute_command("VT.SCHEDULE", "LIST", self.key(queue))
        )

    def schedule_pause(self, queue, name):
        return bool(self.client.execute_command("VT.SCHEDULE", "PAUSE", self.key(queue), name))

    def schedule_resume(self, queue, name):
        return bool(self.client.execute_command("VT.SCHEDULE", "RESUME", self.key(queue), name))

    def schedule_run(self, queue, name):
        rid = self.client.execute_command("VT.SCHEDULE", "RUN", self.key(queue), name)
        return _s(rid) if rid is not None else None

    # ---- rate limits ----------------------------------------------------------------------------
    @staticmethod
    def _rate_set_args(key, limit, per_ms, burst):
        args: list[Any] = ["VT.RATELIMIT", "SET", key, int(limit), "PER", int(per_ms)]
        if burst is not None:
            args += ["BURST", int(burst)]
        return args

    def rate_limit_set(self, queue, limit, per_ms, burst=None):
        return bool(
            self.client.execute_command(*self._rate_set_args(self.key(queue), limit, per_ms, burst))
        )

    async def arate_limit_set(self, queue, limit, per_ms, burst=None):
        args = self._rate_set_args(self.key(queue), limit, per_ms, burst)
        return bool(await self.aclient.execute_command(*args))

    def rate_limit_off(self, queue):
        return bool(self.client.execute_command("VT.RATELIMIT", "OFF", self.key(queue)))

    async def arate_limit_off(self, queue):
        return bool(await self.aclient.execute_command("VT.RATELIMIT", "OFF", self.key(queue)))

    def rate_limit_get(self, queue):
        reply = self.client.execute_command("VT.RATELIMIT", "GET", self.key(queue))
        return None if reply is None else {_s(k): int(v) for k, v in _pairs(reply).items()}

    # ---- results --------------------------------------------------------------------------------
    def store_result(self, id, data, ttl_ms):
        if ttl_ms > 0 and data is not None:
            self.client.set(self.result_key(id), data, px=int(ttl_ms))

    async def astore_result(self, id, data, ttl_ms):
        if ttl_ms > 0 and data is not None:
            await self.aclient.set(self.result_key(id), data, px=int(ttl_ms))

    async def astore_results(self, results):
        results = [r for r in results if r[2] > 0 and r[1] is not None]
        if not results:
            return
        async with self.aclient.pipeline(transaction=False) as pipe:
            for rid, data, ttl in results:
                pipe.set(self.result_key(rid), data, px=int(ttl))
            await pipe.execute()

    def get_result(self, id):
        return self.client.get(self.result_key(id))

    async def aget_result(self, id):
        return await self.aclient.get(self.result_key(id))

    async def aset_dlq_cap(self, cap: int) -> None:
        """VTASKS_DLQ_CAP → the module's `vtasks.dlq-cap` (server-wide)."""
        await self.aclient.config_set("vtasks.dlq-cap", int(cap))

    # ---- lifecycle ------------------------------------------------------------------------------
    def ping(self):
        try:
            self.client.ping()
            self.client.execute_command("VT.INFO", self.key("__vtasks_check__"))
        except BrokerError:
            raise
        except Exception as e:
            raise self.error(e, "connect") from e

    def eviction_policy(self) -> str | None:
        """The server's maxmemory-policy (INFO memory; CONFIG may be disabled), None if unknown."""
        try:
            info = self.client.info("memory")
        except Exception:
            return None
        if not isinstance(info, dict):
            return None
        if "maxmemory_policy" in info:  # cluster: {node: info}
            return _s(info["maxmemory_policy"])
        for node in info.values():
            if isinstance(node, dict) and "maxmemory_policy" in node:
                return _s(node["maxmemory_policy"])
        return None

    def close(self):
        if self._client is not None and not isinstance(self._shared_pool, valkey.ConnectionPool):
            self._client.connection_pool.disconnect()

    async def aclose(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._aclients.pop(loop, None)
        if client is not None:
            if isinstance(self._shared_pool, avalkey.ConnectionPool):
                await client.aclose(close_connection_pool=False)
            else:
                await client.aclose()


def _is_int(v) -> bool:
    try:
        int(v)
        return True
    except (TypeError, ValueError):
        return False
