"""Benchmark: rolling a new version of an app over 10 local servers, and a failure putting
every changed server back.

Starts a private Docker engine, builds the images (timed apart), makes a fleet of 10 local
servers with `engine up` running an HTTP app built from the host's busybox (an image in the
engine's Docker, copied to the servers: no registry), then, as a user would (a separate
process each):

    roll    an env change (`engine deploy`, the image already on every server), with
            update.max_unavailable 1: each server's new container tried on the side and
            switched to, then watched for update.monitor while the next one switches; the
            rollout succeeds when the last one has been watched
    revert  a version that never gets healthy on the 10th server (a flag file there makes
            it so): nine servers switch, the tenth fails, and the rollout puts every server
            it changed back, each on its own previous version (no version is named)

Targets: roll <= 120 s with each switched server watched for update.monitor (default 30 s);
revert <= 60 s. Needs root, like the tests; takes several minutes.

    python bench/rollout.py [MONITOR_S]     (default: 30, the default of update.monitor)
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agent.image import ensure_agent_image  # noqa: E402
from engine.providers.local.dockerd import PrivateDaemon, daemon_client  # noqa: E402
from engine.providers.local.images import ensure_golden_image  # noqa: E402
from tests.support.docker import busybox_rootfs  # noqa: E402

SERVERS = 10
# The app stops on TERM as a real server does: busybox httpd as PID 1 would ignore it, and
# every switch would wait out the 10 s stop timeout of the old version.
SERVE = """\
mkdir -p /www
echo "$GREETING" > /www/index.html
[ -e /flag/broken ] && [ "$GREETING" = broken ] || echo ok > /www/healthz
trap 'exit 0' TERM
httpd -f -p 8080 -h /www &
wait
"""


def spec(monitor_s: int, greeting: str | None) -> dict[str, Any]:
    """The fleet, running the app with GREETING `greeting` (None: no app yet)."""
    fleet: dict[str, Any] = {
        "apiVersion": "fleet/v1",
        "kind": "Fleet",
        "name": "benchroll",
        "provider": {"name": "local"},
        "groups": [{"name": "web", "count": SERVERS}],
        "install": {"docker": {"source": "distro"}, "system": {"unattended_upgrades": False}},
    }
    if greeting is None:
        return fleet
    fleet["apps"] = [
        {
            "name": "web",
            "image": "bench/web:1",
            "ports": ["80:8080"],
            "env": {"GREETING": greeting},
            "volumes": ["/srv/bench-flag:/flag:ro"],
            "health": {
                "http": {"path": "/healthz", "port": 8080},
                "interval": "1s",
                "timeout": "1s",
                "retries": 2,
            },
            "on": ["web"],
            "update": {
                "max_unavailable": 1,
                "health_timeout": "10s",
                "monitor": f"{monitor_s}s",
            },
        }
    ]
    return fleet


def build_app_image(client: Any) -> None:
    """bench/web:1: busybox's httpd, healthy unless the server has the flag file and the
    version says `broken`."""
    rootfs = busybox_rootfs()
    client.api.import_image_from_data(
        rootfs, repository="bench/busybox", tag="1", changes=["ENV PATH=/bin"]
    )
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (
            (
                "Dockerfile",
                'FROM bench/busybox:1\nCOPY serve.sh /serve.sh\nCMD ["sh", "/serve.sh"]\n',
            ),
            ("serve.sh", SERVE),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag="bench/web:1", rm=True)


def engine(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=3600,
    )


def events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def at(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["at"])


def main() -> None:
    monitor_s = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    daemon = PrivateDaemon.start(work / "dockerd")
    env = {**os.environ, "DOCKER_HOST": daemon.url, "NO_COLOR": "1"}
    path = work / "benchroll.yaml"
    state = ["--state-dir", str(work / "state")]
    try:
        client = daemon_client(daemon.url)
        started = time.monotonic()
        ensure_golden_image(client, say=lambda _: None)
        ensure_agent_image(client, say=lambda _: None)
        build_app_image(client)
        print(f"images built into a fresh Docker engine in {time.monotonic() - started:.1f} s")
        path.write_text(yaml.safe_dump(spec(monitor_s, None)))
        started = time.monotonic()
        made = engine(["up", str(path), "--yes", "--format", "json", *state], env)
        if made.returncode != 0:
            raise SystemExit(f"engine up failed:\n{made.stdout[-3000:]}{made.stderr}")
        for n in range(1, SERVERS + 1):  # where the app's flag volume is mounted from
            machine = client.containers.get(f"benchroll-web-{n}")
            machine.exec_run(["mkdir", "-p", "/srv/bench-flag"])
        path.write_text(yaml.safe_dump(spec(monitor_s, "v1")))
        first = engine(["deploy", str(path), "--format", "json", *state], env)
        if first.returncode != 0:
            raise SystemExit(f"engine deploy failed:\n{first.stdout[-3000:]}{first.stderr}")
        print(f"{SERVERS} servers made, the app on each, in {time.monotonic() - started:.1f} s")

        path.write_text(yaml.safe_dump(spec(monitor_s, "v2")))
        started = time.monotonic()
        rolled = engine(["deploy", str(path), "web", "--format", "json", *state], env)
        wall = time.monotonic() - started
        if rolled.returncode != 0:
            raise SystemExit(f"engine deploy failed:\n{rolled.stdout[-3000:]}{rolled.stderr}")
        watched = [e["timings"].get("monitor", 0.0) for e in events(rolled)
                   if e.get("step") == "switched"]  # fmt: skip
        print(
            f"roll:   a new version over {SERVERS} servers, max_unavailable 1, in {wall:.1f} s "
            f"(target <= 120 s), each of the {len(watched)} switched servers watched for at "
            f"least {min(watched, default=0.0):.1f} s (update.monitor {monitor_s} s)"
        )

        last = client.containers.get(f"benchroll-web-{SERVERS}")
        last.exec_run(["touch", "/srv/bench-flag/broken"])
        path.write_text(yaml.safe_dump(spec(monitor_s, "broken")))
        started = time.monotonic()
        failed = engine(["deploy", str(path), "web", "--format", "json", *state], env)
        wall = time.monotonic() - started
        steps = [e for e in events(failed) if e["event"] == "app"]
        failure = next((e for e in steps if e["step"] == "failed"), None)
        reverted = [e for e in steps if e["step"] == "reverted"]
        if failed.returncode == 0 or failure is None or len(reverted) != SERVERS:
            raise SystemExit(f"the failing rollout went otherwise:\n{failed.stdout[-3000:]}")
        back = (max(at(e) for e in reverted) - at(failure)).total_seconds()
        print(
            f"revert: {failure['server']} failed after {SERVERS - 1} servers had switched; all "
            f"{len(reverted)} changed servers back on their previous version {back:.1f} s later "
            f"(target <= 60 s; the whole failed rollout took {wall:.1f} s)"
        )
        engine(["destroy", str(path), "--yes", *state], env)
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
