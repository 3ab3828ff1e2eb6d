"""Writes seed inputs for the rdb_records fuzz target in the module's record format (codec.rs W:
kind byte, u64 LE, bytes = u64 LE length + data, opt = 0 | 1 + bytes), framed [u16 LE len]."""

import struct
from pathlib import Path


def u64(v):
    return struct.pack("<Q", v & (2**64 - 1))


def b(x):
    return u64(len(x)) + x


def opt(x):
    return b"\0" if x is None else b"\1" + b(x)


now = 1_764_000_000_000


def H(seq=10):
    return b"H" + u64(1) + u64(seq) + b"".join(u64(i) for i in range(7))


def T(id, state, seq, worker=b"", token=0, deadline=0, run_at=0, unique=None, prio=0):
    return (
        b"T"
        + b(id)
        + b(b'{"func":"x"}')
        + u64(prio)
        + u64(1)
        + u64(3)
        + u64(seq)
        + u64(now)
        + u64(run_at)
        + u64(state)
        + b(worker)
        + u64(token)
        + u64(deadline)
        + b(b"")
        + u64(0)
        + opt(unique)
    )


def D(id):
    return b"D" + b(id) + b(b"p") + u64(0) + u64(3) + u64(3) + u64(now) + b(b"boom") + u64(now)


def U(k, exp, task):
    return b"U" + b(k) + u64(exp) + opt(task)


def S(name, kind, spec, every, nxt):
    return b"S" + b(name) + u64(kind) + b(spec) + u64(every) + u64(0) + b(b"payload") + u64(nxt)


def frame(recs, ops=b""):
    return b"".join(struct.pack("<H", len(r)) + r for r in recs) + b"\0\0" + ops


out = Path(__file__).parent / "seeds" / "rdb_records"
out.mkdir(parents=True, exist_ok=True)
seeds = {
    "ready": frame([H(), T(b"a", 0, 1), T(b"b", 0, 2, prio=5)], bytes([1, 2, 1, 3, 10, 4])),
    "mixed": frame(
        [
            H(),
            T(b"a", 0, 1),
            T(b"d", 1, 2, run_at=now + 500),
            T(b"i", 2, 3, b"w", 0x1234, now + 100),
            D(b"x"),
            U(b"k", now + 1000, b"a"),
            S(b"s", 0, b"250", 250, now + 10),
            S(b"c", 1, b"*/5 * * * * *", 0, now),
        ],
        bytes([10, 10, 0, 1, 1, 2, 3 | 0x80, 4, 5, 6, 7, 8, 9, 1, 2]),
    ),
    "inflight": frame(
        [H(5), T(b"i1", 2, 1, b"w", 1, now - 10), T(b"i2", 2, 2, b"w", 2, now + 10)],
        bytes([4, 5, 1, 2, 2]),
    ),
}
for name, data in seeds.items():
    (out / name).write_bytes(data)
print(f"wrote {len(seeds)} seeds to {out}")
