"""The install step as the control plane's install jobs see it.

Installer       the entry point: install one server (FleetInstaller in installer.py)
InstallTarget   one server to install: where it is, how to log in, the host keys it pins
InstallResult   what the install reports for it
install_target  the InstallTarget of a server's record (at its engine.addresses.ssh_address)
install_log_dir, install_lock_dir
                where a fleet's install logs and install locks live in the state directory
                (forget_install_files removes both with the fleet)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.state import FleetSettings, ServerRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallTarget:
    """One server to install, as the install step needs it.

    `host_keys` are `type base64` lines to require from the server (StrictHostKeyChecking);
    `host_keys_source` says whether they came from the phone-home or from a key scan;
    `peer_address` is where the fleet's other servers reach it ("" if nowhere known).
    """

    fleet: str
    name: str
    address: str
    port: int
    user: str
    host_keys: tuple[str, ...]
    host_keys_source: str
    private_key: Path | None
    peer_address: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallResult:
    """What the install step reports for one host."""

    ok: bool
    install_hash: str = ""
    changed: tuple[str, ...] = ()
    error: str = ""


class Installer(Protocol):
    """The install entry point: install one host with the fleet's install settings
    (`fleet.install` is dataclasses.asdict(engine.model.Install)). Idempotent."""

    def __call__(self, target: InstallTarget, fleet: FleetSettings) -> InstallResult: ...


def install_target(
    record: ServerRecord, settings: FleetSettings, address: str, private_key: Path | None
) -> InstallTarget:
    """How the installer reaches a server at `address` (its engine.addresses.ssh_address),
    checked against the host keys pinned for it. The fleet's other servers reach it at its
    first private address (its network's), else at `address`."""
    return InstallTarget(
        fleet=settings.name,
        name=record.name,
        address=address,
        port=settings.ssh_port,
        user=settings.ssh_user,
        host_keys=tuple(key for _type, key in record.host_keys),
        host_keys_source=record.host_keys_source,
        private_key=private_key,
        peer_address=record.private_ips[0] if record.private_ips else address,
    )


def install_log_dir(state_dir: Path, fleet: str) -> Path:
    """Where the last install log of each of `fleet`'s servers is kept (`<server>.log`): a
    folder per fleet, so fleets sharing a state directory keep their own."""
    return state_dir / "logs" / "install" / fleet


def install_lock_dir(state_dir: Path, fleet: str) -> Path:
    """Where the install process of each of `fleet`'s servers holds its lock
    (`<server>.lock`) for as long as it lives."""
    return state_dir / "locks" / fleet


def forget_install_files(state_dir: Path, fleet: str) -> None:
    """Remove `fleet`'s install logs and install locks (a destroyed fleet's)."""
    for folder in (install_log_dir(state_dir, fleet), install_lock_dir(state_dir, fleet)):
        shutil.rmtree(folder, ignore_errors=True)
