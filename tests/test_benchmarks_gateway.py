"""benchmarks/gateway.py --tiny runs end to end: serve, the proxy (when it starts in
time), in-process and raw over real sims, and reports a serve row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_tiny_gateway_benchmark_reports_serve(tmp_path: Path) -> None:
    """The tiny run exits 0, prints a serve row and writes serve rows to its results."""
    out = tmp_path / "gateway.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gateway.py"), "--tiny", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| serve | 32 |" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    serve = [r for r in rows if r["system"] == "serve"]
    assert [r["concurrency"] for r in serve] == [32, 64]
    assert all(r["succeeded"] == r["requests"] for r in serve)
