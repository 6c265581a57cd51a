"""A real control plane on loopback (uvicorn) over a fresh store, and what talks to it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.controlplane.fleets import register_fleet
from engine.controlplane.runner import RunningControlPlane, running_control_plane
from engine.controlplane.servers import register_server
from engine.install.seam import InstallResult, InstallTarget
from engine.model import Fleet, Stage
from engine.state import FleetSettings, ServerRecord
from engine.state.store import Store, open_store
from engine.tokens import ensure_fleet_key
from tests.support.fleets import example_fleet
from tests.support.tokens import mint_stored

HOST_KEYS = {
    "ed25519": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmQ3k1u7ZbY2tW3rIvv0yfo1ahJFhT3nJr1sI6Rk3xX",
    "rsa": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7",
}


def address(n: int) -> str:
    return f"203.0.{n // 250}.{n % 250 + 1}"


def body(fleet: str, server: str, instance_id: str, source: str, **changes: Any) -> dict[str, Any]:
    """A valid phone-home body (schemas/phone-home.v1.schema.json)."""
    document: dict[str, Any] = {
        "version": 1,
        "fleet": fleet,
        "server": server,
        "hostname": server,
        "provider": "hcloud",
        "instance_id": instance_id,
        "addresses": {"public_ipv4": [source], "public_ipv6": [], "private": ["10.0.0.5"]},
        "host_keys": dict(HOST_KEYS),
        "boot": {
            "kernel_booted_at": "2026-11-05T10:00:00Z",
            "cloud_init_finished_at": "2026-11-05T10:00:30Z",
            "sent_at": "2026-11-05T10:00:31Z",
        },
        "cloud_init": {"status": "done", "errors": []},
        "attempt": 1,
    }
    document.update(changes)
    return document


@dataclass
class ProbeInstaller:
    """A real, observable, idempotent install step: remembers what it installed."""

    installed: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_first: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, target: InstallTarget, fleet: FleetSettings) -> InstallResult:
        with self.lock:
            self.calls.append(target.name)
            if self.calls.count(target.name) <= self.fail_first:
                return InstallResult(ok=False, error="connection refused")
            wanted = f"sha256:{fleet.name}-{target.host_keys[0][-8:]}"
            changed = () if self.installed.get(target.name) == wanted else ("docker", "agent")
            self.installed[target.name] = wanted
        return InstallResult(ok=True, install_hash=wanted, changed=changed)


@dataclass
class Plane:
    """A control plane over `store`, serving `fleet`, with servers web-1..web-N registered."""

    store: Store
    state_dir: Path
    fleet: Fleet
    settings: FleetSettings
    running: RunningControlPlane
    installer: ProbeInstaller
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.running.url

    def add_servers(self, count: int, *, start: int = 1, provider_ids: bool = True) -> None:
        for n in range(start, start + count):
            self.store.servers.save(
                ServerRecord(
                    fleet=self.fleet.name,
                    name=f"web-{n}",
                    group="web",
                    provider="hcloud",
                    stage=Stage.CREATING,
                )
            )
            if provider_ids:
                register_server(
                    self.store,
                    self.settings,
                    f"web-{n}",
                    provider_id=str(4000 + n),
                    ipv4=address(n),
                )

    def token(self, server: str, *, fleet: str | None = None, ttl_s: int = 3600, **kw: Any) -> str:
        name = fleet or self.fleet.name
        key = ensure_fleet_key(self.state_dir, name)
        assert key is not None
        return mint_stored(self.store, key, fleet=name, server=server, ttl_s=ttl_s, **kw)

    def phone_home(
        self, token: str, document: dict[str, Any], *, source: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if source is not None:
            headers["X-Forwarded-For"] = source
        return self.client.post(f"{self.url}/v1/phone-home", json=document, headers=headers)

    def phone_home_as(self, n: int, token: str | None = None, **changes: Any) -> httpx.Response:
        server = f"web-{n}"
        return self.phone_home(
            token or self.token(server),
            body(self.fleet.name, server, str(4000 + n), address(n), **changes),
            source=address(n),
        )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused request must leave unchanged."""
        name = self.fleet.name
        return (
            self.store.servers.all(name),
            self.store.servers.transitions(name),
            self.store.jobs.all(name),
            self.store.events.all(name),
        )


def make_fleet(name: str = "web-prod", **control_plane: Any) -> Fleet:
    fleet = example_fleet("hetzner")
    return dataclasses.replace(
        fleet,
        name=name,
        control_plane=dataclasses.replace(fleet.control_plane, **control_plane),
    )


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    """A control plane on SQLite serving the Hetzner example fleet, with web-1..web-3."""
    yield from _plane(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", make_fleet())


def _plane(tmp_path: Path, url: str, fleet: Fleet, **options: Any) -> Iterator[Plane]:
    state_dir = tmp_path / "state"
    installer = ProbeInstaller()
    with open_store(url) as store:
        settings = register_fleet(store, fleet)
        with (
            running_control_plane(store, state_dir, installer=installer, **options) as running,
            httpx.Client(timeout=30) as client,
        ):
            made = Plane(store, state_dir, fleet, settings, running, installer, client)
            made.add_servers(3)
            yield made


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)
