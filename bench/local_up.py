"""Benchmark: `engine up` on the local provider, from nothing to every server ready.

Starts a private Docker engine, builds the images once (timed separately), then for 1, 3 and
10 servers runs `engine up --yes` as a user would (a separate process) and prints the wall
time to ready and the per-step medians (create, boot, phone-home, install, agent), then
destroys the fleet. Target: 3 servers ready in <= 60 s with the images cached. Needs root,
like the tests; takes a few minutes.

    python bench/local_up.py [COUNTS...]     (default: 1 3 10)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agent.image import ensure_agent_image  # noqa: E402
from engine.providers.local.dockerd import PrivateDaemon, daemon_client  # noqa: E402
from engine.providers.local.images import ensure_golden_image  # noqa: E402


def spec(count: int) -> dict[str, object]:
    return {
        "apiVersion": "fleet/v1",
        "kind": "Fleet",
        "name": f"bench{count}",
        "provider": {"name": "local"},
        "defaults": {"server_type": "small", "image": "debian-12", "locations": ["local"]},
        "groups": [{"name": "web", "count": count}],
        "install": {"docker": {"source": "distro"}, "system": {"unattended_upgrades": False}},
    }


def engine(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
    )


def main() -> None:
    counts = [int(c) for c in sys.argv[1:]] or [1, 3, 10]
    work = Path(tempfile.mkdtemp(prefix="bench-local-up-"))
    daemon = PrivateDaemon.start(work / "dockerd")
    env = {**os.environ, "DOCKER_HOST": daemon.url, "NO_COLOR": "1"}
    try:
        client = daemon_client(daemon.url)
        started = time.monotonic()
        ensure_golden_image(client, say=lambda _: None)
        ensure_agent_image(client, say=lambda _: None)
        print(f"images built into a fresh Docker engine in {time.monotonic() - started:.1f} s")
        print(f"{'servers':>7} {'to ready':>9}   median per step")
        for count in counts:
            path = work / f"bench{count}.yaml"
            path.write_text(yaml.safe_dump(spec(count)))
            state = ["--state-dir", str(work / "state")]
            started = time.monotonic()
            result = engine(["up", str(path), "--yes", "--format", "json", *state], env)
            wall = time.monotonic() - started
            done = json.loads(result.stdout.splitlines()[-1])
            if result.returncode != 0 or done.get("event") != "done":
                raise SystemExit(f"engine up failed:\n{result.stdout[-2000:]}{result.stderr}")
            medians = done["timings"]["medians"]
            steps = "  ".join(
                f"{step} {value:.1f}s" for step, value in medians.items() if value is not None
            )
            print(f"{count:>7} {wall:>8.1f}s   {steps}")
            engine(["destroy", str(path), "--yes", *state], env)
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
