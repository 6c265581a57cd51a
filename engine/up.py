"""`engine up` and `engine destroy` as functions: one orchestration for every provider.

    up:       open the provider's backend (tools, credentials, images: nothing changes yet)
              -> lock the stack -> read what exists (the provider's servers and their power,
              what their agents say) and plan, repairs included -> show it -> confirm ->
              register the fleet -> start the control plane -> carry out the plan through the
              backend (new servers get their user_data, with a one-time token, before they
              are made) -> drive every server to ready (phone-home, install, agent), trying a
              server that fails again while its tries last (engine.converge) -> roll the apps
              out on the ready servers through their agents (engine.apps.deploy) -> timings
    dry run:  plan -> ask every installed server over SSH what an install would change
    destroy:  open -> lock -> plan the deletion of everything -> confirm -> the backend deletes
              every resource -> every state row and every key of the fleet go

What differs between providers is a `Backend` (engine.providers.seam, which backends import
instead of this module): the local one (engine/providers/local/backend.py) makes containers in
the engine's Docker, one provision job per server; the clouds' (engine/providers/cloud/
backend.py) runs the fleet's Pulumi program (stacks/), which declares every server at once.

Every step is recorded in the state store as it happens, and every step is safe to repeat,
so a run that dies anywhere (even `kill -9`) is finished by the next `engine up`: servers
half-created are made by their durable job or the next program run, servers booting phone
home to a control plane listening where they expect it, servers phoned home are installed,
nothing is made twice. And whatever happened to a server since (deleted, stopped, killed
mid-install, failed), the next `engine up` plans its repair from what the provider and its
agent say now, with a fresh budget of tries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from engine.catalog import load_catalog
from engine.errors import EngineError
from engine.model import Fleet, ProviderName, Server, Stage
from engine.plan import Change, Plan
from engine.progress import ServerStage, StageBoard, render_timings
from engine.providers import ActualServer
from engine.providers.seam import Backend, Provisioned, RunOptions, Site
from engine.spec import load_spec
from engine.state import FleetSettings, Lock, NewJob, ServerRecord
from engine.state.store import Store
from engine.tokens import find_fleet_id

if TYPE_CHECKING:
    from engine.apps.deploy import AppsOutcome
    from engine.apps.diff import AppsObserved
    from engine.install.installer import FleetInstaller
    from engine.install.model import HostResult
    from engine.preview import Observed

Confirm = Callable[[str], bool]
Say = Callable[[str], None]
POLL_S = 0.5


def backend_for(fleet: Fleet, options: RunOptions, say: Say) -> Backend:
    """The backend of `fleet`'s provider."""
    if fleet.provider.name is ProviderName.LOCAL:
        if options.listen or options.engine_addresses:
            raise EngineError(
                "--listen and --engine-address are for Hetzner Cloud and DigitalOcean; the "
                "local provider's control plane listens on its network's gateway"
            )
        from engine.providers.local.backend import LocalBackend

        return LocalBackend(fleet, options.state_dir, say)
    from engine.providers.cloud.backend import CloudBackend

    return CloudBackend(
        fleet,
        options.state_dir,
        say,
        listen=options.listen,
        engine_addresses=options.engine_addresses,
    )


def _show_plan(plan: Plan, board: StageBoard, out: TextIO) -> None:
    from engine.render import render_json, render_text
    from engine.term import use_colour

    if board.json_lines:
        board.event("plan", plan=render_json(plan))
    else:
        out.write(render_text(plan, colour=use_colour(out)))
        out.flush()


class FleetRun:
    """One `engine up` of one fleet, with the store locked and the control plane running:
    the bookkeeping every backend does the same way (what it is to a backend is
    engine.providers.seam.FleetRun)."""

    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        state_dir: Path,
        board: StageBoard,
        settings: FleetSettings,
        site: Site,
        *,
        provisions: bool,
        fleet_id: str = "",
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.state_dir = state_dir
        self.board = board
        self.settings = settings
        self.site = site
        # Whether the control plane's provision jobs make servers (else the backend does).
        self.provisions = provisions
        self.fleet_id = fleet_id

    # --- carrying out the plan ------------------------------------------------------------

    def user_data(self, server: Server, *, fresh: bool = False) -> str:
        """The server's pinned user_data: the stored one, else (or when `fresh`) a new one
        with a new one-time token."""
        from engine.cloudinit import phone_home_url, pin_user_data, render_user_data
        from engine.install.deploykey import ensure_deploy_key
        from engine.tokens import PhoneHomeSeal, ensure_fleet_key, mint_phone_home_token

        fleet = self.fleet
        key = ensure_fleet_key(self.state_dir, fleet.name)
        deploy = ensure_deploy_key(self.state_dir, fleet.name)

        def render() -> str:
            token, record = mint_phone_home_token(
                key, fleet=fleet.name, server=server.name, ttl_s=fleet.control_plane.token_ttl_s
            )
            self.store.phone_homes.add_token(record)
            return render_user_data(
                fleet=fleet.name,
                server=server.name,
                hostname=server.name,
                phone_home_url=phone_home_url(self.site.url),
                token=token,
                admin_user=fleet.ssh.user,
                authorized_keys=(*fleet.ssh.authorized_keys, deploy),
                provider=fleet.provider.name,
                ssh_port=fleet.ssh.port,
                give_up_after_s=fleet.control_plane.token_ttl_s,
            )

        return pin_user_data(
            self.store.user_data,
            fleet=fleet.name,
            server=server.name,
            seal=PhoneHomeSeal(key=key, fleet=fleet.name, server=server.name),
            render=render,
            fresh=fresh,
        )

    def create(self, server: Server, *, provision: bool) -> None:
        """Record a server about to be made, with new user_data (and token): nothing was made
        from the one stored before, if any. With `provision`, a provision job makes it.

        A record left from before (a server deleted outside the engine, or one that failed)
        is history, not the server: it starts again as requested."""
        from engine.controlplane.handlers import PROVISION_JOB
        from engine.controlplane.servers import request_server

        old = self.store.servers.get(self.fleet.name, server.name)
        if old is not None and (old.provider_id or old.stage is Stage.FAILED):
            self.store.servers.forget(self.fleet.name, server.name)
        request_server(self.store, self.fleet, server)
        self.user_data(server, fresh=True)
        if provision:
            self.store.jobs.enqueue(
                NewJob(
                    kind=PROVISION_JOB,
                    fleet=self.fleet.name,
                    server=server.name,
                    key=f"{PROVISION_JOB}/{self.fleet.name}/{server.name}",
                )
            )

    def reinstall(self, name: str, reason: str = "") -> None:
        """Install the server again (its stage goes back to installing, with `reason`)."""
        from engine.controlplane.phonehome import install_job

        # Not installed until this install ends: a heartbeat of the agent as it was must not
        # make the server ready meanwhile.
        self.store.servers.update(
            self.fleet.name, name, stage=Stage.INSTALLING, reason=reason, installed_at=None
        )
        self.store.jobs.enqueue(install_job(self.fleet.name, name))

    def keep_addresses(self, actual: Sequence[ActualServer]) -> None:
        """Record the IPv4 address the provider lists for each server it lists under the id the
        store knows: a machine started again can come back on another address (a local one
        does), and the engine must reach it, and only it, there."""
        known = {r.name: r for r in self.store.servers.all(self.fleet.name)}
        for server in actual:
            record = known.get(server.name)
            if record is None or record.provider_id != server.provider_id or not server.ipv4:
                continue
            if record.ipv4 != server.ipv4:
                self.store.servers.update(self.fleet.name, server.name, ipv4=server.ipv4)
                self.board.note(
                    f"{server.name} is at {server.ipv4} now (the store had {record.ipv4})"
                )

    def powered_on(self, name: str) -> None:
        """A server the backend started again: installed again if it had phoned home (which
        checks it and starts its agent), else looked for by polling (its phone-home is spent)."""
        record = self.store.servers.get(self.fleet.name, name)
        if record is None:
            return
        if record.host_keys:
            self.reinstall(name, "powered on: installed again")
        else:
            self.store.servers.update(
                self.fleet.name, name, stage=Stage.BOOTING, reason="powered on"
            )
            self.start_polling(name)

    def register(self, name: str, made: Provisioned) -> None:
        """A server the backend made: its id and addresses recorded, and it is booting."""
        from engine.controlplane.servers import register_server

        register_server(
            self.store,
            self.settings,
            name,
            provider_id=made.provider_id,
            ipv4=made.ipv4,
            ipv6=made.ipv6,
            private_ips=made.private_ips,
        )

    def start_polling(self, name: str) -> None:
        """Look for a booting server by polling (it will not phone home)."""
        from engine.controlplane.servers import start_polling

        start_polling(self.store, self.settings, name)

    def adopt(self, change: Change) -> None:
        from engine.controlplane.servers import request_server

        assert change.after is not None and change.before is not None
        request_server(self.store, self.fleet, change.after)
        before = change.before
        self.register(
            change.server,
            Provisioned(
                provider_id=before.provider_id,
                ipv4=before.ipv4,
                ipv6=before.ipv6,
                private_ips=before.private_ips,
            ),
        )
        # Its host keys were never pinned: it is found by polling, keys read by a key scan.
        self.start_polling(change.server)

    def resized(self, name: str, server_type: str) -> None:
        self.store.servers.update(self.fleet.name, name, server_type=server_type)
        self.store.events.record(
            self.fleet.name, "server.resized", f"{name} is {server_type} now", server=name
        )

    def deleted(self, name: str) -> None:
        self.store.servers.forget(self.fleet.name, name)
        self.store.events.record(self.fleet.name, "server.deleted", f"{name} deleted", server=name)

    # --- resuming -------------------------------------------------------------------------

    def resume(self, record: ServerRecord) -> None:
        """Move on a server an earlier run left on its way: each step again. (A failed one is
        the plan's: it retries it.)

        Where the backend makes servers itself (in `carry_out`, which ran already), a server
        not made yet is left to the next run's backend.
        """
        from engine.controlplane.handlers import PROVISION_JOB
        from engine.controlplane.phonehome import install_job

        name = record.name
        stage = record.stage
        if stage in (Stage.REQUESTED, Stage.CREATING) and self.provisions:
            self.store.jobs.enqueue(
                NewJob(
                    kind=PROVISION_JOB,
                    fleet=self.fleet.name,
                    server=name,
                    key=f"{PROVISION_JOB}/{self.fleet.name}/{name}",
                )
            )
        elif stage is Stage.BOOTING and self.site.moved:
            # Its phone-home goes to where the last control plane listened: look for it.
            self.start_polling(name)
        elif stage in (Stage.PHONED_HOME, Stage.INSTALLING):
            self.store.jobs.enqueue(install_job(self.fleet.name, name))

    # --- waiting --------------------------------------------------------------------------

    def wait(self, names: list[str], timeout_s: float) -> dict[str, ServerRecord]:
        """Until every one of `names` is settled (or the timeout), the board kept current."""
        from engine.controlplane.servers import wait_until_ready

        def show(records: Mapping[str, ServerRecord]) -> None:
            now = dt.datetime.now(dt.UTC)
            self.board.update(
                [
                    ServerStage(
                        name=r.name, stage=r.stage, since=r.updated_at or now, reason=r.stage_reason
                    )
                    for r in sorted(records.values(), key=lambda r: names.index(r.name))
                ]
            )

        return wait_until_ready(
            self.store, self.fleet.name, names, timeout_s=timeout_s, poll_s=POLL_S, on_poll=show
        )


def _timings(store: Store, fleet: str, names: list[str]) -> tuple[str, dict[str, object]]:
    from engine.lifecycle import STEPS, median_durations, step_durations

    transitions = store.servers.transitions(fleet)
    records = {r.name: r for r in store.servers.all(fleet)}
    rows = {
        name: step_durations(records[name], [t for t in transitions if t.server == name])
        for name in names
        if name in records
    }
    medians = median_durations(list(rows.values()))
    table = render_timings(rows, medians, STEPS)
    return table, {"servers": {k: dict(v) for k, v in rows.items()}, "medians": dict(medians)}


@contextmanager
def serving(
    fleet: Fleet,
    store: Store,
    backend: Backend,
    options: RunOptions,
    board: StageBoard,
    servers: Mapping[str, Server],
    site: Site | None = None,
) -> Iterator[FleetRun]:
    """The fleet registered, its keys and id made and a control plane running for the block
    (at `site`, else where the backend says), with the backend's provisioner and the
    installer: what bringing servers to ready needs. With `options.hosted`, the control plane
    that already serves the fleet there makes, installs and hears the servers: none is
    started."""
    from engine.controlplane.fleets import register_fleet
    from engine.controlplane.runner import running_control_plane
    from engine.install.deploykey import ensure_deploy_key
    from engine.install.runner import FORKER
    from engine.tokens import ensure_fleet_id, ensure_fleet_key

    if servers and options.hosted is None:
        # While the servers are made and boot, the install forker loads what installs need.
        FORKER.prepare()
    site = site or options.hosted or backend.site()
    settings = register_fleet(store, fleet, url=site.url, sources=site.sources)
    ensure_fleet_key(options.state_dir, fleet.name)
    ensure_deploy_key(options.state_dir, fleet.name)
    fleet_id = ensure_fleet_id(options.state_dir, fleet.name)
    provisioner = backend.provisioner(store, servers)
    run = FleetRun(
        fleet,
        store,
        options.state_dir,
        board,
        settings,
        site,
        provisions=provisioner is not None,
        fleet_id=fleet_id,
    )
    if options.hosted is not None:
        yield run
        return
    with running_control_plane(
        store,
        options.state_dir,
        host=site.host,
        port=site.port,
        installer=fleet_installer(fleet, backend, site, options.state_dir),
        provisioner=provisioner,
        workers=max(2, min(8, len(servers))),
        log_level="warning",  # the board says what happens; uvicorn's lines would not
    ):
        yield run


def fleet_installer(fleet: Fleet, backend: Backend, site: Site, state_dir: Path) -> FleetInstaller:
    """The installer of `fleet`'s servers, agents reporting to `site`."""
    from engine.install.installer import FleetInstaller
    from engine.install.seam import install_log_dir
    from engine.preview import fleet_digest

    return FleetInstaller(
        state_dir=state_dir,
        fleets={fleet.name: fleet},
        control_plane_url=site.url,
        control_plane_sources=site.sources,
        agent_image=backend.agent_image,
        digests={fleet.name: fleet_digest(fleet, site.url, site.sources)},
        docker_url=backend.docker_url,
        log_dir=install_log_dir(state_dir, fleet.name),
    )


def placed_servers(fleet: Fleet, store: Store, state_dir: Path) -> dict[str, Server]:
    """The fleet's servers by name, those the store knows pinned to where they are."""
    from engine.placement import expand_fleet

    catalog = load_catalog(fleet.provider.name, state_dir)
    pinned = {r.name: r.location for r in store.servers.all(fleet.name) if r.location}
    return {s.name: s for s in expand_fleet(fleet, catalog, pinned)}


def hold_fleet_lock(
    store: Store, fleet: Fleet, command: str, board: StageBoard
) -> AbstractContextManager[Lock]:
    """The fleet's stack lock, taking over one whose holder provably died (and saying so)."""

    def say(lock: Lock) -> None:
        board.note(
            f"taking over the lock {lock.lock_id} of `{lock.command}` (pid {lock.pid}), "
            "which died without releasing it"
        )

    return store.locks.hold(fleet.name, command=command, on_stale=say)


@dataclass(frozen=True, slots=True)
class Session:
    """A mutating command's fleet, board, provider backend and state store, lock held."""

    fleet: Fleet
    board: StageBoard
    backend: Backend
    store: Store


@contextmanager
def locked_session(
    spec: Path,
    options: RunOptions,
    out: TextIO,
    command: str,
    *,
    tools: bool,
    full: bool,
    recorded: bool = False,
) -> Iterator[Session]:
    """The fleet of `spec` with its backend ready (its tools checked first when `tools`;
    `open`ed when `full`, else only connected: nothing changes before), the state store,
    and the fleet's lock held for `command` (the command line, as the lock shows it).

    The store is checked first (before the backend is touched); with `recorded`, for a
    command that acts on what the engine recorded of the fleet, there must be one: without
    it the command is refused (require_store) and the state directory is not made."""
    from engine.state.files import private_dir
    from engine.state.store import check_state, open_state

    fleet = load_spec(spec, state_dir=options.state_dir)
    if recorded:
        require_store(fleet, spec, options)
    check_state(options.state_dir, options.state)
    board = StageBoard(out, json_lines=options.json_lines)
    backend = backend_for(fleet, options, board.note)
    try:
        if tools:
            backend.check_tools()
        if full:
            backend.open()
        else:
            backend.connect()
        private_dir(options.state_dir)  # only now: a run that cannot start leaves nothing
        with (
            open_state(options.state_dir, options.state) as store,
            hold_fleet_lock(store, fleet, command, board),
        ):
            if full and options.hosted is None:
                refuse_if_served(store, fleet.name)
            yield Session(fleet, board, backend, store)
    finally:
        backend.close()


def require_store(fleet: Fleet, spec: Path, options: RunOptions) -> str:
    """The URL of the state store, for a command that acts on what the engine recorded of
    `fleet`; an EngineError, before anything is made, when there is no store yet."""
    from engine.state.store import named_state_url, state_url, store_exists

    url = state_url(options.state_dir, options.state)
    if not store_exists(url):
        where = f"at {url}" if named_state_url(options.state) else f"in {options.state_dir}"
        raise EngineError(
            f"the engine has no record of fleet {fleet.name}: there is no state store {where}; "
            f"run `engine up {spec}` first (nothing was changed)"
        )
    return url


def refuse_if_served(store: Store, fleet: str) -> None:
    """An EngineError when a live `engine serve` other than this process serves `fleet` (it
    holds the fleet's reconcile lease): its servers report to that service's control plane,
    and a run that starts one of its own would move them there and back."""
    from engine.controlplane.jobs import is_dead_owner

    lease = store.leases.get(fleet)
    if lease is None or lease.expires_at <= dt.datetime.now(dt.UTC):
        return
    host, _, rest = lease.owner.partition("/")
    pid = rest.partition("/")[0]
    if is_dead_owner(lease.owner) or (host, pid) == (socket.gethostname(), str(os.getpid())):
        return
    raise EngineError(
        f"fleet {fleet} is served by `engine serve` (process {pid} on {host}), whose control "
        "plane its servers report to; change it through that service (PUT "
        f"/v1/fleets/{fleet} with the spec, then a plan and its apply) or stop the service "
        "first (nothing was changed)"
    )


def up(
    spec: Path,
    options: RunOptions,
    out: TextIO,
    confirm: Confirm,
    *,
    check: Callable[[Observed, Plan], None] | None = None,
) -> int:
    """Make the fleet in `spec` exist and be ready; 0 when every server is ready.

    The spec is read once, and the plan made once: from what the backend it opened reads (its
    servers, their power, their agents), what the agents say runs there, and the records of
    the store it locked. A server that fails on its way is looked at again and tried again
    while its tries last; the apps roll out once the servers are ready. `check` sees what was
    observed and the plan, with the lock held, before anything changes, and may raise to stop
    the run there (an API apply refuses a plan that is not the one it saved)."""
    from engine.apps.deploy import check_environment, roll_fleet_apps
    from engine.apps.observe import observe_apps
    from engine.converge import converge
    from engine.install.deploykey import ensure_deploy_key
    from engine.preview import fleet_digest, observe, plan_fleet, recorded

    started = time.monotonic()
    with locked_session(spec, options, out, f"engine up {spec}", tools=True, full=True) as session:
        fleet, board, backend, store = session.fleet, session.board, session.backend, session.store
        check_environment(fleet)
        catalog = load_catalog(fleet.provider.name, options.state_dir)
        site = options.hosted or backend.site()
        digest = fleet_digest(fleet, site.url, site.sources)

        def observe_now() -> Observed:
            return observe(
                fleet, backend.reader(), recorded(store, fleet.name),
                state_dir=options.state_dir,
            )  # fmt: skip

        keys = (*fleet.ssh.authorized_keys, ensure_deploy_key(options.state_dir, fleet.name))

        def plan_of(observed: Observed, apps: AppsObserved | None = None) -> Plan:
            return plan_fleet(
                fleet, catalog, observed, install_hash=digest,
                fleet_id=find_fleet_id(options.state_dir, fleet.name),
                delete_orphans=options.delete_orphans, adopt=options.adopt, apps=apps,
                engine_sources=site.sources, ssh_public_keys=keys,
            )  # fmt: skip

        observed = observe_now()
        plan = plan_of(observed, observe_apps(fleet, store, options.state_dir, observed.records))
        if check is not None:
            check(observed, plan)
        _show_plan(plan, board, out)
        if plan.is_blocked:
            return 1
        records = {r.name: r for r in store.servers.all(fleet.name)}
        servers = placed_servers(fleet, store, options.state_dir)
        unsettled = [n for n in servers if n not in records or records[n].stage is not Stage.READY]
        if not plan.has_changes and not unsettled:
            board.note(f"Nothing to do: all {len(servers)} servers of {fleet.name} are ready.")
            if board.json_lines:  # machines always get the final event
                seconds = time.monotonic() - started
                return report(store, fleet, list(servers), records, board, out, seconds)
            return 0
        if plan.has_changes and not (options.yes or confirm("Apply these changes?")):
            board.note("Nothing changed.")
            return 1
        with serving(fleet, store, backend, options, board, servers, site) as run:

            def replan() -> Plan:
                again = observe_now()
                run.keep_addresses(again.actual)
                return plan_of(again)

            run.keep_addresses(observed.actual)
            backend.carry_out(plan, run, tuple(servers.values()))
            changed = {c.server for c in plan.changes}
            for record in store.servers.all(fleet.name):
                if record.name in servers and record.name not in changed:
                    run.resume(record)
            names = list(servers)
            final, tries = converge(
                run,
                names,
                replan=replan,
                carry_out=lambda again: backend.carry_out(again, run, tuple(servers.values())),
                tries=options.attempts,
                timeout_s=options.timeout_s,
            )
        rolled = roll_fleet_apps(
            fleet, store, options.state_dir, board, list(servers.values()), backend.docker_url
        )
        seconds = time.monotonic() - started
        return report(store, fleet, names, final, board, out, seconds, tries=tries, apps=rolled)


def dry_run(spec: Path, options: RunOptions, out: TextIO) -> int:
    """`engine up --dry-run`: the plan, and for every installed server the install operations
    that would change something (pyinfra's facts read over SSH with the pinned host keys).
    Nothing changes: no lock, no control plane, no server touched. What `engine up` refuses
    before it changes anything (options of the wrong provider, no Pulumi CLI) it refuses too.
    0 when every server could be asked and the plan is not blocked."""
    from engine.addresses import ssh_address
    from engine.install.deploykey import deploy_key_path
    from engine.install.seam import install_target
    from engine.preview import preview_fleet
    from engine.state.store import open_store, state_url, store_exists

    fleet = load_spec(spec, state_dir=options.state_dir)
    board = StageBoard(out, json_lines=options.json_lines)
    # What `engine up` refuses before it changes anything, a dry run refuses too, before it
    # asks the provider anything.
    backend = backend_for(fleet, options, board.note)
    backend.check_tools()
    plan = preview_fleet(
        fleet, spec, state_dir=options.state_dir, state=options.state,
        delete_orphans=options.delete_orphans,
    )  # fmt: skip
    _show_plan(plan, board, out)
    url = state_url(options.state_dir, options.state)
    settings: FleetSettings | None = None
    records: Sequence[ServerRecord] = ()
    if store_exists(url):  # no store: nothing installed, and none is made
        with open_store(url) as store:
            settings = store.fleets.get(fleet.name)
            records = store.servers.all(fleet.name)
    installed = [r for r in records if r.installed_at and r.host_keys and ssh_address(r)]
    if settings is None or not installed:
        board.note(f"No server of {fleet.name} is installed yet: no install to compare.")
        return 1 if plan.is_blocked else 0
    key = deploy_key_path(options.state_dir, fleet.name)
    targets = [install_target(r, settings, ssh_address(r) or "", key) for r in installed]
    try:
        backend.open()
        installer = fleet_installer(fleet, backend, backend.site(), options.state_dir)
        board.note(
            f"Asking {len(targets)} installed server(s) what an install would change "
            "(dry run: nothing changes)"
        )

        one_at_a_time = threading.Lock()  # results come from the installer's threads

        def said(result: HostResult) -> None:
            with one_at_a_time:
                _said_dry_run(board, result)

        results = installer.dry_run(targets, said)
    finally:
        backend.close()
    return 0 if all(r.ok for r in results) and not plan.is_blocked else 1


def _said_dry_run(board: StageBoard, result: HostResult) -> None:
    if board.json_lines:
        board.event("install_dry_run", server=result.name, ok=result.ok,
                    would_change=list(result.changed), error=result.error)  # fmt: skip
    elif not result.ok:
        board.note(f"{result.name}: could not ask: {result.error}")
    elif result.changed:
        board.note(
            f"{result.name}: {len(result.changed)} operation(s) would change: "
            + "; ".join(result.changed)
        )
    else:
        board.note(f"{result.name}: nothing would change")


def report(
    store: Store,
    fleet: Fleet,
    names: list[str],
    final: Mapping[str, ServerRecord],
    board: StageBoard,
    out: TextIO,
    seconds: float,
    *,
    tries: Mapping[str, int] | None = None,
    apps: AppsOutcome | None = None,
) -> int:
    """The timing table and who is not ready, one line each with the cause (and, for a
    failed server, how many tries it had); 0 when every one of `names` is ready (and every
    app rollout, if any, succeeded)."""
    table, timings = _timings(store, fleet.name, names)
    ready = [n for n in names if n in final and final[n].stage is Stage.READY]
    stuck = {
        n: (final[n].stage.value if n in final else "missing") for n in names if n not in ready
    }
    reasons = {n: final[n].stage_reason for n in stuck if n in final and final[n].stage_reason}
    tried = {n: (tries or {}).get(n, 1) for n in stuck}
    failed_apps = apps is not None and not apps.ok
    if board.json_lines:
        board.event("done", ready=ready, not_ready=stuck, reasons=reasons, tries=tried,
                    seconds=round(seconds, 1), timings=timings,
                    apps=apps.to_json() if apps else {})  # fmt: skip
    else:
        out.write("\n" + table + "\n")
        if stuck:
            for name, stage in stuck.items():
                after = ""
                if stage == Stage.FAILED and tries is not None:
                    after = f" after {tried[name]} tr{'y' if tried[name] == 1 else 'ies'}"
                why = f": {reasons[name]}" if name in reasons else ""
                out.write(f"{name} is {stage}{after}{why}\n")
            out.write(
                f"{len(ready)} of {len(names)} servers ready after {seconds:.1f} s; "
                "`engine status` shows where each one is, `engine up` again carries on "
                "(with a fresh budget of tries)\n"
            )
        else:
            out.write(f"{len(ready)} servers ready in {seconds:.1f} s\n")
        if failed_apps:
            out.write("an app rollout did not succeed (see above); `engine apps status` shows "
                      "what runs where\n")  # fmt: skip
        out.flush()
    return 0 if not stuck and not failed_apps else 1


def destroy(
    spec: Path,
    options: RunOptions,
    out: TextIO,
    confirm: Confirm,
    *,
    delete_snapshots: bool = False,
) -> int:
    """Delete every resource of the fleet, its state rows, its install logs and locks, and
    its keys. Its snapshots are backups: the plan lists them and they are kept, unless
    `delete_snapshots`."""
    from engine.diff import DiffOptions, diff_fleet, plan_snapshots
    from engine.install.deploykey import deploy_key_path
    from engine.install.seam import forget_install_files
    from engine.install.sharing import forget_sharing
    from engine.preview import recorded_digest
    from engine.tokens import fleet_id_path, key_path

    with locked_session(
        spec, options, out, f"engine destroy {spec}", tools=True, full=False
    ) as session:
        fleet, board, store = session.fleet, session.board, session.store
        fleet_id = find_fleet_id(options.state_dir, fleet.name)
        reader = session.backend.reader()
        actual = reader.read_servers()
        empty = dataclasses.replace(fleet, groups=())
        catalog = load_catalog(fleet.provider.name, options.state_dir)
        plan = diff_fleet(
            empty,
            catalog,
            actual,
            store.servers.all(fleet.name),
            options=DiffOptions(
                delete_orphans=True,
                destroying=True,
                compared_with=f"{fleet.provider.name} (read just now)",
                fleet_id=fleet_id,
                install_hash=recorded_digest(fleet, store.fleets.get(fleet.name)),
            ),
            listed=reader.read_resources(actual),  # all of them go too
        )
        snapshots = session.backend.snapshots()
        plan, deleted = plan_snapshots(
            plan, fleet, snapshots, delete=delete_snapshots, spec=str(spec), fleet_id=fleet_id
        )
        _show_plan(plan, board, out)
        if plan.is_blocked:  # another state directory's servers are never destroyed from here
            return 1
        if plan.has_changes and not (options.yes or confirm("Destroy every server of this fleet?")):
            board.note("Nothing changed.")
            return 1
        session.backend.teardown()
        session.backend.delete_snapshots(deleted)
        store.forget_fleet(fleet.name)
        # The fleet id stays while snapshots that carry it are kept: it is what tells them
        # from another state directory's, for a later --delete-snapshots.
        kept_ours = any(s.fleet_id == fleet_id for s in snapshots if fleet_id and s not in deleted)
        for path in (
            key_path(options.state_dir, fleet.name),
            *(() if kept_ours else (fleet_id_path(options.state_dir, fleet.name),)),
            deploy_key_path(options.state_dir, fleet.name),
            deploy_key_path(options.state_dir, fleet.name).with_suffix(".pub"),
        ):
            path.unlink(missing_ok=True)
        forget_sharing(options.state_dir, fleet.name)
        forget_install_files(options.state_dir, fleet.name)
        said = f"Destroyed fleet {fleet.name}: {len(actual)} server(s), its networks and state"
        if deleted:
            said += f", {len(deleted)} snapshot(s) deleted"
        if len(snapshots) > len(deleted):
            said += f", {len(snapshots) - len(deleted)} snapshot(s) kept"
        board.note(said + ".")
    return 0
