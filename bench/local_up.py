"""Benchmark: `engine up` on the local provider, from nothing to every server ready.

Starts a private Docker engine, builds the images once (timed separately), then for 1, 3 and
10 servers runs `engine up --yes` as a user would (a separate process) and prints the wall
time to ready and the per-step medians (create, boot, phone-home, install, agent), then
destroys the fleet. Targets, with the images cached: 3 servers ready in <= 12 s, 10 in <= 25 s.
Under each line, the CPU time the run took: the engine's (with its installs), the servers'
(their containers: cloud-init, sshd, Docker inside, the agent) and the Docker engine's; that
total over the machine's cores is the least wall time the run could take here.
The machine is shared: each line ends with the load average over the last minute, taken
before the run (other work slows it). Needs root, like the tests; takes a few minutes.

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

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.install import containers_cpu  # noqa: E402
from engine.agent.image import ensure_agent_image  # noqa: E402
from engine.providers.local.dockerd import PrivateDaemon, daemon_client  # noqa: E402
from engine.providers.local.images import (  # noqa: E402
    ensure_golden_image,
    ensure_machine_image,
)


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


def engine_up(args: list[str], env: dict[str, str]) -> tuple[str, int, float]:
    """Run `engine up ARGS`: its stdout, exit code and the CPU seconds it and the processes
    it waited for used (the install forker and the installs it forked among them)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine", "up", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return text, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def docker_cpu(daemon: PrivateDaemon) -> float:
    """CPU seconds the private Docker engine (dockerd and its containerd) has used, apart
    from the containers'."""
    assert daemon.process is not None, "the benchmark starts its Docker engine itself"
    dockerd = psutil.Process(daemon.process.pid)
    processes = [dockerd, *(p for p in dockerd.children() if p.name() == "containerd")]
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def main() -> None:
    counts = [int(c) for c in sys.argv[1:]] or [1, 3, 10]
    work = Path(tempfile.mkdtemp(prefix="bench-local-up-"))
    daemon = PrivateDaemon.start(work / "dockerd")
    env = {**os.environ, "DOCKER_HOST": daemon.url, "NO_COLOR": "1"}
    try:
        client = daemon_client(daemon.url)
        started = time.monotonic()
        golden = ensure_golden_image(client, say=lambda _: None)
        agent = ensure_agent_image(client, say=lambda _: None)
        ensure_machine_image(client, golden, (agent,), say=lambda _: None)
        print(f"images built into a fresh Docker engine in {time.monotonic() - started:.1f} s")
        cores = os.cpu_count() or 1
        print(f"{'servers':>7} {'to ready':>9}   median per step{'':>48}load")
        for count in counts:
            path = work / f"bench{count}.yaml"
            path.write_text(yaml.safe_dump(spec(count)))
            state = ["--state-dir", str(work / "state")]
            load = os.getloadavg()[0]
            docker_before = docker_cpu(daemon)
            started = time.monotonic()
            out, code, engine_cpu = engine_up([str(path), "--yes", "--format", "json", *state], env)
            wall = time.monotonic() - started
            done = json.loads(out.splitlines()[-1])
            if code != 0 or done.get("event") != "done":
                raise SystemExit(f"engine up failed:\n{out[-2000:]}")
            medians = done["timings"]["medians"]
            steps = "  ".join(
                f"{step} {value:.1f}s" for step, value in medians.items() if value is not None
            )
            print(f"{count:>7} {wall:>8.1f}s   {steps:<63} {load:4.1f}")
            servers = containers_cpu(c.id for c in client.containers.list())
            docker = docker_cpu(daemon) - docker_before
            total = engine_cpu + servers + docker
            print(
                f"{'':>20}CPU: engine {engine_cpu:.1f} s, servers {servers:.1f} s, Docker "
                f"{docker:.1f} s: {total / cores:.1f} s of {cores} cores' time at the least"
            )
            engine(["destroy", str(path), "--yes", *state], env)
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
