"""Alerts: the conditions a fleet's spec declares, checked every few seconds by the owner of
the fleet's reconcile loop, raised and resolved as events, and sent to the spec's webhooks.

    readings = fleet_readings(store, fleet_name, heartbeat_s, drift, now, listening_since=t0)
    AlertEvaluator(store).evaluate(fleet, readings, now)

Per alert and subject (each server; the fleet itself for drift):

    the condition holds, no state or resolved ... pending since now
    pending for at least `for` .................. firing: event alert.firing, webhooks
    the condition stops holding ................. pending: forgotten; firing: resolved
                                                  (event alert.resolved, webhooks)

What holds: cpu, memory, disk (the fullest, percent used) and load (1-minute load average)
of the agent's last heartbeat above the threshold; unhealthy: the store says unhealthy, or
the agent reported once and has missed three heartbeats since (silent), even while a repair
is under way, counting only those due since the control plane listens (one due while none
ran had no one to reach); drift: the last reconcile run found changes.

Webhooks never hold up the loop: each delivery is a durable `webhook` job, run by any worker
on the store, retried with the job queue's back-off (2, 4, 8, ... s) up to WEBHOOK_ATTEMPTS.
Each attempt is signed anew, with the secret read from the variable the spec names:

    X-Engine-Timestamp: 1767225600
    X-Engine-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>

A receiver checks the signature over the exact body bytes and refuses old timestamps
(replays); the secret never leaves this process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.controlplane.jobs import Done, Permanent
from engine.health import is_heard
from engine.model import AlertWhen, Fleet, Stage
from engine.secrets import register_secret
from engine.state import AlertRecord, AlertState, Job, NewJob
from engine.state.metrics import heartbeat_values
from engine.state.store import Store

WEBHOOK_JOB = "webhook"
WEBHOOK_ATTEMPTS = 8
WEBHOOK_TIMEOUT_S = 10.0
FLEET_SUBJECT = ""
PENDING = AlertState.PENDING


@dataclass(frozen=True, slots=True, kw_only=True)
class Readings:
    """What the alerts of one fleet are checked against: each server's metrics and whether
    it is unhealthy, and how many changes of drift the last reconcile run found."""

    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    unhealthy: Mapping[str, bool] = field(default_factory=dict)
    drift: int = 0


def fleet_readings(
    store: Store,
    fleet: str,
    heartbeat_s: int,
    drift: int,
    now: dt.datetime,
    *,
    listening_since: dt.datetime,
) -> Readings:
    """The readings of `fleet` now, from the store, its agents' silence counted from
    `listening_since` (when the control plane they report to started listening) at the
    earliest."""
    reports = {r.server: r for r in store.agents.reports(fleet)}
    metrics, unhealthy = {}, {}
    for record in store.servers.all(fleet):
        report = reports.get(record.name)
        # An agent that reported once and is silent now, whatever the stage says: a repair
        # under way (a reinstall) does not make it heard.
        silent = report is not None and not is_heard(
            max(report.last_heartbeat_at, listening_since), heartbeat_s, now
        )
        unhealthy[record.name] = record.stage is Stage.UNHEALTHY or silent
        if report is not None:
            metrics[record.name] = heartbeat_values(report.metrics)
    return Readings(metrics=metrics, unhealthy=unhealthy, drift=drift)


def holding(when: AlertWhen, above: float | None, readings: Readings) -> dict[str, float]:
    """The subjects for which the condition holds, with the value that makes it hold."""
    if when is AlertWhen.UNHEALTHY:
        return {name: 1.0 for name, sick in readings.unhealthy.items() if sick}
    if when is AlertWhen.DRIFT:
        return {FLEET_SUBJECT: float(readings.drift)} if readings.drift else {}
    threshold = above if above is not None else 0.0
    return {
        name: values[str(when)]
        for name, values in readings.metrics.items()
        if values.get(str(when), 0.0) > threshold
    }


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Engine-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class AlertEvaluator:
    """Moves each alert of a fleet along pending -> firing -> resolved, and sends the
    changes that matter (fired, resolved) to the fleet's webhooks."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def evaluate(self, fleet: Fleet, readings: Readings, now: dt.datetime) -> list[AlertRecord]:
        """One round; the alerts that fired or resolved in it."""
        known = {(a.alert, a.subject): a for a in self.store.alerts.all(fleet.name)}
        changed = []
        for alert in fleet.alerts:
            held = holding(alert.when, alert.above, readings)
            subjects = set(held) | {s for (name, s) in known if name == alert.name}
            for subject in sorted(subjects):
                before = known.get((alert.name, subject))
                after = self._step(fleet.name, alert.name, alert.for_s, subject, before, held, now)
                was = before.state if before else None
                if after is not None and after.state is not was and after.state is not PENDING:
                    changed.append(after)
                    self._announce(fleet, alert.when, after)
        return changed

    def _step(
        self,
        fleet: str,
        name: str,
        for_s: int,
        subject: str,
        before: AlertRecord | None,
        held: Mapping[str, float],
        now: dt.datetime,
    ) -> AlertRecord | None:
        value = held.get(subject)
        if value is None:
            if before is None:
                return None
            if before.state is AlertState.PENDING:
                self.store.alerts.forget(fleet, name, subject)
                return None
            if before.state is AlertState.FIRING:
                after = AlertRecord(
                    fleet=fleet, alert=name, subject=subject, state=AlertState.RESOLVED,
                    since=now, value=before.value, fired_at=before.fired_at, resolved_at=now,
                )  # fmt: skip
                self.store.alerts.save(after)
                return after
            return before
        if before is None or before.state is AlertState.RESOLVED:
            before = AlertRecord(
                fleet=fleet, alert=name, subject=subject, state=AlertState.PENDING,
                since=now, value=value,
            )  # fmt: skip
            self.store.alerts.save(before)
        if before.state is AlertState.PENDING and (now - before.since).total_seconds() >= for_s:
            after = AlertRecord(
                fleet=fleet, alert=name, subject=subject, state=AlertState.FIRING,
                since=before.since, value=value, fired_at=now,
            )  # fmt: skip
            self.store.alerts.save(after)
            return after
        return before

    def _announce(self, fleet: Fleet, when: AlertWhen, record: AlertRecord) -> None:
        about = record.subject or fleet.name
        verb = "firing" if record.state is AlertState.FIRING else "resolved"
        document = {
            "fleet": fleet.name,
            "alert": record.alert,
            "when": str(when),
            "subject": record.subject,
            "state": verb,
            "value": record.value,
            "since": record.since.isoformat(),
            "at": (record.resolved_at or record.fired_at or record.since).isoformat(),
        }
        event = self.store.events.record(
            fleet.name,
            f"alert.{verb}",
            f"alert {record.alert} {verb} for {about}"
            + (
                f" ({when} at {record.value:g})"
                if record.value is not None and verb == "firing"
                else ""
            ),
            server=record.subject or None,
            data=document,
        )
        for hook in fleet.webhooks:
            self.store.jobs.enqueue(
                NewJob(
                    kind=WEBHOOK_JOB,
                    fleet=fleet.name,
                    server=record.subject or None,
                    payload={
                        "url": hook.url,
                        "secret_env": hook.secret_env,
                        "body": json.dumps({**document, "event_id": event.id}, sort_keys=True),
                    },
                    key=f"{WEBHOOK_JOB}/{event.id}/{hook.url}",
                    max_attempts=WEBHOOK_ATTEMPTS,
                )
            )


class WebhookHandler:
    """Delivers one alert event to one webhook, signed; a refusal or no answer is retried."""

    kind = WEBHOOK_JOB
    holds_fleet_lock = False

    def __init__(self, store: Store, *, environ: Mapping[str, str] = os.environ) -> None:
        self.store = store
        self.environ = environ

    def run(self, job: Job) -> Done:
        import time

        import httpx

        payload: Mapping[str, Any] = job.payload
        secret = self.environ.get(str(payload["secret_env"]), "").strip()
        if not secret:
            raise Permanent(
                f"the webhook's secret variable {payload['secret_env']} is not set where "
                "engine serve runs; export it and restart"
            )
        register_secret(secret)
        body = str(payload["body"]).encode()
        stamp = int(time.time())
        answer = httpx.post(
            str(payload["url"]),
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Engine-Timestamp": str(stamp),
                "X-Engine-Signature": sign(secret.encode(), stamp, body),
            },
            timeout=WEBHOOK_TIMEOUT_S,
        )
        if answer.status_code >= 300:
            raise RuntimeError(f"the webhook answered {answer.status_code}")
        return Done({"status": answer.status_code})

    def give_up(self, job: Job, error: str) -> None:
        self.store.events.record(
            job.fleet,
            "webhook.failed",
            f"an alert event could not be delivered to {job.payload.get('url')}: {error}",
            data={"url": job.payload.get("url")},
        )
