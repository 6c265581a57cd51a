"""The local provider's hands: machines (containers) of one fleet on its own bridge network.

Everything the driver creates carries the fleet's ownership labels, so listing, adopting and
tearing down go by label, exactly as on the clouds. Each machine's NoCloud seed (which holds
its short-lived, single-use phone-home token) lives under the state directory with mode 0600
and is deleted with the machine.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.catalog import load_catalog
from engine.errors import EngineError
from engine.model import (
    LABEL_FLEET,
    LABEL_FLEET_ID,
    LABEL_GROUP,
    LABEL_MANAGED_BY,
    LABEL_SERVER,
    MANAGED_BY,
    Server,
)
from engine.providers import Snapshot
from engine.providers.local.dockerd import uplink_mtu
from engine.providers.local.machines import CPU_PERIOD_US, MachineSpec, create_machine, write_seed
from engine.state.files import private_dir, private_file

LABEL_INSTANCE_ID = "fleet-instance-id"
LABEL_IMAGE = "fleet-image"
OWNERSHIP_LABELS = frozenset({LABEL_FLEET, LABEL_GROUP, LABEL_SERVER, LABEL_MANAGED_BY})
SNAPSHOT_REPOSITORY = "fleet-snapshot"
STOP_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalMachine:
    """What the Docker engine reports about one machine of the fleet."""

    name: str
    container: str
    instance_id: str
    server_type: str
    image: str
    status: str
    ipv4: str | None
    labels: tuple[tuple[str, str], ...]
    created: str
    exit_code: int | None = None
    finished_at: str = ""


def _server_type_of(host_config: dict[str, Any]) -> str:
    """The local server type whose limits the container has now ("" if none matches).

    Read from the live limits rather than a label, because a resize changes the limits and
    labels cannot change after creation.
    """
    cores = (host_config.get("CpuQuota") or 0) / (host_config.get("CpuPeriod") or CPU_PERIOD_US)
    memory_mb = (host_config.get("Memory") or 0) // (1024 * 1024)
    for server_type in load_catalog("local").server_types.values():
        if server_type.cores == cores and int(server_type.memory_gb * 1024) == memory_mb:
            return server_type.name
    return ""


def _is_missing(exc: Exception) -> bool:
    import docker

    return isinstance(exc, docker.errors.NotFound)


def _owner_filter(fleet: str) -> dict[str, list[str]]:
    return {"label": [f"{LABEL_FLEET}={fleet}", f"{LABEL_MANAGED_BY}={MANAGED_BY}"]}


def _describe(container: Any, network: str) -> LocalMachine:
    labels = container.labels
    networks = container.attrs["NetworkSettings"]["Networks"]
    state = container.attrs.get("State") or {}
    finished = str(state.get("FinishedAt") or "")
    # Docker writes year 1 for a container that never stopped.
    stopped = container.status != "running" and bool(finished) and not finished.startswith("0001-")
    return LocalMachine(
        name=labels.get(LABEL_SERVER, ""),
        container=container.name,
        instance_id=labels.get(LABEL_INSTANCE_ID, ""),
        server_type=_server_type_of(container.attrs["HostConfig"]),
        image=labels.get(LABEL_IMAGE, ""),
        status=container.status,
        ipv4=(networks.get(network) or {}).get("IPAddress") or None,
        labels=tuple(sorted(labels.items())),
        created=container.attrs["Created"],
        exit_code=state.get("ExitCode") if stopped else None,
        finished_at=finished if stopped else "",
    )


def fleet_machines(client: Any, fleet: str) -> tuple[LocalMachine, ...]:
    """Every machine of `fleet`, running or not, found by its ownership labels."""
    found = client.containers.list(all=True, filters=_owner_filter(fleet))
    return tuple(sorted((_describe(c, f"fleet-{fleet}") for c in found), key=lambda m: m.name))


def container_name(fleet: str, server: str) -> str:
    return f"{fleet}-{server}"


def foreign_container(client: Any, fleet: str, server: str) -> str | None:
    """The id of a container holding `server`'s container name without the fleet's labels."""
    try:
        container = client.containers.get(container_name(fleet, server))
    except Exception as exc:
        if _is_missing(exc):
            return None
        raise
    return None if container.labels.get(LABEL_FLEET) == fleet else str(container.id)


class LocalDriver:
    """Create, list, resize, signal and delete the machines of one fleet."""

    def __init__(self, client: Any, fleet: str, state_dir: Path, fleet_id: str = "") -> None:
        self.client = client
        self.fleet = fleet
        self.state_dir = state_dir
        self.fleet_id = fleet_id
        self.seeds = state_dir / "local" / fleet
        self.network = f"fleet-{fleet}"

    def container_name(self, server: str) -> str:
        return container_name(self.fleet, server)

    def ensure_network(self) -> str:
        """The fleet's bridge network (created on first use); returns its gateway address."""
        found = self.client.networks.list(names=[self.network], filters=_owner_filter(self.fleet))
        network = next((n for n in found if n.name == self.network), None)
        if network is None:
            network = self.client.networks.create(
                self.network,
                driver="bridge",
                labels={LABEL_FLEET: self.fleet, LABEL_MANAGED_BY: MANAGED_BY},
                options={"com.docker.network.driver.mtu": str(uplink_mtu())},
            )
            network.reload()
        config = network.attrs["IPAM"]["Config"]
        if not config or "Gateway" not in config[0]:
            raise EngineError(f"the Docker network {self.network} has no IPv4 gateway")
        return str(config[0]["Gateway"])

    def machines(self) -> tuple[LocalMachine, ...]:
        """Every machine of the fleet, running or not, found by its ownership labels."""
        return fleet_machines(self.client, self.fleet)

    def _describe(self, container: Any) -> LocalMachine:
        return _describe(container, self.network)

    def find(self, server: str) -> LocalMachine | None:
        try:
            container = self.client.containers.get(self.container_name(server))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        if container.labels.get(LABEL_FLEET) != self.fleet:
            raise EngineError(
                f"a container named {container.name} exists but does not belong to fleet "
                f"{self.fleet}; the engine will not touch it. Rename or remove it."
            )
        return self._describe(container)

    def _resources(self, server_type: str) -> tuple[float, int]:
        catalog = load_catalog("local")
        known = catalog.server_types.get(server_type)
        if known is None:
            raise EngineError(f"the local catalog has no server type {server_type}")
        return float(known.cores), int(known.memory_gb * 1024)

    def create(self, server: Server, *, image: str, user_data: str) -> LocalMachine:
        """Create and boot `server`; a machine that already exists is returned as it is."""
        existing = self.find(server.name)
        if existing is not None:
            return existing
        self.ensure_network()
        instance_id = f"i-{secrets.token_hex(8)}"
        seed = private_dir(self.state_dir, "local", self.fleet, server.name, "seed")
        write_seed(seed, instance_id=instance_id, hostname=server.name, user_data=user_data)
        for path in seed.iterdir():
            private_file(path)
        cpus, memory_mb = self._resources(server.server_type)
        labels = {
            **dict(server.labels),
            LABEL_INSTANCE_ID: instance_id,
            LABEL_IMAGE: server.image.name,
        }
        if self.fleet_id:
            labels[LABEL_FLEET_ID] = self.fleet_id
        container = create_machine(
            self.client,
            MachineSpec(
                name=self.container_name(server.name),
                hostname=server.name,
                image=image,
                seed_dir=seed,
                labels=labels,
                network=self.network,
                cpus=cpus,
                memory_mb=memory_mb,
            ),
        )
        return self._describe(container)

    def _container(self, server: str) -> Any:
        if self.find(server) is None:
            raise EngineError(f"fleet {self.fleet} has no local server {server}")
        return self.client.containers.get(self.container_name(server))

    def resize(self, server: str, server_type: str) -> None:
        """Change CPU and memory limits in place (a live `docker update`)."""
        cpus, memory_mb = self._resources(server_type)
        container = self._container(server)
        container.update(
            cpu_period=CPU_PERIOD_US,
            cpu_quota=int(cpus * CPU_PERIOD_US),
            mem_limit=f"{memory_mb}m",
            memswap_limit=f"{memory_mb}m",
        )

    def reboot(self, server: str) -> None:
        self._container(server).restart(timeout=STOP_TIMEOUT_S)

    def poweroff(self, server: str) -> None:
        self._container(server).stop(timeout=STOP_TIMEOUT_S)

    def poweron(self, server: str) -> None:
        self._container(server).start()

    def snapshot(self, server: str) -> str:
        """An image of the machine as it is now (`docker commit`), labelled with the fleet's
        ownership labels; its reference, `fleet-snapshot/<fleet>:<server>-<UTC time>`."""
        container = self._container(server)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        repository, tag = f"{SNAPSHOT_REPOSITORY}/{self.fleet}", f"{server}-{stamp}"
        owned = {
            k: v for k, v in container.labels.items() if k in OWNERSHIP_LABELS | {LABEL_FLEET_ID}
        }
        container.commit(
            repository=repository,
            tag=tag,
            changes=[f"LABEL {key}={json.dumps(value)}" for key, value in sorted(owned.items())],
        )
        return f"{repository}:{tag}"

    def snapshots(self) -> tuple[Snapshot, ...]:
        """Every snapshot of the fleet: the images in `fleet-snapshot/<fleet>` with its
        ownership labels."""
        repository = f"{SNAPSHOT_REPOSITORY}/{self.fleet}:"
        found = []
        for image in self.client.images.list(filters=_owner_filter(self.fleet)):
            for reference in image.tags:
                if reference.startswith(repository):
                    found.append(
                        Snapshot(
                            id=reference,
                            name=reference,
                            server=(image.labels or {}).get(LABEL_SERVER, ""),
                            size_gb=int(image.attrs.get("Size") or 0) / 1e9,
                            fleet_id=(image.labels or {}).get(LABEL_FLEET_ID, ""),
                        )
                    )
        return tuple(sorted(found, key=lambda s: s.name))

    def delete_snapshot(self, reference: str) -> None:
        """Remove the snapshot's reference (the image goes with its last one)."""
        try:
            self.client.images.remove(reference)
        except Exception as exc:
            if not _is_missing(exc):
                raise

    def delete(self, server: str) -> None:
        """Remove the machine, its Docker volume and its seed; nothing of it is left."""
        if self.find(server) is not None:
            self.client.containers.get(self.container_name(server)).remove(force=True, v=True)
        try:
            self.client.volumes.get(f"{self.container_name(server)}-docker").remove(force=True)
        except Exception as exc:
            if not _is_missing(exc):
                raise
        shutil.rmtree(self.seeds / server, ignore_errors=True)

    def teardown(self) -> None:
        """Delete every machine of the fleet, then its network and seed directory (its
        snapshots are kept: `delete_snapshot` deletes one)."""
        for machine in self.machines():
            self.delete(machine.name)
        for network in self.client.networks.list(filters=_owner_filter(self.fleet)):
            network.remove()
        shutil.rmtree(self.seeds, ignore_errors=True)
