"""The execution ledger: one file per (task gid, execution n), created with O_CREAT|O_EXCL.

It lives on the local filesystem, independent of every fault target (Valkey, Postgres, workers).
A task claims the lowest free n atomically (O_EXCL), writes its start record, then appends its end
record when the body finished. So:

* executions started  = number of files for a gid,
* executions finished = files with an end record,
* a duplicate = a gid with more than one *finished* execution,
* a loss = a fed gid with no finished execution (and, for tasks meant to fail, no DLQ entry).

The writer side (``record_start``/``record_end``) is imported by the gauntlet tasks inside the
workers; the reader side (``Ledger.read``) by the harness.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

SEP = "~"


def _safe(gid: str) -> str:
    return gid.replace("/", "_")


def record_start(ledger_dir: str, gid: str, **extra) -> tuple[str, int]:
    """Claim the next execution number of ``gid``; returns (path, n)."""
    # times are taken before the claim: a process stopped between claim and write must not look
    # like it started when it resumed
    start, mono = time.time(), time.monotonic()
    n = 1
    while True:
        path = os.path.join(ledger_dir, f"{_safe(gid)}{SEP}{n}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            n += 1
            continue
        # "mono": CLOCK_MONOTONIC is system-wide, so it orders executions across processes even
        # when a worker runs under a skewed wall clock (libfaketime, scheduler scenario)
        rec = {"gid": gid, "n": n, "pid": os.getpid(), "start": start, "mono": mono, **extra}
        os.write(fd, (json.dumps(rec) + "\n").encode())
        os.fsync(fd) if os.environ.get("GAUNTLET_LEDGER_FSYNC") else None
        os.close(fd)
        return path, n


def record_end(path: str, **extra) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (json.dumps({"end": time.time(), **extra}) + "\n").encode())
    finally:
        os.close(fd)


@dataclass
class Execution:
    gid: str
    n: int
    pid: int
    start: float
    end: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.end is not None


class Ledger:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, list[Execution]]:
        """Every execution, by gid. Finished executions are immutable, so they are parsed once and
        cached: a poll re-reads only new and still-running files."""
        cache = self.__dict__.setdefault("_done", {})
        out: dict[str, list[Execution]] = {}
        for name in os.listdir(self.dir):
            if SEP not in name:
                continue
            ex = cache.get(name)
            if ex is None:
                ex = self._parse(name)
                if ex is None:
                    continue
                if ex.finished:
                    cache[name] = ex
            out.setdefault(ex.gid, []).append(ex)
        for v in out.values():
            v.sort(key=lambda e: e.n)
        return out

    def _parse(self, name: str) -> Execution | None:
        try:
            lines = (self.dir / name).read_text().splitlines()
        except OSError:
            return None
        if not lines:
            return None  # claimed, start record not yet written (racing a live task)
        try:
            head = json.loads(lines[0])
        except ValueError:
            return None
        ex = Execution(
            gid=head.pop("gid"),
            n=head.pop("n"),
            pid=head.pop("pid"),
            start=head.pop("start"),
            extra=head,
        )
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "end" in rec:
                ex.end = rec.pop("end")
                ex.extra.update(rec)
        return ex

    def finished_gids(self) -> set[str]:
        return {g for g, exs in self.read().items() if any(e.finished for e in exs)}

    def completions(self) -> list[float]:
        """End times of every finished execution (for throughput curves)."""
        return sorted(e.end for exs in self.read().values() for e in exs if e.finished)
