"""A copied agent image, for real: the engine sends it to one server of the fleet, the others
fetch it from each other over SSH (engine/install/sharing.py, deploys/agent.py).

Four Debian 12 servers (golden-image containers booted with cloud-init) on the test's bridge,
which stands in for the fleet's private network. Three are installed at once; the fourth is
installed after the peer it would ask first was made to keep a wrong archive.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from deploys.agent import PARTIAL, keep_script, load_script
from engine.install.model import HostResult, InstallHost, InstallSettings
from engine.install.runner import install_hosts
from engine.install.sharing import PeerList, fleet_sharing, image_archives, ranked, saved_archive
from engine.model import DockerInstall, DockerSource, Install, SystemInstall
from engine.providers.local.dockerd import PrivateDaemon
from tests.support.targets import Target, agent_run, boot_targets, make_ssh_key, remove_targets

KEPT = "/var/lib/fleet-image/agent.tar.gz"
DOCKER = "/etc/init.d/docker"
INSTALL = Install(
    docker=DockerInstall(source=DockerSource.DISTRO),
    system=SystemInstall(unattended_upgrades=False),
)


@dataclass(frozen=True)
class Fleet:
    servers: dict[str, Target]
    hosts: dict[str, InstallHost]
    settings: InstallSettings
    state: Path
    logs: Path


@pytest.fixture(scope="module")
def fleet(
    docker_client: Any,
    golden_image: str,
    busybox_image: str,
    dockerd: PrivateDaemon,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    key = make_ssh_key(tmp_path_factory.mktemp("ssh"))
    names = [f"share-{n}-{secrets.token_hex(2)}" for n in range(1, 5)]
    targets = boot_targets(
        docker_client, golden_image, names, key, tmp_path_factory.mktemp("seeds")
    )
    try:
        agent = agent_run(
            busybox_image, token="share-token-" + secrets.token_hex(8), network="host"
        )
        yield Fleet(
            servers={t.name: t for t in targets},
            hosts={
                t.name: replace(t.host(key, agent=agent), peer_address=t.address) for t in targets
            },
            settings=InstallSettings(
                install=INSTALL,
                control_plane=(str(dockerd.subnet.network_address + 1),),
                docker_url=dockerd.url,
            ),
            state=tmp_path_factory.mktemp("state"),
            logs=tmp_path_factory.mktemp("logs"),
        )
    finally:
        remove_targets(docker_client, targets)


def _install(fleet: Fleet, names: list[str]) -> dict[str, HostResult]:
    results = install_hosts(
        [fleet.hosts[name] for name in names],
        fleet.settings,
        log_dir=fleet.logs,
        sharing=fleet_sharing(fleet.state, "share"),
    )
    failed = {r.name: r.error for r in results if not r.ok}
    assert not failed
    return {r.name: r for r in results}


def _source(fleet: Fleet, name: str) -> str:
    """Where the host's log says its image came from ("the engine" or a server's name)."""
    (line,) = [
        line for line in (fleet.logs / f"{name}.log").read_text().splitlines() if ") from " in line
    ]
    return line.rsplit(") from ", 1)[1]


def _peers(fleet: Fleet) -> list[str]:
    archive = _archive(fleet)
    return sorted(
        p.name for p in PeerList(fleet_sharing(fleet.state, "share"), archive.image_id).peers()
    )


def _archive(fleet: Fleet) -> Any:
    image = next(iter(fleet.hosts.values())).agent
    assert image is not None
    return image_archives(fleet.settings.docker_url, [image.image])[image.image]


@pytest.fixture(scope="module")
def first_three(fleet: Fleet) -> dict[str, HostResult]:
    return _install(fleet, sorted(fleet.servers)[:3])


def test_the_engine_sends_the_image_once_and_the_others_fetch_it_from_a_server(
    fleet: Fleet, first_three: dict[str, HostResult]
) -> None:
    sources = {name: _source(fleet, name) for name in first_three}
    assert sorted(sources.values()).count("the engine") == 1
    for source in sources.values():
        assert source == "the engine" or source in first_three
    assert _peers(fleet) == sorted(first_three)


def test_every_server_keeps_the_engines_archive_and_runs_the_image(
    fleet: Fleet, first_three: dict[str, HostResult]
) -> None:
    archive = _archive(fleet)
    sha256 = saved_archive(fleet.settings.docker_url, archive)
    for name in first_three:
        server = fleet.servers[name]
        assert server.run("sha256sum", KEPT).split()[0] == sha256
        image = server.run("docker", "image", "inspect", "--format", "{{.Id}}", archive.reference)
        assert image.strip() == archive.image_id
        assert "fleet-agent" in server.run("docker", "ps", "--format", "{{.Names}}")


def test_the_image_user_can_only_read_the_archive(
    fleet: Fleet, first_three: dict[str, HostResult]
) -> None:
    sharing = fleet_sharing(fleet.state, "share")
    server = fleet.servers[sorted(first_three)[0]]
    known = fleet.state / "known_hosts"
    known.write_text(f"{server.address} {server.host_key}\n")
    ssh = [
        *("ssh", "-F", "/dev/null", "-i", sharing.key, "-o", "BatchMode=yes"),
        *("-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"),
        f"fleet-image@{server.address}",
    ]
    # Whatever it asks to run, it gets the archive.
    sent = subprocess.run([*ssh, "id; cat /etc/shadow"], capture_output=True, timeout=60)
    assert sent.returncode == 0
    assert hashlib.sha256(sent.stdout).hexdigest() == saved_archive(
        fleet.settings.docker_url, _archive(fleet)
    )
    forward = subprocess.run(
        [*ssh, "-N", "-o", "ExitOnForwardFailure=yes", "-L", "0:127.0.0.1:22"],
        capture_output=True,
        timeout=60,
    )
    assert forward.returncode != 0


def test_a_peer_sending_a_wrong_image_is_dropped_and_the_next_one_used(
    fleet: Fleet, first_three: dict[str, HostResult]
) -> None:
    (last,) = sorted(set(fleet.servers) - set(first_three))
    sharing = fleet_sharing(fleet.state, "share")
    peers = PeerList(sharing, _archive(fleet).image_id)
    bad = ranked(peers.peers(), last)[0].name
    fleet.servers[bad].run("sh", "-c", f"head -c 100000 /dev/urandom > {KEPT}")
    _install(fleet, [last])
    log = (fleet.logs / f"{last}.log").read_text()
    assert f"could not fetch the image from {bad} (its sha256 is not that of the archive" in log
    assert _source(fleet, last) not in (bad, "the engine")
    assert _peers(fleet) == sorted(set(fleet.servers) - {bad})
    assert "PRIVATE KEY" not in log
    assert Path(sharing.key).read_text().splitlines()[1] not in log
    leftovers = fleet.servers[last].run("sh", "-c", "grep -rl 'PRIVATE KEY' /tmp /root || true")
    assert leftovers.strip() == ""


def test_a_copy_that_arrives_before_docker_answers_is_kept_for_the_image_step(
    fleet: Fleet, first_three: dict[str, HostResult]
) -> None:
    """The copy sent ahead may arrive before the install has Docker running: it is checked
    and kept, and the image step loads it (deploys.agent)."""
    name = sorted(first_three)[0]
    server = fleet.servers[name]
    archive = _archive(fleet)
    sha256 = saved_archive(fleet.settings.docker_url, archive)
    server.run("docker", "rm", "--force", "fleet-agent")
    server.run("docker", "image", "rm", archive.reference)
    # The engine's archive, as a copy leaves it before its check (whatever KEPT holds now).
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        tar.add(archive.path, arcname=posixpath.basename(PARTIAL))
    assert server.container.put_archive(posixpath.dirname(PARTIAL), packed.getvalue())
    server.run(DOCKER, "stop")
    try:
        keep = keep_script(archive.reference, archive.image_id, sha256)
        assert server.run("sh", "-ec", keep) == "kept\n"
        assert server.run("sha256sum", KEPT).split()[0] == sha256
    finally:
        server.run(DOCKER, "start")
    # Debian's init script starts Docker in the background: wait (up to 30 s) until it answers.
    server.run(
        "sh",
        "-c",
        "for i in $(seq 300); do docker version >/dev/null 2>&1 && exit; sleep 0.1; done; exit 1",
    )
    server.run("sh", "-c", load_script(archive.reference, archive.image_id))
    image = server.run("docker", "image", "inspect", "--format", "{{.Id}}", archive.reference)
    assert image.strip() == archive.image_id
    again = _install(fleet, [name])[name]
    assert "agent | Deliver the agent image" not in again.changed
    assert "agent | Run the agent" in again.changed
