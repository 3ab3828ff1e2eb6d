"""Merge result JSON files (later files replace the same scenario/backend rows) and render the
markdown results section.

    python -m gauntlet.report results.json rerun.json --seed N --out RESULTS.md [--quick]
"""

import argparse
import json
from pathlib import Path

from .core import Result
from .run import results_markdown


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--json-out", default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    rows: dict[tuple, dict] = {}
    for f in a.files:
        for d in json.loads(Path(f).read_text()):
            rows[(d["scenario"], d["backend"])] = d
    results = [Result(**d) for d in rows.values()]
    Path(a.out).write_text(results_markdown(results, a.seed, a.quick))
    if a.json_out:
        Path(a.json_out).write_text(
            json.dumps([r.to_json() for r in results], indent=2, default=str)
        )


if __name__ == "__main__":
    main()
