"""What one cold CLI call costs: every `llm` or `lbprovider` call is a new process.

    .venv/bin/python benchmarks/cold_start.py [--runs 5]

Against one ``lbprovider sim`` on loopback, each command runs ``--runs`` times
(alternating, so drift hits all alike); the report gives the median CPU (user + sys of
the child) and wall time of each:

- ``lbprovider --help`` (Python, click and our CLI: the floor for any command);
- ``lbprovider chat`` over two native members, two native Anthropic members (the sim
  answers ``/v1/messages`` on the same port) and two litellm members;
- ``llm -m sim-direct`` (an OpenAI-compatible model in llm's ``extra-openai-models.yaml``
  pointing at the same sim: what a user pays without lbprovider);
- ``llm -m lb/bench-native`` (the same request through our plugin, native members).

Nothing here touches the network or the user's own llm or lbprovider configuration:
homes are temporary directories.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
KEY = "sk-bench-not-a-real-key"


def _member(url: str, transport: str) -> dict[str, Any]:
    return {
        "version": 1,
        "provider": "openai",
        "model": "sim-model",
        "ephemeralSettings": {"base-url": url, "auth-key": KEY, "transport": transport},
    }


def setup(home: Path, url: str) -> dict[str, str]:
    """Profiles and llm's user dir for the commands; returns their environment."""
    profiles = home / "lbprovider" / "profiles"
    profiles.mkdir(parents=True)
    for transport in ("native", "litellm"):
        for i in (0, 1):
            path = profiles / f"{transport}{i}.json"
            path.write_text(json.dumps(_member(url, transport)))
        lb = {
            "version": 1,
            "type": "loadbalancer",
            "policy": "failover",
            "profiles": [f"{transport}0", f"{transport}1"],
        }
        (profiles / f"bench-{transport}.json").write_text(json.dumps(lb))
    anthropic = {"version": 1, "provider": "anthropic", "model": "sim-model"}
    anthropic["ephemeralSettings"] = {"base-url": url, "auth-key": KEY}
    for i in (0, 1):
        (profiles / f"anthropic{i}.json").write_text(json.dumps(anthropic))
    lb = {**lb, "profiles": ["anthropic0", "anthropic1"]}
    (profiles / "bench-anthropic.json").write_text(json.dumps(lb))
    llm_dir = home / "llm"
    llm_dir.mkdir()
    (llm_dir / "extra-openai-models.yaml").write_text(
        f"- model_id: sim-direct\n  model_name: sim-model\n  api_base: {url}\n"
    )
    return {
        **os.environ,
        "LBPROVIDER_HOME": str(home / "lbprovider"),
        "LBPROVIDER_STATE": f"sqlite:///{home / 'lbprovider' / 'state.db'}",
        "LLM_USER_PATH": str(llm_dir),
        "OPENAI_API_KEY": KEY,  # llm's direct model asks for a key; the sim takes any
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


BASELINE = "python -c 'import click, pydantic, rich'"
COMMANDS: dict[str, list[str]] = {
    # What the CLI's own libraries cost to import: the floor for the commands below.
    BASELINE: [sys.executable, "-c", "import click, pydantic, rich"],
    "lbprovider --help": [str(BIN / "lbprovider"), "--help"],
    "lbprovider profiles list": [str(BIN / "lbprovider"), "profiles", "list"],
    "lbprovider stats --json": [str(BIN / "lbprovider"), "stats", "--json"],
    "lbprovider chat (native members)": [str(BIN / "lbprovider"), "chat", "-p", "bench-native"],
    "lbprovider chat (native Anthropic members)": [
        str(BIN / "lbprovider"),
        "chat",
        "-p",
        "bench-anthropic",
    ],
    "lbprovider chat (litellm members)": [str(BIN / "lbprovider"), "chat", "-p", "bench-litellm"],
    "llm -m sim-direct (no lbprovider)": [str(BIN / "llm"), "-m", "sim-direct"],
    "llm -m lb/bench-native": [str(BIN / "llm"), "-m", "lb/bench-native"],
}


def _args(argv: list[str]) -> list[str]:
    return [*argv, "hi"] if "chat" in argv or "-m" in argv else argv


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def measure(runs: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall per command, ``runs`` alternating rounds."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "lbprovider.cli", "sim", "--behavior", "chunks=5", "--for", "900"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().split()[3]
        with tempfile.TemporaryDirectory(prefix="lbprovider-cold-") as tmp:
            env = setup(Path(tmp), url)
            samples: dict[str, list[tuple[float, float]]] = {k: [] for k in COMMANDS}
            for argv in COMMANDS.values():  # one unmeasured run each: disk caches
                timed(_args(argv), env)
            for _ in range(runs):
                for name, argv in COMMANDS.items():
                    samples[name].append(timed(_args(argv), env))
    finally:
        sim.terminate()
        sim.wait(10)
    return {
        name: {
            "cpu_s": statistics.median(c for c, _ in runs_),
            "wall_s": statistics.median(w for _, w in runs_),
        }
        for name, runs_ in samples.items()
    }


def table(results: dict[str, dict[str, float]]) -> list[str]:
    """The markdown table, with the ratios the targets are about."""
    help_cpu = results["lbprovider --help"]["cpu_s"]
    llm_wall = results["llm -m sim-direct (no lbprovider)"]["wall_s"]
    base = results.get(BASELINE, {}).get("cpu_s")
    lines = [
        "| command | CPU s (median) | wall s (median) | CPU ÷ `lbprovider --help` | "
        "CPU ÷ importing click, pydantic, rich | wall ÷ `llm -m sim-direct` |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        vs_base = f"{r['cpu_s'] / base:.2f}×" if base else "-"
        lines.append(
            f"| `{name}` | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | "
            f"{r['cpu_s'] / help_cpu:.2f}× | {vs_base} | {r['wall_s'] / llm_wall:.2f}× |"
        )
    return lines


def main(runs: int, *, write: bool = True) -> None:
    """Measure, print the table, save the results (unless ``write`` is False)."""
    results = measure(runs)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "cold_start.json").write_text(json.dumps(results, indent=2))
    print("\n".join(table(results)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--tiny", action="store_true", help="a smoke run: one run each, writes nothing"
    )
    args = parser.parse_args()
    main(1 if args.tiny else args.runs, write=not args.tiny)
