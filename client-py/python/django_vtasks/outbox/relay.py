"""Relaying outbox rows to Valkey, exactly once.

A relay locks the rows it takes (``SELECT ... FOR UPDATE SKIP LOCKED``: two relays never hold the
same row), sends them, deletes them and commits. A relay that dies after sending but before its
commit leaves the rows behind: the next relay must not send them again (the task may have run and
been acked meanwhile, so VT.ENQUEUE's idempotence by live id is not enough). So each send is one
script that enqueues and, only if Valkey accepted the command, sets a marker per task
(``<queue key>:outbox:<id>``, in the queue key's hash slot, kept a day); a row whose marker exists
was sent and is only deleted. Markers are removed after the commit.
"""

from __future__ import annotations

import logging

from django.db import connections, transaction
from django.utils import timezone
from valkey.cluster import ValkeyCluster
from valkey.exceptions import ResponseError

from ..broker import EnqueueRequest
from .models import OutboxTask

logger = logging.getLogger("django_vtasks.outbox")

#: how long a sent marker outlives a relay that died before its commit
MARKER_TTL_MS = 86_400_000
#: rows per relay transaction (one script per queue group; Lua's unpack is bounded)
RELAY_BATCH = 500

# KEYS: queue key, then one marker per task; ARGV: marker TTL, then VT.ENQUEUE's arguments after
# the key. The markers are set only when VT.ENQUEUE succeeded (an error reply changes nothing).
_SEND = """
local args = {}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local reply = redis.pcall('VT.ENQUEUE', KEYS[1], unpack(args))
if type(reply) == 'table' and reply.err then return reply end
for i = 2, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ARGV[1]) end
return reply
"""


def store(backend, requests: list[EnqueueRequest]) -> None:
    """Write ``requests`` to the outbox, in the caller's transaction on ``backend.database``."""
    now = timezone.now()
    rows = [OutboxTask.of(backend.alias, r, now) for r in requests]
    OutboxTask.objects.using(backend.database).bulk_create(rows)


def marker_key(broker, request: EnqueueRequest) -> str:
    return f"{broker.key(request.queue)}:outbox:{request.id}"


def _node_client(broker, key: str):
    """The client that runs a script on ``key``: a cluster runs it on the key's primary."""
    client = broker.client
    if isinstance(client, ValkeyCluster):
        return client.get_valkey_connection(client.get_node_from_key(key))
    return client


def _sent_before(broker, requests: list[EnqueueRequest]) -> set[str]:
    try:
        pipe = broker.client.pipeline(transaction=False)
        for r in requests:
            pipe.exists(marker_key(broker, r))
        found = pipe.execute()
    except Exception as e:
        raise broker.error(e, "relay the outbox") from e
    return {r.id for r, n in zip(requests, found, strict=True) if n}


def _send(broker, requests: list[EnqueueRequest]) -> tuple[dict[str, bool], dict[str, str]]:
    """Enqueue with markers, one script per VT.ENQUEUE. Returns ({id: added?}, {id: refusal})."""
    outcome: dict[str, bool] = {}
    refused: dict[str, str] = {}
    for args, idxs in broker._enqueue_commands(requests):
        key = args[1]
        markers = [marker_key(broker, requests[i]) for i in idxs]
        client = _node_client(broker, key)
        try:
            reply = client.eval(_SEND, 1 + len(markers), key, *markers, MARKER_TTL_MS, *args[2:])
        except Exception as e:
            if not _is_refusal(e):
                raise broker.error(e, "relay the outbox") from e
            for i in idxs:
                refused[requests[i].id] = str(broker.error(e, "enqueue"))
            continue
        for i, rid in zip(idxs, reply or [], strict=False):
            outcome[requests[i].id] = rid is not None
    return outcome, refused


def _is_refusal(e: Exception) -> bool:
    """Valkey answered with an error (the command was refused), as opposed to no answer."""
    return isinstance(e, ResponseError)


def relay(backend, ids: list[str] | None = None, limit: int = RELAY_BATCH) -> dict[str, bool]:
    """Send ``backend``'s outbox rows (those of ``ids``, else the oldest ``limit``) to Valkey and
    delete them, in one transaction of ``backend.database``.

    Returns ``{task id: True if Valkey added it, False if it did not (its unique key is held or
    its id is live)}`` for the rows that left the outbox. Rows Valkey refused (an error reply,
    e.g. OOM) stay and are logged; when Valkey cannot be reached the BrokerError propagates and
    every row stays."""
    broker = backend.broker
    db = backend.database
    skip_locked = connections[db].features.has_select_for_update_skip_locked
    with transaction.atomic(using=db):
        rows = OutboxTask.objects.using(db).filter(backend=backend.alias)
        if ids is not None:
            rows = rows.filter(id__in=ids)
        taken = list(rows.select_for_update(skip_locked=skip_locked).order_by("created_at")[:limit])
        if not taken:
            return {}
        requests = [row.request() for row in taken]
        done = dict.fromkeys(_sent_before(broker, requests), True)
        outcome, refused = _send(broker, [r for r in requests if r.id not in done])
        done.update(outcome)
        for rid, reason in refused.items():
            logger.warning(
                "outbox: task %s stays in the outbox, Valkey refused it: %s", rid, reason
            )
        OutboxTask.objects.using(db).filter(id__in=list(done)).delete()
    try:
        pipe = broker.client.pipeline(transaction=False)
        for r in requests:
            if r.id in done:
                pipe.delete(marker_key(broker, r))
        pipe.execute()
    except Exception as e:  # they expire on their own
        logger.debug("outbox: markers not removed (%s); they expire in a day", e)
    return done


def pending(backend, id: str) -> OutboxTask | None:
    """The outbox row of task ``id`` (committed, not relayed yet), or None."""
    return OutboxTask.objects.using(backend.database).filter(backend=backend.alias, id=id).first()
