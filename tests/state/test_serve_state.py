"""What `engine serve` keeps, on SQLite and PostgreSQL: one reconcile owner per fleet until
its lease runs out, metric history averaged per step (each metric over the heartbeats that
carried it) and pruned by age, alert states."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert

from engine.state import AlertRecord, AlertState
from engine.state import schema as state_schema
from engine.state.database import Database
from engine.state.metrics import bucket, heartbeat_values, network_rates
from engine.state.store import Store, open_store
from tests.support.clock import Clock


def test_one_owner_per_fleet_until_its_lease_runs_out(store: Store, clock: Clock) -> None:
    first = store.leases.take("web-prod", "a/1/x", ttl_s=30)
    assert first is not None and first.owner == "a/1/x"
    assert store.leases.take("web-prod", "b/2/y", ttl_s=30) is None
    assert store.leases.take("db-prod", "b/2/y", ttl_s=30) is not None  # per fleet
    clock.advance(20)
    renewed = store.leases.take("web-prod", "a/1/x", ttl_s=30)
    assert renewed is not None and renewed.acquired_at == first.acquired_at
    clock.advance(20)
    assert store.leases.take("web-prod", "b/2/y", ttl_s=30) is None  # renewed: not run out
    assert store.leases.record_run("web-prod", "a/1/x", {"drift": 1})
    clock.advance(31)
    taken = store.leases.take("web-prod", "b/2/y", ttl_s=30)
    assert taken is not None and taken.owner == "b/2/y" and taken.last_result == {"drift": 1}
    assert not store.leases.record_run("web-prod", "a/1/x", {})  # the old owner lost it
    store.leases.release("web-prod", "b/2/y")
    assert store.leases.take("web-prod", "a/1/x", ttl_s=30) is not None  # at once


def test_metric_points_average_per_step_and_go_when_old(store: Store, clock: Clock) -> None:
    start = clock.now
    for n in range(8):  # two minutes of heartbeats every 15 s
        at = start + dt.timedelta(seconds=15 * n)
        store.metrics.record("web-prod", "web-1", at, {"cpu": 10.0 * n, "load": 1.0})
    minutes = store.metrics.series("web-prod", "web-1", since=start, step_s=60)
    assert [(p.at, p.samples, p.values["cpu"]) for p in minutes] == [
        (start, 4, 15.0),
        (start + dt.timedelta(minutes=1), 4, 55.0),
    ]
    (quarter,) = store.metrics.series("web-prod", "web-1", since=start, step_s=900)
    assert (quarter.samples, quarter.values) == (8, {"cpu": 35.0, "load": 1.0})
    clock.advance(25 * 3600)
    assert store.metrics.prune() == 2  # the 1-minute points; the 15-minute one stays a month
    (kept,) = store.metrics.series("web-prod", "web-1", since=start, step_s=60)
    assert kept.step_s == 900 and kept.samples == 8
    clock.advance(30 * 24 * 3600)
    assert store.metrics.prune() == 1


def test_a_metric_a_heartbeat_lacks_is_averaged_over_those_that_carried_it(
    store: Store, clock: Clock
) -> None:
    start = clock.now
    # An agent's first heartbeat has no network rate yet: it has no counters to compare.
    beats = ({"cpu": 10.0}, {"cpu": 20.0, "rx": 300.0}, {"cpu": 30.0, "rx": 100.0})
    for n, values in enumerate(beats):
        store.metrics.record("web-prod", "web-1", start + dt.timedelta(seconds=15 * n), values)
    for step in (60, 900):
        (point,) = store.metrics.series("web-prod", "web-1", since=start, step_s=step)
        assert (point.samples, point.values) == (3, {"cpu": 20.0, "rx": 200.0})


def test_points_made_before_metrics_were_counted_keep_their_averages(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nested").mkdir(exist_ok=True)  # the SQLite store's folder
    before = tuple(m for m in state_schema.MIGRATIONS if m.version < 9)
    monkeypatch.setattr(state_schema, "MIGRATIONS", before)
    state_schema.metadata.cache_clear()
    at = bucket(dt.datetime.now(dt.UTC), 900)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        state_schema.migrate(Database(engine, url))  # the store as the engine before made it
        with engine.begin() as connection:
            connection.execute(
                insert(state_schema.metadata().tables["metric_points"]).values(
                    fleet="web-prod", server="web-1", step_s=900, at=at, samples=2,
                    sums={"cpu": 30.0, "rx": 100.0},
                )
            )  # fmt: skip
    finally:
        engine.dispose()
        monkeypatch.undo()
        state_schema.metadata.cache_clear()
    with open_store(url) as upgraded:
        upgraded.metrics.record("web-prod", "web-1", at, {"cpu": 30.0})  # no rate this time
        (point,) = upgraded.metrics.series("web-prod", "web-1", since=at, step_s=900)
    # Both old samples carried rx: 100 over 2; cpu (30 + 30) over 3.
    assert (point.samples, point.values) == (3, {"cpu": 20.0, "rx": 50.0})


def test_the_series_of_a_heartbeat_are_read_from_the_agents_metrics() -> None:
    metrics = {
        "cpu": {"percent": 12.5},
        "memory": {"percent": 40.0},
        "load": {"1m": 0.5},
        "disks": [{"percent": 30.0}, {"percent": 91.5}],
    }
    assert heartbeat_values(metrics) == {"cpu": 12.5, "memory": 40.0, "load": 0.5, "disk": 91.5}
    assert heartbeat_values({"cpu": {"percent": "high"}, "disks": []}) == {}
    # Out of range is no reading: two of 1.7e308 would sum to Infinity in their point.
    wild = {
        "cpu": {"percent": 1.7e308},
        "memory": {"percent": -1},
        "load": {"1m": 2**22 + 1},
        "disks": [{"percent": 101}, {"percent": 7}],
    }
    assert heartbeat_values(wild) == {"disk": 7.0}


def test_alert_states_are_kept_per_alert_and_subject(store: Store, clock: Clock) -> None:
    pending = AlertRecord(
        fleet="web-prod", alert="hot", subject="web-1", state=AlertState.PENDING, since=clock.now
    )
    store.alerts.save(pending)
    store.alerts.save(
        AlertRecord(
            fleet="web-prod",
            alert="hot",
            subject="web-1",
            state=AlertState.FIRING,
            since=clock.now,
            value=97.5,
            fired_at=clock.now,
        )
    )
    (firing,) = store.alerts.all("web-prod")
    assert (firing.state, firing.value, firing.fired_at) == (AlertState.FIRING, 97.5, clock.now)
    assert store.alerts.all("db-prod") == ()
    store.forget_fleet("web-prod")
    assert store.alerts.all() == () and store.leases.all() == ()


def _reading(second: int, *interfaces: tuple[str, int, int]) -> dict[str, object]:
    return {
        "collected_at": f"2026-12-01T10:00:{second:02d}.000Z",
        "network": [
            {"interface": name, "bytes_recv": rx, "bytes_sent": tx} for name, rx, tx in interfaces
        ],
    }


def test_network_rates_come_from_two_heartbeats_counters() -> None:
    before = _reading(0, ("eth0", 1000, 500), ("eth1", 0, 0))
    after = _reading(10, ("eth0", 21000, 1500), ("eth1", 5000, 0))
    assert network_rates(before, after) == {"rx": 2500.0, "tx": 100.0}
    # Only the interfaces both list count.
    assert network_rates(before, _reading(10, ("eth0", 1000, 500))) == {"rx": 0.0, "tx": 0.0}
    # A counter that went back (a restart), no time between them, or no counters: no rate.
    assert network_rates(before, _reading(10, ("eth0", 10, 600))) == {}
    assert network_rates(before, _reading(0, ("eth0", 2000, 600))) == {}
    assert network_rates({"cpu": {}}, after) == {}
    assert network_rates(before, {"collected_at": "soon", "network": []}) == {}
    # A counter past 64 bits is no counter (its rate would not fit a float).
    assert network_rates(before, _reading(10, ("eth0", 10**400, 600))) == {}
