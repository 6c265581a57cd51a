"""The monitor's heartbeat sweep on a real store (SQLite and PostgreSQL), on the test's clock:
silence counts only while a control plane listens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.controlplane.fleets import register_fleet
from engine.controlplane.monitor import Monitor
from engine.model import Stage
from engine.state import AgentReport, ServerRecord
from engine.state.store import Store, open_store
from tests.controlplane.conftest import make_fleet
from tests.support.clock import Clock


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    with open_store(url, now=clock) as opened:
        register_fleet(opened, make_fleet())  # heartbeat every 15 s
        yield opened


def _ready(store: Store, name: str) -> None:
    store.servers.save(
        ServerRecord(fleet="web-prod", name=name, group="web", provider="hcloud", stage=Stage.READY)
    )


def _heartbeat(store: Store, clock: Clock, name: str) -> None:
    store.agents.record_heartbeat(
        AgentReport(fleet="web-prod", server=name, last_heartbeat_at=clock.now)
    )


def _stages(store: Store) -> dict[str, Stage]:
    return {r.name: r.stage for r in store.servers.all("web-prod")}


def test_heartbeats_missed_while_no_control_plane_listened_say_nothing(
    store: Store, clock: Clock
) -> None:
    _ready(store, "web-1")
    _heartbeat(store, clock, "web-1")
    _ready(store, "web-2")  # ready, and never reported
    clock.advance(600)  # no engine ran for 10 minutes: no heartbeat had anywhere to go
    monitor = Monitor(store, heartbeat_misses=3, clock=clock)  # `engine up` or `serve` starts
    monitor.sweep()
    assert _stages(store) == {"web-1": Stage.READY, "web-2": Stage.READY}
    clock.advance(45)  # 3 intervals of 15 s since it listens: not missed yet
    monitor.sweep()
    assert _stages(store) == {"web-1": Stage.READY, "web-2": Stage.READY}
    assert [e for e in store.events.all("web-prod") if e.kind == "server.unhealthy"] == []


def test_an_agent_silent_while_the_control_plane_listens_is_unhealthy_after_the_threshold(
    store: Store, clock: Clock
) -> None:
    for name in ("web-1", "web-2", "web-3"):
        _ready(store, name)
        _heartbeat(store, clock, name)
    clock.advance(600)
    monitor = Monitor(store, heartbeat_misses=3, clock=clock)
    clock.advance(10)
    _heartbeat(store, clock, "web-2")  # heard, then silent
    _heartbeat(store, clock, "web-3")  # heard, and heard again
    clock.advance(36)  # 46 s since the start, 36 s since web-2 and web-3 were heard
    monitor.sweep()
    assert _stages(store) == {"web-1": Stage.UNHEALTHY, "web-2": Stage.READY, "web-3": Stage.READY}
    web_1 = store.servers.get("web-prod", "web-1")
    assert web_1 is not None and web_1.stage_reason == (
        "no heartbeat in the 46 s the control plane has listened (3 intervals of 15 s)"
    )
    _heartbeat(store, clock, "web-3")
    clock.advance(10)
    monitor.sweep()
    assert _stages(store) == {
        "web-1": Stage.UNHEALTHY,
        "web-2": Stage.UNHEALTHY,
        "web-3": Stage.READY,
    }
    web_2 = store.servers.get("web-prod", "web-2")
    assert web_2 is not None and web_2.stage_reason == (
        "no heartbeat for 46 s (3 intervals of 15 s)"
    )
