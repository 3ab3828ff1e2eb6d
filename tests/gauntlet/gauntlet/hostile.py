"""A hostile client: random and truncated VT.* argument vectors and RESP garbage, for a bounded
time, against a live server. The server must never crash, never hang, and its memory must stay
bounded (and return near its baseline once the hostile keys are deleted).

Everything is drawn from one ``random.Random(seed)``: a failing run is replayed with its seed, and
the last commands sent before a crash are written to ``hostile-repro.txt``.
"""

from __future__ import annotations

import random
import socket
import time
from collections import deque
from pathlib import Path

COMMANDS = [
    "VT.ENQUEUE",
    "VT.FETCHBATCH",
    "VT.ACK",
    "VT.FAIL",
    "VT.RESCUE",
    "VT.EXTEND",
    "VT.INFO",
    "VT.QUEUES",
    "VT.PEEK",
    "VT.GET",
    "VT.RETRYDEAD",
    "VT.DELETE",
    "VT.CLEAR",
    "VT.SCHEDULE",
    # internal commands (replication stream / AOF only): must be refused to clients
    "VT._FX",
    "VT._LOAD",
    "VT._ALIGNCHECK",
]
CONFIGS = [
    b"vtasks.dlq-cap",
    b"vtasks.max-attempts",
    b"vtasks.default-lease",
    b"vtasks.max-payload",
]
KEYWORDS = [
    b"ID",
    b"PRIORITY",
    b"DELAY",
    b"AT",
    b"UNIQUE",
    b"MAXATTEMPTS",
    b"PAYLOAD",
    b"ENTRIES",
    b"WORKER",
    b"COUNT",
    b"LEASE",
    b"BLOCK",
    b"READY",
    b"DELAYED",
    b"INFLIGHT",
    b"DEAD",
    b"ALL",
    b"OFFSET",
    b"SET",
    b"DEL",
    b"LIST",
    b"CRON",
    b"EVERY",
    b"RETRY",
    b"payload",
    b"worker",
    b"count",
]
NUMBERS = [
    b"0",
    b"1",
    b"-1",
    b"2",
    b"3",
    b"10",
    b"100",
    b"-100",
    b"101",
    b"-101",
    b"10000",
    b"10001",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"18446744073709551615",
    b"99999999999999999999999",
    b"1e3",
    b"0x10",
    b" 1",
    b"1 ",
    b"+5",
    b"nan",
    b"inf",
    b"",
    b"00",
    b"4294967296",
    b"-0",
    b"3.5",
]
CRONS = [
    b"* * * * * *",
    b"*/1 * * * * *",
    b"0 0 31 2 *",
    b"61 * * * * *",
    b"* * *",
    b"",
    b"@daily",
    b"0 0 0 1 1 ? 2099",
    b"*/0 * * * * *",
    b"1-0 * * * * *",
    b"\xff\xfe",
    b"* * * * * * * *",
]
N_KEYS = 6


def keys() -> list[bytes]:
    return [f"hostile:{{h{i}}}".encode() for i in range(N_KEYS)]


def encode(argv: list[bytes]) -> bytes:
    out = [b"*%d\r\n" % len(argv)]
    for a in argv:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Hostile:
    def __init__(self, port: int, seed: int, workdir: Path):
        self.port = port
        self.rng = random.Random(seed)
        self.seed = seed
        self.dir = Path(workdir)
        self.recent: deque = deque(maxlen=200)
        self.socks: list[socket.socket | None] = [None] * 4
        self.sent = 0
        self.errors = 0
        self.ok = 0
        self.garbage = 0
        self.reconnects = 0
        self.ids: list[bytes] = [b"t1", b"t2"]
        self.tokens: list[bytes] = [b"0123456789abcdef"]

    # ---- connections ----------------------------------------------------------------------------
    def _sock(self, i: int) -> socket.socket:
        s = self.socks[i]
        if s is None:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.settimeout(0.03)
            self.socks[i] = s
            self.reconnects += 1
        return s

    def _drop(self, i: int):
        s = self.socks[i]
        if s is not None:
            try:
                s.close()
            except OSError:
                pass
        self.socks[i] = None

    def close(self):
        for i in range(len(self.socks)):
            self._drop(i)

    # ---- generators ---------------------------------------------------------------------------
    def _arg(self) -> bytes:
        r = self.rng
        k = r.random()
        if k < 0.25:
            return r.choice(KEYWORDS)
        if k < 0.45:
            return r.choice(NUMBERS)
        if k < 0.55:
            return r.choice(keys())
        if k < 0.62:
            return r.choice(self.ids)
        if k < 0.67:
            return r.choice(self.tokens)
        if k < 0.72:
            return r.choice(CRONS)
        if k < 0.97:
            return r.randbytes(r.choice([0, 1, 2, 8, 16, 64, 300]))
        return r.randbytes(r.choice([4096, 70000, 300000]))

    def _plausible(self) -> list[bytes]:
        """A roughly well-formed command with one or two mutations."""
        r = self.rng
        key = r.choice(keys())
        c = r.randrange(12)
        if c == 0:
            n = r.randrange(1, 5)
            argv = [b"VT.ENQUEUE", key]
            if r.random() < 0.3:
                argv += [b"PRIORITY", r.choice(NUMBERS)]
            if r.random() < 0.2:
                argv += [r.choice([b"DELAY", b"AT"]), r.choice(NUMBERS)]
            if r.random() < 0.2:
                argv += [b"UNIQUE", r.randbytes(3), r.choice(NUMBERS)]
            if r.random() < 0.2:
                argv += [b"MAXATTEMPTS", r.choice(NUMBERS)]
            if r.random() < 0.5:
                argv += [b"ENTRIES"]
                for _ in range(n):
                    i = b"h%d" % r.randrange(50)
                    self.ids.append(i)
                    argv += [i, r.randbytes(r.randrange(0, 200))]
            else:
                argv += [b"PAYLOAD"] + [r.randbytes(r.randrange(0, 200)) for _ in range(n)]
        elif c == 1:
            ks = [r.choice(keys()) for _ in range(r.randrange(1, 3))]
            ks = [key] * len(ks)  # same slot
            argv = [
                b"VT.FETCHBATCH",
                str(len(ks)).encode(),
                *ks,
                b"WORKER",
                b"w%d" % r.randrange(3),
                b"COUNT",
                r.choice([b"1", b"5", b"100", b"0", b"10001", b"-1"]),
            ]
            if r.random() < 0.5:
                argv += [b"LEASE", r.choice([b"1", b"50", b"1000", b"0", b"-5"])]
            if r.random() < 0.2:
                argv += [b"BLOCK", r.choice([b"1", b"10", b"50"])]
        elif c == 2:
            argv = [b"VT.ACK", key] + [
                x
                for _ in range(r.randrange(1, 3))
                for x in (r.choice(self.ids), r.choice(self.tokens))
            ]
        elif c == 3:
            argv = [b"VT.FAIL", key, r.choice(self.ids), r.choice(self.tokens), r.randbytes(20)]
            if r.random() < 0.5:
                argv += [b"RETRY", r.choice(NUMBERS)]
        elif c == 4:
            argv = [b"VT.RESCUE", key] + (
                [b"WORKER", b"w%d" % r.randrange(3)] if r.random() < 0.5 else []
            )
        elif c == 5:
            argv = [b"VT.EXTEND", key, b"w%d" % r.randrange(3), r.choice(NUMBERS)]
        elif c == 6:
            argv = [
                b"VT.PEEK",
                key,
                r.choice([b"READY", b"DELAYED", b"INFLIGHT", b"DEAD", b"x"]),
                b"OFFSET",
                r.choice(NUMBERS),
                b"COUNT",
                r.choice(NUMBERS),
            ]
        elif c == 7:
            argv = [
                b"VT.SCHEDULE",
                r.choice([b"SET", b"DEL", b"LIST", b"set"]),
                key,
                b"s%d" % r.randrange(3),
            ]
            if argv[1].upper() == b"SET":
                if r.random() < 0.5:
                    argv += [b"CRON", r.choice(CRONS)]
                else:
                    argv += [b"EVERY", r.choice([b"1", b"10", b"1000", b"0", b"-1", b"abc"])]
                argv += [b"PAYLOAD", r.randbytes(r.randrange(0, 50))]
        elif c == 8:
            argv = [b"VT.RETRYDEAD", key] + ([b"ALL"] if r.random() < 0.5 else [r.choice(self.ids)])
        elif c == 9:
            argv = [b"VT.DELETE", key, r.choice(self.ids)]
        elif c == 10:
            argv = [b"VT.CLEAR", key, r.choice([b"READY", b"DEAD", b"ALL", b"bogus"])]
        else:
            argv = [r.choice([b"VT.INFO", b"VT.GET", b"VT.QUEUES"]), key, r.choice(self.ids)]
        # mutations: truncate, replace, insert, case-fold
        m = r.random()
        if m < 0.25 and len(argv) > 1:
            argv = argv[: r.randrange(1, len(argv))]
        elif m < 0.4:
            argv[r.randrange(1, len(argv))] = self._arg() if len(argv) > 1 else argv[0]
        elif m < 0.5:
            argv.insert(r.randrange(1, len(argv) + 1), self._arg())
        elif m < 0.55:
            argv[0] = argv[0].lower()
        if len(self.ids) > 200:
            self.ids = self.ids[-100:]
        return argv

    def _random_argv(self) -> list[bytes]:
        r = self.rng
        return [r.choice(COMMANDS).encode()] + [self._arg() for _ in range(r.randrange(0, 12))]

    def _garbage(self) -> bytes:
        r = self.rng
        g = r.randrange(8)
        if g == 0:
            return r.randbytes(r.randrange(1, 512))
        if g == 1:  # truncated frame
            f = encode(self._plausible())
            return f[: r.randrange(1, max(2, len(f)))]
        if g == 2:
            return b"*3\r\n$9999999999\r\nVT.INFO\r\n"
        if g == 3:
            return b"*-5\r\n$-1\r\n*%d\r\n" % r.randrange(-3, 1 << 31)
        if g == 4:
            return b"VT.INFO " + r.randbytes(30).replace(b"\n", b"") + b"\r\n"  # inline
        if g == 5:
            return b"*2\r\n*1\r\n$1\r\nx\r\n$1\r\ny\r\n"  # nested array
        if g == 6:
            return b"*1\r\n$" + str(r.randrange(1, 10)).encode() + b"\r\n" + r.randbytes(3)
        return b"*" + str(r.randrange(1, 4)).encode() + b"\r\n" + b"$4\r\nVT.A\r\n"

    # ---- run ------------------------------------------------------------------------------------
    def _send(self, i: int, data: bytes, drop_after: bool):
        try:
            s = self._sock(i)
            s.sendall(data)
            self.sent += 1
            try:
                reply = s.recv(65536)
                if reply.startswith(b"-"):
                    self.errors += 1
                elif reply:
                    self.ok += 1
                    # harvest ids/tokens from replies so later ACK/FAIL hit real entries
                    for tok in reply.split(b"\r\n"):
                        if len(tok) == 16 and all(c in b"0123456789abcdef" for c in tok):
                            self.tokens.append(tok)
                            if len(self.tokens) > 50:
                                self.tokens = self.tokens[-20:]
                        elif 0 < len(tok) <= 36 and (tok.startswith(b"h") or tok.count(b"-") == 4):
                            self.ids.append(tok)
                if not reply:
                    self._drop(i)
            except TimeoutError:
                pass  # blocked (BLOCK) or a partial frame the server waits on
            if drop_after:
                self._drop(i)
        except OSError:
            self._drop(i)

    def step(self):
        r = self.rng
        i = r.randrange(len(self.socks))
        k = r.random()
        if k < 0.6:
            argv = self._plausible()
            data = encode(argv)
            self.recent.append(("argv", argv))
            self._send(i, data, drop_after=False)
        elif k < 0.62:
            argv = [b"CONFIG", b"SET", r.choice(CONFIGS), r.choice(NUMBERS)]
            self.recent.append(("argv", argv))
            self._send(i, encode(argv), drop_after=False)
        elif k < 0.85:
            argv = self._random_argv()
            self.recent.append(("argv", argv))
            self._send(i, encode(argv), drop_after=False)
        else:
            data = self._garbage()
            self.garbage += 1
            self.recent.append(("raw", data))
            self._send(i, data, drop_after=True)

    def dump_repro(self) -> Path:
        p = self.dir / "hostile-repro.txt"
        with open(p, "w") as f:
            f.write(f"# seed {self.seed}; last {len(self.recent)} sends, oldest first\n")
            for kind, d in self.recent:
                f.write(f"{kind} {d!r}\n")
        return p


def run_hostile(
    server, seed: int, duration: float, workdir: Path, mem_limit: int = 512 << 20
) -> dict:
    """Drive the hostile client for ``duration`` s; check liveness every ~50 sends. Returns stats
    and a list of violations (empty = pass)."""
    h = Hostile(server.port, seed, workdir)
    ctl = server.client(timeout=3)
    violations: list[str] = []
    base_mem = server.used_memory()
    saved_cfg = {}
    for k in CONFIGS:
        got = ctl.config_get(k.decode())
        saved_cfg.update(got)
    peak_mem = base_mem
    peak_rss = server.rss()
    max_ping = 0.0
    t_end = time.monotonic() + duration
    last_clear = time.monotonic()
    step = 0
    try:
        while time.monotonic() < t_end:
            h.step()
            step += 1
            if step % 50 == 0:
                if not server.alive():
                    violations.append(
                        f"server crashed (exit {server.proc.returncode}); repro: {h.dump_repro()}; "
                        f"log: {server.log_tail(15)}"
                    )
                    break
                t0 = time.monotonic()
                try:
                    ctl.ping()
                except Exception as e:
                    if not server.alive():
                        violations.append(
                            f"server crashed; repro: {h.dump_repro()}; log: {server.log_tail(15)}"
                        )
                    else:
                        violations.append(
                            f"server did not answer PING within 3 s (hang?): {e!r}; "
                            f"repro: {h.dump_repro()}"
                        )
                    break
                max_ping = max(max_ping, time.monotonic() - t0)
                mem = int(ctl.info("memory")["used_memory"])
                peak_mem = max(peak_mem, mem)
                peak_rss = max(peak_rss, server.rss())
                if mem > mem_limit:
                    violations.append(f"used_memory {mem} above the bound {mem_limit}")
                    break
            if time.monotonic() - last_clear > 2.0:
                # bound the state legitimate commands can grow (a schedule EVERY 1 on a random key
                # name enqueues 1000 tasks/s): drop every key, blocked clients and timers included
                ctl.execute_command("FLUSHALL")
                last_clear = time.monotonic()
    finally:
        h.close()
    try:  # restore the module's configs the hostile client may have changed
        for k, v in saved_cfg.items():
            ctl.execute_command("CONFIG", "SET", k, v)
    except Exception as e:
        violations.append(f"could not restore configs: {e!r}")
    # memory returns near baseline once hostile keys are gone (a leak in the module would not)
    end_mem = None
    extra_stats = {}
    if not violations:
        try:
            # random argument vectors also create queues under random names: drop every key
            dbsize = ctl.dbsize()
            ctl.execute_command("FLUSHALL", "SYNC")
            for i in range(len(h.socks)):
                h._drop(i)
            end_mem = wait_until_mem(ctl, base_mem + (16 << 20))
            extra_stats["keys_at_end"] = dbsize
            if end_mem > base_mem + (16 << 20):
                violations.append(
                    f"used_memory {end_mem} after FLUSHALL, baseline {base_mem}: leak?"
                )
        except Exception as e:
            violations.append(f"control connection failed after the run: {e!r}")
    ctl.close()
    return {
        "sends": h.sent,
        "error_replies": h.errors,
        "other_replies": h.ok,
        "garbage_frames": h.garbage,
        "connections": h.reconnects,
        "base_used_memory": base_mem,
        "peak_used_memory": peak_mem,
        "end_used_memory": end_mem,
        "peak_rss": peak_rss,
        "max_ping_s": round(max_ping, 4),
        "violations": violations,
        **extra_stats,
    }


def wait_until_mem(ctl, bound: int, timeout: float = 5.0) -> int:
    """used_memory, polled (bounded) until it is below ``bound`` (frees can lag a little)."""
    deadline = time.monotonic() + timeout
    while True:
        mem = int(ctl.info("memory")["used_memory"])
        if mem <= bound or time.monotonic() >= deadline:
            return mem
        time.sleep(0.1)
