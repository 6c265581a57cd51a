"""`engine serve` as a function: the control plane as a service, for fleets that live longer
than one `engine up`.

    serve(store, state_dir, [Path("specs/demo.yaml")], listen=("127.0.0.1", 8470), stop=event)

The fleets it serves are those whose spec the store holds: the spec files it is given are
stored first (as the fleet API's PUT stores one), and a spec PUT or changed through the API
while it runs is picked up within SPECS_POLL_S (at once for an apply). For each, the service
opens the fleet's provider as `engine up` does (the local provider: its Docker engine, images
and network; a cloud: its token, and the agent image when it can be built here), registers
the fleet, and then runs:

- the control plane (engine.controlplane.runner) with every job kind: provision jobs through
  the provider's provisioner, install jobs through the same `FleetInstaller` `engine up` uses
  (jobs of fleets it cannot serve go back to the queue for a control plane that can); for a
  local fleet it listens on the fleet network's gateway too, where its servers phone home;
- a reconcile loop per fleet (engine.reconcile), one owner per fleet among every
  `engine serve` on the store;
- the alert evaluator and its webhooks (engine.controlplane.alerts).

The fleet API's applies and server actions are `engine up` and `engine server` run as jobs;
for a fleet the service serves they use its control plane, not one of their own, so the
servers keep reporting where the reconcile loop expects them to.

Stopping (SIGTERM or SIGINT) drains: the reconcile loops finish their run and release their
leases, the workers finish the jobs under way for up to `drain_s`, and hand back the rest.
/v1/health says what is degraded: a fleet whose provider could not be opened, a reconcile
loop that failed or is overdue, worker threads gone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.controlplane.jobs import Elsewhere
from engine.errors import EngineError
from engine.install.seam import Installer, InstallResult, InstallTarget
from engine.model import Fleet, ProviderName
from engine.providers.seam import Backend, Provisioned, Provisioner, RunOptions, Site
from engine.reconcile import FleetWatch, ReconcileLoops
from engine.secrets import redact
from engine.state import FleetSettings, FleetSpec, ServerRecord
from engine.state.store import Store

if TYPE_CHECKING:
    from engine.controlplane.dashboard import SignInLinks

log = logging.getLogger("engine.serve")

DRAIN_S = 60.0
# How often the store's specs are read for fleets registered or changed through the API.
SPECS_POLL_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """One fleet as this service serves it; `problem` says what it cannot do, if anything."""

    watch: FleetWatch | None
    installer: Installer | None = None
    provisioner: Provisioner | None = None
    problem: str = ""


def open_fleet(
    fleet: Fleet,
    store: Store,
    state_dir: Path,
    listen: tuple[str, int],
    *,
    site: Site | None = None,
    spec_digest: str | None = None,
) -> Opened:
    """Open `fleet`'s provider and register the fleet as `engine up` does. A provider that
    cannot be opened fully (no agent image can be built here, say) is still read for drift;
    one that cannot be reached at all is reported, and the rest of the service runs. `site`
    keeps where the fleet's control plane already listens (a fleet opened again for a new
    spec: its servers report there); `spec_digest` is the stored spec's, which the fleet's
    watch stops acting on once the store holds another."""
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
            register_fleet(store, fleet)  # its records and heartbeats are still served
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
        watch = FleetWatch(
            fleet, store, backend, site, state_dir,
            opened=False, digest=digest, spec_digest=spec_digest,
        )  # fmt: skip
        return Opened(watch=watch, problem=problem)
    site = site or backend.site()
    register_fleet(store, fleet, url=site.url, sources=site.sources)
    servers = placed_servers(fleet, store, state_dir)
    return Opened(
        watch=FleetWatch(
            fleet, store, backend, site, state_dir, opened=True, spec_digest=spec_digest
        ),
        installer=fleet_installer(fleet, backend, site, state_dir),
        provisioner=backend.provisioner(store, servers),
    )


def register_spec(store: Store, path: Path, state_dir: Path) -> Fleet:
    """The spec file at `path` validated and stored as its fleet's desired state, as the
    fleet API's PUT stores one (a SpecError says what is wrong, and nothing is stored)."""
    from engine.controlplane.fleetapi import spec_digest
    from engine.spec import parse_spec, read_spec_file

    raw = read_spec_file(path)
    fleet = parse_spec(raw, file=str(path), state_dir=state_dir)
    text = raw.decode("utf-8")
    store.specs.save(
        FleetSpec(
            fleet=fleet.name,
            text=text,
            digest=spec_digest(text),
            updated_at=dt.datetime.now(dt.UTC),
            updated_by="engine serve --spec",
        )
    )
    return fleet


class ServedFleets:
    """The fleets this service runs, by name, and as one installer and one provisioner for
    the control plane. A fleet is served once the store holds its spec (from --spec at the
    start, or a PUT through the fleet API at any time): `sync` opens every new one and opens
    a fleet again when its spec changed, keeping where its control plane listens; `on_open`
    hears of each (to give it a reconcile loop and, for a local fleet, a listener on its
    network's gateway), and `on_close` of a fleet no longer served. Called from the
    service's threads: one fleet opens at a time."""

    def __init__(self, store: Store, state_dir: Path, listen: tuple[str, int]) -> None:
        self.store = store
        self.state_dir = state_dir
        self.listen = listen
        self.opened: dict[str, Opened] = {}
        self.on_open: Callable[[Opened], None] = lambda _: None
        self.on_close: Callable[[str], None] = lambda _: None
        self._digests: dict[str, str] = {}
        self._retired: list[Backend] = []
        self._opening = threading.RLock()

    def sync(self) -> None:
        """Open what the store's specs say is new or changed, and stop serving the fleets
        whose spec is gone (`engine destroy` forgets it)."""
        wanted = {stored.fleet for stored in self.store.specs.all()}
        with self._opening:
            for name in [n for n in self.opened if n not in wanted]:
                log.info("no longer serving %s: its spec is gone", name, extra={"fleet": name})
                self._retire(self.opened.pop(name))
                self._digests.pop(name, None)
                self.on_close(name)
        for name in sorted(wanted):
            self.refresh(name)

    def _retire(self, opened: Opened) -> None:
        if opened.watch is not None:  # closed at the end: a run under way may still use it
            self._retired.append(opened.watch.backend)

    def refresh(self, name: str) -> Opened | None:
        """The fleet `name` as its stored spec says now (opened again first if that spec
        changed), or None when it is not served."""
        from engine.errors import SpecError
        from engine.spec import parse_spec

        with self._opening:
            stored = self.store.specs.get(name)
            if stored is None or self._digests.get(name) == stored.digest:
                return self.opened.get(name)
            self._digests[name] = stored.digest
            try:
                fleet = parse_spec(
                    stored.text.encode("utf-8"),
                    file=f"the stored spec of {name}",
                    state_dir=self.state_dir,
                )
            except SpecError as error:  # stored by an older engine whose schema allowed it
                problem = redact(f"fleet {name}: its stored spec is not valid now: {error}")
                log.warning("%s", problem, extra={"fleet": name})
                return self.opened.get(name)
            before = self.opened.get(name)
            kept = before.watch if before is not None and before.watch is not None else None
            same = kept is not None and kept.opened and kept.fleet.provider == fleet.provider
            log.info("serving %s as its spec %s says", name, stored.digest[:12],
                     extra={"fleet": name})  # fmt: skip
            found = open_fleet(
                fleet,
                self.store,
                self.state_dir,
                self.listen,
                site=kept.site if same and kept is not None else None,
                spec_digest=stored.digest,
            )
            if found.problem:
                log.warning("%s", found.problem, extra={"fleet": name})
            self.opened[name] = found
            if before is not None:
                self._retire(before)
            self.on_open(found)
            return found

    def hosted(self, name: str) -> Site | None:
        """Where this service's control plane serves fleet `name` (its spec as stored now),
        when it can make and install its servers; else None."""
        found = self.refresh(name)
        if found is None or found.watch is None or found.installer is None:
            return None
        return found.watch.site

    def install(self, target: InstallTarget, fleet: FleetSettings) -> InstallResult:
        """Install with the fleet's installer; a fleet this service cannot install is left
        to the control plane that can (an `engine up`'s, another `engine serve`)."""
        found = self.opened.get(fleet.name)
        if found is None or found.installer is None:
            raise Elsewhere(f"this engine serve cannot install {fleet.name}")
        return found.installer(target, fleet)

    def provision(self, record: ServerRecord, fleet: FleetSettings) -> Provisioned:
        """Make the server with the fleet's provisioner, for its spec as stored now."""
        found = self.refresh(fleet.name)
        if found is None or found.provisioner is None:
            raise Elsewhere(f"this engine serve cannot make servers of {fleet.name}")
        return found.provisioner(record, fleet)

    def close(self) -> None:
        with self._opening:
            for found in self.opened.values():
                if found.watch is not None:
                    found.watch.backend.close()
            for backend in self._retired:
                backend.close()


def _health(
    served: ServedFleets,
    loops: ReconcileLoops,
    workers: Callable[[], int],
    expected_workers: int,
) -> Callable[[], Sequence[str]]:
    def degraded() -> list[str]:
        found = [o.problem for o in list(served.opened.values()) if o.problem]
        now = dt.datetime.now(dt.UTC)
        for watch in list(loops.watches.values()):
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


def _watching_specs(served: ServedFleets, stop: threading.Event) -> None:
    """Open every fleet whose spec the store gets or changes, until `stop`."""
    while not stop.wait(SPECS_POLL_S):
        try:
            served.sync()
        except Exception as error:  # the store or a provider: the next poll again
            log.warning("reading the fleets' specs failed: %s", redact(str(error)))


def serve(
    store: Store,
    state_dir: Path,
    specs: Sequence[Path],
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
    on_listening: Callable[[str, str], None] = lambda _url, line: print(line),
    sign_in_links: SignInLinks | None = None,
) -> None:
    """Run the control plane, every job kind and a reconcile loop per fleet until `stop` is
    set; then drain. The spec files in `specs` are stored as their fleets' desired states
    first; every fleet whose spec the store holds is served, those the fleet API registers
    while it runs included. `state` is the store's URL as given (None: the state
    directory's), which the fleet API's applies open again as `engine up` does; the dashboard
    takes `sign_in_links` (`engine dashboard`'s). Once it listens, `on_listening` is called
    with the control plane's URL and a line that says so."""
    from engine.controlplane.jobs import worker_id
    from engine.controlplane.runner import default_registry, running_control_plane
    from engine.reconcile import LEASE_S
    from engine.remote import ApplyHandler, RemotePlanner, ServerActionHandler

    for path in specs:
        register_spec(store, path, state_dir)
    served = ServedFleets(store, state_dir, listen)
    served.sync()
    opened = list(served.opened.values())
    loops = ReconcileLoops(
        store,
        [o.watch for o in opened if o.watch is not None],
        worker_id(),
        lease_s=lease_s or LEASE_S,
    )
    pool_size: list[Callable[[], int]] = []
    health = _health(served, loops, lambda: pool_size[0]() if pool_size else workers, workers)
    registry = default_registry(
        store, state_dir, installer=install_entry or served.install, provisioner=served.provision
    )
    # The fleet API's applies and server actions run as jobs, through `engine up`'s path,
    # with this service's control plane for the fleets it serves.
    registry.register(ApplyHandler(store, state_dir, state, hosted=served.hosted))
    registry.register(ServerActionHandler(store, state_dir, state, hosted=served.hosted))
    watcher_stop = threading.Event()
    with ExitStack() as stack:
        stack.callback(served.close)
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
                health=health,
                dashboard=True,
                sign_in_links=sign_in_links,
                drain_s=drain_s,
                root_logging=True,
            )
        )
        pool_size.append(lambda: plane.workers.alive)
        listening: set[tuple[str, int]] = set()

        def opened_now(found: Opened) -> None:
            watch = found.watch
            if watch is None:
                return
            loops.put(watch)
            local = watch.fleet.provider.name is ProviderName.LOCAL
            where = (watch.site.host, watch.site.port)
            if watch.opened and local and where not in listening:
                # The fleet's servers phone home and report on its network's gateway.
                plane.also_listen(*where)
                listening.add(where)

        for found in opened:
            opened_now(found)
        served.on_open = opened_now
        served.on_close = loops.remove
        stack.enter_context(loops)
        watcher = threading.Thread(
            target=_watching_specs, args=(served, watcher_stop), name="specs", daemon=True
        )
        watcher.start()
        stack.callback(watcher.join)
        stack.callback(watcher_stop.set)
        served_names = ", ".join(f.name for f in store.fleets.all()) or "none registered yet"
        on_listening(
            plane.url,
            f"control plane listening on {plane.url} (fleets: {served_names}); "
            f"dashboard at {plane.url}/",
        )
        stop.wait()
        log.info("stopping: finishing the reconcile runs and jobs under way")
