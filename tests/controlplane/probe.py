"""An install entry point for `engine serve --install-entry tests.controlplane.probe:install`.

Real and observable: every start and finish is a line in $PROBE_LOG (appended atomically),
with the server and the worker's pid. Idempotent: a server already done is not done again.
While the file $PROBE_GATE exists, an install waits (so a test can kill the process
mid-job); with $PROBE_SPREAD, the first installs wait until two processes have started one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine.install.seam import InstallResult, InstallTarget
from engine.state import FleetSettings


def _log(line: str) -> None:
    with Path(os.environ["PROBE_LOG"]).open("a") as out:
        out.write(f"{line}\n")


def _lines() -> list[list[str]]:
    return [line.split() for line in Path(os.environ["PROBE_LOG"]).read_text().splitlines()]


def install(target: InstallTarget, fleet: FleetSettings) -> InstallResult:
    if ["done", target.name] in [line[:2] for line in _lines()]:
        return InstallResult(ok=True, install_hash="sha256:probe")
    _log(f"start {target.name} {os.getpid()}")
    deadline = time.monotonic() + 30
    gate = os.environ.get("PROBE_GATE")
    while gate and Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.environ.get("PROBE_SPREAD"):
        while len({line[2] for line in _lines() if line[0] == "start"}) < 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    time.sleep(0.05)  # an install takes a while: two at once would overlap in the log
    _log(f"done {target.name} {os.getpid()}")
    return InstallResult(ok=True, install_hash="sha256:probe", changed=("probe",))
