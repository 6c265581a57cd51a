"""The agent: its files, its image, its container, and a wait for its health check.

The image comes from a registry when the fleet names one (install.agent.image); otherwise the
engine saves its local image once, and a server that lacks that image id gets the archive from
another server of the fleet that keeps it or, when none does, from the engine over the SSH
connection already open (engine/install/sharing.py says who gets it from where). Either way the
server writes it to KEPT, checks its sha256 against the engine's, loads it, checks the image id,
and keeps it for the servers after it: the user IMAGE_USER may log in with the fleet's image key
and do nothing but read it (`restrict,command=...`). The container is recreated only when its
image, options or files changed, and runs with a restart policy; a hash of what it was started
with is kept in a label to tell.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, deploy, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.connectors.util import make_unix_command_for_host

from deploys.facts import (
    RUN_HASH_LABEL,
    CommandSucceeds,
    DockerContainer,
    DockerImageId,
    FactAsk,
)
from deploys.support import (
    Commands,
    chained,
    changes,
    fact,
    paths_ask,
    read_ahead,
    write_files,
)
from engine.install.model import AgentRun, ImageDelivery, ImagePeer
from engine.install.sharing import PeerList, deliver, pinned_known_hosts, saved_archive

CHUNK_BYTES = 1 << 20
KEEP_DIR = "/var/lib/fleet-image"  # IMAGE_USER's home: root's, readable, not writable by it
KEPT = f"{KEEP_DIR}/agent.tar.gz"
PARTIAL = f"{KEEP_DIR}/agent.tar.gz.partial"
IMAGE_USER = "fleet-image"
PEER_CONNECT_TIMEOUT_S = 5


@deploy("agent")
def agent(run: AgentRun, *, pull: bool, delivery: ImageDelivery | None) -> None:
    """Deliver, (re)start and check the agent described by `run`; `pull` its image from a
    registry, or deliver the engine's archive of it (`delivery`)."""
    read_ahead(agent_facts(run, pull=pull, delivery=delivery))
    if run.files or run.directories:
        host_files(name="Write the agent's files", run=run)
    image(name="Deliver the agent image", reference=run.image, pull=pull, delivery=delivery)
    # A delivered archive's image id is known: the image operation checked it as it loaded it.
    delivered = None if pull or delivery is None else delivery.archive.image_id
    container(name="Run the agent", run=run, image_id=delivered)
    healthy(name="Wait for the agent's health check", run=run)


def agent_facts(run: AgentRun, *, pull: bool, delivery: ImageDelivery | None) -> list[FactAsk]:
    """The facts the operations of `agent` ask for (see deploys.support.read_ahead)."""
    files = [paths_ask([f.path for f in run.files], _folders(run))]
    image_id: list[FactAsk] = [(DockerImageId, {"reference": run.image})]
    return [
        *(files if run.files or run.directories else []),
        *image_id,
        *(image_id if pull or delivery is None else []),
        (DockerContainer, {"container": run.name}),
        (CommandSucceeds, {"argv": run.health}),
    ]


def _folders(run: AgentRun) -> list[str]:
    """The agent's folders: those it names and those of its files."""
    return sorted({posixpath.dirname(f.path) for f in run.files} | set(run.directories))


@operation()
def host_files(run: AgentRun) -> Commands:
    """The agent's folders on the server (private: 700) and its files, with their modes."""
    commands = write_files(
        [(f.path, f.content, f.mode) for f in run.files], directories=_folders(run)
    )
    if not commands:
        host.noop("the agent's files are as wanted")
    changes(paths=[*_folders(run), *(f.path for f in run.files)])
    yield from commands


@operation()
def image(reference: str, pull: bool, delivery: ImageDelivery | None) -> Commands:
    """`docker pull` a registry image, or deliver the engine's archive of it (`delivery`)."""
    current = fact(DockerImageId, reference=reference)
    changes(DockerImageId)
    if pull:
        if current:
            host.noop(f"{reference} is present")
            return
        yield StringCommand("docker pull", shlex.quote(reference))
        return
    if delivery is None:
        raise OperationError(f"no archive of {reference} to copy, and no registry image to pull")
    if current == delivery.archive.image_id:
        host.noop(f"{reference} ({delivery.archive.image_id[:19]}) is loaded")
        return
    yield FunctionCommand(deliver_image, (delivery,), {})


def deliver_image(state: State, host: Host, delivery: ImageDelivery) -> bool:
    """Put the image of `delivery` on `host`: from a peer that keeps it, else from the engine."""
    archive = delivery.archive
    sha256 = saved_archive(delivery.docker_url, archive)
    public_key = delivery.sharing.public_key if delivery.sharing else ""
    keep = keep_script(archive.reference, archive.image_id, sha256, public_key)

    def from_engine() -> str:
        with Path(archive.path).open("rb") as source:
            return _remote(
                state, host, receive_script(keep), iter(lambda: source.read(CHUNK_BYTES), b"")
            )

    if delivery.sharing is None:
        error = from_engine()
        source = "from the engine"
    else:
        sharing = delivery.sharing
        key = Path(sharing.key).read_bytes()

        def from_peer(peer: ImagePeer) -> str:
            return _remote(state, host, fetch_script(peer, keep), iter((key,)))

        def say(message: str) -> None:
            logger.warning(f"{host.print_prefix}{message}")

        try:
            source = deliver(
                PeerList(sharing, archive.image_id),
                delivery.me,
                from_peer=from_peer,
                from_engine=from_engine,
                say=say,
            )
            error = ""
        except RuntimeError as exc:
            error = str(exc)
    if error:
        logger.error(f"{host.print_prefix}could not deliver {archive.reference}: {error}")
        return False
    logger.info(f"{host.print_prefix}{archive.reference} ({archive.image_id[:19]}) {source}")
    return True


def keep_script(reference: str, image_id: str, sha256: str, public_key: str) -> str:
    """Shell that checks the archive at PARTIAL (its sha256), loads it, checks the image id,
    and keeps it at KEPT; with `public_key`, for IMAGE_USER to send to the fleet's servers."""
    lines = [
        f"echo {shlex.quote(f'{sha256}  {PARTIAL}')} | sha256sum --check --status"
        f" || {{ rm -f {PARTIAL}; echo 'its sha256 is not that of the archive of the engine' >&2;"
        " exit 3; }",
        f"docker load --quiet --input {PARTIAL} >/dev/null",
        "test"
        f' "$(docker image inspect --format "{{{{.Id}}}}" {shlex.quote(reference)})" = {image_id}'
        f" || {{ echo 'the loaded image is not {image_id[:19]}' >&2; exit 4; }}",
        f"chmod 644 {PARTIAL}",
        f"mv {PARTIAL} {KEPT}",
    ]
    if public_key:
        entry = f'restrict,command="cat {KEPT}" {public_key}'
        lines += [
            f"id -u {IMAGE_USER} >/dev/null 2>&1 || useradd --system --no-create-home"
            f" --home-dir {KEEP_DIR} --shell /bin/sh --password '*' {IMAGE_USER}",
            f"mkdir -p -m 755 {KEEP_DIR}/.ssh",
            f"echo {shlex.quote(entry)} > {KEEP_DIR}/.ssh/authorized_keys",
        ]
    return "\n".join(lines) + "\n"


def receive_script(keep: str) -> str:
    """Shell that writes the archive it reads on stdin to PARTIAL, then runs `keep`."""
    return f"set -e\numask 022\nmkdir -p {KEEP_DIR}\ncat > {PARTIAL}\n{keep}"


def fetch_script(peer: ImagePeer, keep: str) -> str:
    """Shell that reads the fleet's image key on stdin, fetches `peer`'s archive to PARTIAL
    with it (`peer`'s host keys pinned), forgets the key, then runs `keep`."""
    pinned = pinned_known_hosts(peer.address, peer.port, peer.host_keys)
    ssh = (
        'ssh -T -F /dev/null -i "$d/key" -o UserKnownHostsFile="$d/known_hosts"'
        " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes"
        f" -o ConnectTimeout={PEER_CONNECT_TIMEOUT_S} -p {peer.port}"
        f" {shlex.quote(f'{IMAGE_USER}@{peer.address}')}"
    )
    return (
        "set -e\n"
        "umask 077\n"
        "d=$(mktemp -d)\n"
        "trap 'rm -rf \"$d\"' EXIT\n"
        'cat > "$d/key"\n'
        f'printf %s {shlex.quote(pinned)} > "$d/known_hosts"\n'
        "umask 022\n"
        f"mkdir -p {KEEP_DIR}\n"
        f"{ssh} > {PARTIAL}\n"
        'rm -rf "$d"\n'
        f"{keep}"
    )


def _remote(state: State, host: Host, script: str, stdin: Iterator[bytes]) -> str:
    """Run `script` (as root) over the host's SSH connection with `stdin` as its input; ""
    or what went wrong (its last lines of stderr)."""
    command = make_unix_command_for_host(
        state, host, StringCommand("sh -c", shlex.quote(script)), _sudo=state.config.SUDO
    )
    client: Any = host.connector.client
    channel = client.get_transport().open_session()
    channel.exec_command(command.get_raw_value())
    try:
        for chunk in stdin:
            channel.sendall(chunk)
        channel.shutdown_write()
    except OSError:
        pass  # the script stopped reading: its exit status and stderr below say why
    channel.makefile("rb").read()
    errors = channel.makefile_stderr("rb").read().decode(errors="replace")
    status = channel.recv_exit_status()
    channel.close()
    if status == 0:
        return ""
    return " ".join(errors.strip().splitlines()[-3:]) or f"exit status {status}"


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
def container(run: AgentRun, image_id: str | None = None) -> Commands:
    """Run the agent container, recreating it when its image, command or files changed;
    `image_id` is the id its image has, when known (else it is read from the server)."""
    wanted = run_hash(run)
    image_id = image_id or fact(DockerImageId, reference=run.image)
    current = fact(DockerContainer, container=run.name)
    name = shlex.quote(run.name)
    if current and current["image"] == image_id and current["run_hash"] == wanted:
        if current["running"]:
            host.noop(f"{run.name} is running")
            return
        yield StringCommand("docker start", name)
        return
    docker, verb, *rest = run.argv
    label = f"{RUN_HASH_LABEL}={wanted}"
    create = StringCommand(shlex.join([docker, verb, "--label", label, *rest]))
    yield from chained([StringCommand("docker rm -f", name), create] if current else [create])


@operation()
def healthy(run: AgentRun) -> Commands:
    """Wait until the agent's health command succeeds; fail with its last log lines if not."""
    if fact(CommandSucceeds, argv=run.health):
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
