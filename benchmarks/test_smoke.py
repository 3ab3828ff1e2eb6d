"""Smoke test of the benchmark harness (not a benchmark, not in CI): a tiny run of one peer
against real servers (Valkey + throwaway Postgres), checking that real numbers come out.

    .venv/bin/python -m pytest -q benchmarks/test_smoke.py      (~20 s)

Skipped when the peer's venv or the servers' binaries are missing (scripts/bench creates the venvs).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent


@pytest.mark.skipif(
    not (BENCH / ".venvs" / "dvt320" / "bin" / "python").exists()
    or not (BENCH / ".venvs" / "runner" / "bin" / "python").exists(),
    reason="run scripts/bench --quick once to create the venvs",
)
@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="redis-tools missing")
def test_quick_run_of_one_peer_produces_numbers():
    out = "smoke"
    r = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_suite.py"),
            "--quick",
            "--no-install",
            "--systems",
            "dvt320",
            "--n",
            "60",
            "--enqueue-n",
            "60",
            "--bulk-n",
            "200",
            "--latency-n",
            "10",
            "--rate",
            "50",
            "--tasks",
            "noop",
            "--raw-n",
            "2000",
            "--no-scale",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((BENCH / "results" / f"{out}.json").read_text())
    assert not doc["errors"], doc["errors"]
    m = doc["summary"]["dvt320"]
    for key in ("enqueue_single", "enqueue_bulk", "process_noop_c50"):
        assert m[key] > 0, key
    assert doc["runs"][0]["scenarios"]["dvt320"]["process_noop_c50"]["done"] == 60
    assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"] < 5000
    assert 5 < m["rss_peak_mb"] < 2000
    assert m["conns"] >= 1
    assert doc["raw_summary"]["LPUSH_p16"] > 0
    md = (BENCH / "results" / f"{out}.md").read_text()
    assert "django-vtasks 3.2.0" in md and "## Targets" in md
    assert (BENCH / "results" / f"{out}.png").stat().st_size > 10_000
    for ext in ("json", "md", "png"):
        (BENCH / "results" / f"{out}.{ext}").unlink()
