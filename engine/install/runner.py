"""Install many hosts at once: one child process per host, a bounded number at a time.

Each child runs pyinfra for its host only, so hosts really run in parallel, a host that hangs
or crashes is killed or reported alone, and pyinfra's gevent never shares a process with
Pulumi. The children are forked by the install forker (`python -m engine.install`), one per
engine process, which loads pyinfra and the deploys once: a child starts with them loaded,
which saves each host the import (about 0.4 s of CPU). The agent image, when it is copied
rather than pulled, is saved and compressed once, by the first child whose server lacks it,
and streamed from there (or, with sharing, fetched by each server from another:
engine/install/sharing.py).

A child never outlives the engine: it watches a pipe from this process (its lifeline) and
ends itself and its process group at end of file, which the kernel makes happen when this
process ends however it ends (`kill -9` too). And one host is never installed by two children
at once: each child holds the host's lock file for as long as it lives, so the install of a
resumed run waits until the child of the run that died before it is gone.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import fcntl
import ipaddress
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.errors import EngineError
from engine.install.model import (
    STATUS_MARK,
    AgentRun,
    HostRequest,
    HostResult,
    ImageArchive,
    ImageSharing,
    InstallHost,
    InstallSettings,
    from_json,
    to_json,
)
from engine.install.sharing import image_archives
from engine.secrets import redact, register_secret
from engine.state.files import private_dir

HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
DEFAULT_PARALLEL = 10
DEFAULT_TIMEOUT_S = 1800.0
LOCK_POLL_S = 0.2


def install_hosts(
    hosts: Sequence[InstallHost],
    settings: InstallSettings,
    *,
    dry_run: bool = False,
    parallel: int = DEFAULT_PARALLEL,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    log_dir: Path | None = None,
    lock_dir: Path | None = None,
    on_result: Callable[[HostResult], None] | None = None,
    sharing: ImageSharing | None = None,
) -> tuple[HostResult, ...]:
    """Install every host (or, with `dry_run`, list what would change); one result per host.

    A host that fails, hangs past `timeout_s` or vanishes mid-run gets a result with
    `ok=False` and a message; the others go on. Bad input (an unreadable key, a malformed
    pinned host key, an invalid control-plane address) raises EngineError before any host
    is touched. With `log_dir`, each host's pyinfra log is kept as `<name>.log` (secrets
    masked). With `lock_dir`, a host is installed only while its child holds
    `<lock_dir>/<name>.lock`: a host whose lock another child holds waits for it (within
    `timeout_s`). `on_result` is called with each host's result as soon as that host is done
    (from a worker thread), so a caller can record progress before the slowest host ends.
    With `sharing`, servers that lack a copied image fetch it from each other once one has
    it from the engine (engine/install/sharing.py).
    """
    check_request(hosts, settings)
    for host in hosts:
        for item in host.agent.files if host.agent else ():
            if item.secret:
                register_secret(item.content)
    if log_dir:
        private_dir(log_dir)
    if lock_dir:
        private_dir(lock_dir)
    archives = _archives(hosts, settings)

    def one(host: InstallHost) -> HostResult:
        archive = archives.get(host.agent.image) if host.agent else None
        lock = lock_dir / f"{host.name}.lock" if lock_dir else None
        started = time.monotonic()
        # Made and removed here, not in the install process: one killed past its timeout
        # leaves nothing behind.
        with tempfile.TemporaryDirectory(prefix="engine-install-") as folder:
            request = HostRequest(
                host=host,
                settings=settings,
                folder=folder,
                dry_run=dry_run,
                archive=archive,
                sharing=sharing,
            )
            try:
                result = _run_child(request, timeout_s=timeout_s, log_dir=log_dir, lock=lock)
            except EngineError as exc:
                result = _failed(request, started, str(exc))
        if on_result:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return tuple(pool.map(one, hosts))


def check_request(hosts: Sequence[InstallHost], settings: InstallSettings) -> None:
    """Refuse a request that cannot work, saying which host and field is wrong."""
    if not settings.control_plane:
        raise EngineError(
            "install settings: control_plane is empty; give the address the control plane "
            "reaches the agents from, or the agent port stays closed to it"
        )
    for source in settings.control_plane:
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            raise EngineError(
                f"install settings: control_plane {source!r} is not an IP address or network"
            ) from None
    seen: set[str] = set()
    for host in hosts:
        if host.name in seen:
            raise EngineError(f"host {host.name} is listed twice; give each host once")
        seen.add(host.name)
        if not 0 < host.port < 65536:
            raise EngineError(f"host {host.name}: port {host.port} is not a TCP port")
        if not host.host_keys:
            raise EngineError(
                f"host {host.name}: no pinned host key; the engine connects only to a server "
                "whose host key it knows (from its phone-home)"
            )
        for key in host.host_keys:
            _check_host_key(host.name, key)
        if not os.access(host.private_key, os.R_OK):
            raise EngineError(
                f"host {host.name}: the SSH private key {host.private_key} is missing or unreadable"
            )
        if host.agent:
            _check_agent(host.name, host.agent, settings)


def _check_host_key(name: str, key: str) -> None:
    fields = key.split()
    problem = ""
    if len(fields) < 2 or fields[0] not in HOST_KEY_TYPES:
        problem = f"it should start with one of {', '.join(HOST_KEY_TYPES)}"
    else:
        try:
            base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            problem = "its key is not base64"
    if problem:
        raise EngineError(
            f"host {name}: the pinned host key {key[:40]!r} is not an OpenSSH public key; {problem}"
        )


def _check_agent(name: str, run: AgentRun, settings: InstallSettings) -> None:
    where = f"host {name}: the agent's docker run command"
    if run.argv[:2] != ("docker", "run"):
        raise EngineError(f"{where} does not start with 'docker run'")
    if not run.name:
        raise EngineError(f"{where} names no container; give it --name")
    if run.image not in run.argv:
        raise EngineError(f"{where} does not run the agent image {run.image}")
    registry = settings.install.agent.image
    if registry and run.image != registry:
        raise EngineError(
            f"host {name}: the agent would run {run.image}, but install.agent.image is "
            f"{registry}; build its run command with the registry image"
        )
    if not run.health:
        raise EngineError(f"host {name}: the agent has no health command to wait for")


def _archives(hosts: Sequence[InstallHost], settings: InstallSettings) -> dict[str, ImageArchive]:
    """Archives of the agent images the servers get copied (none when they pull); each is
    saved by the first install that needs it (engine.install.sharing.saved_archive)."""
    if settings.install.agent.image:
        return {}
    references = sorted({host.agent.image for host in hosts if host.agent})
    if not references:
        return {}
    return image_archives(settings.docker_url, references)


def _run_child(
    request: HostRequest,
    *,
    timeout_s: float,
    log_dir: Path | None,
    lock: Path | None,
) -> HostResult:
    name = request.host.name
    started = time.monotonic()
    deadline = started + timeout_s
    with _host_lock(lock, deadline) as held, tempfile.TemporaryFile() as log_file:
        if held is None:
            return _failed(
                request,
                started,
                f"another install of {name} still runs (it holds {lock}) and did not end within "
                f"{timeout_s:.0f} s; nothing was done",
            )
        # The lifeline: the child reads its end until end of file. PR_SET_PDEATHSIG would be
        # shorter, but it fires when the *thread* that started the child ends (this is a pool
        # thread), and only on Linux; a pipe's end of file comes when this process is gone.
        lifeline, keep = os.pipe()
        stdin, request_in = os.pipe()
        result_out, stdout = os.pipe()
        try:
            pid = FORKER.start(stdin, stdout, log_file.fileno(), lifeline, *held)
        finally:
            for fd in (stdin, stdout, lifeline):
                os.close(fd)
        try:
            out = _exchange(request_in, result_out, json.dumps(to_json(request)).encode(), deadline)
            if out is None:
                # The group is its session's; the process itself, in case it had not made
                # that session yet.
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(ProcessLookupError):
                        kill(pid, signal.SIGKILL)
                message = f"did not finish within {timeout_s:.0f} s; stopped"
                return _failed(request, started, message)
        finally:
            os.close(keep)
        log_file.seek(0)
        log = redact(log_file.read().decode(errors="replace"))
    if log_dir:
        (log_dir / f"{name}.log").write_text(log, encoding="utf-8")
    result, _, code = out.partition(STATUS_MARK)
    try:
        return from_json(HostResult, json.loads(result))
    except (ValueError, TypeError):
        tail = "\n".join(log.strip().splitlines()[-8:])
        how = _ending(code.decode(errors="replace"))
        return _failed(request, started, f"the install process {how} without a result: {tail}")


def _ending(code: str) -> str:
    """How a process with exit code `code` (negative: the signal that ended it; empty: not
    known) ended, in words."""
    if not code.lstrip("-").isdigit():
        return "ended"
    number = int(code)
    if number >= 0:
        return f"ended with exit code {number}"
    try:
        return f"was killed by {signal.Signals(-number).name}"
    except ValueError:
        return f"was killed by signal {-number}"


def _exchange(request_in: int, result_out: int, request: bytes, deadline: float) -> bytes | None:
    """Write `request` to the child's stdin and read its stdout to end of file; None when the
    deadline passes first. Closes both descriptors."""
    os.set_blocking(request_in, False)
    out = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(result_out, selectors.EVENT_READ)
        selector.register(request_in, selectors.EVENT_WRITE)
        try:
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                for key, _ in selector.select(left):
                    if key.fd == result_out:
                        chunk = os.read(result_out, 65536)
                        out += chunk
                        if not chunk:
                            selector.unregister(result_out)
                        continue
                    try:
                        request = request[os.write(request_in, request) :]
                    except BrokenPipeError:  # it ended early: its log says why
                        request = b""
                    if not request:
                        selector.unregister(request_in)
                        os.close(request_in)
                        request_in = -1
        finally:
            for fd in (request_in, result_out):
                if fd >= 0:
                    os.close(fd)
    return bytes(out)


class _Forker:
    """The install forker (`python -m engine.install`): it has pyinfra and the deploys loaded
    and forks one install process per host. One serves every install of this process: it is
    started on first use, started again if it has died, and ends when this process ends (the
    kernel closes this end of its socket)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None

    def start(self, *fds: int) -> int:
        """Fork an install process with `fds` (stdin, stdout, stderr, lifeline, then the
        lock); its process id."""
        with self._lock:
            # A second try, with a new forker, in case this one died since it last answered.
            for _ in range(2):
                try:
                    return self._ask(self._channel or self._begin(), fds)
                except OSError:
                    why = self._end()
            raise EngineError(f"the install forker failed: {why}")

    def prepare(self) -> None:
        """Start it now unless it runs, so that the first install does not wait while it
        loads pyinfra and the deploys."""
        with self._lock:
            if self._channel is None:
                self._begin()

    @staticmethod
    def _ask(channel: socket.socket, fds: tuple[int, ...]) -> int:
        socket.send_fds(channel, [b"install"], list(fds))
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = channel.recv(64)
            if not chunk:
                raise ConnectionResetError("the forker closed its socket")
            reply += chunk
        return int(reply)

    def _begin(self) -> socket.socket:
        mine, its = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "engine.install", str(its.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Read only once it has failed (a broken installation of pyinfra, say); it
                # writes nothing while it works.
                stderr=subprocess.PIPE,
                env={**os.environ, "PYINFRA_PROGRESS": "off"},
                # Its own session: a Ctrl-C in the terminal is the engine's to handle.
                start_new_session=True,
                pass_fds=(its.fileno(),),
            )
        finally:
            its.close()
        self._channel = mine
        return mine

    def _end(self) -> str:
        """End the forker that failed; the last lines it said."""
        if self._channel:
            self._channel.close()
            self._channel = None
        said = ""
        if self._process:
            said = self._process.communicate()[1].decode(errors="replace")
            self._process = None
        lines = redact(said).strip().splitlines()
        return "\n".join(lines[-8:]) or "it ended without a word"

    def close(self) -> None:
        """End it and wait for it (at exit: the CPU time it and its install processes used
        then counts as this process's children's, as the time of any child does)."""
        with self._lock:
            if self._channel:
                self._channel.close()
                self._channel = None
            if self._process:
                self._process.wait()
                self._process = None

    def pid(self) -> int | None:
        """Its process id, while it runs (benchmarks count the CPU time it and its install
        processes used)."""
        return self._process.pid if self._process else None


FORKER = _Forker()
atexit.register(FORKER.close)


@contextlib.contextmanager
def _host_lock(path: Path | None, deadline: float) -> Iterator[tuple[int, ...] | None]:
    """The host's lock held (its file descriptor, for the child to inherit), () when there
    is no lock to take, or None when another holder kept it past `deadline`."""
    if path is None:
        yield ()
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield (descriptor,) if _wait_for_lock(descriptor, deadline) else None
    finally:
        os.close(descriptor)


def _wait_for_lock(descriptor: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_S)


def _failed(request: HostRequest, started: float, message: str) -> HostResult:
    return HostResult(
        name=request.host.name,
        ok=False,
        error=message,
        dry_run=request.dry_run,
        install_hash=request.settings.digest,
        seconds=round(time.monotonic() - started, 3),
    )
