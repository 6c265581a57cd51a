"""What every deploy module uses: the type of an operation's commands, `skip`, `Chain`,
`write_files`, `control_service` and `container_runtime`.

`skip` records things a deploy leaves out on a host for a reason (swap in a container, ...);
the install result reports them per host, so "not done, and why" is never silent.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra import host
from pyinfra.api import OperationError, StringCommand

from deploys.facts import ContainerRuntime, Paths, Service

Commands = Generator[Any, None, None]

_SKIPPED: dict[str, list[str]] = {}
_RUNTIMES: dict[str, str | None] = {}


def skip(reason: str) -> None:
    """Leave something out on the current host for `reason`."""
    host.noop(reason)
    reasons = _SKIPPED.setdefault(host.name, [])
    if reason not in reasons:
        reasons.append(reason)


def skipped_on(name: str) -> tuple[str, ...]:
    """What was left out on host `name`, and why, in the order it was decided."""
    return tuple(_SKIPPED.get(name, ()))


class FileWrite(StringCommand):
    """One command that gives `path` the text `content` and permissions `mode`, made with
    its parent folder if need be.

    The text is written beside the file and moved over it, so a reader never finds it half
    written. It travels on stdin (base64, so its bytes arrive exactly), never in the command
    line, which any user of the server can read while it runs.
    """

    def __init__(self, path: str, content: str, mode: str) -> None:
        self.path = path
        self.content = content
        self.mode = mode
        staged = shlex.quote(f"{path}.fleet-new")
        super().__init__(
            f"mkdir -p {shlex.quote(posixpath.dirname(path))} && umask 077 && "
            f"base64 -d > {staged} && chmod {mode} {staged} && mv -f {staged} {shlex.quote(path)}",
            _stdin=base64.b64encode(content.encode()).decode(),
        )


class Chain(StringCommand):
    """One command that runs `commands` in turn and stops at the first that fails.

    pyinfra runs every command an operation yields over SSH of its own, and each costs two
    round trips to the server (a channel, then the command): a cloud server 50 ms away makes
    that 0.1 s a command. At most one of `commands` may read stdin (a FileWrite's text).
    """

    def __init__(self, *commands: StringCommand) -> None:
        self.commands = commands
        stdin = [
            c.connector_arguments["_stdin"] for c in commands if "_stdin" in c.connector_arguments
        ]
        if len(stdin) > 1:
            raise ValueError("only one command of a chain may read stdin")
        bits: list[Any] = []
        for command in commands:
            if bits:
                bits.append("&&")
            bits += ["{", command, ";", "}"]
        super().__init__(*bits, **({"_stdin": stdin[0]} if stdin else {}))


def chained(commands: Sequence[StringCommand]) -> list[StringCommand]:
    """`commands` as one command: a Chain of them when there are several."""
    return [Chain(*commands)] if len(commands) > 1 else list(commands)


def write_files(
    files: Sequence[tuple[str, str, str]], *, directories: Sequence[str] = ()
) -> list[StringCommand]:
    """The commands that give each (path, content, mode) of `files` that content and mode,
    after making each of `directories` a private folder (700); none for what is as wanted.

    One fact, so one command on the server, reads every path; pyinfra's `files.put` and
    `files.directory` read two or three facts per path and write in four commands. The
    folders are made in the command that writes the first file: one command a file.
    """
    found = host.get_fact(Paths, paths=(*directories, *(path for path, _, _ in files)))
    folders: list[StringCommand] = []
    for directory in directories:
        now = found.get(directory)
        if now and now["kind"] != "directory":
            raise OperationError(f"{directory} is not a folder; move it away")
        if not now or int(now["mode"], 8) != 0o700:
            folder = shlex.quote(directory)
            folders.append(StringCommand(f"mkdir -p {folder} && chmod 700 {folder}"))
    writes: list[StringCommand] = []
    for path, content, mode in files:
        now = found.get(path)
        if now and now["kind"] != "file":
            raise OperationError(f"{path} is not a file; move it away")
        digest = hashlib.sha256(content.encode()).hexdigest()
        if not now or now["sha256"] != digest or int(now["mode"], 8) != int(mode, 8):
            writes.append(FileWrite(path, content, mode))
    if folders and writes:
        return [Chain(*folders, writes[0]), *writes[1:]]
    return chained(folders) + writes


def control_service(
    service: str,
    *,
    running: bool = False,
    enabled: bool = False,
    restarted: bool = False,
    reloaded: bool = False,
) -> list[StringCommand]:
    """The commands that start `service` (`running`) and make it start at boot (`enabled`)
    where it does not, or restart or reload it where it runs; one fact, one command, tells."""
    state = host.get_fact(Service, service=service)
    systemd = state["init"] == "systemd"
    unit = shlex.quote(f"{service}.service")

    def verb(action: str) -> StringCommand:
        if systemd:
            return StringCommand(f"systemctl {action} {unit}")
        return StringCommand(shlex.quote(f"/etc/init.d/{service}"), action)

    commands = []
    if running and not state["running"]:
        commands.append(verb("start"))
    if enabled and not state["enabled"]:
        if systemd:
            commands.append(StringCommand(f"systemctl enable {unit}"))
        else:
            commands.append(StringCommand(f"update-rc.d {shlex.quote(service)} defaults"))
    if state["running"]:
        if restarted:
            commands.append(verb("restart"))
        if reloaded:
            commands.append(verb("reload"))
    return commands


def container_runtime() -> str | None:
    """The container technology the current host runs in (None on a VM): read once per
    host, since nothing an install does changes it."""
    if host.name not in _RUNTIMES:
        _RUNTIMES[host.name] = host.get_fact(ContainerRuntime)
    return _RUNTIMES[host.name]
