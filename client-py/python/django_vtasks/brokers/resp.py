"""The hand-written RESP fast path of ValkeyBroker: VT.ENQUEUE and result+ack flushes packed in
one pass and sent on one pooled connection (valkey-py's pack_command per argument was a third of
the bulk enqueue time and most of an ack flush). The commands are exactly those valkey-py would
send; only the packing differs.
"""

from __future__ import annotations

import valkey
from valkey._parsers.encoders import Encoder

from .. import _native


def plain_utf8(pool) -> bool:
    """The pool's connections encode str arguments as strict UTF-8 (what the packers assume)."""
    kwargs = pool.connection_kwargs
    return (
        kwargs.get("encoding", "utf-8") in ("utf-8", "utf8")
        and kwargs.get("encoding_errors", "strict") == "strict"
    )


async def send_packed(pool, packed: bytes, n: int, name: str, raise_on_error: bool = True) -> list:
    """Send pre-packed commands on one pooled connection and read their ``n`` replies; an error
    reply raises after all replies are read (or, with raise_on_error=False, is returned in its
    place). Retried on connection errors like a pipeline (the connection's Retry policy)."""
    conn = await pool.get_connection(name)

    async def send():
        await conn.send_packed_command(packed, check_health=True)
        error = None
        replies = []
        for _ in range(n):
            try:
                replies.append(await conn.read_response())
            except valkey.ResponseError as e:  # read the other replies, then raise
                error = error or e
                replies.append(e)
        if error is not None and raise_on_error:
            raise error
        return replies

    async def failed(error):
        await conn.disconnect()

    try:
        return await conn.retry.call_with_retry(send, failed)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


def arg(v) -> bytes:
    """One argument as valkey-py's Encoder sends it (bytes, str as UTF-8, int)."""
    if type(v) is bytes:
        return v
    if type(v) is str:
        return v.encode()
    return _ENCODER.encode(v)


_ENCODER = Encoder("utf-8", "strict", False)


def pack_enqueue(broker, requests) -> tuple[list, bytes]:
    """_enqueue_commands(requests) and the RESP of those commands, the entries packed with one
    format per task."""
    commands = broker._enqueue_commands(requests, entries=False)
    out = []
    for args, idxs in commands:
        out.append(b"*%d\r\n" % (len(args) + 2 * len(idxs)))
        for a in args:
            out.append(bulk(arg(a)))
        for i in idxs:
            r = requests[i]
            rid = r.id
            rid = rid.encode() if type(rid) is str else arg(rid)
            payload = r.payload
            if type(payload) is not bytes:
                payload = arg(payload)
            out.append(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(rid), rid, len(payload), payload))
    return commands, b"".join(out)


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(b), b)


#: (result_prefix, key, pairs, results) -> (packed, n): RESP for ``SET <result_prefix><id> <data>
#: PX <ttl>`` per result with ttl > 0, then ``VT.ACK <key> id token ...`` when there are pairs;
#: n is the number of commands. Native (client-py/native/src/resp.rs): it ran once per finished
#: task in Python.
pack_ack_results = _native.pack_ack_results
