"""What `engine up` tells the control plane about its servers, and waiting for them.

    request_server(store, fleet, server)                        # planned: stage requested
    store.servers.set_stage(fleet.name, name, Stage.CREATING)   # the provider call starts
    register_server(store, settings, name, provider_id=..., ipv4=...)   # created: booting
    wait_until_ready(store, fleet.name, names, timeout_s=900)

Registration starts the polling fallback at once for `readiness: poll`; for phone-home
fleets the monitor starts it for a server that has not phoned home after
phone_home_timeout.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from engine.model import Fleet, Server, Stage
from engine.state import FleetSettings, NewJob, ServerRecord
from engine.state.store import Store

POLL_INVENTORY_JOB = "poll-inventory"
SSH_CHECK_JOB = "ssh-check"
SETTLED = frozenset({Stage.READY, Stage.FAILED, Stage.UNHEALTHY})


def request_server(store: Store, fleet: Fleet, server: Server) -> ServerRecord:
    """Record a server the plan creates (stage requested), unless the store has it already."""
    existing = store.servers.get(fleet.name, server.name)
    if existing is not None:
        return existing
    return store.servers.save(
        ServerRecord(
            fleet=fleet.name,
            name=server.name,
            group=server.group,
            provider=str(fleet.provider.name),
            location=server.location,
            server_type=server.server_type,
            image=server.image.describe(),
            labels=server.labels,
        )
    )


def polling_jobs(
    settings: FleetSettings, server: str, now: dt.datetime | None = None
) -> tuple[NewJob, NewJob]:
    """The fleet's inventory poller and the server's SSH check (each at most once live); the
    check gives up phone_home_timeout after `now`."""
    start = now or dt.datetime.now(dt.UTC)
    deadline = start + dt.timedelta(seconds=settings.phone_home_timeout_s)
    return (
        NewJob(
            kind=POLL_INVENTORY_JOB,
            fleet=settings.name,
            key=f"{POLL_INVENTORY_JOB}/{settings.name}",
            payload={"page": 1},
        ),
        NewJob(
            kind=SSH_CHECK_JOB,
            fleet=settings.name,
            server=server,
            key=f"{SSH_CHECK_JOB}/{settings.name}/{server}",
            payload={"deadline": deadline.isoformat()},
        ),
    )


def start_polling(store: Store, settings: FleetSettings, server: str) -> None:
    """Look for the server by polling (inventory pages and an SSH check every 2 s)."""
    for job in polling_jobs(settings, server):
        store.jobs.enqueue(job)


def register_server(
    store: Store,
    settings: FleetSettings,
    name: str,
    *,
    provider_id: str,
    ipv4: str | None = None,
    ipv6: str | None = None,
    private_ips: tuple[str, ...] = (),
) -> ServerRecord:
    """A server was created: record its provider id and addresses and move it to booting.

    The provider id is what a phone-home's instance id must match, and the addresses what
    its source address must be one of. Call it as soon as the provider answers.
    """
    fields: dict[str, Any] = {"provider_id": provider_id, "private_ips": private_ips}
    if ipv4:
        fields["ipv4"] = ipv4
    if ipv6:
        fields["ipv6"] = ipv6
    record = store.servers.get(settings.name, name)
    moving = record is not None and record.stage in (Stage.REQUESTED, Stage.CREATING)
    stored = store.servers.update(
        settings.name, name, stage=Stage.BOOTING if moving else None, **fields
    )
    if settings.readiness == "poll" and stored.stage is Stage.BOOTING:
        start_polling(store, settings, name)
    return stored


def wait_until_ready(
    store: Store,
    fleet: str,
    names: Collection[str],
    *,
    timeout_s: float,
    poll_s: float = 0.5,
    on_poll: Callable[[Mapping[str, ServerRecord]], None] | None = None,
) -> dict[str, ServerRecord]:
    """Wait until every named server is ready, failed or unhealthy, or `timeout_s` passes;
    the records as they are then. The store is read every `poll_s` (the stages are written
    by other threads and processes); `on_poll` sees the records each time."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = {r.name: r for r in store.servers.all(fleet) if r.name in names}
        if on_poll is not None:
            on_poll(records)
        settled = all(r.stage in SETTLED for r in records.values()) and len(records) == len(names)
        if settled or time.monotonic() >= deadline:
            return records
        time.sleep(poll_s)
