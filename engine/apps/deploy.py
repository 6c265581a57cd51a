"""Rollouts carried out: the apps step of `engine up`, and the work of `engine deploy`.

For each app with changes (engine.apps.diff, from what the agents say runs now): the new
version's definition is stored, a rollout (engine.apps.rollout) is recorded and driven to its
end, each server's step run through its agent (engine.apps.servers) in a worker thread, and
the rollout stored after every transition. A rollout an earlier run left open is taken up
where it stopped (the same version), or ended as superseded (another version). Secrets are
read from the engine's environment before anything starts, and travel only to the agents.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.agent.client import AgentClient
from engine.agent.endpoint import AgentEndpoint, stored_endpoints
from engine.apps.diff import AppsObserved, diff_apps
from engine.apps.observe import observe_apps
from engine.apps.rollout import (
    Phase,
    Rollout,
    ServerRollout,
    Step,
    Target,
    finish,
    from_json,
    new_rollout,
    next_servers,
    resume,
    rollback,
    start,
    supersede,
    to_json,
    to_watch,
)
from engine.apps.servers import AppOnServer, ImageCopies
from engine.apps.versions import AppDefinition, app_definition, container_name
from engine.diff import natural_key
from engine.errors import EngineError
from engine.lifecycle import median_durations
from engine.model import App, AppUpdate, Fleet, ProviderName, RollbackMode, Server, Stage
from engine.progress import StageBoard, render_timings
from engine.secrets import register_secret, unset_variables

if TYPE_CHECKING:
    from engine.state.store import Store

STEPS = ("image", "start", "health", "monitor", "revert")
AGENT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AppsOutcome:
    """What became of a run's rollouts: `ok` unless one failed or was rolled back, or an app
    waits. `waiting` names, per app, the servers it should go to (or be checked on) that are
    not ready or whose agent did not answer just now (it goes there once they are and do)."""

    rollouts: tuple[Rollout, ...] = ()
    waiting: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.waiting and all(r.phase is Phase.SUCCEEDED for r in self.rollouts)

    def to_json(self) -> dict[str, Any]:
        return {
            r.app: {
                "version": r.version,
                "phase": str(r.phase),
                "reason": r.reason,
                "servers": {s.server: str(s.step) for s in r.servers},
                "timings": {s.server: dict(s.timings) for s in r.servers},
            }
            for r in self.rollouts
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_secrets(apps: Iterable[App], *, optional: Iterable[str] = ()) -> dict[str, str]:
    """The values of the apps' secret variables from the engine's environment, each
    registered as a secret (masked wherever the engine writes). `optional` names are read if
    set (those of versions a rollback may need). EngineError names the missing ones."""
    wanted = sorted({name for app in apps for name in app.secret_env})
    missing = unset_variables(wanted)
    if missing:
        exports = " ".join(f"{name}=..." for name in missing)
        raise EngineError(
            f"the apps need {', '.join(missing)} from the engine's environment, which "
            f"{'is' if len(missing) == 1 else 'are'} not set; export {exports} and run again "
            "(nothing was changed)"
        )
    found = {}
    for name in {*wanted, *optional}:
        value = os.environ.get(name)
        if value:
            found[name] = register_secret(value)
    for name in wanted:  # the agent would refuse it on every server, after changes began
        size = len(found[name].encode())
        if size > MAX_SECRET_BYTES:
            raise EngineError(
                f"the secret {name} in the engine's environment is {size // 1024} KB; an app's "
                "settings reach its agent in at most 64 KB, so keep each secret under "
                f"{MAX_SECRET_BYTES // 1024} KB (nothing was changed)"
            )
    return found


# The agent takes a container's settings in one body of at most 64 KB (its max_body_bytes).
MAX_SECRET_BYTES = 32 * 1024


def registry_auth(app: App) -> dict[str, str] | None:
    """The app's registry credentials from the engine's environment, or None."""
    if app.registry is None:
        return None
    names = (app.registry.username_env, app.registry.password_env)
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        raise EngineError(
            f"{app.name} pulls with credentials from {', '.join(missing)}, which the engine's "
            "environment does not have; export them and run again (nothing was changed)"
        )
    return {
        "username": os.environ[names[0]],
        "password": register_secret(os.environ[names[1]]),
    }


def check_environment(fleet: Fleet) -> None:
    """EngineError before anything changes when the engine's environment lacks a secret or
    registry credential an app of `fleet` needs."""
    read_secrets(fleet.apps)
    for app in fleet.apps:
        registry_auth(app)


class _Copies:
    def __init__(self, sources: Mapping[str, tuple[str, Callable[[], Iterable[bytes]]]]):
        self.sources = sources

    def source(self, reference: str) -> tuple[str, Callable[[], Iterable[bytes]]] | None:
        return self.sources.get(reference)


@contextmanager
def image_copies(
    fleet: Fleet, docker_url: str | None, say: Callable[[str], None]
) -> Iterator[ImageCopies | None]:
    """On the local provider, the apps' images that the engine's Docker has, to copy to the
    servers (no registry needed), and a word on each it has not; elsewhere none: servers
    pull."""
    if fleet.provider.name is not ProviderName.LOCAL or not fleet.apps:
        yield None
        return
    from engine.providers.local.images import image_sources

    images = sorted({app.image for app in fleet.apps})
    with image_sources(docker_url, images, missing_ok=True) as sources:
        for reference in (r for r in images if r not in sources):
            say(
                f"the image {reference} is not in the engine's Docker, so the servers pull it "
                "from its registry; if it is in none, build or tag it in the engine's Docker"
            )
        yield _Copies(sources)


def roll_fleet_apps(
    fleet: Fleet,
    store: Store,
    state_dir: Path,
    board: StageBoard,
    servers: Sequence[Server],
    docker_url: str | None,
) -> AppsOutcome:
    """The apps step of `engine up`: every app rolled out on the servers that are ready,
    images copied from the engine's Docker (`docker_url`) where the provider is local."""
    with image_copies(fleet, docker_url, board.note) as copies:
        return roll_apps(fleet, store, state_dir, board, servers, copies=copies)


def roll_apps(
    fleet: Fleet,
    store: Store,
    state_dir: Path,
    board: StageBoard,
    servers: Sequence[Server],
    *,
    copies: ImageCopies | None,
    only: str | None = None,
) -> AppsOutcome:
    """Bring every app (or the one named `only`) to the spec's version on the fleet's ready
    servers, one rollout per app; what became of each."""
    if not fleet.apps and not store.apps.deployed(fleet.name):
        return AppsOutcome()
    secrets = read_secrets(
        [a for a in fleet.apps if only is None or a.name == only],
        optional=_old_secret_names(store, fleet.name),
    )
    auths = {a.name: registry_auth(a) for a in fleet.apps if only is None or a.name == only}
    stored = store.servers.all(fleet.name)
    observed = observe_apps(fleet, store, state_dir, stored)
    records = {r.name: r for r in stored}
    existing = {name for name, record in records.items() if record.provider_id}
    plan = diff_apps(fleet, servers, existing, observed, only=only)
    for warning in plan.warnings:
        board.note(warning)
    # A server takes a rollout when the store says it is ready and its agent answered just
    # now: one powered off, or whose agent is gone, is waited for, never called.
    unanswered = set(observed.unreachable)
    ready = {
        name
        for name, record in records.items()
        if record.stage is Stage.READY and name in observed.running and name not in unanswered
    }
    endpoints = stored_endpoints(state_dir, fleet, store, stored)
    names = [r.app for r in plan.rollouts]
    for app in fleet.apps:
        wanted = app.name not in names and (only is None or app.name == only)
        if wanted and store.apps.open_rollout(fleet.name, app.name) is not None:
            names.append(app.name)
    # What the store says of a server whose agent did not answer is not checked: its apps
    # wait there even when the plan, from that record, has nothing to do.
    unchecked = _apps_on(fleet, servers, observed, only=only)
    names += [n for n in unchecked if n not in names and unchecked[n] & unanswered]
    runner = _Runner(
        fleet=fleet,
        store=store,
        board=board,
        endpoints=endpoints,
        secrets=secrets,
        auths=auths,
        copies=copies,
    )
    rollouts, waits = [], []
    for name in names:
        targets = [
            Target(
                server=c.server,
                group=c.group,
                from_version=c.before or None,
                to_version=c.after or None,
                replaces=tuple((r.app, r.version) for r in c.replaces),
            )
            for rollout in plan.rollouts
            if rollout.app == name
            for group in rollout.groups
            for c in plan.changes
            if c.app == name and c.group == group.group and c.server in group.servers
        ]
        waiting = sorted(
            {t.server for t in targets if t.server not in ready}
            | (unchecked.get(name, set()) & unanswered),
            key=natural_key,
        )
        if waiting:
            why = ", ".join(
                f"{s} ({'its agent did not answer' if s in unanswered else 'not ready'})"
                for s in waiting
            )
            board.note(f"{name}: waits for {why}; it goes there once they are ready and answer")
            waits.append((name, tuple(waiting)))
        done = runner.roll(name, [t for t in targets if t.server in ready])
        if done is not None:
            rollouts.append(done)
    return AppsOutcome(rollouts=tuple(rollouts), waiting=tuple(waits))


def _apps_on(
    fleet: Fleet, servers: Sequence[Server], observed: AppsObserved, *, only: str | None
) -> dict[str, set[str]]:
    """The servers each app (or the one named `only`) should run on or is recorded on."""
    found: dict[str, set[str]] = {}
    for app in fleet.apps:
        found[app.name] = {s.name for s in servers if s.group in app.on}
    for app_name, server in observed.recorded:
        found.setdefault(app_name, set()).add(server)
    return {name: on for name, on in found.items() if only is None or name == only}


def roll_back(
    fleet: Fleet,
    store: Store,
    state_dir: Path,
    board: StageBoard,
    app: str,
    *,
    copies: ImageCopies | None,
) -> AppsOutcome:
    """Put every server the last rollout of `app` changed back on the version it ran before
    (no version to name: each server's is in the rollout)."""
    last = store.apps.rollouts(fleet.name, app, limit=1)
    if not last:
        raise EngineError(f"{app} has never been rolled out: there is nothing to roll back")
    record = last[0]
    rollout = from_json(record.document)
    if not rollout.is_over:
        raise EngineError(
            f"the last rollout of {app} is still {rollout.phase} (a run died in it); "
            f"`engine deploy SPEC {app}` takes it up first"
        )
    runner = _Runner(
        fleet=fleet,
        store=store,
        board=board,
        endpoints=stored_endpoints(state_dir, fleet, store),
        secrets=read_secrets([], optional=_old_secret_names(store, fleet.name)),
        auths={a.name: registry_auth(a) for a in fleet.apps if a.name == app},
        copies=copies,
    )
    turned = rollback(rollout, _now())
    store.apps.save_rollout(record.id, to_json(turned))
    store.events.record(
        fleet.name,
        "app.rollback.started",
        f"{app}: putting back what ran before {rollout.version or 'its removal'}",
        data={"app": app, "version": rollout.version, "rollout": record.id},
    )
    runner.announce(turned)
    done = runner.carry_out(turned, record.id, None)
    runner.conclude(done, record.id)
    return AppsOutcome(rollouts=(done,))


def _old_secret_names(store: Store, fleet: str) -> set[str]:
    return {
        name
        for definition in store.apps.definitions(fleet).values()
        for name in definition.get("secret_env", ())
    }


@dataclass
class _Runner:
    """Carries out rollouts: the state machine's steps in worker threads, stored as it goes."""

    fleet: Fleet
    store: Store
    board: StageBoard
    endpoints: Mapping[str, AgentEndpoint]
    secrets: Mapping[str, str]
    auths: Mapping[str, Mapping[str, str] | None]
    copies: ImageCopies | None

    def roll(self, name: str, targets: Sequence[Target]) -> Rollout | None:
        app = next((a for a in self.fleet.apps if a.name == name), None)
        definition = app_definition(app) if app is not None else None
        version = definition.version if definition is not None else ""
        update = app.update if app is not None else AppUpdate()
        rollout, rollout_id = self.taken_up(name, version)
        if rollout is None:
            if not targets:
                return None
            rollout = new_rollout(
                self.fleet.name,
                name,
                version,
                targets,
                max_unavailable=update.max_unavailable,
                rollback=update.rollback,
                now=_now(),
            )
            rollout_id = self.store.apps.add_rollout(to_json(rollout))
            self.store.events.record(
                self.fleet.name,
                "app.rollout.started",
                f"{name}: rolling {version or 'its removal'} out to "
                f"{', '.join(t.server for t in targets)}",
                data={"app": name, "version": version, "rollout": rollout_id},
            )
        if definition is not None:
            self.store.apps.save_version(self.fleet.name, name, version, definition.to_json())
        self.announce(rollout)
        rollout = self.carry_out(rollout, rollout_id, definition)
        self.conclude(rollout, rollout_id)
        return rollout

    def taken_up(self, name: str, version: str) -> tuple[Rollout | None, int]:
        """An open rollout of the app a dead run left: resumed if it is of this version (or
        rolling back), else ended as superseded."""
        record = self.store.apps.open_rollout(self.fleet.name, name)
        if record is None:
            return None, 0
        rollout = resume(from_json(record.document), _now())
        if rollout.phase is Phase.ROLLING and rollout.version != version:
            self.store.apps.save_rollout(record.id, to_json(supersede(rollout, version, _now())))
            self.board.note(f"{name}: the unfinished rollout of {rollout.version} is superseded")
            return None, 0
        self.board.note(f"{name}: taking up the rollout of {rollout.version} a run left open")
        self.store.apps.save_rollout(record.id, to_json(rollout))
        return rollout, record.id

    def announce(self, rollout: Rollout) -> None:
        groups = ", ".join(dict.fromkeys(s.group for s in rollout.servers))
        what = rollout.version or "removal"
        doing = "putting back" if rollout.phase is Phase.ROLLING_BACK else "rolling out"
        self.board.note(
            f"{rollout.app}: {doing} {what} on {len(rollout.servers)} server(s) of "
            f"{groups}, {rollout.max_unavailable} at a time"
        )
        self.board.event(
            "rollout", app=rollout.app, version=rollout.version, phase=str(rollout.phase),
            servers=[s.server for s in rollout.servers],
        )  # fmt: skip

    def carry_out(
        self,
        rollout: Rollout,
        rollout_id: int,
        definition: AppDefinition | None,
    ) -> Rollout:
        definitions = {
            key: AppDefinition.from_json(value)
            for key, value in self.store.apps.definitions(self.fleet.name).items()
        }
        # Switches (at most max_unavailable a group at once) and watches (any number).
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(rollout.servers)))
        Work = concurrent.futures.Future[tuple[bool, str, dict[str, float]]]
        futures: dict[Work, tuple[str, Step]] = {}
        watches: dict[str, threading.Event] = {}

        def submit(entry: ServerRollout) -> None:
            stop = threading.Event()
            if entry.step is Step.WATCHING:
                watches[entry.server] = stop
            work = pool.submit(self.step, entry, rollout.app, definition, definitions, stop)
            futures[work] = (entry.server, entry.step)

        try:
            while True:
                for server in to_watch(rollout):
                    if server not in watches:
                        submit(rollout.server(server))
                for server in next_servers(rollout):
                    if server in watches:  # put back mid-watch: the watch ends
                        watches.pop(server).set()
                    rollout = start(rollout, server, _now())
                    self.save(rollout, rollout_id, server)
                    submit(rollout.server(server))
                if not futures:
                    return rollout
                finished, _ = concurrent.futures.wait(
                    futures, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for work in finished:
                    server, step = futures.pop(work)
                    if rollout.server(server).step is not step:
                        continue  # a watch cut short by putting the server back
                    if step is Step.WATCHING:
                        watches.pop(server)
                    ok, reason, timings = work.result()
                    rollout = finish(
                        rollout, server, ok=ok, reason=reason, timings=timings.items(), now=_now()
                    )
                    self.save(rollout, rollout_id, server)
        finally:
            for stop in watches.values():
                stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def step(
        self,
        entry: ServerRollout,
        name: str,
        definition: AppDefinition | None,
        definitions: Mapping[tuple[str, str], AppDefinition],
        stop: threading.Event,
    ) -> tuple[bool, str, dict[str, float]]:
        """One server's switch, watch or revert, in a worker thread: (ok, why not, timings).
        A watch ends early, and fine, when `stop` is set."""
        endpoint = self.endpoints.get(entry.server)
        if endpoint is None:
            return False, f"the engine has no record of how to reach {entry.server}'s agent", {}
        timings: dict[str, float] = {}
        with AgentClient(endpoint, timeout_s=AGENT_TIMEOUT_S) as client:

            def on_server(app_name: str) -> AppOnServer:
                spec_app = next((a for a in self.fleet.apps if a.name == app_name), None)
                return AppOnServer(
                    fleet=self.fleet.name,
                    server=entry.server,
                    app=app_name,
                    client=client,
                    health=spec_app.health if spec_app is not None else None,
                    update=spec_app.update if spec_app is not None else AppUpdate(),
                    secrets=self.secrets,
                    copies=self.copies,
                    auth=self.auths.get(app_name),
                    stop=stop,
                    timings=timings,
                )

            work = on_server(name)
            try:
                if entry.step is Step.WATCHING:
                    if entry.to_version is not None:  # else a removal: nothing to watch
                        work.watch(container_name(name, entry.to_version))
                elif entry.step is Step.REVERTING:
                    old = entry.from_version
                    work.revert(definitions.get((name, old or "")), old)
                    for replaced, version in entry.replaces:  # the ports are free again
                        on_server(replaced).revert(definitions.get((replaced, version)), version)
                elif entry.to_version is None or definition is None:
                    work.remove()
                else:
                    work.switch(definition, replacing=[replaced for replaced, _ in entry.replaces])
            except EngineError as error:
                return False, str(error), timings
            return True, "", timings

    def save(self, rollout: Rollout, rollout_id: int, server: str) -> None:
        """Store the rollout and what runs where, and show the server's step."""
        self.store.apps.save_rollout(rollout_id, to_json(rollout))
        entry = rollout.server(server)
        if entry.step is Step.WATCHING:
            self.store.apps.set_deployed(self.fleet.name, rollout.app, server, entry.to_version)
            for replaced, _ in entry.replaces:
                self.store.apps.set_deployed(self.fleet.name, replaced, server, None)
        elif entry.step is Step.REVERTED:
            self.store.apps.set_deployed(self.fleet.name, rollout.app, server, entry.from_version)
            for replaced, version in entry.replaces:
                self.store.apps.set_deployed(self.fleet.name, replaced, server, version)
        self.show(rollout, entry)

    def show(self, rollout: Rollout, entry: ServerRollout) -> None:
        took = ""
        if entry.finished_at and entry.started_at:
            took = f" in {(entry.finished_at - entry.started_at).total_seconds():.1f} s"
        replacing = ", ".join(f"{app} {version}" for app, version in entry.replaces)
        said = {
            Step.SWITCHING: f"switching {entry.from_version or '(none)'} -> "
            f"{entry.to_version or '(removed)'}"
            + (f", in place of {replacing}" if replacing else ""),
            Step.WATCHING: f"serving {entry.to_version or '(removed)'}{took}, watched",
            Step.SWITCHED: f"switched{took}",
            Step.FAILED: f"failed{took}: {entry.reason}",
            Step.REVERTING: f"putting back {entry.from_version or '(none)'}",
            Step.REVERTED: f"put back{took}",
            Step.REVERT_FAILED: f"could not be put back: {entry.reason}",
        }.get(entry.step, str(entry.step))
        if self.board.json_lines:
            self.board.event(
                "app", app=rollout.app, server=entry.server, step=str(entry.step),
                reason=entry.reason, at=_now().isoformat(), timings=dict(entry.timings),
            )  # fmt: skip
        else:
            self.board.note(f"  {rollout.app} on {entry.server}: {said}")

    def conclude(self, rollout: Rollout, rollout_id: int) -> None:
        seconds = 0.0
        if rollout.started_at and rollout.finished_at:
            seconds = (rollout.finished_at - rollout.started_at).total_seconds()
        self.store.events.record(
            self.fleet.name,
            f"app.rollout.{rollout.phase}",
            f"{rollout.app}: {rollout.phase} after {seconds:.1f} s"
            + (f" ({rollout.reason})" if rollout.reason else ""),
            data={"app": rollout.app, "version": rollout.version, "rollout": rollout_id},
        )
        if self.board.json_lines:
            self.board.event(
                "rollout", app=rollout.app, version=rollout.version, phase=str(rollout.phase),
                reason=rollout.reason, seconds=round(seconds, 1),
            )  # fmt: skip
            return
        rows = {s.server: {k: v for k, v in s.timings} for s in rollout.servers}
        medians = median_durations(list(rows.values()), STEPS)
        self.board.note(render_timings(rows, medians, STEPS))
        verdict = {
            Phase.SUCCEEDED: f"{rollout.version or 'removed'} on {len(rows)} server(s)",
            Phase.ROLLED_BACK: f"rolled back: {rollout.reason}",
            Phase.FAILED: f"failed: {rollout.reason}"
            + (
                "; `engine apps rollback` puts the changed servers back"
                if rollout.rollback_mode is RollbackMode.MANUAL
                else ""
            ),
        }.get(rollout.phase, str(rollout.phase))
        self.board.note(f"{rollout.app}: {verdict} ({seconds:.1f} s)")
