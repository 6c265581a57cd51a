"""`engine deploy`, `engine logs` and `engine apps status|history|rollback` as functions.

deploy and rollback hold the fleet's lock, as `engine up` does; logs, status and history
only read (the agents, and the state store). Every one talks to servers through their agents
only, at the addresses and with the certificates the state store recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.agent.client import AgentClient, AgentError, ContainerSummary, ask_agents
from engine.agent.endpoint import AgentEndpoint, stored_endpoints
from engine.apps.deploy import AppsOutcome, image_copies, roll_apps, roll_back
from engine.apps.observe import app_containers
from engine.apps.rollout import Phase
from engine.apps.versions import CHECK_SUFFIX, app_definition, probe_body
from engine.errors import EngineError
from engine.model import LABEL_APP_VERSION, App, Fleet, ProviderName
from engine.progress import StageBoard
from engine.providers.seam import RunOptions
from engine.spec import load_spec
from engine.up import hold_fleet_lock, placed_servers, require_store

if TYPE_CHECKING:
    from engine.state.store import Store


@contextmanager
def _fleet_store(
    spec: Path, options: RunOptions, out: TextIO, command: str | None
) -> Iterator[tuple[Fleet, StageBoard, Store]]:
    """The fleet of `spec`, a board, and the state store (the fleet's lock held for
    `command`, unless it is None)."""
    from engine.state.store import open_store

    fleet = load_spec(spec, state_dir=options.state_dir)
    board = StageBoard(out, json_lines=options.json_lines)
    with open_store(require_store(fleet, spec, options)) as store:
        if command is None:
            yield fleet, board, store
            return
        with hold_fleet_lock(store, fleet, command, board):
            yield fleet, board, store


def _docker_url(fleet: Fleet, board: StageBoard) -> str | None:
    if fleet.provider.name is not ProviderName.LOCAL:
        return None
    from engine.providers.local.dockerd import ensure_daemon

    return ensure_daemon(say=board.note)


def _app_named(fleet: Fleet, store: Store, name: str) -> None:
    known = {a.name for a in fleet.apps} | {d.app for d in store.apps.deployed(fleet.name)}
    if name not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise EngineError(f"fleet {fleet.name} has no app {name} (its apps: {listed})")


def deploy(spec: Path, app: str | None, options: RunOptions, out: TextIO) -> int:
    """Roll the apps of `spec` (or only `app`) out to the fleet's ready servers, without
    touching the servers themselves; 0 when every rollout succeeded."""
    command = f"engine deploy {spec}" + (f" {app}" if app else "")
    with _fleet_store(spec, options, out, command) as (fleet, board, store):
        if app is not None:
            _app_named(fleet, store, app)
        servers = placed_servers(fleet, store, options.state_dir)
        with image_copies(fleet, _docker_url(fleet, board), board.note) as copies:
            outcome = roll_apps(
                fleet,
                store,
                options.state_dir,
                board,
                list(servers.values()),
                copies=copies,
                only=app,
            )
        # An app that waits for servers is not deployed: say so, and fail, rather than call
        # it up to date.
        _finish(board, outcome, ok=outcome.ok, nothing=f"{app or 'every app'} is up to date")
        if outcome.waiting:
            waits = "; ".join(f"{name} on {', '.join(on)}" for name, on in outcome.waiting)
            raise EngineError(
                f"not deployed: {waits}, whose servers are not ready or whose agents did not "
                f"answer; `engine up {spec}` makes them ready (it starts a server that is off "
                "and installs an agent that is gone again) and rolls the apps out there, or "
                "`engine status` says why not"
            )
        return 0 if outcome.ok else 1


def rollback(spec: Path, app: str, options: RunOptions, out: TextIO) -> int:
    """Put the servers the last rollout of `app` changed back; 0 when all are back."""
    command = f"engine apps rollback {spec} {app}"
    with _fleet_store(spec, options, out, command) as (fleet, board, store):
        _app_named(fleet, store, app)
        with image_copies(fleet, _docker_url(fleet, board), board.note) as copies:
            outcome = roll_back(fleet, store, options.state_dir, board, app, copies=copies)
        ok = all(r.phase is Phase.ROLLED_BACK for r in outcome.rollouts)
        _finish(board, outcome, ok=ok, nothing="")
        return 0 if ok else 1


def _finish(board: StageBoard, outcome: AppsOutcome, *, ok: bool, nothing: str) -> None:
    if board.json_lines:
        waiting = {name: list(servers) for name, servers in outcome.waiting}
        board.event("done", ok=ok, apps=outcome.to_json(), waiting=waiting)
    elif not outcome.rollouts and not outcome.waiting and nothing:
        board.note(f"Nothing to do: {nothing}.")


# --- status ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AppOnServerStatus:
    """One app on one server as its agent sees it now."""

    app: str
    server: str
    version: str = ""
    container: str = ""
    state: str = "absent"
    health: str = "-"
    detail: str = ""
    restarts: int = 0
    since: str = ""

    def to_json(self, wanted: str) -> dict[str, Any]:
        return {
            "server": self.server,
            "version": self.version,
            "current": bool(self.version) and self.version == wanted,
            "container": self.container,
            "state": self.state,
            "health": self.health,
            "detail": self.detail,
            "restarts": self.restarts,
            "since": self.since,
        }


def _current(containers: Sequence[ContainerSummary]) -> ContainerSummary | None:
    """The app's container that counts: the running one, else the newest."""
    mine = [c for c in containers if not c.name.endswith(CHECK_SUFFIX)]
    running = [c for c in mine if c.state == "running"]
    newest = sorted(mine, key=lambda c: c.created, reverse=True)
    return (running or newest)[0] if mine else None


def _server_status(
    client: AgentClient, fleet: Fleet, apps: Sequence[App]
) -> list[AppOnServerStatus]:
    server = client.endpoint.server
    found = []
    for app in apps:
        container = _current(app_containers(client, fleet.name, app.name))
        if container is None:
            found.append(AppOnServerStatus(app=app.name, server=server))
            continue
        details = client.inspect_container(container.name)
        state = details["state"]
        health, detail = "-", ""
        if state["running"] and app.health is not None:
            answer = client.probe(container.name, probe_body(app.health))
            health = "healthy" if answer["healthy"] else "unhealthy"
            detail = str(answer["detail"])
        elif state["running"]:
            health = "running"
        found.append(
            AppOnServerStatus(
                app=app.name,
                server=server,
                version=str(details["labels"].get(LABEL_APP_VERSION, "")),
                container=container.name,
                state=str(state["status"]),
                health=health,
                detail=detail,
                restarts=int(state["restart_count"]),
                since=str(state["started_at"] or ""),
            )
        )
    return found


def apps_status(spec: Path, options: RunOptions, out: TextIO, *, as_json: bool) -> int:
    """What each app runs on each of its servers: version, health, restarts, since; 0 when
    every server answered and runs the spec's version, healthy."""
    with _fleet_store(spec, options, out, None) as (fleet, _, store):
        servers = placed_servers(fleet, store, options.state_dir)
        endpoints = stored_endpoints(options.state_dir, fleet, store)
    by_server: dict[str, list[App]] = {}
    for app in fleet.apps:
        for server in servers.values():
            if server.group in app.on:
                by_server.setdefault(server.name, []).append(app)
    asked = [endpoints[name] for name in by_server if name in endpoints]
    answers = ask_agents(
        asked,
        lambda client: _server_status(client, fleet, by_server[client.endpoint.server]),
        what="containers",
        timeout_s=10.0,
    )
    rows: list[tuple[AppOnServerStatus, str]] = []
    for name, apps in by_server.items():
        answer = answers.get(name)
        for app in apps:
            if answer is None or answer.value is None:
                why = answer.error if answer else "the engine has no record of its agent"
                status = AppOnServerStatus(
                    app=app.name, server=name, state="unknown", detail=why or ""
                )
            else:
                status = next(s for s in answer.value if s.app == app.name)
            rows.append((status, app_definition(app).version))
    if as_json:
        document = {
            "version": 1,
            "fleet": fleet.name,
            "apps": [
                {
                    "app": app.name,
                    "spec_version": app_definition(app).version,
                    "servers": [s.to_json(v) for s, v in rows if s.app == app.name],
                }
                for app in fleet.apps
            ],
        }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(render_status(rows) + "\n")
    fine = all(s.version == v and s.health in ("healthy", "running") for s, v in rows)
    return 0 if fine else 1


def _age(since: str, now: dt.datetime) -> str:
    try:
        # Docker writes up to nine digits of a second, trailing zeros dropped.
        started = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return since or "-"
    seconds = max(0.0, (now - started).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render_status(rows: Sequence[tuple[AppOnServerStatus, str]]) -> str:
    """A table: app, server, version (`*` when not the spec's), state, health, restarts, since."""
    if not rows:
        return "the spec runs no apps"
    now = dt.datetime.now(dt.UTC)
    table = [("APP", "SERVER", "VERSION", "STATE", "HEALTH", "RESTARTS", "SINCE")]
    for status, wanted in rows:
        version = status.version or "-"
        if status.version and status.version != wanted:
            version += " (spec: " + wanted + ")"
        since = _age(status.since, now) if status.since else "-"
        table.append(
            (status.app, status.server, version, status.state, status.health,
             str(status.restarts), since)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]  # fmt: skip
    details = [
        f"  {s.server} {s.app}: {s.detail}"
        for s, _ in rows
        if s.detail and s.health not in ("healthy", "running")
    ]
    return "\n".join(lines + details)


# --- history -----------------------------------------------------------------------------


def apps_history(
    spec: Path, app: str | None, options: RunOptions, out: TextIO, *, as_json: bool
) -> int:
    """The fleet's rollouts (of one app), newest first."""
    with _fleet_store(spec, options, out, None) as (fleet, _, store):
        records = store.apps.rollouts(fleet.name, app, limit=50)
        if app is not None and not records:  # an app gone from the spec keeps its history
            _app_named(fleet, store, app)
    if as_json:
        document = {
            "version": 1,
            "fleet": fleet.name,
            "rollouts": [{"id": r.id, **dict(r.document)} for r in records],
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return 0
    if not records:
        out.write("no rollouts yet\n")
        return 0
    table = [("ID", "APP", "VERSION", "PHASE", "STARTED", "SECONDS", "SERVERS")]
    for record in records:
        servers = record.document.get("servers", [])
        took = "-"
        if record.finished_at:
            took = f"{(record.finished_at - record.started_at).total_seconds():.1f}"
        table.append(
            (str(record.id), record.app, record.version or "(removed)", record.phase,
             record.started_at.strftime("%Y-%m-%d %H:%M:%S"), took,
             ", ".join(f"{s['server']} {s['step']}" for s in servers))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    for record in records:
        if record.reason:
            out.write(f"  {record.id}: {record.reason}\n")
    return 0


# --- logs --------------------------------------------------------------------------------


def logs(
    spec: Path,
    app: str,
    options: RunOptions,
    out: TextIO,
    *,
    server: str | None,
    follow: bool,
    tail: int,
) -> int:
    """The app's output on each of its servers (or one), read through the agents; with
    `follow`, as it comes, until interrupted. Lines carry their server's name when there are
    several servers."""
    with _fleet_store(spec, options, out, None) as (fleet, _, store):
        _app_named(fleet, store, app)
        servers = placed_servers(fleet, store, options.state_dir)
        endpoints = stored_endpoints(options.state_dir, fleet, store)
        deployed = {d.server for d in store.apps.deployed(fleet.name) if d.app == app}
    spec_app = next((a for a in fleet.apps if a.name == app), None)
    names = [
        s.name
        for s in servers.values()
        if (spec_app is not None and s.group in spec_app.on) or s.name in deployed
    ]
    if server is not None:
        if server not in names:
            raise EngineError(
                f"{app} does not run on {server} (it runs on {', '.join(names) or 'no server'})"
            )
        names = [server]
    missing = [n for n in names if n not in endpoints]
    if missing:
        raise EngineError(
            f"the engine has no record of how to reach the agent of {', '.join(missing)}; "
            "`engine status` shows where each server is"
        )
    lock = threading.Lock()
    prefix = len(names) > 1
    width = max((len(n) for n in names), default=0)

    def relay(endpoint: AgentEndpoint) -> str | None:
        try:
            _relay(endpoint, fleet.name, app, out, lock,
                   f"{endpoint.server:<{width}} | " if prefix else "", follow, tail)  # fmt: skip
        except AgentError as error:
            return str(error)
        return None

    errors: list[str] = []
    if len(names) == 1 or not follow:
        for name in names:
            problem = relay(endpoints[name])
            if problem:
                errors.append(problem)
    else:
        threads = [
            threading.Thread(
                target=lambda e=endpoints[n]: errors.append(relay(e) or ""), daemon=True
            )
            for n in names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    problems = [e for e in errors if e]
    for problem in problems:
        out.write(f"error: {problem}\n")
    return 1 if problems else 0


def _relay(
    endpoint: AgentEndpoint,
    fleet: str,
    app: str,
    out: TextIO,
    lock: threading.Lock,
    prefix: str,
    follow: bool,
    tail: int,
) -> None:
    with AgentClient(endpoint) as client:
        container = _current(app_containers(client, fleet, app))
        if container is None:
            with lock:
                out.write(f"{prefix}({app} has no container on {endpoint.server})\n")
            return
        params = {"tail": tail, "follow": follow}
        with client.stream(f"/v1/containers/{container.name}/logs", params=params) as chunks:
            pending = b""
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                with lock:
                    for line in lines:
                        out.write(prefix + line.decode("utf-8", "replace") + "\n")
                    out.flush()
            if pending:
                with lock:
                    out.write(prefix + pending.decode("utf-8", "replace") + "\n")
