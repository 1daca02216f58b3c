"""Every benchmark script runs on its tiny size, so none can silently break again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# gateway.py has its own test, which checks what it reports (tests/test_benchmarks_gateway.py).
OWN_TEST = {"gateway.py"}
SCRIPTS = sorted(
    p.name
    for p in BENCHMARKS.glob("*.py")
    if "__main__" in p.read_text() and p.name not in OWN_TEST
)


def test_every_script_is_covered() -> None:
    """The scripts found are the ones expected (a module without a main is no script)."""
    assert {"compare.py", "cold_start.py", "http_clients.py", "state_store.py"} <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_tiny(script: str) -> None:
    """`python benchmarks/SCRIPT --tiny` exits 0 and writes no result file."""
    root = BENCHMARKS.parent
    before = {p: p.stat().st_mtime_ns for p in (BENCHMARKS / "results").glob("*")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(BENCHMARKS)])}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--tiny"],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in (BENCHMARKS / "results").glob("*")}
    assert after == before
