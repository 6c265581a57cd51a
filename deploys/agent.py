"""The agent: its files, its image, its container, and a wait for its health check.

The image comes from a registry when the fleet names one (install.agent.image); otherwise the
engine saves its local image once, and a server that lacks that image id gets the archive from
another server of the fleet that keeps it or, when none does, from the engine over the SSH
connection already open (engine/install/sharing.py says who gets it from where). Either way the
server writes it to KEPT, checks its sha256 against the engine's, keeps it for the servers after
it (the user IMAGE_USER may log in with the fleet's image key and do nothing but read it:
`restrict,command=...`), loads it and checks the image id.

A copied image is sent ahead: from the install's first moment, on a thread of its own
(`Sending`) and a channel of its own beside the commands of the baseline and Docker, which
mostly wait for round trips. The copy needs no Docker; it is loaded at once when Docker
answers, else by the image's own step, which waits for the copy. So a cloud server's upload
overlaps the baseline's work (`apt-get install`; on a slow uplink its commands wait behind the
image's bytes, up to sshd's channel window), and many servers installed at once do not all load
at the same moment. A dry run copies nothing. The container is recreated only when its image,
options or files changed, and runs with a restart policy; a hash of what it was started with
is kept in a label to tell.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paramiko.common import DEFAULT_WINDOW_SIZE
from pyinfra import host, logger
from pyinfra.api import FunctionCommand, OperationError, StringCommand, deploy, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.connectors.util import make_unix_command_for_host
from pyinfra.context import ctx_host, ctx_state

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
PEER_CONNECT_TRIES = 3


def send_ahead(delivery: ImageDelivery) -> None:
    """Start copying the image of `delivery` to the current host now, beside the commands of
    the operations; `agent`'s image step waits for it. For a run that executes the operations
    it adds (not a dry run)."""
    send_now(ctx_state.get(), ctx_host.get(), delivery)


def send_now(state: State, host: Host, delivery: ImageDelivery) -> bool:
    """Start copying the image of `delivery` to `host` (`Sending`), for its image step."""
    _SENDING[host] = Sending.start(state, host, delivery)
    return True


@deploy("agent")
def agent(
    run: AgentRun, *, pull: bool, delivery: ImageDelivery | None, ahead: bool = False
) -> None:
    """Deliver, (re)start and check the agent described by `run`; `pull` its image from a
    registry, or deliver the engine's archive of it (`delivery`), sent `ahead` (`send_ahead`)
    or else by the image step itself."""
    read_ahead(agent_facts(run, pull=pull, delivery=delivery, ahead=ahead))
    if run.files or run.directories:
        host_files(name="Write the agent's files", run=run)
    image(name="Deliver the agent image", reference=run.image, pull=pull, delivery=delivery)
    # A delivered archive's image id is known: the image operation checked it as it loaded it.
    delivered = None if pull or delivery is None else delivery.archive.image_id
    container(name="Run the agent", run=run, image_id=delivered)


def agent_facts(
    run: AgentRun, *, pull: bool, delivery: ImageDelivery | None, ahead: bool = False
) -> list[FactAsk]:
    """The facts the operations of `agent` ask for (see deploys.support.read_ahead); an image
    sent `ahead` says itself whether the server had it."""
    files = [paths_ask([f.path for f in run.files], _folders(run))]
    image_id: list[FactAsk] = [(DockerImageId, {"reference": run.image})]
    return [
        *(files if run.files or run.directories else []),
        *(image_id if not ahead else []),
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
    yield from chained(commands)


@operation()
def image(reference: str, pull: bool, delivery: ImageDelivery | None) -> Commands:
    """`docker pull` a registry image, or deliver the engine's archive of it (`delivery`):
    wait for the copy sent ahead, when one was, and load it if it is not loaded yet."""
    changes(DockerImageId)
    sending = _SENDING.pop(ctx_host.get(), None)
    if sending is not None:
        yield from _sent_ahead(sending)
        return
    current = fact(DockerImageId, reference=reference)
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
    # Nothing was sent ahead: send it now, and wait for it. (A dry run stops at the command,
    # and runs none.)
    yield FunctionCommand(send_now, (delivery,), {})
    sending = _SENDING.pop(ctx_host.get(), None)
    if sending is not None:
        yield from _sent_ahead(sending)


def _sent_ahead(sending: Sending) -> Commands:
    """The image step's commands once the copy `sending` is done: none when the server had
    the image, a load when the copy could not load it."""
    reference, image_id = sending.delivery.archive.reference, sending.delivery.archive.image_id
    if not sending.done():
        logger.info(f"{host.print_prefix}waiting for the copy of {reference} to arrive")
    try:
        sent = sending.result()
    except RuntimeError as exc:
        raise OperationError(f"could not deliver {reference}: {exc}") from None
    if not sent.source:
        host.noop(f"{reference} ({image_id[:19]}) is loaded")
    elif sent.loaded:
        yield FunctionCommand(_loaded, (), {})
    else:
        yield StringCommand("sh -c", shlex.quote(load_script(reference, image_id)))


def _loaded(state: State, host: Host) -> bool:
    """The step of an image that was copied and loaded ahead: it changed the server."""
    return True


@dataclass(frozen=True, slots=True)
class Sent:
    """What copying an image did: where it came from ("" when the server had it loaded), and
    whether the server's Docker has loaded it (else it is at KEPT, checked, to be loaded)."""

    source: str
    loaded: bool


# The copies sent ahead, per host object, until the image step takes its own.
_SENDING: dict[Any, Sending] = {}


class Sending:
    """The image of `delivery` being copied to a host (`copy_image`) on a thread of its own,
    over the host's SSH connection, beside its other commands; `done` gives what the copy did.
    A daemon thread: when the install fails before the image step, closing the connection
    ends it."""

    def __init__(self, delivery: ImageDelivery, done: Future[Sent]) -> None:
        self.delivery = delivery
        self._done = done

    @classmethod
    def start(cls, state: State, host: Host, delivery: ImageDelivery) -> Sending:
        done: Future[Sent] = Future()

        def copy() -> None:
            try:
                done.set_result(copy_image(state, host, delivery))
            except Exception as exc:  # the image step reports it, as its own failure
                done.set_exception(RuntimeError(str(exc) or type(exc).__name__))

        threading.Thread(target=copy, name="agent-image", daemon=True).start()
        return cls(delivery, done)

    def done(self) -> bool:
        return self._done.done()

    def result(self) -> Sent:
        """What the copy did, once it is done; RuntimeError when it failed."""
        return self._done.result()


def copy_image(state: State, host: Host, delivery: ImageDelivery) -> Sent:
    """Put the archive of `delivery` on `host`, unless its Docker has the image: from a peer
    that keeps it, else from the engine; load it when Docker answers. RuntimeError when it
    could not be copied."""
    archive = delivery.archive
    image_id = DockerImageId()
    found = _remote(state, host, image_id.command(reference=archive.reference))
    if found.error:
        raise RuntimeError(f"could not look for it on the server: {found.error}")
    if image_id.process(found.out.splitlines()) == archive.image_id:
        return Sent(source="", loaded=True)
    sha256 = saved_archive(delivery.docker_url, archive)
    ready = ready_script(delivery.sharing.public_key if delivery.sharing else "")
    keep = keep_script(archive.reference, archive.image_id, sha256)
    loaded = False

    def copied(reply: _Reply) -> str:
        nonlocal loaded
        loaded = reply.out.strip() == "loaded"
        return reply.error

    def from_engine() -> str:
        with Path(archive.path).open("rb") as source:
            chunks = iter(lambda: source.read(CHUNK_BYTES), b"")
            return copied(_remote(state, host, receive_script(ready, keep), chunks))

    if delivery.sharing is None:
        error = from_engine()
        if error:
            raise RuntimeError(error)
        source = "from the engine"
    else:
        sharing = delivery.sharing
        key = Path(sharing.key).read_bytes()

        def from_peer(peer: ImagePeer) -> str:
            return copied(_remote(state, host, fetch_script(peer, ready, keep), (key,)))

        def say(message: str) -> None:
            logger.warning(f"{host.print_prefix}{message}")

        source = deliver(
            PeerList(sharing, archive.image_id),
            delivery.me,
            from_peer=from_peer,
            from_engine=from_engine,
            say=say,
        )
    logger.info(f"{host.print_prefix}{archive.reference} ({archive.image_id[:19]}) {source}")
    if not loaded:
        logger.info(f"{host.print_prefix}Docker did not answer yet: the image step loads it")
    return Sent(source=source, loaded=loaded)


def ready_script(public_key: str) -> str:
    """Shell that makes KEEP_DIR and, with `public_key`, lets IMAGE_USER in with it to send
    the archive kept there to the fleet's servers."""
    lines = ["umask 022", f"mkdir -p {KEEP_DIR}"]
    if public_key:
        entry = f'restrict,command="cat {KEPT}" {public_key}'
        lines += [
            f"id -u {IMAGE_USER} >/dev/null 2>&1 || useradd --system --no-create-home"
            f" --home-dir {KEEP_DIR} --shell /bin/sh --password '*' {IMAGE_USER}",
            f"mkdir -p -m 755 {KEEP_DIR}/.ssh",
            f"echo {shlex.quote(entry)} > {KEEP_DIR}/.ssh/authorized_keys",
        ]
    return "\n".join(lines) + "\n"


def keep_script(reference: str, image_id: str, sha256: str) -> str:
    """Shell that checks the archive at PARTIAL (its sha256) and keeps it at KEPT; then, when
    the server's Docker answers, loads it, checks the image id and prints "loaded" (else
    "kept": the image step loads it)."""
    return (
        f"echo {shlex.quote(f'{sha256}  {PARTIAL}')} | sha256sum --check --status"
        f" || {{ rm -f {PARTIAL}; echo 'its sha256 is not that of the archive of the engine' >&2;"
        " exit 3; }\n"
        f"chmod 644 {PARTIAL}\n"
        f"mv {PARTIAL} {KEPT}\n"
        f"if docker load --quiet --input {KEPT} >/dev/null 2>&1; then\n"
        f"{_id_check(reference, image_id)}\n"
        "echo loaded\n"
        "else echo kept; fi\n"
    )


def load_script(reference: str, image_id: str) -> str:
    """Shell that loads the archive kept at KEPT and checks the image id."""
    return (
        f"set -e\ndocker load --quiet --input {KEPT} >/dev/null\n{_id_check(reference, image_id)}\n"
    )


def _id_check(reference: str, image_id: str) -> str:
    """Shell that fails unless `reference` names the image `image_id` in the server's Docker."""
    inspect = f'docker image inspect --format "{{{{.Id}}}}" {shlex.quote(reference)}'
    return (
        f'[ "$({inspect})" = {image_id} ]'
        f" || {{ echo 'the loaded image is not {image_id[:19]}' >&2; exit 4; }}"
    )


def receive_script(ready: str, keep: str) -> str:
    """Shell that runs `ready`, writes the archive it reads on stdin to PARTIAL, then runs
    `keep`."""
    return f"set -e\n{ready}cat > {PARTIAL}\n{keep}"


def fetch_script(peer: ImagePeer, ready: str, keep: str) -> str:
    """Shell that runs `ready`, reads the fleet's image key on stdin, fetches `peer`'s archive
    to PARTIAL with it (`peer`'s host keys pinned), forgets the key, then runs `keep`. A peer
    whose sshd its own install is reloading is tried again (ConnectionAttempts, a second
    apart)."""
    pinned = pinned_known_hosts(peer.address, peer.port, peer.host_keys)
    ssh = (
        'ssh -T -F /dev/null -i "$d/key" -o UserKnownHostsFile="$d/known_hosts"'
        " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes"
        f" -o ConnectTimeout={PEER_CONNECT_TIMEOUT_S} -o ConnectionAttempts={PEER_CONNECT_TRIES}"
        f" -p {peer.port} {shlex.quote(f'{IMAGE_USER}@{peer.address}')}"
    )
    return (
        "set -e\n"
        f"{ready}"
        "umask 077\n"
        "d=$(mktemp -d)\n"
        "trap 'rm -rf \"$d\"' EXIT\n"
        'cat > "$d/key"\n'
        f'printf %s {shlex.quote(pinned)} > "$d/known_hosts"\n'
        "umask 022\n"
        f"{ssh} > {PARTIAL}\n"
        'rm -rf "$d"\n'
        f"{keep}"
    )


@dataclass(frozen=True, slots=True)
class _Reply:
    out: str
    error: str  # "" when the script succeeded


def _remote(state: State, host: Host, script: str, stdin: Iterable[bytes] = ()) -> _Reply:
    """Run `script` (as root) over the host's SSH connection with `stdin` as its input: what it
    printed, and "" or what went wrong (its last lines of stderr). The channel is asked for
    with its size, so it is opened then and there and never takes the one opened ahead for the
    install's next command (engine.install.worker.Channels): this may run beside them."""
    command = make_unix_command_for_host(
        state, host, StringCommand("sh -c", shlex.quote(script)), _sudo=state.config.SUDO
    )
    client: Any = host.connector.client
    channel = client.get_transport().open_session(window_size=DEFAULT_WINDOW_SIZE)
    channel.exec_command(command.get_raw_value())
    try:
        for chunk in stdin:
            channel.sendall(chunk)
        channel.shutdown_write()
    except OSError:
        pass  # the script stopped reading: its exit status and stderr below say why
    out = channel.makefile("rb").read().decode(errors="replace")
    errors = channel.makefile_stderr("rb").read().decode(errors="replace")
    status = channel.recv_exit_status()
    channel.close()
    if status == 0:
        return _Reply(out=out, error="")
    return _Reply(
        out=out, error=" ".join(errors.strip().splitlines()[-3:]) or f"exit status {status}"
    )


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
    """Run the agent container, recreating it when its image, command or files changed, and
    wait until its health command succeeds (failing with its last log lines if it does not),
    in one command; `image_id` is the id its image has, when known (else it is read from the
    server)."""
    wanted = run_hash(run)
    image_id = image_id or fact(DockerImageId, reference=run.image)
    current = fact(DockerContainer, container=run.name)
    answers = fact(CommandSucceeds, argv=run.health)
    name = shlex.quote(run.name)
    if current and current["image"] == image_id and current["run_hash"] == wanted:
        if current["running"]:
            if answers:
                host.noop(f"{run.name} is running and answers its health check")
                return
            yield _health_wait(run)
            return
        yield from chained([StringCommand("docker start", name), _health_wait(run)])
        return
    docker, verb, *rest = run.argv
    label = f"{RUN_HASH_LABEL}={wanted}"
    create = StringCommand(shlex.join([docker, verb, "--label", label, *rest]))
    removed = [StringCommand("docker rm -f", name)] if current else []
    yield from chained([*removed, create, _health_wait(run)])


def _health_wait(run: AgentRun) -> StringCommand:
    """A command that waits until the agent's health command succeeds, trying twice a second
    for run.health_timeout_s, and fails with the container's last log lines if it does not."""
    check = shlex.join(run.health)
    tries = run.health_timeout_s * 2
    return StringCommand(
        f"i=0; until {check} >/dev/null 2>&1; do i=$((i+1)); if [ $i -ge {tries} ]; then"
        f" echo '{run.name} did not pass its health check within {run.health_timeout_s} s;"
        " its last log lines:' >&2;"
        f" docker logs --tail 20 {shlex.quote(run.name)} >&2 2>&1; exit 1; fi; sleep 0.5; done"
    )
