"""The local provider as `engine up` and `engine destroy` drive it (an
engine.providers.seam.Backend): the Docker engine, the images, the fleet's network and its
machines.

Servers reach the control plane on the fleet network's gateway address (the host's address
on that bridge), which is also the address the engine reaches them from. The control plane's
port is remembered per fleet, so a run that resumes after a crash listens where the servers'
phone-home programs (still retrying) expect it. Each machine is made by a provision job of
the control plane, from its stored user_data.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.model import Fleet, Server
from engine.plan import Action, Plan, RetryBy
from engine.providers import Snapshot
from engine.providers.local.driver import LocalDriver
from engine.providers.local.inventory import actual_server
from engine.providers.seam import Provisioned, Provisioner, Signal, Site
from engine.state import FleetSettings, ServerRecord
from engine.state.files import private_dir

if TYPE_CHECKING:
    from engine.providers.local.inventory import LocalReader
    from engine.providers.seam import FleetRun
    from engine.state.store import Store

Say = Callable[[str], None]


def _free_port(host: str, port: int) -> int:
    """`port` if the control plane can listen on it on `host` now (any free one for 0), else
    0. As uvicorn binds with SO_REUSEADDR, so does the probe: the last run's connections
    lingering in TIME_WAIT do not make its port look taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return 0
        return int(probe.getsockname()[1])


@dataclass(slots=True)
class LocalBackend:
    """The local provider for one fleet; `open` it before use."""

    fleet: Fleet
    state_dir: Path
    say: Say
    client: Any = None
    docker_url: str | None = None
    machine_image: str = ""
    agent_image: str = ""
    gateway: str = ""

    @property
    def driver(self) -> LocalDriver:
        from engine.tokens import find_fleet_id

        fleet_id = find_fleet_id(self.state_dir, self.fleet.name) or ""
        return LocalDriver(self.client, self.fleet.name, self.state_dir, fleet_id)

    def check_tools(self) -> None:
        return None  # the Docker engine is found (or started) when connecting

    def connect(self) -> None:
        """Find (or start) the Docker engine."""
        from engine.providers.local.dockerd import daemon_client, ensure_daemon

        self.docker_url = ensure_daemon(say=self.say)
        self.client = daemon_client(self.docker_url)

    def open(self) -> None:
        """The Docker engine, the images (built on first use) and the fleet's network.

        Machines start from the golden image with the agent's image already in their Docker
        (unless the fleet pulls the agent from a registry): installs find it there."""
        from engine.agent.image import ensure_agent_image
        from engine.providers.local.images import ensure_golden_image, ensure_machine_image

        self.connect()
        golden = ensure_golden_image(self.client, self.say)
        self.agent_image = ensure_agent_image(self.client, self.say)
        preload = () if self.fleet.install.agent.image else (self.agent_image,)
        self.machine_image = ensure_machine_image(self.client, golden, preload, self.say)
        self.gateway = self.driver.ensure_network()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    @property
    def port_file(self) -> Path:
        return self.state_dir / "local" / self.fleet.name / "control-plane-port"

    def site(self) -> Site:
        """The gateway and a port for this run's control plane, remembered for the next run
        (`moved` when it differs from the last run's, whose servers may still phone home)."""
        try:
            previous = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            previous = 0
        port = _free_port(self.gateway, previous) if previous else 0
        port = port or _free_port(self.gateway, 0)
        private_dir(self.state_dir, "local", self.fleet.name)
        self.port_file.write_text(f"{port}\n")
        return Site(
            host=self.gateway,
            port=port,
            url=f"http://{self.gateway}:{port}",
            sources=(self.gateway,),
            moved=bool(previous) and port != previous,
        )

    def provisioner(self, store: Store, servers: Mapping[str, Server]) -> Provisioner:
        """Create one machine from the server's stored user_data (or find the one made
        before: the control plane's provision jobs may run again after a crash)."""
        from engine.cloudinit import pinned_user_data
        from engine.tokens import PhoneHomeSeal, read_fleet_key

        def provision(record: ServerRecord, fleet: FleetSettings) -> Provisioned:
            server = servers.get(record.name)
            key = read_fleet_key(self.state_dir, record.fleet)
            seal = PhoneHomeSeal(key=key, fleet=record.fleet, server=record.name)
            user_data = pinned_user_data(
                store.user_data, fleet=record.fleet, server=record.name, seal=seal
            )
            if server is None or user_data is None:
                raise EngineError(f"{record.name} is no longer in the spec or has no user_data")
            machine = self.driver.create(server, image=self.machine_image, user_data=user_data)
            if not machine.ipv4:
                raise RuntimeError(f"{machine.container} has no address on {self.driver.network}")
            return Provisioned(provider_id=machine.instance_id, ipv4=machine.ipv4)

        return provision

    def carry_out(self, plan: Plan, run: FleetRun, servers: Sequence[Server]) -> None:
        """Each change in turn; new machines are made by the control plane's provision jobs.
        A machine that failed before it phoned home (or is dead) is removed and made anew."""
        driver = self.driver
        for change in plan.changes:
            name = change.server
            remake = change.action is Action.RETRY and change.retry_by is not RetryBy.INSTALL
            if change.action is Action.CREATE:
                assert change.after is not None
                driver.delete(name)  # what a machine removed by hand left: its volume, seed
                run.create(change.after, provision=True)
            elif change.action in (Action.REPLACE, Action.UPDATE) or remake:
                # A local machine's labels, image and location are fixed when it is made.
                assert change.after is not None
                run.board.note(f"{name}: {change.action} (the machine is made again)")
                driver.delete(name)
                run.store.servers.forget(run.fleet.name, name)
                run.create(change.after, provision=True)
            elif change.action is Action.RETRY:
                run.reinstall(name, f"tried again after {change.failed_attempts} failure(s)")
            elif change.action is Action.POWER_ON:
                driver.poweron(name)
                # Docker gives a started container an address anew: maybe another one.
                started = driver.find(name)
                if started is not None:
                    run.keep_addresses([actual_server(started)])
                run.powered_on(name)
            elif change.action is Action.RESIZE:
                assert change.after is not None
                driver.resize(name, change.after.server_type)
                run.resized(name, change.after.server_type)
            elif change.action is Action.REINSTALL:
                run.reinstall(name)
            elif change.action is Action.ADOPT:
                run.adopt(change)
            elif change.action is Action.DELETE:
                driver.delete(name)
                run.deleted(name)

    def reader(self) -> LocalReader:
        """The fleet's containers, read through this backend's Docker client."""
        from engine.providers.local.inventory import LocalReader

        return LocalReader(self.client, self.fleet.name)

    def teardown(self) -> None:
        self.driver.teardown()

    def snapshots(self) -> tuple[Snapshot, ...]:
        return self.driver.snapshots()

    def delete_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        for snapshot in snapshots:
            self.driver.delete_snapshot(snapshot.id)

    def signal(self, record: ServerRecord, signal: Signal, timeout_s: float) -> str:
        """Docker does each at once: restart, stop, start, or commit the container."""
        driver, name = self.driver, record.name
        if signal is Signal.REBOOT:
            driver.reboot(name)
            return f"{name} rebooted"
        if signal is Signal.POWEROFF:
            driver.poweroff(name)
            return f"{name} powered off"
        if signal is Signal.POWERON:
            driver.poweron(name)
            return f"{name} powered on"
        return f"{name}: snapshot {driver.snapshot(name)}"

    def rebuild(
        self, server: Server, record: ServerRecord, run: FleetRun, timeout_s: float
    ) -> None:
        """The machine made again, from fresh user_data with a new token, by a provision job."""
        self.driver.delete(server.name)
        run.store.servers.forget(run.fleet.name, server.name)
        run.create(server, provision=True)
