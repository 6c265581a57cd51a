"""Servers and events as JSON documents, for the fleet API and `engine status --format json`.

`MetricsSource` is the seam for live metrics: given a server's record and its agent's last
report, it returns the metrics to show. The default shows the last heartbeat's snapshot; a
source that asks the agent directly (over its pinned TLS) can replace it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.controlplane.errors import ApiError
from engine.health import Power, power_of
from engine.lifecycle import step_durations
from engine.model import Stage
from engine.providers import ActualServer
from engine.state import AgentReport, Event, HostKeySource, ServerRecord, Transition
from engine.state.store import Store

MetricsSource = Callable[[ServerRecord, "AgentReport | None"], "Mapping[str, Any] | None"]


def last_heartbeat_metrics(
    record: ServerRecord, report: AgentReport | None
) -> Mapping[str, Any] | None:
    """The metrics of the agent's last heartbeat (the default MetricsSource)."""
    return None if report is None else report.metrics


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def host_keys_note(record: ServerRecord) -> str:
    """How far the pinned host keys can be trusted, in words."""
    if not record.host_keys:
        return "no host keys yet"
    if record.host_keys_source == HostKeySource.KEYSCAN:
        return "read by ssh-keyscan during polling, NOT pinned from a phone-home"
    return "pinned from the server's authenticated phone-home"


def stored_server(
    store: Store, fleet: str, name: str, *, metrics: MetricsSource = last_heartbeat_metrics
) -> dict[str, Any]:
    """`server_document` of a server as the store has it now; a 404 when it has none."""
    record = store.servers.get(fleet, name)
    if record is None:
        raise ApiError(404, "server_not_found", f"fleet {fleet} has no server {name}")
    return server_document(
        record,
        store.servers.transitions(fleet, name),
        store.agents.report(fleet, name),
        now=dt.datetime.now(dt.UTC),
        metrics=metrics,
    )


def server_document(
    record: ServerRecord,
    transitions: Sequence[Transition],
    report: AgentReport | None,
    *,
    now: dt.datetime,
    metrics: MetricsSource = last_heartbeat_metrics,
) -> dict[str, Any]:
    """One server: stage, age, addresses, host keys, step durations, agent report."""
    created = record.created_at or now
    return {
        "name": record.name,
        "fleet": record.fleet,
        "group": record.group,
        "provider": record.provider,
        "provider_id": record.provider_id,
        "location": record.location,
        "server_type": record.server_type,
        "stage": str(record.stage),
        "stage_reason": record.stage_reason,
        "age_s": round((now - created).total_seconds(), 1),
        "created_at": _iso(record.created_at),
        "addresses": {
            "ipv4": record.ipv4,
            "ipv6": record.ipv6,
            "private": list(record.private_ips),
        },
        "host_keys": dict(record.host_keys),
        "host_keys_source": record.host_keys_source or None,
        "install_hash": record.install_hash,
        "steps": dict(step_durations(record, transitions)),
        "transitions": [
            {"stage": str(t.stage), "at": _iso(t.at), "reason": t.reason}
            for t in transitions
            if t.server == record.name
        ],
        "agent": None
        if report is None
        else {
            "last_heartbeat_at": _iso(report.last_heartbeat_at),
            "tls_fingerprint": report.tls_fingerprint,
            "containers": report.containers,
            "metrics": metrics(record, report),
        },
    }


def provider_view(record: ServerRecord, actual: ActualServer | None) -> dict[str, Any]:
    """What the provider says of a server, beside what the store says: its status and power
    (`missing` when it has no such server), how and when it stopped where the provider says,
    and whether that disagrees with the stored stage (a machine recorded on its way or ready
    that is gone or off)."""
    alive = record.stage not in (Stage.FAILED, Stage.DELETING, Stage.REQUESTED)
    if actual is None:
        return {
            "status": "missing",
            "power": None,
            "provider_id": None,
            "exit_code": None,
            "stopped_at": None,
            "disagrees": alive and bool(record.provider_id),
        }
    power = power_of(actual.status)
    return {
        "status": actual.status,
        "power": str(power),
        "provider_id": actual.provider_id,
        "exit_code": actual.exit_code,
        "stopped_at": _iso(actual.stopped_at),
        "disagrees": alive and power is Power.OFF,
    }


def event_document(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "fleet": event.fleet,
        "server": event.server,
        "kind": event.kind,
        "message": event.message,
        "data": dict(event.data),
        "at": _iso(event.at),
    }
