"""Alerts from the spec, against a real store and a real webhook receiver on loopback: a hot
CPU fires after its `for` and resolves, each change delivered once with a valid signature by
a durable job; a silent agent raises its alert within 60 s; a receiver that refuses is tried
again with back-off."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.controlplane.alerts import WEBHOOK_JOB, AlertEvaluator, WebhookHandler, fleet_readings
from engine.controlplane.jobs import JobRegistry, Worker
from engine.model import Alert, AlertWhen, Fleet, Stage, Webhook
from engine.state import AgentReport, AlertState, JobState, ServerRecord
from engine.state.store import Store, open_store
from tests.support.cli import engine
from tests.support.clock import Clock
from tests.support.fleets import example_fleet
from tests.support.http import serve
from tests.support.webhook import SECRET, Receiver

START = Clock().now  # when the control plane the agents report to started listening


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", now=clock) as opened:
        yield opened


def _fleet(url: str, *alerts: Alert) -> Fleet:
    return dataclasses.replace(
        example_fleet("hetzner"),
        alerts=alerts,
        webhooks=(Webhook(url=url, secret_env="HOOK_SECRET"),),
    )


def _ready(store: Store, fleet: Fleet, name: str) -> None:
    store.servers.save(
        ServerRecord(fleet=fleet.name, name=name, group="web", provider="hcloud", stage=Stage.READY)
    )


def _beat(store: Store, fleet: Fleet, name: str, at: dt.datetime, cpu: float) -> None:
    store.agents.record_heartbeat(
        AgentReport(
            fleet=fleet.name, server=name, last_heartbeat_at=at, sequence=1,
            metrics={"cpu": {"percent": cpu}}, containers=[], tls_fingerprint="sha256:aa",
        )
    )  # fmt: skip


def _deliver(store: Store, environ: dict[str, str]) -> list[JobState]:
    """Run the webhook jobs due now, as a worker of `engine serve` does."""
    worker = Worker(store, JobRegistry([WebhookHandler(store, environ=environ)]))
    while worker.run_once() is not None:
        pass
    return [job.state for job in store.jobs.all(kind=WEBHOOK_JOB)]


def test_a_hot_cpu_fires_after_its_for_and_resolves_signed_to_the_webhook(
    store: Store, clock: Clock
) -> None:
    receiver = Receiver()
    with serve(receiver.app()) as base:
        fleet = _fleet(f"{base}/hook", Alert(name="hot", when=AlertWhen.CPU, above=90, for_s=120))
        evaluator = AlertEvaluator(store)
        _ready(store, fleet, "web-1")
        _ready(store, fleet, "web-2")

        def round_at(cpu: float) -> list[Any]:
            _beat(store, fleet, "web-1", clock.now, cpu)
            _beat(store, fleet, "web-2", clock.now, 5.0)
            readings = fleet_readings(store, fleet.name, 15, 0, clock.now, listening_since=START)
            return evaluator.evaluate(fleet, readings, clock.now)

        assert round_at(97.0) == []  # pending: not for two minutes yet
        clock.advance(60)
        assert round_at(95.0) == []
        clock.advance(60)
        (fired,) = round_at(96.0)
        assert (fired.subject, fired.state, fired.value) == ("web-1", AlertState.FIRING, 96.0)
        listed = engine("alerts", "--state", store.url)
        assert listed.stdout.split("\t")[:4] == [fleet.name, "hot", "web-1", "firing"]
        assert round_at(99.0) == []  # firing already: nothing new to say
        clock.advance(15)
        (resolved,) = round_at(10.0)
        assert resolved.state is AlertState.RESOLVED
        assert engine("alerts", "--state", store.url).stdout == "no alert is firing\n"
        assert _deliver(store, {"HOOK_SECRET": SECRET}) == [JobState.SUCCEEDED] * 2
    sent = receiver.bodies()
    assert len(sent) == len(receiver.got) == 2  # each signature verifies
    assert [(b["alert"], b["subject"], b["state"]) for b in sent] == [
        ("hot", "web-1", "firing"),
        ("hot", "web-1", "resolved"),
    ]
    kinds = [e.kind for e in store.events.all(fleet.name)]
    assert kinds == ["alert.firing", "alert.resolved"]
    assert SECRET not in json.dumps([e.data for e in store.events.all(fleet.name)])
    assert all(SECRET not in json.dumps(dict(j.payload)) for j in store.jobs.all())


def test_a_silent_agent_raises_its_alert_within_a_minute(store: Store, clock: Clock) -> None:
    receiver = Receiver()
    with serve(receiver.app()) as base:
        fleet = _fleet(f"{base}/hook", Alert(name="down", when=AlertWhen.UNHEALTHY))
        evaluator = AlertEvaluator(store)
        _ready(store, fleet, "web-1")
        _beat(store, fleet, "web-1", clock.now, 1.0)
        silent_since = clock.now
        fired: list[Any] = []
        while not fired:  # the owner's loop checks every 5 s
            clock.advance(5)
            readings = fleet_readings(store, fleet.name, 15, 0, clock.now, listening_since=START)
            fired = evaluator.evaluate(fleet, readings, clock.now)
        assert (clock.now - silent_since).total_seconds() <= 60
        assert fired[0].subject == "web-1" and fired[0].state is AlertState.FIRING
        _deliver(store, {"HOOK_SECRET": SECRET})
    assert [b["alert"] for b in receiver.bodies()] == ["down"]


def test_heartbeats_due_while_no_control_plane_listened_raise_no_alert(
    store: Store, clock: Clock
) -> None:
    receiver = Receiver()
    with serve(receiver.app()) as base:
        fleet = _fleet(f"{base}/hook", Alert(name="down", when=AlertWhen.UNHEALTHY))
        evaluator = AlertEvaluator(store)
        _ready(store, fleet, "web-1")
        _beat(store, fleet, "web-1", clock.now, 1.0)
        clock.advance(600)  # `engine serve` was down for 10 minutes, and starts again
        listening_since = clock.now
        fired: list[Any] = []
        while not fired:  # the owner's loop checks every 5 s
            clock.advance(5)
            readings = fleet_readings(
                store, fleet.name, 15, 0, clock.now, listening_since=listening_since
            )
            fired = evaluator.evaluate(fleet, readings, clock.now)
        # Silent for 3 intervals of 15 s since it listens, and only then.
        assert 45 < (clock.now - listening_since).total_seconds() <= 60
        assert fired[0].subject == "web-1" and fired[0].state is AlertState.FIRING
        _deliver(store, {"HOOK_SECRET": SECRET})
    assert [b["alert"] for b in receiver.bodies()] == ["down"]


def test_a_refusing_receiver_is_tried_again_and_a_missing_secret_fails_at_once(
    store: Store, clock: Clock
) -> None:
    receiver = Receiver(refuse=1)
    with serve(receiver.app()) as base:
        fleet = _fleet(f"{base}/hook", Alert(name="drifted", when=AlertWhen.DRIFT))
        evaluator = AlertEvaluator(store)
        (fired,) = evaluator.evaluate(
            fleet,
            fleet_readings(store, fleet.name, 15, 2, clock.now, listening_since=START),
            clock.now,
        )
        assert fired.subject == "" and fired.value == 2.0
        assert _deliver(store, {"HOOK_SECRET": SECRET}) == [JobState.QUEUED]  # back-off
        (job,) = store.jobs.all(kind=WEBHOOK_JOB)
        assert job.attempts == 1 and "503" in job.last_error
        clock.advance(3)
        assert _deliver(store, {"HOOK_SECRET": SECRET}) == [JobState.SUCCEEDED]
        (_resolved,) = evaluator.evaluate(
            fleet,
            fleet_readings(store, fleet.name, 15, 0, clock.now, listening_since=START),
            clock.now,
        )
        assert _deliver(store, {}) == [JobState.SUCCEEDED, JobState.FAILED]
    # The refused delivery and its retry, each signed; the resolution never left (no secret).
    assert [b["state"] for b in receiver.bodies()] == ["firing", "firing"]
    (failed,) = [e for e in store.events.all(fleet.name) if e.kind == "webhook.failed"]
    assert "HOOK_SECRET is not set" in failed.message
