"""The benchmarks that need neither root nor minutes run, small, as the README prints them, and
print their figures: the figures a closing note quotes come from scripts that still work.
Nothing here asserts a time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUNS = {
    "preview": (
        ["bench/preview.py", "--sizes", "50", "--latency-ms", "0"],
        # provider, servers, wall, CPU, peak RSS, calls, pages (one page of 50 on both)
        [
            rf"{provider} +50 +\d+ms +\d+ms +\d+MB +\d+ +1 "
            for provider in ("hcloud", "digitalocean")
        ],
    ),
    "reconcile": (
        ["bench/reconcile.py", "--servers", "50", "--runs", "1", "--latency-ms", "0"],
        [r"per run: +\d+ API calls, \d+ ms engine CPU"],
    ),
    "dashboard": (
        ["bench/dashboard.py", "--servers", "20", "--runs", "1"],
        [rf"{page} +median" for page in ("fleet page 1", "server, 1 h charts", "alerts")],
    ),
    "validate": (
        ["bench/validate.py"],
        [r"10,000 servers .*: \d+ ms", r"heavy modules imported on that path: none"],
    ),
    "cloudinit": (
        ["bench/cloudinit.py"],
        [r"keys that fit besides the deploy key: \d+ ed25519", r"render: \d+ us per server"],
    ),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_benchmark_runs_and_prints_its_figures(name: str) -> None:
    argv, expected = RUNS[name]
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for pattern in expected:
        assert re.search(pattern, done.stdout), f"{pattern!r} not in:\n{done.stdout}"
