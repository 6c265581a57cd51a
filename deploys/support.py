"""What every deploy module uses: the type of an operation's commands, `skip`, `read_ahead`
and `fact`, `Chain`, `write_files` and `control_service`.

`skip` records things a deploy leaves out on a host for a reason (swap in a container, ...);
the install result reports them per host, so "not done, and why" is never silent.

Operations ask for facts with `fact`, never pyinfra's `host.get_fact`, and ask for all of
them before they send their first command (tests/deploys/ checks it). Each deploy lists, with
`read_ahead`, the facts its operations will ask for: the first ask reads them all with one
command, and an ask after an operation has changed the server reads again those not yet
given. So a run that changes nothing reads each deploy's facts with one command, where
asking one by one costs two round trips a fact. A fact no deploy lists is read on its own,
with a warning in the install's log: the list is to be mended (tests/install/ checks that a
local install has none).

An operation that says, with `changes`, which facts its commands can change has only those
read again after it: writing the sysctl file does not move the swap file. One that does not
say has every fact still listed read again, so a new operation is safe until it says; so is
a fact whose None changes by itself (its class has `live = True`: Docker's version, None
until a started engine answers). With CHECK_KEPT, each answer kept across an operation is
read again all the same and compared: tests/install runs a fresh install that way, so an
operation that says too little fails there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import posixpath
import shlex
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, state
from pyinfra.api import FactBase, OperationError, StringCommand
from pyinfra.api.exceptions import FactProcessError
from pyinfra.context import ctx_host

from deploys.facts import Ahead, FactAsk, Paths, Service

Commands = Generator[Any, None, None]
logger = logging.getLogger(__name__)

_SKIPPED: dict[str, list[str]] = {}


def skip(reason: str) -> None:
    """Leave something out on the current host for `reason`."""
    host.noop(reason)
    reasons = _SKIPPED.setdefault(host.name, [])
    if reason not in reasons:
        reasons.append(reason)


def skipped_on(name: str) -> tuple[str, ...]:
    """What was left out on host `name`, and why, in the order it was decided."""
    return tuple(_SKIPPED.get(name, ()))


@dataclass
class _Listed:
    """The facts one deploy lists for a host: how many asks each has left, and the answers
    read (with deploys.facts.Ahead), up to date with the operations in `seen`, those that had
    sent commands to the host (None: nothing read yet)."""

    asks: dict[str, FactAsk]
    left: dict[str, int]
    answers: dict[str, Any] = field(default_factory=dict)
    seen: frozenset[str] | None = None


@dataclass(frozen=True)
class _Changes:
    """What one operation's commands can change: facts of the kinds `names`, and facts that
    read one of `paths`."""

    names: frozenset[str]
    paths: frozenset[str]

    def affect(self, ask: FactAsk) -> bool:
        cls, kwargs = ask
        read = {kwargs["path"]} if "path" in kwargs else set(kwargs.get("paths", ()))
        return cls.name in self.names or bool(read & self.paths)


# When true, an answer kept across an operation that says it cannot change it is read again
# and compared, and a difference fails that run (tests/install sets it).
CHECK_KEPT = False

# Per host object: each run of the deploys has hosts of its own.
_LISTED: dict[Any, list[_Listed]] = {}
# What each operation (by its hash) said it changes, per host object.
_CHANGES: dict[Any, dict[str, _Changes]] = {}


def _key(cls: type[FactBase[Any]], kwargs: dict[str, Any]) -> str:
    return f"{cls.name} {json.dumps(kwargs, sort_keys=True, default=str)}"


def read_ahead(asks: Sequence[FactAsk]) -> None:
    """Have the operations added next on the current host given `asks` ahead (a fact listed
    twice is given twice); call it first in a deploy."""
    listed: dict[str, FactAsk] = {}
    left: dict[str, int] = {}
    for cls, kwargs in asks:
        key = _key(cls, kwargs)
        listed[key] = (cls, kwargs)
        left[key] = left.get(key, 0) + 1
    _LISTED.setdefault(ctx_host.get(), []).append(_Listed(listed, left))


def changes(*facts: type[FactBase[Any]], paths: Sequence[str] = ()) -> None:
    """Say that the current operation's commands can change the facts of the kinds `facts`
    and those that read one of `paths` (a file, or a folder it makes), and nothing else its
    deploy lists. Call it before the first command; it vouches for every command the
    operation sends."""
    op_hash = host.current_op_hash
    if op_hash is not None:
        names = frozenset(cls.name for cls in facts)
        _CHANGES.setdefault(ctx_host.get(), {})[op_hash] = _Changes(names, frozenset(paths))


def _sent() -> frozenset[str]:
    """The operations that have sent commands to the current host so far."""
    return frozenset(
        op_hash for op_hash, data in state.ops[host].items() if data.operation_meta.executed
    )


def fact(cls: type[FactBase[Any]], **kwargs: Any) -> Any:
    """What the fact `cls` with `kwargs` says about the current host: read ahead with the
    rest of its deploy's list, and again after an operation that could have changed it."""
    key = _key(cls, kwargs)
    listings = _LISTED.get(ctx_host.get(), [])
    for listing in listings:
        if not listing.left.get(key):
            continue
        _update(listing)
        listing.left[key] -= 1
        if key in listing.answers:
            return listing.answers[key]
        break
    else:
        if listings:
            logger.warning("%sno deploy lists the fact %s: read on its own", host.print_prefix, key)
    return host.get_fact(cls, **kwargs)


def _update(listing: _Listed) -> None:
    """Read the asks `listing` has left that the operations which sent commands since its
    last read may have changed: all of them on the first read, or after an operation that did
    not say what it changes."""
    sent = _sent()
    if listing.seen == sent:
        return
    wanted = [key for key, left in listing.left.items() if left]
    new = sent - (listing.seen or frozenset())
    said = _CHANGES.get(ctx_host.get(), {})
    if listing.seen is not None and new <= said.keys():
        stale = [
            k
            for k in wanted
            if (getattr(listing.asks[k][0], "live", False) and listing.answers.get(k) is None)
            or any(said[op].affect(listing.asks[k]) for op in new)
        ]
        if CHECK_KEPT:
            _check_kept(listing, [k for k in wanted if k not in stale], new)
        wanted = stale
    for key in wanted:
        listing.answers.pop(key, None)
    if wanted:
        listing.answers.update(_read(listing, wanted))
    listing.seen = sent


def _check_kept(listing: _Listed, kept: list[str], operations: frozenset[str]) -> None:
    """Fail unless each answer in `kept` reads now as it did before `operations` ran."""
    if not kept:
        return
    now = _read(listing, kept)
    names = ", ".join(sorted(name for op in operations for name in state.get_op_meta(op).names))
    for key in kept:
        if now.get(key) != listing.answers.get(key):
            raise OperationError(
                f"the fact {key} changed under {names}, which says it cannot change it:"
                f" was {listing.answers.get(key)!r}, is {now.get(key)!r}"
            )
    logger.info("%s%d answers kept across %s read as before", host.print_prefix, len(kept), names)


def _read(listing: _Listed, wanted: Sequence[str]) -> dict[str, Any]:
    """The answers to the asks `wanted` of `listing`, read with one command. A fact whose
    command failed or whose output it cannot read is left out: asked, it is read on its own,
    and pyinfra reports the failure as it always does."""
    found = host.get_fact(Ahead, asks=tuple(listing.asks[key] for key in wanted))
    answers = {}
    for key, (status, lines) in zip(wanted, found, strict=False):
        cls, kwargs = listing.asks[key]
        reader = cls()
        reader.command(**kwargs)  # as pyinfra does: some facts keep their arguments there
        if status == 0:
            try:
                answers[key] = reader.process(lines) if lines else reader.default()
            except FactProcessError:
                continue
    return answers


class FileWrite(StringCommand):
    """One command that gives `path` the text `content` and permissions `mode`, made with
    its parent folder if need be.

    The text is written beside the file and moved over it, so a reader never finds it half
    written. It travels on stdin (base64, so its bytes arrive exactly), never in the command
    line, which any user of the server can read while it runs. The command reads exactly its
    own line of stdin (the base64 and the newline pyinfra ends each line with; GNU head -c
    reads no further), so the writes of a Chain share one stdin, a line each, in order.
    """

    def __init__(self, path: str, content: str, mode: str) -> None:
        self.path = path
        self.content = content
        self.mode = mode
        staged = shlex.quote(f"{path}.fleet-new")
        text = base64.b64encode(content.encode()).decode()
        super().__init__(
            f"mkdir -p {shlex.quote(posixpath.dirname(path))} && umask 077 && "
            f"head -c {len(text) + 1} | base64 -d > {staged} && chmod {mode} {staged} && "
            f"mv -f {staged} {shlex.quote(path)}",
            _stdin=[text],
        )


class Chain(StringCommand):
    """One command that runs `commands` in turn and stops at the first that fails.

    pyinfra runs every command an operation yields over SSH of its own, and each costs two
    round trips to the server (a channel, then the command): a cloud server 50 ms away makes
    that 0.1 s a command. What `commands` read from stdin (FileWrites' lines) is sent in
    their order.
    """

    def __init__(self, *commands: StringCommand) -> None:
        self.commands = commands
        stdin: list[str] = []
        for command in commands:
            given = command.connector_arguments.get("_stdin", [])
            stdin += [given] if isinstance(given, str) else given
        bits: list[Any] = []
        for command in commands:
            if bits:
                bits.append("&&")
            bits += ["{", command, ";", "}"]
        super().__init__(*bits, **({"_stdin": stdin} if stdin else {}))


def chained(commands: Sequence[StringCommand]) -> list[StringCommand]:
    """`commands` as one command: a Chain of them when there are several."""
    return [Chain(*commands)] if len(commands) > 1 else list(commands)


def paths_ask(paths: Sequence[str], directories: Sequence[str] = ()) -> FactAsk:
    """The fact `write_files` asks for to write the files at `paths` and make `directories`."""
    return (Paths, {"paths": (*directories, *paths)})


def write_files(
    files: Sequence[tuple[str, str, str]], *, directories: Sequence[str] = ()
) -> list[StringCommand]:
    """The commands that give each (path, content, mode) of `files` that content and mode,
    after making each of `directories` a private folder (700); none for what is as wanted.

    One fact, so one command on the server, reads every path; pyinfra's `files.put` and
    `files.directory` read two or three facts per path and write in four commands. `chained`
    makes the folders and every file in one command.
    """
    ask, kwargs = paths_ask([path for path, _, _ in files], directories)
    found = fact(ask, **kwargs)
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
    return [*folders, *writes]


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
    now = fact(Service, service=service)
    systemd = now["init"] == "systemd"
    unit = shlex.quote(f"{service}.service")

    def verb(action: str) -> StringCommand:
        if systemd:
            return StringCommand(f"systemctl {action} {unit}")
        return StringCommand(shlex.quote(f"/etc/init.d/{service}"), action)

    commands = []
    if running and not now["running"]:
        commands.append(verb("start"))
    if enabled and not now["enabled"]:
        if systemd:
            commands.append(StringCommand(f"systemctl enable {unit}"))
        else:
            commands.append(StringCommand(f"update-rc.d {shlex.quote(service)} defaults"))
    if now["running"]:
        if restarted:
            commands.append(verb("restart"))
        if reloaded:
            commands.append(verb("reload"))
    return commands
