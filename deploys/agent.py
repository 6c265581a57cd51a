"""The agent: its files, its image, its container, and a wait for its health check.

The image comes from a registry when the fleet names one (install.agent.image); otherwise the
engine saves its local image once and each server that lacks that image id gets the archive
streamed over the SSH connection already open into `docker load` (no registry needed). The
container is recreated only when its image, options or files changed, and runs with a restart
policy; a hash of what it was started with is kept in a label to tell.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, deploy, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.connectors.util import make_unix_command_for_host
from pyinfra.operations import files

from deploys.facts import RUN_HASH_LABEL, CommandSucceeds, DockerContainer, DockerImageId
from deploys.support import Commands
from engine.install.model import AgentRun, ImageArchive

CHUNK_BYTES = 1 << 20


@deploy("agent")
def agent(run: AgentRun, *, pull: bool, archive: ImageArchive | None) -> None:
    """Deliver, (re)start and check the agent described by `run`; `pull` its image from a
    registry, or load the engine's `archive` of it."""
    parents = {posixpath.dirname(f.path) for f in run.files}
    for directory in sorted(parents | set(run.directories)):
        files.directory(name=f"Create {directory}", path=directory, mode="700")
    for item in run.files:
        files.put(
            name=f"Write {item.path}",
            src=StringIO(item.content),
            dest=item.path,
            mode=item.mode,
        )
    image(name="Deliver the agent image", reference=run.image, pull=pull, archive=archive)
    container(name="Run the agent", run=run)
    healthy(name="Wait for the agent's health check", run=run)


@operation()
def image(reference: str, pull: bool, archive: ImageArchive | None) -> Commands:
    """`docker pull` a registry image, or stream the engine's archive into `docker load`."""
    current = host.get_fact(DockerImageId, reference=reference)
    if pull:
        if current:
            host.noop(f"{reference} is present")
            return
        yield StringCommand("docker pull", shlex.quote(reference))
        return
    if archive is None:
        raise OperationError(f"no archive of {reference} to copy, and no registry image to pull")
    if current == archive.image_id:
        host.noop(f"{reference} ({archive.image_id[:19]}) is loaded")
        return
    yield FunctionCommand(load_archive, (archive.path,), {})


def load_archive(state: State, host: Host, path: str) -> bool:
    """Stream the image archive at `path` over the SSH connection into `docker load`."""
    command = make_unix_command_for_host(
        state, host, StringCommand("docker load"), _sudo=state.config.SUDO
    )
    client: Any = host.connector.client
    channel = client.get_transport().open_session()
    channel.exec_command(command.get_raw_value())
    try:
        with Path(path).open("rb") as archive:
            while chunk := archive.read(CHUNK_BYTES):
                channel.sendall(chunk)
        channel.shutdown_write()
    except OSError:
        pass  # docker load stopped reading: its exit status and stderr below say why
    output = channel.makefile("rb").read().decode(errors="replace")
    errors = channel.makefile_stderr("rb").read().decode(errors="replace")
    status = channel.recv_exit_status()
    channel.close()
    if status != 0:
        logger.error(f"{host.print_prefix}docker load failed (exit {status}): {errors.strip()}")
        return False
    logger.info(f"{host.print_prefix}{output.strip()}")
    return True


def run_hash(run: AgentRun) -> str:
    """A hash of everything the container is started with (file contents by their hash)."""
    document = {
        "argv": list(run.argv),
        "files": [
            [f.path, f.mode, hashlib.sha256(f.content.encode()).hexdigest()] for f in run.files
        ],
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


@operation()
def container(run: AgentRun) -> Commands:
    """Run the agent container, recreating it when its image, command or files changed."""
    wanted = run_hash(run)
    image_id = host.get_fact(DockerImageId, reference=run.image)
    current = host.get_fact(DockerContainer, container=run.name)
    name = shlex.quote(run.name)
    if current and current["image"] == image_id and current["run_hash"] == wanted:
        if current["running"]:
            host.noop(f"{run.name} is running")
            return
        yield StringCommand("docker start", name)
        return
    if current:
        yield StringCommand("docker rm -f", name)
    docker, verb, *rest = run.argv
    label = f"{RUN_HASH_LABEL}={wanted}"
    yield StringCommand(shlex.join([docker, verb, "--label", label, *rest]))


@operation()
def healthy(run: AgentRun) -> Commands:
    """Wait until the agent's health command succeeds; fail with its last log lines if not."""
    if host.get_fact(CommandSucceeds, argv=run.health):
        host.noop(f"{run.name} answers its health check")
        return
    check = shlex.join(run.health)
    tries = run.health_timeout_s * 2
    yield StringCommand(
        f"i=0; while [ $i -lt {tries} ]; do {check} >/dev/null 2>&1 && exit 0;"
        " sleep 0.5; i=$((i+1)); done;"
        f" echo '{run.name} did not pass its health check within {run.health_timeout_s} s;"
        " its last log lines:' >&2;"
        f" docker logs --tail 20 {shlex.quote(run.name)} >&2 2>&1; exit 1"
    )
