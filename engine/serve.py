"""`engine serve` as a function: the control plane as a service, for fleets that live longer
than one `engine up`.

    serve(store, state_dir, fleets, listen=("127.0.0.1", 8470), stop=event)

For every fleet whose spec it is given, the service opens the fleet's provider as `engine up`
does (the local provider: its Docker engine, images and network; a cloud: its token, and the
agent image when it can be built here), registers the fleet, and then runs:

- the control plane (engine.controlplane.runner) with every job kind: provision jobs through
  the provider's provisioner, install jobs through the same `FleetInstaller` `engine up` uses;
  for a local fleet it listens on the fleet network's gateway too, where its servers phone
  home;
- a reconcile loop per fleet (engine.reconcile), one owner per fleet among every
  `engine serve` on the store;
- the alert evaluator and its webhooks (engine.controlplane.alerts).

Stopping (SIGTERM or SIGINT) drains: the reconcile loops finish their run and release their
leases, the workers finish the jobs under way for up to `drain_s`, and hand back the rest.
/v1/health says what is degraded: a fleet whose provider could not be opened, a reconcile
loop that failed or is overdue, worker threads gone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.install.seam import Installer, InstallResult, InstallTarget
from engine.model import Fleet, ProviderName
from engine.providers.seam import Backend, Provisioned, Provisioner, RunOptions, Site
from engine.reconcile import FleetWatch, ReconcileLoops
from engine.secrets import redact
from engine.state import FleetSettings, ServerRecord
from engine.state.store import Store

if TYPE_CHECKING:
    from engine.controlplane.dashboard import SignInLinks

log = logging.getLogger("engine.serve")

DRAIN_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """One fleet as this service serves it; `problem` says what it cannot do, if anything."""

    watch: FleetWatch | None
    installer: Installer | None = None
    provisioner: Provisioner | None = None
    problem: str = ""


def open_fleet(fleet: Fleet, store: Store, state_dir: Path, listen: tuple[str, int]) -> Opened:
    """Open `fleet`'s provider and register the fleet as `engine up` does. A provider that
    cannot be opened fully (no agent image can be built here, say) is still read for drift;
    one that cannot be reached at all is reported, and the rest of the service runs."""
    from engine.controlplane.fleets import register_fleet
    from engine.install.deploykey import ensure_deploy_key
    from engine.preview import recorded_digest
    from engine.tokens import ensure_fleet_id, ensure_fleet_key
    from engine.up import backend_for, fleet_installer, placed_servers

    def say(message: str) -> None:
        log.info("%s", message, extra={"fleet": fleet.name})

    local = fleet.provider.name is ProviderName.LOCAL
    options = RunOptions(state_dir=state_dir, listen=None if local else listen)
    backend: Backend = backend_for(fleet, options, say)
    ensure_fleet_key(state_dir, fleet.name)
    ensure_deploy_key(state_dir, fleet.name)
    ensure_fleet_id(state_dir, fleet.name)
    try:
        backend.open()
    except EngineError as error:
        problem = redact(f"fleet {fleet.name}: cannot install or repair ({error})")
        try:
            backend.connect()
        except EngineError as unreachable:
            return Opened(watch=None, problem=redact(f"fleet {fleet.name}: {unreachable}"))
        settings = register_fleet(store, fleet)
        site = Site(
            host=listen[0],
            port=listen[1],
            url=settings.control_plane_url,
            sources=settings.control_plane_sources,
        )
        # Installed by the last run's control plane: the digest it installed with.
        digest = recorded_digest(fleet, settings)
        watch = FleetWatch(fleet, store, backend, site, state_dir, opened=False, digest=digest)
        return Opened(watch=watch, problem=problem)
    site = backend.site()
    register_fleet(store, fleet, url=site.url, sources=site.sources)
    servers = placed_servers(fleet, store, state_dir)
    return Opened(
        watch=FleetWatch(fleet, store, backend, site, state_dir, opened=True),
        installer=fleet_installer(fleet, backend, site, state_dir),
        provisioner=backend.provisioner(store, servers),
    )


class _ByFleet:
    """The installer and provisioner of each fleet, as the control plane's one of each."""

    def __init__(self, opened: Mapping[str, Opened]) -> None:
        self.opened = opened

    def install(self, target: InstallTarget, fleet: FleetSettings) -> InstallResult:
        found = self.opened.get(fleet.name)
        if found is None or found.installer is None:
            return InstallResult(ok=False, error=f"this engine serve cannot install {fleet.name}")
        return found.installer(target, fleet)

    def provision(self, record: ServerRecord, fleet: FleetSettings) -> Provisioned:
        found = self.opened.get(fleet.name)
        if found is None or found.provisioner is None:
            raise EngineError(f"this engine serve cannot make servers of {fleet.name}")
        return found.provisioner(record, fleet)


def _health(
    opened: Mapping[str, Opened],
    loops: ReconcileLoops,
    workers: Callable[[], int],
    expected_workers: int,
) -> Callable[[], Sequence[str]]:
    def degraded() -> list[str]:
        found = [o.problem for o in opened.values() if o.problem]
        now = dt.datetime.now(dt.UTC)
        for watch in loops.watches:
            status = loops.status[watch.name]
            if status.last_error:
                found.append(f"fleet {watch.name}: the last reconcile failed: {status.last_error}")
            interval = dt.timedelta(seconds=2 * watch.fleet.reconcile.interval_s + 60)
            if status.owner and status.last_run_at and now - status.last_run_at > interval:
                found.append(
                    f"fleet {watch.name}: no reconcile since {status.last_run_at:%H:%M:%S}"
                )
        alive = workers()
        if alive < expected_workers:
            found.append(f"{expected_workers - alive} of {expected_workers} job workers stopped")
        return found

    return degraded


def serve(
    store: Store,
    state_dir: Path,
    fleets: Sequence[Fleet],
    *,
    listen: tuple[str, int],
    stop: threading.Event,
    state: str | None = None,
    workers: int = 2,
    install_entry: Installer | None = None,
    heartbeat_misses: int = 3,
    forwarded_allow_ips: str = "127.0.0.1",
    access_log: bool = False,
    drain_s: float = DRAIN_S,
    lease_s: float | None = None,
    on_listening: Callable[[str], None] = print,
    sign_in_links: SignInLinks | None = None,
) -> None:
    """Run the control plane, every job kind and a reconcile loop per fleet in `fleets`
    until `stop` is set; then drain. `state` is the store's URL as given (None: the state
    directory's), which the fleet API's applies open again as `engine up` does; the dashboard
    takes `sign_in_links` (`engine dashboard`'s)."""
    from engine.controlplane.fleets import register_fleet
    from engine.controlplane.jobs import worker_id
    from engine.controlplane.runner import default_registry, running_control_plane
    from engine.reconcile import LEASE_S
    from engine.remote import ApplyHandler, RemotePlanner, ServerActionHandler

    opened: dict[str, Opened] = {}
    for fleet in fleets:
        opened[fleet.name] = open_fleet(fleet, store, state_dir, listen)
        if opened[fleet.name].problem:
            log.warning("%s", opened[fleet.name].problem, extra={"fleet": fleet.name})
    for fleet in fleets:
        if opened[fleet.name].watch is None:
            register_fleet(store, fleet)
    by_fleet = _ByFleet(opened)
    local_sites = sorted(
        {
            (o.watch.site.host, o.watch.site.port)
            for o in opened.values()
            if o.watch is not None
            and o.watch.opened
            and o.watch.fleet.provider.name is ProviderName.LOCAL
        }
    )
    provisions = any(o.provisioner is not None for o in opened.values())
    installs = install_entry is not None or any(o.installer for o in opened.values())
    watches = [o.watch for o in opened.values() if o.watch is not None]
    loops = ReconcileLoops(store, watches, worker_id(), lease_s=lease_s or LEASE_S)
    pool_size: list[Callable[[], int]] = []
    health = _health(opened, loops, lambda: pool_size[0]() if pool_size else workers, workers)
    registry = default_registry(
        store,
        state_dir,
        installer=install_entry or (by_fleet.install if installs else None),
        provisioner=by_fleet.provision if provisions else None,
    )
    # The fleet API's applies and server actions run as jobs, through `engine up`'s path.
    registry.register(ApplyHandler(store, state_dir, state))
    registry.register(ServerActionHandler(store, state_dir, state))
    with ExitStack() as stack:
        plane = stack.enter_context(
            running_control_plane(
                store,
                state_dir,
                host=listen[0],
                port=listen[1],
                registry=registry,
                planner=RemotePlanner(store, state_dir),
                workers=workers,
                heartbeat_misses=heartbeat_misses,
                forwarded_allow_ips=forwarded_allow_ips,
                access_log=access_log,
                also_listen=local_sites,
                health=health,
                dashboard=True,
                sign_in_links=sign_in_links,
                drain_s=drain_s,
                root_logging=True,
            )
        )
        pool_size.append(lambda: plane.workers.alive)
        stack.enter_context(loops)
        served = ", ".join(f.name for f in store.fleets.all()) or "none registered yet"
        on_listening(
            f"control plane listening on {plane.url} (fleets: {served}); dashboard at {plane.url}/"
        )
        if not installs:
            log.warning("no fleet spec and no --install-entry: install jobs wait in the queue")
        stop.wait()
        log.info("stopping: finishing the reconcile runs and jobs under way")
    for found in opened.values():
        if found.watch is not None:
            found.watch.backend.close()
