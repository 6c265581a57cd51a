"""The README's first command, run as a stranger runs it: a fresh `git clone` in a new folder,
the command copied from the README and run from the clone's root, with no venv, no --state-dir,
no ENGINE_STATE_DIR and no DOCKER_HOST. It sets everything up (`.ci/setup`), finds no Docker
engine, starts one, builds the images and brings up the demo fleet to three ready servers.

So that the engine's default Docker discovery is exercised without touching the machine's own
Docker engine, the command runs in a mount namespace of its own: /run is an overlay in which
no Docker socket exists (so the engine starts the "system" dockerd itself, at the default
socket), /etc/docker holds a daemon.json that gives that daemon files, a bridge and addresses
of this test's own, and /var/log is a folder of this test. Everything else is the machine's.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from engine.providers.local.dockerd import PrivateDaemon
from tests.support.cli import ROOT
from tests.support.readme import assert_shaped_like, console_example, readme_command

pytestmark = pytest.mark.integration

STRANGER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables a stranger's shell does not have (CI sets some of them for the rest of the suite).
NOT_A_STRANGERS = ("DOCKER_HOST", "ENGINE_STATE_DIR", "ENGINE_STATE_URL", "VIRTUAL_ENV")
WEB = ("web-1", "web-2", "web-3")


class World:
    """The private Docker world the stranger's engine starts its daemon in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemon = PrivateDaemon.prepare(root / "dockerd")
        for folder in ("run-upper", "run-work", "etc-docker", "log"):
            (root / folder).mkdir()
        # The default socket for the engine to find, and one outside the namespace for the test.
        sockets = {"hosts": ["unix:///var/run/docker.sock", f"unix://{self.socket}"]}
        config = self.daemon.config() | sockets
        (root / "etc-docker" / "daemon.json").write_text(json.dumps(config))
        self.env = {k: v for k, v in os.environ.items() if k not in NOT_A_STRANGERS}
        self.env["PATH"] = STRANGER_PATH

    @property
    def socket(self) -> Path:
        """Where the daemon the engine starts listens too, for the test outside the namespace."""
        return self.root / "docker.sock"

    def enter(self) -> str:
        """Shell lines that make this namespace's /run, /etc/docker and /var/log."""
        root = shlex.quote(str(self.root))
        return "\n".join(
            [
                "set -e",
                f"mount -t overlay overlay -o lowerdir=/run,upperdir={root}/run-upper,"
                f"workdir={root}/run-work /run",
                "rm -rf /run/docker.sock /run/docker.pid /run/docker /run/containerd",
                f"mount --bind {root}/etc-docker /etc/docker",
                f"mount --bind {root}/log /var/log",
                "set +e",
            ]
        )

    def run(self, script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """`script` in the namespace: a new one, or the one the engine's dockerd lives in."""
        if self.daemon.pidfile.is_file():
            pid = self.daemon.pidfile.read_text().strip()
            # Entering a mount namespace moves to its root directory: come back first.
            command = ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "bash", "-c"]
            command.append(f"cd {shlex.quote(str(cwd))} && {script}")
        else:
            command = ["unshare", "--mount", "--propagation", "private", "bash", "-c"]
            command.append(f"{self.enter()}\n{script}")
        return subprocess.run(
            command,
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def world() -> Iterator[World]:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("dockerd"):
        pytest.fail("the stranger's test needs root, unshare and dockerd: run `bash .ci/setup`")
    # A short root: containerd's sockets live below it, and a socket path has 107 bytes at most.
    root = Path(tempfile.mkdtemp(prefix="stranger-", dir="/tmp"))
    world = World(root)
    try:
        yield world
    finally:
        world.daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_readmes_first_command_works_on_a_fresh_clone(world: World, tmp_path: Path) -> None:
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    command = readme_command("engine up", clone / "README.md")
    assert "--state-dir" not in command and "DOCKER_HOST" not in command

    up = world.run(command, cwd=clone, timeout=1800)
    said = up.stdout + up.stderr
    assert up.returncode == 0, said[-6000:]
    assert "Traceback" not in said
    assert "starting the Docker engine" in said  # no engine ran: it started one
    assert (world.root / "log" / "fleet-engine-dockerd.log").is_file()  # /var/log, inside
    assert "3 servers ready" in up.stdout
    # What the README shows it prints once the images exist: what came before is their making.
    _, example = console_example("Two commands on a fresh machine (Debian 12)", clone / "README.md")
    assert_shaped_like(example, up.stdout[up.stdout.index("Fleet demo") :], any_number=True)
    assert (clone / ".engine" / "state.db").is_file()  # the default state dir, in the clone

    status = world.run(".venv/bin/engine status specs/demo.yaml --format json", clone, 300)
    assert status.returncode == 0, status.stderr
    servers = json.loads(status.stdout)["servers"]
    assert {s["name"]: s["stage"] for s in servers} == dict.fromkeys(WEB, "ready")
    assert all("cpu_percent" in s["live"] for s in servers), servers  # their agents answer
    again = world.run(".venv/bin/engine preview specs/demo.yaml --detailed-exitcode", clone, 300)
    assert again.returncode == 0, again.stdout + again.stderr

    client = docker.DockerClient(base_url=f"unix://{world.socket}")
    try:
        assert len(client.containers.list(filters={"label": "fleet=demo"})) == 3
        gone = world.run(".venv/bin/engine destroy specs/demo.yaml --yes", clone, 600)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert client.containers.list(all=True, filters={"label": "fleet=demo"}) == []
    finally:
        client.close()
