"""CI slice of the gauntlet (issue 6): the cheapest scenarios, seeded, asserting the invariants.

Runs under `pytest tests -p no:django` from the repo root: Django is only configured inside the
worker subprocesses (gauntlet_settings). Seed: GAUNTLET_SEED, else random (printed; replay with
`scripts/gauntlet --quick --seed N --scenario NAME --backend B`).
"""

import os
import random
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from gauntlet import paths  # noqa: E402

try:  # the harness reads Postgres through the native PgQueue; an editable install is not required
    import django_vtasks  # noqa: F401
except ImportError:
    sys.path.insert(0, str(paths.CLIENT_PY))
from gauntlet.run import run_one  # noqa: E402

SEED = int(os.environ.get("GAUNTLET_SEED") or random.SystemRandom().randrange(1, 10**9))

QUICK = [
    ("sigkill", "valkey"),
    ("poison", "valkey"),
    ("hostile", "valkey"),
    ("cluster_failover", "valkey"),
    ("client_pause", "valkey"),
    ("primary_kill_durable", "valkey"),  # issue 11: a crashed primary loses no durable enqueue
    ("sigkill", "postgres"),
    ("pg_burst", "postgres"),  # issue 12: 3 bursts of 10,000, no stall, no deadlock (≈ 20 s)
]


def _need(backend):
    if not paths.MODULE_SO.exists() and backend == "valkey":
        pytest.fail(f"module not built: {paths.MODULE_SO} (scripts/setup builds it)")
    if backend == "postgres" and not (
        shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    ):
        pytest.skip("PostgreSQL binaries (initdb) not installed")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name,backend", QUICK, ids=[f"{n}-{b}" for n, b in QUICK])
def test_gauntlet_quick(name, backend):
    _need(backend)
    if backend == "postgres":
        for d in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
            os.environ["PATH"] = f"{d}:{os.environ['PATH']}"
    print(f"gauntlet seed={SEED}")
    r = run_one(name, backend, SEED, quick=True)
    detail = "\n".join(r.violations) + f"\nreplay: {r.repro}\nnotes: {r.notes}"
    assert r.verdict == "PASS", f"{name}[{backend}] {r.verdict} (seed {SEED}):\n{detail}"
