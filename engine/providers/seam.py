"""The seam between the engine and its providers: what `engine up`, `engine destroy`,
`engine server` and the control plane drive a provider through, and what a provider calls
back on the run that drives it. No SDK and no I/O here: backends and readers import this
module, never the orchestrator (engine.up) or the control plane.

    Backend          one provider for one fleet, as a run drives it
                     (engine/providers/local/backend.py, engine/providers/cloud/backend.py)
    FleetRun         what a backend calls on its run: the bookkeeping every backend does the
                     same way (engine.up.FleetRun is the one run)
    InventoryReader  one fleet's servers at one provider account, read with paged list calls
    Provisioner      makes one server for the control plane's provision job
    RunOptions       how a run goes (state, confirmation, timeouts, where to listen)
    Site             where a run's control plane listens and what servers know it by
    Signal           what `engine server` tells one server to do
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.model import Fleet, ProviderName, Server
from engine.plan import Change, Plan, Problem
from engine.providers import ActualServer, CloudResource, InventoryPage, Snapshot
from engine.providers.retry import ApiCalls
from engine.state import FleetSettings, ServerRecord

if TYPE_CHECKING:
    from engine.progress import StageBoard
    from engine.state.store import Store


class Signal(StrEnum):
    """What `engine server` can tell a server to do."""

    REBOOT = "reboot"
    POWEROFF = "poweroff"
    POWERON = "poweron"
    REBUILD = "rebuild"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run. `listen` and `engine_addresses` are for the clouds (engine.providers.cloud).
    `attempts` is each server's budget of tries in one run; `adopt` takes over servers that
    another state directory made for a fleet of the same name. `hosted` is the site of a
    control plane that already serves the fleet (`engine serve`'s, for an apply through its
    API): the run uses it and starts no control plane of its own."""

    state_dir: Path
    state: str | None = None
    yes: bool = False
    json_lines: bool = False
    timeout_s: float = 900.0
    delete_orphans: bool = False
    listen: tuple[str, int] | None = None
    engine_addresses: tuple[str, ...] = ()
    attempts: int = 3
    adopt: bool = False
    hosted: Site | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """Where a run's control plane listens, and how servers and the engine reach each other.

    `url` is where servers phone home and agents report; `sources` are the addresses the
    engine connects to servers from, the only ones their firewalls let in to SSH and the
    agent port; `moved` says the control plane listens elsewhere than the last run's did
    (servers still booting phone home there, so they are looked for by polling).
    """

    host: str
    port: int
    url: str
    sources: tuple[str, ...]
    moved: bool = False


class InventoryReader(Protocol):
    """Reads one fleet's servers from one provider account (engine.providers.registry opens
    one). It lists the fleet's owned servers (those carrying the fleet's ownership labels or
    tags) with label- or tag-filtered paged list calls, never one GET per server, and honours
    the provider's rate limits (engine.providers.retry)."""

    provider: ProviderName
    # Seconds during which a server created by the engine may still be missing from list
    # calls (DigitalOcean's list lag); the diff trusts the state store's record meanwhile.
    list_lag_s: float
    calls: ApiCalls

    def read_servers(self) -> tuple[ActualServer, ...]:
        """Every server that carries the fleet's ownership labels/tags."""
        ...

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        """Servers not owned by the fleet whose names are in `names` (name collisions)."""
        ...

    def read_resources(self, servers: Sequence[ActualServer]) -> tuple[CloudResource, ...]:
        """The fleet's resources besides servers (firewalls, networks, load balancers, DNS
        records, placement groups, SSH keys), read with list calls by its labels, tags or
        names, in the words stacks.declared uses; `servers` are its servers as just read
        (targets and DNS records are told by them). None where the provider has none."""
        ...

    def read_prerequisites(self) -> tuple[Problem, ...]:
        """What the spec names that must exist at the provider before anything is made (a
        DigitalOcean project, the domains its DNS records go in), each missing one a problem
        that blocks the plan; none where there is nothing to check."""
        ...

    def read_page(self, page: int) -> InventoryPage:
        """One page (1-based) of the fleet's owned servers, for a poller that reads a page
        at a time and carries on where it stopped. Firewall and network names are not
        resolved (they cost more calls): those fields hold provider ids here."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Provisioned:
    """A server just made: its provider id and addresses."""

    provider_id: str
    ipv4: str | None = None
    ipv6: str | None = None
    private_ips: tuple[str, ...] = ()


class Provisioner(Protocol):
    """Creates one server (or finds the one created before: idempotent)."""

    def __call__(self, record: ServerRecord, fleet: FleetSettings) -> Provisioned: ...


class FleetRun(Protocol):
    """One `engine up` (or rebuild) of one fleet, with the store locked and the control plane
    running, as a backend sees it: every change it makes is told to the run, which records it
    and sends the server on its way to ready."""

    fleet: Fleet
    store: Store
    board: StageBoard
    # The fleet's id in this state directory (engine.tokens.ensure_fleet_id), for its labels.
    fleet_id: str

    def user_data(self, server: Server, *, fresh: bool = False) -> str:
        """The server's pinned user_data: the stored one, else (or when `fresh`) a new one
        with a new one-time token."""
        ...

    def create(self, server: Server, *, provision: bool) -> None:
        """Record a server about to be made, with new user_data; with `provision`, a provision
        job of the control plane makes it."""
        ...

    def register(self, name: str, made: Provisioned) -> None:
        """A server the backend made: its id and addresses recorded, and it is booting."""
        ...

    def start_polling(self, name: str) -> None:
        """Look for a booting server by polling (it will not phone home)."""
        ...

    def reinstall(self, name: str, reason: str = "") -> None:
        """Install the server again (its stage goes back to installing, with `reason`)."""
        ...

    def powered_on(self, name: str) -> None:
        """A server the backend started again: installed again if it had phoned home, else
        looked for by polling."""
        ...

    def keep_addresses(self, actual: Sequence[ActualServer]) -> None:
        """Record the addresses the provider lists now for the servers the store knows."""
        ...

    def adopt(self, change: Change) -> None: ...

    def resized(self, name: str, server_type: str) -> None: ...

    def deleted(self, name: str) -> None: ...


class Backend(Protocol):
    """One provider as `engine up`, `engine destroy` and `engine server` drive it, for one
    fleet. Each opening raises an EngineError saying what is missing and how to get it, before
    anything changes.

    `agent_image` is the agent image to install (in `docker_url`'s engine, copied to servers
    unless the spec names a registry image).
    """

    agent_image: str
    docker_url: str | None

    def check_tools(self) -> None:
        """The tools `carry_out` and `teardown` need (none, or the Pulumi CLI)."""
        ...

    def connect(self) -> None:
        """What talking to the provider needs: reading, signals, teardown."""
        ...

    def open(self) -> None:
        """`connect`, and what bringing servers to ready needs (images, networks, addresses)."""
        ...

    def close(self) -> None: ...

    def site(self) -> Site:
        """Where this run's control plane listens and what servers know it by."""
        ...

    def provisioner(self, store: Store, servers: Mapping[str, Server]) -> Provisioner | None:
        """What the control plane's provision jobs create servers with; None when
        `carry_out` makes them itself."""
        ...

    def carry_out(self, plan: Plan, run: FleetRun, servers: Sequence[Server]) -> None:
        """Make the plan's changes happen (the plan lists them in execution order);
        `servers` is the whole desired fleet, placed."""
        ...

    def reader(self) -> InventoryReader:
        """What reads the fleet's servers as they exist now, through the connection this
        backend holds."""
        ...

    def teardown(self) -> None:
        """Delete every resource of the fleet but its snapshots (backups: kept unless
        `delete_snapshots` is asked to delete them)."""
        ...

    def snapshots(self) -> tuple[Snapshot, ...]:
        """The fleet's snapshots (made by `signal`), found by its ownership labels."""
        ...

    def delete_snapshots(self, snapshots: Sequence[Snapshot]) -> None:
        """Delete the snapshots (`engine destroy --delete-snapshots`)."""
        ...

    def signal(self, record: ServerRecord, signal: Signal, timeout_s: float) -> str:
        """Reboot, power off, power on or snapshot one server, waiting until the provider says
        it is done (at most `timeout_s`); what came of it, in a few words."""
        ...

    def rebuild(
        self, server: Server, record: ServerRecord, run: FleetRun, timeout_s: float
    ) -> None:
        """Make the server's disk anew from its group's image and send it on its way to ready
        again (booting, phone-home or polling, install)."""
        ...
