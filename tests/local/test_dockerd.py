"""Private Docker daemons leave nothing behind that could trouble the next one; without root,
`engine up` asks for the Docker engine it cannot start."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.providers.local.dockerd import PrivateDaemon, _iptables_rules, _used_networks
from tests.support.cli import ROOT


def test_a_stopped_daemon_leaves_no_iptables_rule(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A short root: containerd's socket path under it must fit in 108 bytes.
    daemon = PrivateDaemon.start(tmp_path_factory.mktemp("dk"))
    try:
        assert any(daemon.bridge in rule for rule in _iptables_rules("nat"))
    finally:
        daemon.stop()
    for table in ("nat", "filter"):
        assert not [rule for rule in _iptables_rules(table) if daemon.bridge in rule]


def test_networks_of_leftover_nat_rules_count_as_used() -> None:
    # A rule like the one a vanished daemon leaves: it would masquerade a new daemon's
    # traffic from that network. 198.18.0.0/15 is for benchmarks: nothing here routes it.
    network = ipaddress.IPv4Network(f"198.18.{secrets.randbelow(256)}.0/24")
    rule = ["POSTROUTING", "-s", str(network), "!", "-o", "fegone", "-j", "MASQUERADE"]
    subprocess.run(["iptables", "-w", "-t", "nat", "-A", *rule], check=True)
    try:
        assert network in _used_networks()
    finally:
        subprocess.run(["iptables", "-w", "-t", "nat", "-D", *rule], check=True)


def test_without_root_up_asks_for_a_running_docker_engine_and_changes_nothing() -> None:
    """Why the README says to run its first command as root: as another user, with no Docker
    engine that user can reach, `engine up` cannot start one and says what to do."""
    if os.geteuid() != 0:
        pytest.fail("this test becomes another user with setpriv, which needs root")
    home = Path(tempfile.mkdtemp(prefix="not-root-"))  # pytest's own folders are root's only
    home.chmod(0o777)
    # The checkout may sit in a folder only root can enter (a fresh clone in a private temp
    # dir): the other user sees it through a bind mount in a mount namespace of its own.
    view = home / "repo"
    view.mkdir()
    python = Path(sys.executable)
    if python.is_relative_to(ROOT):
        python = view / python.relative_to(ROOT)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    engine_up = [str(python), "-m", "engine", "up", "specs/demo.yaml", "--yes",
                 "--state-dir", str(home / "state")]  # fmt: skip
    script = f"mount --bind {shlex.quote(str(ROOT))} {view} && cd {view} && exec " + shlex.join(
        [*as_nobody, *engine_up]
    )
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(view),
                 "NO_COLOR": "1", "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (
            1,
            "error: the Docker engine is installed but not running; start it "
            "(sudo systemctl start docker, or sudo dockerd &) and try again\n",
        )
        assert not (home / "state").exists()
    finally:
        shutil.rmtree(home)
