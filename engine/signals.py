"""Day-2 signals to one server: `engine server reboot|poweroff|poweron|rebuild|snapshot SPEC NAME`,
and the agent's system tasks on some or all: `engine server update|upgrade SPEC NAME...|--all`.

Each holds the fleet's lock, has the provider act through its SDK (engine.providers.cloud.actions)
or the local Docker engine (engine.providers.local.driver), waits until the provider says the
action succeeded or failed (at most the timeout, with its progress shown), and records it in the
state store: a `server.<signal>.started` event, then `.succeeded` or `.failed` with why.

    reboot, poweroff,   the server's stage stays; its agent's heartbeats tell the control
    poweron             plane whether it is up (a server left off turns unhealthy)
    snapshot            an image of the server: a Hetzner snapshot carrying the fleet's
                        ownership labels, a DigitalOcean snapshot, a local image labelled for
                        the fleet (`docker commit`)
    rebuild             the disk made anew from the group's image, then back through booting,
                        phone-home and install with the control plane running, as `engine up`
                        does: a local machine is made again and a Hetzner server rebuilt, both
                        with fresh user_data and a new one-time token; DigitalOcean rebuilds
                        from the droplet's first user_data, whose token is spent, so the
                        droplet is found by polling (an SSH check and a key scan); once it
                        is ready, the apps of its group are rolled out on it as `engine up`
                        rolls them out (engine.apps.deploy.roll_fleet_apps)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from engine.errors import EngineError
from engine.providers.seam import RunOptions, Signal
from engine.up import locked_session, placed_servers, report, serving

if TYPE_CHECKING:
    from engine.agent.client import AgentClient


def signal_server(spec: Path, name: str, signal: Signal, options: RunOptions, out: TextIO) -> int:
    """Send `signal` to server `name` of the fleet in `spec`; 0 when it is done (a rebuilt
    server: when it is ready again and its apps are back on it)."""
    from engine.apps.deploy import check_environment, roll_fleet_apps

    started = time.monotonic()
    command = f"engine server {signal} {spec} {name}"
    rebuild = signal is Signal.REBUILD
    with locked_session(
        spec, options, out, command, tools=False, full=rebuild, recorded=True
    ) as session:
        fleet, board, backend, store = session.fleet, session.board, session.backend, session.store
        record = store.servers.get(fleet.name, name)
        if record is None or not record.provider_id:
            known = ", ".join(r.name for r in store.servers.all(fleet.name) if r.provider_id)
            raise EngineError(
                f"fleet {fleet.name} has no server {name} that the engine made "
                f"(it knows: {known or 'none'}); `engine status {spec}` lists them"
            )
        store.events.record(
            fleet.name, f"server.{signal}.started", f"{signal} of {name} asked", server=name
        )
        try:
            if rebuild:
                servers = placed_servers(fleet, store, options.state_dir)
                if name not in servers:
                    raise EngineError(f"{name} is no longer in the spec; nothing to rebuild")
                check_environment(fleet)  # the apps' secrets, before the disk is gone
                with serving(fleet, store, backend, options, board, servers) as run:
                    backend.rebuild(servers[name], record, run, options.timeout_s)
                    store.events.record(
                        fleet.name,
                        f"server.{signal}.succeeded",
                        f"{name} rebuilt; on its way to ready",
                        server=name,
                    )
                    final = run.wait([name], options.timeout_s)
                # Its disk is new: the apps its groups run go back on it, as `engine up` puts
                # them on a new server.
                rolled = roll_fleet_apps(
                    fleet, store, options.state_dir, board, [servers[name]], backend.docker_url
                )
                seconds = time.monotonic() - started
                return report(store, fleet, [name], final, board, out, seconds, apps=rolled)
            outcome = backend.signal(record, signal, options.timeout_s)
        except EngineError as error:
            store.events.record(
                fleet.name, f"server.{signal}.failed", f"{signal} of {name}: {error}",
                server=name,
            )  # fmt: skip
            raise
        store.events.record(fleet.name, f"server.{signal}.succeeded", outcome, server=name)
        board.note(outcome)
        return 0


SYSTEM_TASKS = ("update", "upgrade")
TASK_POLL_S = 1.0


def run_system_task(
    spec: Path, names: Sequence[str] | None, task: str, options: RunOptions, out: TextIO
) -> int:
    """`engine server update|upgrade SPEC NAME|--all`: the agent's system task (apt-get update,
    or upgrade) on each server, rolling: one group after another in the spec's order, one
    server at a time inside a group. A server whose task fails, or whose apps are not healthy
    afterwards, stops the run: the servers after it are left as they were. 0 when all done."""
    from engine.agent.client import AgentClient
    from engine.agent.endpoint import stored_endpoints
    from engine.apps.servers import AppOnServer

    started = time.monotonic()
    command = f"engine server {task} {spec} " + (" ".join(names) if names else "--all")
    with locked_session(
        spec, options, out, command, tools=False, full=False, recorded=True
    ) as session:
        fleet, board, store = session.fleet, session.board, session.store
        servers = placed_servers(fleet, store, options.state_dir)
        chosen = list(servers) if names is None else list(names)
        unknown = [n for n in chosen if n not in servers]
        if unknown:
            raise EngineError(
                f"fleet {fleet.name} has no server {', '.join(unknown)} (its servers: "
                f"{', '.join(servers)})"
            )
        endpoints = stored_endpoints(options.state_dir, fleet, store)
        unreachable = [n for n in chosen if n not in endpoints]
        if unreachable:
            raise EngineError(
                f"the engine has no record of how to reach the agent of {', '.join(unreachable)} "
                "(not installed, or not reported yet); nothing was started"
            )
        order = [s.name for g in fleet.groups for s in servers.values()
                 if s.group == g.name and s.name in chosen]  # fmt: skip
        for name in order:
            board.note(f"{name}: {task} ...")
            store.events.record(
                fleet.name, f"server.{task}.started", f"{task} of {name}", server=name
            )
            with AgentClient(endpoints[name]) as client:
                try:
                    seconds = _system_task(client, task, options.timeout_s)
                    for app in fleet.apps:
                        if servers[name].group in app.on:
                            AppOnServer(
                                fleet=fleet.name, server=name, app=app.name, client=client,
                                health=app.health, update=app.update,
                            ).wait_running_healthy()  # fmt: skip
                except EngineError as error:
                    store.events.record(
                        fleet.name,
                        f"server.{task}.failed",
                        f"{task} of {name}: {error}",
                        server=name,
                    )
                    board.note(f"{name}: {task} failed: {error}")
                    left = order[order.index(name) + 1 :]
                    if left:
                        board.note(f"stopped; not touched: {', '.join(left)}")
                    return 1
            store.events.record(
                fleet.name, f"server.{task}.succeeded", f"{task} of {name} in {seconds:.1f} s",
                server=name,
            )  # fmt: skip
            board.note(f"{name}: {task} done in {seconds:.1f} s")
        board.note(f"{task} done on {len(order)} server(s) in {time.monotonic() - started:.1f} s")
        return 0


def _system_task(client: AgentClient, task: str, timeout_s: float) -> float:
    """Start the task, wait for its end; its seconds, or EngineError with its log's tail."""
    from engine.agent.client import AgentError

    started = time.monotonic()
    try:
        record = client.start_task(task)
    except AgentError as error:
        if error.status == 409:
            raise EngineError(f"another system task runs there ({error})") from None
        raise
    deadline = started + timeout_s
    while record["state"] == "running":
        if time.monotonic() > deadline:
            raise EngineError(f"the {task} task {record['id']} was not done within {timeout_s:g} s")
        time.sleep(TASK_POLL_S)
        record = client.task(record["id"])
    if record["state"] != "succeeded":
        tail = _log_tail(client, record["id"])
        raise EngineError(f"{record['error'] or record['state']}; its log ends:\n{tail}")
    return time.monotonic() - started


def _log_tail(client: AgentClient, task_id: str, lines: int = 15) -> str:
    text, offset = "", 0
    while True:
        piece = client.task_log(task_id, offset)
        text += piece["text"]
        if piece["next_offset"] == offset or piece["complete"]:
            break
        offset = piece["next_offset"]
    return "\n".join(text.rstrip().splitlines()[-lines:])
