"""Facts the deploys read from a server, beyond pyinfra's own.

Every command here exits 0 whatever it finds (pyinfra fails a host whose fact command fails),
and prints a shape `process` can read without guessing.
"""

from __future__ import annotations

import json
import shlex
import urllib.parse
from typing import Any, TypedDict

from pyinfra.api import FactBase, StringCommand

from engine.install.agent import DOCKER_SOCKET

AHEAD_END = "--fleet-fact-end--"

# A fact class with the arguments it is asked with.
FactAsk = tuple[type[FactBase[Any]], dict[str, Any]]


class ContainerRuntime(FactBase[str | None]):
    """The container technology this server runs in (docker, lxc, ...), or None on a VM.

    A container shares its host's kernel: swap and most kernel settings belong to the host.
    """

    def command(self) -> str:
        return (
            "if [ -f /.dockerenv ]; then echo docker; "
            "elif [ -f /run/.containerenv ]; then echo podman; "
            "elif command -v systemd-detect-virt >/dev/null 2>&1; "
            "then systemd-detect-virt --container || true; "
            "else tr '\\0' '\\n' < /proc/1/environ 2>/dev/null | sed -n 's/^container=//p'; fi"
        )

    def process(self, output: list[str]) -> str | None:
        value = output[0].strip() if output else ""
        return None if value in ("", "none") else value


class HostNameDict(TypedDict):
    name: str
    hostnamectl: bool
    file_sha256: str | None


class HostName(FactBase[HostNameDict]):
    """The live host name, whether hostnamectl is installed, and the SHA-256 of /etc/hostname
    (None when there is none): one command for what pyinfra's `server.hostname` reads in six."""

    def command(self) -> str:
        return (
            "uname -n; "
            "if command -v hostnamectl >/dev/null 2>&1; then echo hostnamectl; else echo -; fi; "
            "if [ -f /etc/hostname ]; then h=$(sha256sum < /etc/hostname); echo ${h%% *}; "
            "else echo -; fi"
        )

    def process(self, output: list[str]) -> HostNameDict:
        name, tool, digest = [*output, "", "-", "-"][:3]
        return {
            "name": name.strip(),
            "hostnamectl": tool.strip() == "hostnamectl",
            "file_sha256": None if digest.strip() == "-" else digest.strip(),
        }


class ZoneInfoDict(TypedDict):
    current: str
    wanted: str | None


class ZoneInfo(FactBase[ZoneInfoDict]):
    """Where /etc/localtime points and where the zone `timezone` lives, both fully resolved.

    UTC and Etc/UTC are the same file; comparing resolved paths keeps a re-run quiet.
    """

    def command(self, timezone: str) -> str:
        zone = shlex.quote(f"/usr/share/zoneinfo/{timezone}")
        return f"readlink -f /etc/localtime || echo; realpath -e {zone} 2>/dev/null || echo -"

    def process(self, output: list[str]) -> ZoneInfoDict:
        current, wanted = [*output, "", "-"][:2]
        return {"current": current.strip(), "wanted": None if wanted.strip() == "-" else wanted}


class SwapFileDict(TypedDict):
    size: int | None
    active: bool
    in_fstab: bool


class SwapFile(FactBase[SwapFileDict]):
    """The size of the swap file at `path` (None when absent), whether it is in use, and
    whether /etc/fstab enables it at boot."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        pattern = shlex.quote(f"^{path}[[:space:]]")
        return (
            f"stat -c %s {quoted} 2>/dev/null || echo -; "
            f"if grep -q {pattern} /proc/swaps 2>/dev/null; then echo active; else echo idle; fi; "
            f"if grep -q {pattern} /etc/fstab 2>/dev/null; then echo boot; else echo no-boot; fi"
        )

    def process(self, output: list[str]) -> SwapFileDict:
        size, state, boot = [*output, "-", "idle", "no-boot"][:3]
        return {
            "size": None if size == "-" else int(size),
            "active": state == "active",
            "in_fstab": boot == "boot",
        }


class Installed(FactBase[list[str]]):
    """Which of `commands` are installed (on the PATH of root), in one command where pyinfra's
    `Which` takes one each."""

    def command(self, commands: tuple[str, ...]) -> str:
        names = " ".join(shlex.quote(name) for name in commands)
        return f'for c in {names}; do command -v "$c" >/dev/null 2>&1 && echo "$c"; done; true'

    default = list

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class FirewallMarks(FactBase[list[str]]):
    """The marks of the fleet firewall rules loaded in the kernel, as `family:hash`.

    Each rule set carries a comment with the hash of the script that loaded it, so a
    missing, stale or hand-flushed rule set shows up as a missing mark.
    """

    def command(self) -> str:
        return (
            "{ iptables -w -S FLEET-INPUT 2>/dev/null | sed 's/^/ipv4 /'; "
            "ip6tables -w -S FLEET-INPUT 2>/dev/null | sed 's/^/ipv6 /'; "
            "nft list table inet fleet 2>/dev/null | sed 's/^/inet /'; } "
            "| sed -n 's/^\\([a-z0-9]*\\) .*fleet-firewall:\\([0-9a-f]*\\).*/\\1:\\2/p' "
            "| sort -u"
        )

    default = list

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class AuthorizedKeysDict(TypedDict):
    home: str | None
    sha256: str | None


class AuthorizedKeys(FactBase[AuthorizedKeysDict]):
    """The home of `user` (None when there is no such user) and the SHA-256 of its
    ~/.ssh/authorized_keys (None when there is none)."""

    def command(self, user: str) -> str:
        quoted = shlex.quote(user)
        return (
            f'home=$(getent passwd {quoted} | cut -d: -f6); echo "${{home:--}}"; '
            'if [ -n "$home" ] && [ -f "$home/.ssh/authorized_keys" ]; '
            "then sha256sum \"$home/.ssh/authorized_keys\" | cut -d' ' -f1; else echo -; fi"
        )

    def process(self, output: list[str]) -> AuthorizedKeysDict:
        home, digest = [*output, "-", "-"][:2]
        return {
            "home": None if home.strip() in ("", "-") else home.strip(),
            "sha256": None if digest.strip() in ("", "-") else digest.strip(),
        }


class UserGroups(FactBase[list[str]]):
    """The groups `user` belongs to (none when there is no such user)."""

    def command(self, user: str) -> str:
        return f"id -nG {shlex.quote(user)} 2>/dev/null || true"

    default = list

    def process(self, output: list[str]) -> list[str]:
        return output[0].split() if output else []


def docker_api(path: str) -> str:
    """Shell that prints the Docker engine's JSON answer to GET `path`, or nothing when the
    engine does not answer, has no such object, or curl is missing (the system deploy installs
    it first).

    curl asks the engine's socket directly: the `docker` client is a Go program that costs the
    server about 25 ms of CPU each time it starts, curl about 5.
    """
    url = "http://docker" + urllib.parse.quote(path, safe="/:@")
    return (
        f"curl --silent --fail --noproxy '*' --unix-socket {DOCKER_SOCKET} "
        f"{shlex.quote(url)} 2>/dev/null || true"
    )


def _answer(output: list[str]) -> dict[str, Any] | None:
    """The JSON object `docker_api` printed, or None when it printed none."""
    text = "\n".join(output).strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text(output: list[str], name: str) -> str | None:
    """The non-empty text field `name` of the JSON object `docker_api` printed, else None."""
    value = (_answer(output) or {}).get(name)
    return value if isinstance(value, str) and value else None


class DockerVersion(FactBase[str | None]):
    """The version of the Docker engine when it answers, else None."""

    # None changes by itself once a (re)started engine comes up: read again after any
    # operation while it is None, whatever the operation says it changes
    # (deploys.support.changes). An operation that stops or restarts Docker says nothing,
    # so every fact is read again after it.
    live = True

    def command(self) -> str:
        return docker_api("/version")

    def process(self, output: list[str]) -> str | None:
        return _text(output, "Version")


class DockerImageId(FactBase[str | None]):
    """The id of the local image `reference` (sha256:...), or None when it is absent."""

    def command(self, reference: str) -> str:
        return docker_api(f"/images/{reference}/json")

    def process(self, output: list[str]) -> str | None:
        return _text(output, "Id")


class DockerContainerDict(TypedDict):
    image: str
    run_hash: str
    running: bool


RUN_HASH_LABEL = "fleet.run-hash"


class DockerContainer(FactBase[DockerContainerDict | None]):
    """The image id, run hash label and state of `container`, or None when absent."""

    def command(self, container: str) -> str:
        return docker_api(f"/containers/{container}/json")

    def process(self, output: list[str]) -> DockerContainerDict | None:
        answer = _answer(output)
        if answer is None:
            return None
        labels = (answer.get("Config") or {}).get("Labels") or {}
        return {
            "image": str(answer.get("Image", "")),
            "run_hash": str(labels.get(RUN_HASH_LABEL, "")),
            "running": (answer.get("State") or {}).get("Running") is True,
        }


class PathDict(TypedDict):
    kind: str
    mode: str
    sha256: str | None


class Paths(FactBase[dict[str, PathDict]]):
    """What is at each of `paths` that exists: its kind (file, directory or other), its
    permission bits in octal and, for a file, the SHA-256 of its content.

    One command answers for every path an operation writes, where pyinfra's `files.put`
    reads three facts per file, each a command of its own (an SSH channel, a shell and
    sudo on the server).
    """

    def command(self, paths: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(path) for path in paths)
        return (
            f"for p in {quoted}; do "
            'if [ -f "$p" ]; then h=$(sha256sum < "$p"); '
            'echo "file $(stat -c %a "$p") ${h%% *} $p"; '
            'elif [ -d "$p" ]; then echo "directory $(stat -c %a "$p") - $p"; '
            'elif [ -e "$p" ] || [ -L "$p" ]; then echo "other 0 - $p"; fi; done'
        )

    default = dict

    def process(self, output: list[str]) -> dict[str, PathDict]:
        found: dict[str, PathDict] = {}
        for line in output:
            kind, mode, sha256, path = line.split(" ", 3)
            found[path] = {"kind": kind, "mode": mode, "sha256": None if sha256 == "-" else sha256}
        return found


class ServiceDict(TypedDict):
    init: str
    running: bool
    enabled: bool


class Service(FactBase[ServiceDict]):
    """How `service` is run (systemd where systemctl is installed, as pyinfra decides, else
    its SysV init script), whether it runs, and whether it starts at boot.

    One command, where pyinfra's `server.service` reads six facts to find the init system
    and then the status of every init script on the server.
    """

    def command(self, service: str) -> str:
        unit = shlex.quote(f"{service}.service")
        script = shlex.quote(f"/etc/init.d/{service}")
        links = f"/etc/rc[2-5].d/S[0-9][0-9]{shlex.quote(service)}"
        return (
            "if command -v systemctl >/dev/null 2>&1; then echo systemd; "
            f"systemctl is-active --quiet {unit} && echo running || echo stopped; "
            f"systemctl is-enabled --quiet {unit} 2>/dev/null && echo enabled || echo disabled; "
            f"else echo sysv; {script} status >/dev/null 2>&1 && echo running || echo stopped; "
            f"if ls {links} >/dev/null 2>&1; then echo enabled; else echo disabled; fi; fi"
        )

    def process(self, output: list[str]) -> ServiceDict:
        init, running, enabled = [*output, "", "", ""][:3]
        return {"init": init, "running": running == "running", "enabled": enabled == "enabled"}


class CommandSucceeds(FactBase[bool]):
    """Whether `argv` exits 0 on the server (its output is discarded)."""

    def command(self, argv: tuple[str, ...]) -> str:
        return f"if {shlex.join(argv)} >/dev/null 2>&1; then echo yes; else echo no; fi"

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[0].strip() == "yes"


class Ahead(FactBase[list[tuple[int, list[str]]]]):
    """The exit status and output lines of each fact of `asks`, read with one command: each
    fact's command in a subshell of its own, then a line with AHEAD_END and its status.

    A fact whose command needs a program the server lacks (pyinfra's `requires_command`)
    exits 127 here; `process` is left to each fact (deploys.support.fact).
    """

    def command(self, asks: tuple[FactAsk, ...]) -> StringCommand:
        bits: list[Any] = []
        for cls, kwargs in asks:
            fact = cls()
            command = fact.command(**kwargs)
            needs = fact.requires_command(**kwargs)
            if needs:
                bits += ["if command -v", shlex.quote(needs), ">/dev/null 2>&1; then"]
                bits += ["(", command, "); else (exit 127); fi;"]
            else:
                bits += ["(", command, ");"]
            bits += [f'echo "{AHEAD_END} $?";']
        return StringCommand(*bits)

    default = list

    def process(self, output: list[str]) -> list[tuple[int, list[str]]]:
        found: list[tuple[int, list[str]]] = []
        lines: list[str] = []
        for line in output:
            if line.startswith(f"{AHEAD_END} "):
                found.append((int(line.split()[1]), lines))
                lines = []
            else:
                lines.append(line)
        return found
