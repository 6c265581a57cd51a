"""The local provider's inventory: the fleet's containers, found by their ownership labels.

One list call to the Docker engine returns every machine of the fleet (containers cost no API
budget, but the shape is the same as on the clouds). The engine's own bookkeeping labels on a
container (its instance id, its image name) are not fleet labels and are left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError
from engine.model import Fleet, Image, ImageKind, ProviderName
from engine.plan import Problem
from engine.providers import ActualServer, CloudResource, InventoryPage, without_fleet_id
from engine.providers.local.driver import (
    LABEL_IMAGE,
    LABEL_INSTANCE_ID,
    LocalMachine,
    fleet_machines,
    foreign_container,
)
from engine.providers.retry import ApiCalls, RetryPolicy

_BOOKKEEPING = {LABEL_INSTANCE_ID, LABEL_IMAGE}


def _answering_client() -> Any:
    """A client for the Docker engine the local provider uses, if one answers."""
    import docker

    from engine.providers.local.dockerd import daemon_client, docker_url

    try:
        client = daemon_client(docker_url(), timeout=60)
        client.ping()
    except docker.errors.DockerException:
        raise EngineError(
            "no Docker engine answers, so the local provider cannot read its servers; start "
            "one (engine up starts it for you) or set DOCKER_HOST"
        ) from None
    return client


def _docker_time(text: str) -> dt.datetime:
    """A time as Docker writes it (RFC 3339 with up to nanoseconds, in UTC)."""
    return dt.datetime.fromisoformat(text[:26].rstrip("Z")).replace(tzinfo=dt.UTC)


def actual_server(machine: LocalMachine) -> ActualServer:
    """The machine as the diff sees it. Its disk is the host's: there is no disk size to
    compare (or to refuse shrinking), so `disk_gb` stays 0. A stopped machine says how (its
    exit code) and when."""
    labels, fleet_id = without_fleet_id(
        tuple((k, v) for k, v in machine.labels if k not in _BOOKKEEPING)
    )
    return ActualServer(
        name=machine.name,
        provider_id=machine.instance_id,
        labels=labels,
        server_type=machine.server_type,
        image=Image(kind=ImageKind.NAME, name=machine.image) if machine.image else None,
        location="local",
        status=machine.status,
        ipv4=machine.ipv4,
        created=_docker_time(machine.created),
        exit_code=machine.exit_code,
        stopped_at=_docker_time(machine.finished_at) if machine.finished_at else None,
        fleet_id=fleet_id,
    )


@dataclass(slots=True)
class LocalReader:
    client: Any
    fleet: str
    provider: ProviderName = ProviderName.LOCAL
    list_lag_s: float = 0.0
    calls: ApiCalls = field(default_factory=ApiCalls)

    def read_servers(self) -> tuple[ActualServer, ...]:
        self.calls.requests["GET /containers/json"] += 1
        return tuple(actual_server(m) for m in fleet_machines(self.client, self.fleet))

    def read_page(self, page: int) -> InventoryPage:
        """Every machine is on page 1: the Docker engine lists them in one call."""
        servers = self.read_servers() if page == 1 else ()
        return InventoryPage(servers=servers, next_page=None)

    def read_resources(self, servers: Sequence[ActualServer]) -> tuple[CloudResource, ...]:
        """None: a local fleet declares no firewalls, networks, balancers, records or keys
        (its bridge is the local provider's own, made when it starts)."""
        return ()

    def read_prerequisites(self) -> tuple[Problem, ...]:
        """None: a local fleet needs nothing made beforehand."""
        return ()

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        """Containers that hold a name the fleet would take but carry none of its labels."""
        found = []
        for name in sorted(names):
            self.calls.requests["GET /containers/{name}/json"] += 1
            stranger = foreign_container(self.client, self.fleet, name)
            if stranger is not None:
                found.append(
                    ActualServer(
                        name=name,
                        provider_id=stranger,
                        labels=(),
                        server_type="",
                        image=None,
                        location="local",
                        status="unknown",
                    )
                )
        return tuple(found)


def open_reader(fleet: Fleet, token: str, policy: RetryPolicy) -> LocalReader:
    """The local reader for `fleet` (`token` and `policy` are unused: no account, no limits)."""
    return LocalReader(_answering_client(), fleet.name)
