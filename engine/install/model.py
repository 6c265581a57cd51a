"""What an install is asked to do and what it reports, as frozen values that cross processes.

The engine runs pyinfra in a child process per host (see engine/install/runner.py); these
values go there and back as JSON (`to_json`, `from_json`). Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from engine.model import Install

# After an install process's result on its stdout, the forker that reaped it writes this and
# its exit code (negative: the signal that ended it).
STATUS_MARK = b"\0exit "


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentFile:
    """A file the agent needs on the server (its config, a token), written before it starts.

    Secret files are written with mode 0600 and their content never reaches a log.
    """

    path: str
    content: str
    mode: str = "0600"
    secret: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRun:
    """How the agent container runs on one server.

    `argv` is the whole `docker run` command that starts it, as
    `engine.install.agent.docker_run_argv(agent_run_options(image, settings))` gives it: it names
    the container (`--name`) and runs `image`. The server pulls `image` from its registry
    when the fleet's install.agent.image names it; otherwise it is copied from the engine's
    Docker, to one server and from server to server (engine/install/sharing.py).
    `directories` are made (mode 0700) and `files` written before the container starts;
    `health` is a command run on the server that exits 0 once the agent is healthy.
    """

    image: str
    argv: tuple[str, ...]
    health: tuple[str, ...]
    directories: tuple[str, ...] = ()
    files: tuple[AgentFile, ...] = ()
    health_timeout_s: int = 60

    @property
    def name(self) -> str:
        """The container's name: the value of `--name` in `argv` ("" when there is none)."""
        words = list(self.argv)
        if "--name" in words[:-1]:
            return words[words.index("--name") + 1]
        return ""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallHost:
    """One server to install: where it is, how to log in, the host keys it must present."""

    name: str
    address: str
    user: str
    host_keys: tuple[str, ...]
    private_key: str
    port: int = 22
    agent: AgentRun | None = None
    # Where the fleet's other servers reach this one (its private address); "" if they cannot.
    peer_address: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSettings:
    """What every server of the fleet gets.

    `control_plane` lists the addresses (or CIDR ranges) allowed to reach the agent port;
    `authorized_keys` are the admin user's keys, exactly (the spec's and the engine's deploy
    key: one removed from the spec stops working); `digest` is what the install reports it
    installed (engine.install.digest.install_digest of all this); `docker_url` is the engine's
    Docker, where agent images are copied from (default: $DOCKER_HOST, else the local engine).
    """

    install: Install
    control_plane: tuple[str, ...]
    authorized_keys: tuple[str, ...] = ()
    digest: str = ""
    docker_url: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageArchive:
    """An image the engine copies to servers that lack it: saved (`docker save`, compressed)
    to `path` once, by the first install that needs it, and streamed from there."""

    reference: str
    image_id: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePeer:
    """A server that keeps a verified copy of an image archive for the rest of its fleet."""

    name: str
    address: str
    port: int
    host_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSharing:
    """How the servers of a fleet share copied images (engine/install/sharing.py): the
    folder listing which servers have which image, and the fleet's image key (the path of
    its private half, and its public line)."""

    folder: str
    key: str
    public_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageDelivery:
    """How a server that lacks a copied image gets it: the engine's `archive` of it (from the
    engine's Docker at `docker_url`) and, with `sharing`, the fleet's other servers, which
    know this server as `me`."""

    archive: ImageArchive
    me: ImagePeer
    docker_url: str | None = None
    sharing: ImageSharing | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRequest:
    """What the per-host child process gets on stdin. `folder` is a private folder for the
    files the install needs on the engine's side (the pinned known_hosts); whoever made it
    removes it once the install has ended, however it ended (the runner: the install process
    may be killed)."""

    host: InstallHost
    settings: InstallSettings
    folder: str
    dry_run: bool = False
    archive: ImageArchive | None = None
    sharing: ImageSharing | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationResult:
    """One deploy operation on one host; in a dry run `changed` means "would change"."""

    name: str
    changed: bool
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HostResult:
    """What happened on one host. Store `install_hash` only when `ok`. `commands` is how many
    commands (SSH channels) the install sent to it, reading facts and changing things."""

    name: str
    ok: bool
    install_hash: str
    error: str = ""
    dry_run: bool = False
    operations: tuple[OperationResult, ...] = ()
    skipped: tuple[str, ...] = ()
    connect_seconds: float = 0.0
    seconds: float = 0.0
    commands: int = 0

    @property
    def changed(self) -> tuple[str, ...]:
        """Names of the operations that changed something (or would, in a dry run)."""
        return tuple(op.name for op in self.operations if op.changed)


# --- JSON ---------------------------------------------------------------------------------

T = TypeVar("T")


def to_json(value: Any) -> Any:
    """A frozen model value as plain JSON data (dataclasses as objects, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [to_json(item) for item in value]
    return value


def from_json(cls: type[T], data: Any) -> T:
    """The inverse of `to_json` for the dataclass `cls`; a mismatch raises ValueError."""
    return typing.cast(T, _decode(cls, data))


def _decode(kind: Any, data: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        (inner,) = (option for option in options if option is not type(None))
        return _decode(inner, data)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(data, list):
            raise ValueError(f"expected a list for {kind}, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        return tuple(_decode(arg, item) for arg, item in zip(args, data, strict=True))
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {kind.__name__}")
        hints = typing.get_type_hints(kind)
        fields = {f.name for f in dataclasses.fields(kind)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fields for {kind.__name__}: {', '.join(sorted(unknown))}")
        return kind(**{name: _decode(hints[name], value) for name, value in data.items()})
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind(data)
    if kind is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if isinstance(kind, type) and not isinstance(data, kind):
        raise ValueError(f"expected {kind.__name__}, got {type(data).__name__}")
    return data
