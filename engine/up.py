"""`engine up` and `engine destroy` as functions.

    up:       lock the stack -> read what exists -> plan -> show it -> confirm -> start the
              control plane -> carry out the plan -> drive every server to ready -> timings
    destroy:  lock -> plan the deletion of everything -> confirm -> delete every resource,
              every state row and every key of the fleet

Every step is recorded in the state store as it happens, and every step is safe to repeat,
so a run that dies anywhere (even `kill -9`) is finished by the next `engine up`: servers
half-created are provisioned by their durable job, servers booting phone home to a control
plane listening where they expect it, servers phoned home are installed, nothing is made twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from engine.catalog import load_catalog
from engine.errors import EngineError
from engine.model import Fleet, ProviderName, Server, Stage
from engine.plan import Action, Change, Plan
from engine.progress import ServerStage, StageBoard, render_timings
from engine.spec import load_spec
from engine.state import FleetSettings, Lock, NewJob, ServerRecord
from engine.state.store import Store

if TYPE_CHECKING:
    from engine.local.backend import LocalBackend

Confirm = Callable[[str], bool]
POLL_S = 0.5
SETTLED = frozenset({Stage.READY, Stage.FAILED, Stage.UNHEALTHY})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    state_dir: Path
    state: str | None = None
    yes: bool = False
    json_lines: bool = False
    timeout_s: float = 900.0
    delete_orphans: bool = False


def _require_local(fleet: Fleet) -> None:
    if fleet.provider.name is not ProviderName.LOCAL:
        raise EngineError(
            f"engine up and destroy drive the local provider in this version; for "
            f"{fleet.provider.name}, run `engine preview` to see the plan"
        )


def _said_stale(board: StageBoard) -> Callable[[Lock], None]:
    def say(lock: Lock) -> None:
        board.note(
            f"taking over the lock {lock.lock_id} of `{lock.command}` (pid {lock.pid}), "
            "which died without releasing it"
        )

    return say


def _show_plan(plan: Plan, board: StageBoard, out: TextIO) -> None:
    from engine.render import render_json, render_text
    from engine.term import use_colour

    if board.json_lines:
        board.event("plan", plan=render_json(plan))
    else:
        out.write(render_text(plan, colour=use_colour(out)))
        out.flush()


class _Run:
    """One `engine up` of one fleet, with the store locked and the control plane running."""

    def __init__(self, fleet: Fleet, store: Store, state_dir: Path, board: StageBoard) -> None:
        self.fleet = fleet
        self.store = store
        self.state_dir = state_dir
        self.board = board

    # --- carrying out the plan ------------------------------------------------------------

    def create(self, server: Server, phone_home: str) -> None:
        from engine.cloudinit import phone_home_url, pin_user_data, render_user_data
        from engine.controlplane.handlers import PROVISION_JOB
        from engine.controlplane.servers import request_server
        from engine.controlplane.tokens import mint_phone_home_token
        from engine.deploykey import ensure_deploy_key
        from engine.tokens import ensure_fleet_key

        fleet = self.fleet
        request_server(self.store, fleet, server)
        key = ensure_fleet_key(self.state_dir, fleet.name)
        deploy = ensure_deploy_key(self.state_dir, fleet.name)

        def render() -> str:
            token = mint_phone_home_token(
                self.store,
                key,
                fleet=fleet.name,
                server=server.name,
                ttl_s=fleet.control_plane.token_ttl_s,
            )
            return render_user_data(
                fleet=fleet.name,
                server=server.name,
                hostname=server.name,
                phone_home_url=phone_home_url(phone_home),
                token=token,
                admin_user=fleet.ssh.user,
                authorized_keys=(*fleet.ssh.authorized_keys, deploy),
                provider=fleet.provider.name,
                ssh_port=fleet.ssh.port,
                give_up_after_s=fleet.control_plane.token_ttl_s,
            )

        # A server about to be made gets a new document (and token): nothing was made from
        # the one stored before, if any.
        pin_user_data(self.store, fleet=fleet.name, server=server.name, render=render, fresh=True)
        self.store.enqueue(
            NewJob(
                kind=PROVISION_JOB,
                fleet=fleet.name,
                server=server.name,
                key=f"{PROVISION_JOB}/{fleet.name}/{server.name}",
            )
        )

    def reinstall(self, name: str) -> None:
        from engine.controlplane.phonehome import install_job

        self.store.update_server(self.fleet.name, name, stage=Stage.INSTALLING)
        self.store.enqueue(install_job(self.fleet.name, name))

    def adopt(self, change: Change, settings: FleetSettings) -> None:
        from engine.controlplane.servers import register_server, request_server, start_polling

        assert change.after is not None and change.before is not None
        request_server(self.store, self.fleet, change.after)
        register_server(
            self.store,
            settings,
            change.server,
            provider_id=change.before.provider_id,
            ipv4=change.before.ipv4,
            ipv6=change.before.ipv6,
            private_ips=change.before.private_ips,
        )
        # Its host keys were never pinned: it is found by polling, keys read by a key scan.
        start_polling(self.store, settings, change.server)

    # --- resuming -------------------------------------------------------------------------

    def resume(self, record: ServerRecord, settings: FleetSettings, *, moved: bool) -> None:
        """Move on a server an earlier run left on its way (or failed): each step again."""
        from engine.controlplane.handlers import PROVISION_JOB
        from engine.controlplane.phonehome import install_job
        from engine.controlplane.servers import start_polling

        name = record.name
        stage = record.stage
        if stage is Stage.FAILED:
            if record.host_keys:
                stage = Stage.INSTALLING
            elif record.provider_id:
                stage = Stage.BOOTING
            else:
                stage = Stage.CREATING
            self.store.update_server(self.fleet.name, name, stage=stage, reason="retried")
            self.board.note(f"{name} failed before ({record.stage_reason}); trying again")
        if stage in (Stage.REQUESTED, Stage.CREATING):
            self.store.enqueue(
                NewJob(
                    kind=PROVISION_JOB,
                    fleet=self.fleet.name,
                    server=name,
                    key=f"{PROVISION_JOB}/{self.fleet.name}/{name}",
                )
            )
        elif stage is Stage.BOOTING and (moved or record.stage is Stage.FAILED):
            # Its phone-home goes to where the last control plane listened: look for it.
            start_polling(self.store, settings, name)
        elif stage in (Stage.PHONED_HOME, Stage.INSTALLING):
            self.store.enqueue(install_job(self.fleet.name, name))

    # --- waiting --------------------------------------------------------------------------

    def wait(self, names: list[str], timeout_s: float) -> dict[str, ServerRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = {r.name: r for r in self.store.servers(self.fleet.name) if r.name in names}
            self.board.update(
                [
                    ServerStage(
                        name=r.name,
                        stage=r.stage,
                        since=r.updated_at or dt.datetime.now(dt.UTC),
                        reason=r.stage_reason,
                    )
                    for r in sorted(records.values(), key=lambda r: names.index(r.name))
                ]
            )
            done = len(records) == len(names) and all(r.stage in SETTLED for r in records.values())
            if done or time.monotonic() >= deadline:
                return records
            time.sleep(POLL_S)


def _timings(store: Store, fleet: str, names: list[str]) -> tuple[str, dict[str, object]]:
    from engine.lifecycle import STEPS, median_durations, step_durations

    transitions = store.transitions(fleet)
    records = {r.name: r for r in store.servers(fleet)}
    rows = {
        name: step_durations(records[name], [t for t in transitions if t.server == name])
        for name in names
        if name in records
    }
    medians = median_durations(list(rows.values()))
    table = render_timings(rows, medians, STEPS)
    return table, {"servers": {k: dict(v) for k, v in rows.items()}, "medians": dict(medians)}


def up(spec: Path, options: RunOptions, out: TextIO, confirm: Confirm) -> int:
    """Make the fleet in `spec` exist and be ready; 0 when every server is ready."""
    from engine.controlplane.fleets import register_fleet
    from engine.controlplane.runner import running_control_plane
    from engine.deploykey import ensure_deploy_key
    from engine.installer import FleetInstaller
    from engine.local.backend import LocalBackend
    from engine.placement import expand_fleet
    from engine.preview import plan_preview
    from engine.state.store import open_store, state_url
    from engine.tokens import ensure_fleet_key

    started = time.monotonic()
    fleet = load_spec(spec, state_dir=options.state_dir)
    _require_local(fleet)
    board = StageBoard(out, json_lines=options.json_lines)
    backend = LocalBackend(fleet, options.state_dir, board.note)
    backend.open()
    url = state_url(options.state_dir, options.state)
    try:
        with (
            open_store(url) as store,
            store.lock(fleet.name, command=f"engine up {spec}", on_stale=_said_stale(board)),
        ):
            plan = plan_preview(
                spec,
                state_dir=options.state_dir,
                state=options.state,
                delete_orphans=options.delete_orphans,
            )
            _show_plan(plan, board, out)
            if plan.is_blocked:
                return 1
            records = {r.name: r for r in store.servers(fleet.name)}
            catalog = load_catalog(fleet.provider.name, options.state_dir)
            pinned = {name: r.location for name, r in records.items() if r.location}
            servers = {s.name: s for s in expand_fleet(fleet, catalog, pinned)}
            unsettled = [
                n for n in servers if n not in records or records[n].stage is not Stage.READY
            ]
            if not plan.has_changes and not unsettled:
                board.note(f"Nothing to do: all {len(servers)} servers of {fleet.name} are ready.")
                return 0
            if plan.has_changes and not (options.yes or confirm("Apply these changes?")):
                board.note("Nothing changed.")
                return 1
            settings = register_fleet(store, fleet)
            ensure_fleet_key(options.state_dir, fleet.name)
            ensure_deploy_key(options.state_dir, fleet.name)
            port, moved = backend.control_plane_port()
            url = f"http://{backend.gateway}:{port}"
            installer = FleetInstaller(
                state_dir=options.state_dir,
                fleets={fleet.name: fleet},
                control_plane_url=url,
                control_plane_sources=(backend.gateway,),
                agent_image=backend.agent_image,
                docker_url=backend.docker_url,
                log_dir=options.state_dir / "logs" / "install",
            )
            run = _Run(fleet, store, options.state_dir, board)
            with running_control_plane(
                store,
                options.state_dir,
                host=backend.gateway,
                port=port,
                installer=installer,
                provisioner=backend.provisioner(store, servers),
                workers=max(2, min(8, len(servers))),
                log_level="warning",  # the board says what happens; uvicorn's lines would not
            ):
                _apply(plan, run, backend, settings, url)
                changed = {c.server for c in plan.changes}
                for record in store.servers(fleet.name):
                    if record.name in servers and record.name not in changed:
                        run.resume(record, settings, moved=moved)
                names = list(servers)
                final = run.wait(names, options.timeout_s)
            return _report(store, fleet, names, final, board, out, time.monotonic() - started)
    finally:
        backend.close()


def _apply(plan: Plan, run: _Run, backend: LocalBackend, settings: FleetSettings, url: str) -> None:
    """Carry out the plan's changes in order (the plan lists them in execution order)."""
    driver = backend.driver
    for change in plan.changes:
        name = change.server
        if change.action is Action.CREATE:
            assert change.after is not None
            run.create(change.after, url)
        elif change.action in (Action.REPLACE, Action.UPDATE):
            # A local machine's labels, image and location are fixed when it is made.
            assert change.after is not None
            run.board.note(f"{name}: {change.action} (the machine is made again)")
            driver.delete(name)
            run.store.forget_server(run.fleet.name, name)
            run.create(change.after, url)
        elif change.action is Action.RESIZE:
            assert change.after is not None
            driver.resize(name, change.after.server_type)
            run.store.update_server(run.fleet.name, name, server_type=change.after.server_type)
            run.store.record_event(
                run.fleet.name, "server.resized", f"{name} is {change.after.server_type} now",
                server=name,
            )  # fmt: skip
        elif change.action is Action.REINSTALL:
            run.reinstall(name)
        elif change.action is Action.ADOPT:
            run.adopt(change, settings)
        elif change.action is Action.DELETE:
            driver.delete(name)
            run.store.forget_server(run.fleet.name, name)
            run.store.record_event(run.fleet.name, "server.deleted", f"{name} deleted", server=name)


def _report(
    store: Store,
    fleet: Fleet,
    names: list[str],
    final: Mapping[str, ServerRecord],
    board: StageBoard,
    out: TextIO,
    seconds: float,
) -> int:
    table, timings = _timings(store, fleet.name, names)
    ready = [n for n in names if n in final and final[n].stage is Stage.READY]
    stuck = {
        n: (final[n].stage.value if n in final else "missing") for n in names if n not in ready
    }
    reasons = {n: final[n].stage_reason for n in stuck if n in final and final[n].stage_reason}
    if board.json_lines:
        board.event("done", ready=ready, not_ready=stuck, reasons=reasons,
                    seconds=round(seconds, 1), timings=timings)  # fmt: skip
    else:
        out.write("\n" + table + "\n")
        if stuck:
            for name, stage in stuck.items():
                why = f": {reasons[name]}" if name in reasons else ""
                out.write(f"{name} is {stage}{why}\n")
            out.write(
                f"{len(ready)} of {len(names)} servers ready after {seconds:.1f} s; "
                "`engine status` shows where each one is, `engine up` again carries on\n"
            )
        else:
            out.write(f"{len(ready)} servers ready in {seconds:.1f} s\n")
        out.flush()
    return 0 if not stuck else 1


def destroy(spec: Path, options: RunOptions, out: TextIO, confirm: Confirm) -> int:
    """Delete every resource of the fleet, its state rows and its keys."""
    from engine.deploykey import deploy_key_path
    from engine.diff import DiffOptions, diff_fleet
    from engine.inventory.local import LocalReader
    from engine.local.backend import LocalBackend
    from engine.render import render_text
    from engine.state.store import open_store, state_url
    from engine.term import use_colour
    from engine.tokens import key_path

    fleet = load_spec(spec, state_dir=options.state_dir)
    _require_local(fleet)
    board = StageBoard(out, json_lines=options.json_lines)
    backend = LocalBackend(fleet, options.state_dir, board.note)
    backend.open_engine()
    client = backend.client
    try:
        with (
            open_store(state_url(options.state_dir, options.state)) as store,
            store.lock(fleet.name, command=f"engine destroy {spec}"),
        ):
            actual = LocalReader(client, fleet.name).read_servers()
            empty = dataclasses.replace(fleet, groups=())
            catalog = load_catalog(fleet.provider.name, options.state_dir)
            plan = diff_fleet(
                empty,
                catalog,
                actual,
                store.servers(fleet.name),
                options=DiffOptions(delete_orphans=True, compared_with="local (read just now)"),
            )
            if board.json_lines:
                from engine.render import render_json

                board.event("plan", plan=render_json(plan))
            else:
                out.write(render_text(plan, colour=use_colour(out)))
            if plan.has_changes and not (
                options.yes or confirm("Destroy every server of this fleet?")
            ):
                board.note("Nothing changed.")
                return 1
            backend.driver.teardown()
            store.forget_fleet(fleet.name)
            for path in (
                key_path(options.state_dir, fleet.name),
                deploy_key_path(options.state_dir, fleet.name),
                deploy_key_path(options.state_dir, fleet.name).with_suffix(".pub"),
            ):
                path.unlink(missing_ok=True)
            board.note(
                f"Destroyed fleet {fleet.name}: {len(actual)} server(s), its network and state."
            )
        return 0
    finally:
        backend.close()
