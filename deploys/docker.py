"""Docker Engine: from Docker's apt repository (docker-ce, the default) or the distribution
(docker.io), with log rotation and live-restore, enabled and running, and checked with
`docker info` at the end (the commonest failure is a Docker that installed but never started).

The daemon settings are written before the engine is installed, so a fresh engine starts
with them; changing them later restarts the engine (running containers survive with
live-restore). The admin user joins the docker group, so its own `docker` commands work.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import OperationError, StringCommand, deploy, operation
from pyinfra.facts.deb import DebArch
from pyinfra.facts.files import File
from pyinfra.facts.server import LinuxDistribution

from deploys.apt import packages, packages_facts
from deploys.facts import DockerVersion, FactAsk, Service, UserGroups
from deploys.support import (
    Commands,
    chained,
    changes,
    control_service,
    fact,
    paths_ask,
    read_ahead,
    write_files,
)
from engine.model import DockerInstall, DockerSource

DAEMON_JSON = "/etc/docker/daemon.json"
KEYRING = "/etc/apt/keyrings/docker.asc"
SOURCES = "/etc/apt/sources.list.d/docker.list"
DOCKER_CE = (
    "docker-ce",
    "docker-ce-cli",
    "containerd.io",
    "docker-buildx-plugin",
    "docker-compose-plugin",
)
# Docker's instructions remove these first: they conflict with its own packages.
DISTRO_CONFLICTS = (
    "docker.io",
    "docker-doc",
    "docker-compose",
    "podman-docker",
    "containerd",
    "runc",
)
DISTRO = ("docker.io",)
ANSWER_TIMEOUT_S = 60


@deploy("docker")
def docker(install: DockerInstall, *, admin: str) -> None:
    """Docker Engine from `install.source`, configured, running, and usable by `admin`."""
    read_ahead(docker_facts(install, admin=admin))
    daemon_config(name="Write the Docker daemon settings", install=install)
    if install.source is DockerSource.DOCKER_CE:
        packages(
            name="Install the tools for Docker's repository", present=("ca-certificates", "curl")
        )
        repository(name="Add Docker's apt repository")
        packages(
            name="Install Docker Engine (docker-ce)",
            present=DOCKER_CE,
            absent=DISTRO_CONFLICTS,
            recommends=True,
        )
    else:
        packages(name="Install Docker Engine (docker.io)", present=DISTRO, absent=DOCKER_CE)
    started(name="Run Docker now and at boot")
    docker_group(name=f"Let {admin} use Docker", user=admin)
    answers(name="Check that Docker answers")


def daemon_json(install: DockerInstall) -> str:
    """/etc/docker/daemon.json for `install`."""
    settings = {
        "live-restore": install.live_restore,
        "log-driver": "json-file",
        "log-opts": {"max-file": str(install.log_max_files), "max-size": install.log_max_size},
    }
    return json.dumps(settings, indent=2, sort_keys=True) + "\n"


def docker_facts(install: DockerInstall, *, admin: str) -> list[FactAsk]:
    """The facts the operations of `docker` ask for (see deploys.support.read_ahead)."""
    repository: list[FactAsk] = [
        *packages_facts(),
        (LinuxDistribution, {}),
        (File, {"path": KEYRING}),
        (DebArch, {}),
        paths_ask([SOURCES]),
    ]
    return [
        paths_ask([DAEMON_JSON]),
        (Service, {"service": "docker"}),
        *(repository if install.source is DockerSource.DOCKER_CE else []),
        *packages_facts(),
        (Service, {"service": "docker"}),
        *([(UserGroups, {"user": admin})] if admin != "root" else []),
        (DockerVersion, {}),
    ]


@operation()
def daemon_config(install: DockerInstall) -> Commands:
    """Write daemon.json; restart a running engine when it changed (new settings need it)."""
    put = write_files([(DAEMON_JSON, daemon_json(install), "644")])
    if not put:
        host.noop("the Docker daemon settings are as wanted")
        return
    yield from chained([*put, *control_service("docker", restarted=True)])


@operation()
def started() -> Commands:
    """Docker runs now and starts at every boot."""
    commands = control_service("docker", running=True, enabled=True)
    if not commands:
        host.noop("Docker runs and starts at boot")
    yield from chained(commands)


@operation()
def repository() -> Commands:
    """Docker's signing key and apt source for this distribution, release and architecture."""
    distro = fact(LinuxDistribution)
    name = distro["name"]
    codename = distro["release_meta"].get("VERSION_CODENAME")
    if name not in ("Debian", "Ubuntu") or not codename:
        release = f"{name} {codename}" if codename else str(name or "this system")
        raise OperationError(
            f"Docker's repository has no packages for {release}; use install.docker.source: distro"
        )
    base = f"https://download.docker.com/linux/{str(name).lower()}"
    commands = []
    if not fact(File, path=KEYRING):
        commands += [
            StringCommand("install -d -m 0755 /etc/apt/keyrings"),
            StringCommand(
                f"curl -fsSL --retry 3 --connect-timeout 20 {base}/gpg -o {KEYRING}.tmp"
                f" && chmod 0644 {KEYRING}.tmp && mv {KEYRING}.tmp {KEYRING}"
            ),
        ]
    arch = fact(DebArch)
    line = f"deb [arch={arch} signed-by={KEYRING}] {base} {codename} stable\n"
    commands += write_files([(SOURCES, line, "644")])
    if not commands:
        host.noop(f"Docker's repository for {name} {codename} is set up")
    yield from chained(commands)


@operation()
def docker_group(user: str) -> Commands:
    """Add `user` to the docker group, so its own `docker` commands work without sudo."""
    if user == "root":
        host.noop("root needs no group to use Docker")
        return
    if "docker" in fact(UserGroups, user=user):
        host.noop(f"{user} is in the docker group")
        return
    changes(UserGroups)
    yield StringCommand("usermod -aG docker", shlex.quote(user))


@operation()
def answers() -> Commands:
    """Fail unless the engine answers `docker info` (waiting a while for one just started)."""
    version = fact(DockerVersion)
    if version:
        host.noop(f"Docker {version} answers")
        return
    yield StringCommand(
        f"i=0; while [ $i -lt {ANSWER_TIMEOUT_S} ]; do"
        " docker info >/dev/null 2>&1 && exit 0; sleep 1; i=$((i+1)); done;"
        f" echo 'Docker did not answer docker info within {ANSWER_TIMEOUT_S} s:' >&2;"
        " docker info >/dev/null"
    )
