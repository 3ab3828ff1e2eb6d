#!/usr/bin/env python3
"""Summarise collapsed stacks (py-spy --format raw, or perf script | stackcollapse) as two tables:
self time and inclusive time per function, in % of samples.

    python benchmarks/profile_top.py stacks.txt [--top 25] [--filter substring]
"""

import argparse
import re
from collections import Counter


def norm(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    m = re.match(r"(.*?) \((?:.*/)?([^/:]+)(?::\d+)?\)$", frame.strip())
    return f"{m.group(1)} ({m.group(2)})" if m else frame.strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--filter", default=None, help="only stacks containing this substring")
    a = p.parse_args()
    self_c, incl_c, total = Counter(), Counter(), 0
    for line in open(a.file, errors="replace"):
        line = line.rstrip()
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        try:
            n = int(n)
        except ValueError:
            continue
        if a.filter and a.filter not in stack:
            continue
        frames = [norm(f) for f in stack.split(";") if f]
        total += n
        if frames:
            self_c[frames[-1]] += n
        for f in set(frames):
            incl_c[f] += n
    print(f"{total} samples")
    for title, c in (("self", self_c), ("inclusive", incl_c)):
        print(f"\n{title:>9} %  function")
        for f, n in c.most_common(a.top):
            print(f"{100 * n / max(total, 1):10.1f}  {f}")


if __name__ == "__main__":
    main()
