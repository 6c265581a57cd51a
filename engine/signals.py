"""Day-2 signals to one server: `engine server reboot|poweroff|poweron|rebuild|snapshot SPEC NAME`.

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
                        droplet is found by polling (an SSH check and a key scan)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from engine.errors import EngineError
from engine.providers.seam import RunOptions, Signal
from engine.up import locked_session, placed_servers, report, serving


def signal_server(spec: Path, name: str, signal: Signal, options: RunOptions, out: TextIO) -> int:
    """Send `signal` to server `name` of the fleet in `spec`; 0 when it is done (a rebuilt
    server: when it is ready again)."""
    started = time.monotonic()
    command = f"engine server {signal} {spec} {name}"
    rebuild = signal is Signal.REBUILD
    with locked_session(spec, options, out, command, tools=False, full=rebuild) as session:
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
                with serving(fleet, store, backend, options, board, servers) as run:
                    backend.rebuild(servers[name], record, run, options.timeout_s)
                    store.events.record(
                        fleet.name,
                        f"server.{signal}.succeeded",
                        f"{name} rebuilt; on its way to ready",
                        server=name,
                    )
                    final = run.wait([name], options.timeout_s)
                seconds = time.monotonic() - started
                return report(store, fleet, [name], final, board, out, seconds)
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
