"""The child-process side of an install: pyinfra runs the deploys on one host.

pyinfra's Python API is used as is, without gevent monkey-patching (which would make Pulumi
hang in the same process; see ENVIRONMENT.md). Unpatched, a greenlet waiting for one host's
output blocks every other host of the process, so each host gets a process of its own
(engine/install/runner.py) instead of a greenlet.

The host key is checked strictly against the pinned keys (a known_hosts file written from
them, never accept-new, in the folder the runner made for this install and removes after it),
and the user's ~/.ssh/config is not read. A server that vanishes
mid-run is noticed within about 20 s (TCP keepalive and a user timeout on the connection)
instead of when the kernel gives up on it, many minutes later.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.api.state import BaseStateCallback

from deploys import install_server
from deploys.support import skipped_on
from engine.install.model import (
    HostRequest,
    HostResult,
    InstallHost,
    OperationResult,
)
from engine.install.sharing import pinned_known_hosts
from engine.secrets import RedactingFilter, redact, register_secret

CONNECT_TIMEOUT_S = 15
KEEPALIVE_S = 5
LOST_AFTER_S = 20
MESSAGE_CHARS = 1500

T = TypeVar("T")


class _Recorder(BaseStateCallback):
    """Timings per operation, the operation that failed, and a connection error."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self.failed: str | None = None
        self.connect_error: str | None = None

    def host_connect_error(self, state: State, host: Any, error: Any) -> None:
        self.connect_error = str(error.args[0] if error.args else error)

    def operation_host_start(self, state: State, host: Any, op_hash: str) -> None:
        self.started[op_hash] = time.monotonic()
        self.current = op_hash

    def operation_host_success(
        self, state: State, host: Any, op_hash: str, retry_count: int = 0
    ) -> None:
        self.seconds[op_hash] = time.monotonic() - self.started[op_hash]

    def operation_host_error(
        self, state: State, host: Any, op_hash: str, retry_count: int = 0, max_retries: int = 0
    ) -> None:
        self.seconds[op_hash] = time.monotonic() - self.started[op_hash]
        self.failed = op_hash


class _ErrorLog(logging.Handler):
    """Keeps the last error lines pyinfra logs, for a failure that has no output of its own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines = [*self.lines[-9:], record.getMessage()]


def _keep_alive(connector: Any) -> None:
    """Make a dead peer fail the connection within LOST_AFTER_S instead of many minutes."""
    transport = connector.client.get_transport()
    transport.set_keepalive(KEEPALIVE_S)
    sock = transport.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, LOST_AFTER_S * 1000)


def _no_delay(connector: Any) -> None:
    """Send each SSH packet at once. paramiko leaves Nagle's algorithm on, so every command's
    last packet waits for the server's delayed ACK (about 40 ms): most of an idle round trip,
    and a deploy runs about a hundred of them."""
    sock = connector.client.get_transport().sock
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Channels(Generic[T]):
    """The SSH channels of one connection from now on, counted (one for each command,
    pyinfra's and the deploys' own) and opened one ahead.

    Opening a channel takes a round trip to the server, and the command run on it another
    (two when it sends text on stdin: OpenSSH grants a session channel room for input only
    once its command has started, so sending it without waiting for the server to accept the
    command saves nothing; measured). While one command runs, the channel for the next is
    opened in the background, so each command waits for one round trip fewer: a fresh install
    at a cloud server's 50 ms took 3.7 s without it and 2.7 s with it (bench/install.py, with
    the deploys of then).

    `open_session` stands in for paramiko's `Transport.open_session`; `close` stops opening
    ahead, after the connection is closed (a spare still being opened then fails at once and
    is dropped). A channel asked for with its size (SFTP's, or the agent image's, which is
    copied on a thread of its own beside the commands: deploys.agent) is opened as asked,
    then and there.
    """

    def __init__(self, open_session: Callable[..., T]) -> None:
        self.opened = 0
        self._count = threading.Lock()
        self._open = open_session
        self._spare: Future[T] | None = None
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssh-channel")

    def open_session(self, *args: Any, **kwargs: Any) -> T:
        """A session channel as `Transport.open_session(...)` gives one: the spare opened
        ahead, while the next is opened; a channel of other sizes (SFTP's) as asked."""
        with self._count:
            self.opened += 1
        if args or kwargs.keys() - {"timeout"}:
            return self._open(*args, **kwargs)
        spare, self._spare = self._spare, self._ahead.submit(self._open, **kwargs)
        if spare is not None:
            # A spare that could not be opened is opened again here, which fails the same
            # way if the connection is gone.
            with suppress(Exception):
                return spare.result()
        return self._open(**kwargs)

    def close(self) -> None:
        self._ahead.shutdown(wait=True, cancel_futures=True)


def _connect_message(host: InstallHost, detail: str) -> str:
    where = f"{host.address}:{host.port}"
    if "host key" in detail.lower() and "does not match" in detail.lower():
        return (
            f"refused to log in to {where}: its SSH host key is not the pinned one (the server "
            "was rebuilt, or something is in the middle); nothing was changed"
        )
    if "no host key" in detail.lower():
        return (
            f"refused to log in to {where}: it offered no host key of the pinned types; "
            "nothing was changed"
        )
    if "authentication" in detail.lower():
        return f"{where} refused the engine's SSH key for user {host.user}: {detail}"
    return f"could not connect to {where}: {detail}"


def _is_connected(connector: Any) -> bool:
    client = getattr(connector, "client", None)
    transport = client.get_transport() if client else None
    return bool(transport and transport.is_active())


def lost_cause(cause: BaseException) -> str:
    """Why an SSH connection ended, in words: paramiko saves an EOFError, which says nothing,
    when the server closed the connection (sshd restarted or killed, the server rebooting)."""
    if isinstance(cause, EOFError):
        return "the server closed the connection"
    return str(cause) or type(cause).__name__


def _failure(
    request: HostRequest, state: State, recorder: _Recorder, errors: _ErrorLog, exc: BaseException
) -> str:
    """One message for what stopped the run: where, and the best detail there is."""
    (inventory_host,) = list(state.inventory)
    host = request.host
    op_hash = recorder.failed or recorder.current
    where = ""
    output = ""
    if op_hash:
        where = f" during '{', '.join(sorted(state.get_op_meta(op_hash).names))}'"
        meta = state.ops[inventory_host][op_hash].operation_meta
        if meta.is_complete():
            output = "\n".join((meta.stderr or meta.stdout).splitlines()[-12:])
    if not _is_connected(inventory_host.connector):
        client = getattr(inventory_host.connector, "client", None)
        transport = client.get_transport() if client else None
        cause = getattr(transport, "saved_exception", None) or exc
        return f"lost the SSH connection to {host.address}:{host.port}{where} ({lost_cause(cause)})"
    # "No hosts remaining!" is pyinfra's word for "the only host failed": it says nothing.
    detail = output or ("" if str(exc).startswith("No hosts remaining") else str(exc))
    detail = detail or "\n".join(errors.lines[-3:]) or type(exc).__name__
    return f"failed{where}: {detail}"


def run_request(request: HostRequest) -> HostResult:
    """Install (or, in a dry run, inspect) the host of `request`; never raises for the host."""
    host = request.host
    for item in host.agent.files if host.agent else ():
        if item.secret:
            register_secret(item.content)
    started = time.monotonic()
    recorder = _Recorder()
    errors = _ErrorLog()
    logging.getLogger("pyinfra").addHandler(errors)
    result = HostResult(
        name=host.name,
        ok=False,
        dry_run=request.dry_run,
        install_hash=request.settings.digest,
    )
    known_hosts = Path(request.folder) / "known_hosts"
    known_hosts.write_text(pinned_known_hosts(host.address, host.port, host.host_keys))
    data = {
        "ssh_hostname": host.address,
        "ssh_port": host.port,
        "ssh_user": host.user,
        "ssh_key": host.private_key,
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "yes",
        "ssh_config_file": os.devnull,
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
        "ssh_connect_retries": 2,
        "ssh_connect_retry_min_delay": 1.0,
        "ssh_connect_retry_max_delay": 2.0,
    }
    inventory = Inventory(([(host.name, data)], {}))
    config = Config(SUDO=host.user != "root", CONNECT_TIMEOUT=CONNECT_TIMEOUT_S, DIFF=False)
    state = State(inventory, config, check_for_changes=request.dry_run)
    state.add_callback_handler(recorder)
    (inventory_host,) = list(inventory)
    try:
        connect_all(state)
    except Exception:  # pyinfra raises when its only host could not connect
        message = _connect_message(host, recorder.connect_error or "unknown error")
        return _finish(result, started, error=message)
    connect_seconds = time.monotonic() - started
    _keep_alive(inventory_host.connector)
    _no_delay(inventory_host.connector)
    transport = inventory_host.connector.client.get_transport()
    channels = Channels(transport.open_session)
    transport.open_session = channels.open_session
    error = ""
    try:
        add_deploy(state, install_server, request)
        if not request.dry_run:
            run_ops(state)
    except Exception as exc:  # any failure of the run is this host's failure, reported
        error = _failure(request, state, recorder, errors, exc)
    finally:
        disconnect_all(state)
        channels.close()
    operations = []
    for op_hash in state.get_op_order():
        meta = state.ops[inventory_host][op_hash].operation_meta
        if request.dry_run:
            changed = bool(meta.will_change)
        elif meta.is_complete():
            changed = meta.did_change()
        else:
            continue
        name = ", ".join(sorted(state.get_op_meta(op_hash).names))
        operations.append(
            OperationResult(
                name=name, changed=changed, seconds=round(recorder.seconds.get(op_hash, 0.0), 3)
            )
        )
    return _finish(
        result,
        started,
        error=error,
        operations=tuple(operations),
        connect_seconds=round(connect_seconds, 3),
        commands=channels.opened,
    )


def _finish(result: HostResult, started: float, *, error: str, **fields: Any) -> HostResult:
    return replace(
        result,
        ok=not error,
        error=redact(error)[-MESSAGE_CHARS:],
        skipped=tuple(redact(reason) for reason in skipped_on(result.name)),
        seconds=round(time.monotonic() - started, 3),
        **fields,
    )


def stop_with_parent(lifeline: int) -> None:
    """Kill this process and its process group as soon as `lifeline` reads end of file.

    The engine keeps the other end of that pipe open and never writes to it, so end of file
    means the engine is gone (or gave up on this install): the kernel closes its end however
    it ended, `kill -9` included. The engine starts this process as the leader of a session
    of its own, so the group is this process and whatever it started (ssh, pyinfra's
    subprocesses); started otherwise, only this process ends.
    """

    def watch() -> None:
        while os.read(lifeline, 512):
            pass
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def configure_logging() -> None:
    """pyinfra's and paramiko's logs to stderr, with every registered secret masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
