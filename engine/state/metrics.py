"""Metric history: each server's heartbeat metrics as averages per step, bounded by age.

    store.metrics.record("web-prod", "web-1", at, {"cpu": 12.5, "memory": 40.1, "rx": 5120, ...})
    store.metrics.series("web-prod", "web-1", since=an_hour_ago, step_s=300)
    store.metrics.prune()                    # what RETENTION says is too old goes

Every heartbeat adds to the 1-minute point and the 15-minute point it falls in (a sum and a
count per metric, so a point is an average however many heartbeats it took, and a metric a
heartbeat lacks, like the network rates of an agent's first, is averaged over those that
carried it). 1-minute points are kept for a day and 15-minute points for 30 days: a server
reporting every 15 s costs 1,440 + 2,880 rows at most, whatever its heartbeat.

The agent reports its interfaces' byte counters as they stand (totals since boot); the history
keeps rates, rx and tx in bytes per second, from each heartbeat and the one before it
(`network_rates`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.state import MetricPoint, schema
from engine.state.database import Database, Repository

# Step (seconds) -> how long its points are kept.
RETENTION = {60: dt.timedelta(hours=24), 900: dt.timedelta(days=30)}
# How far back the history goes: as long as its longest-kept points.
HISTORY = max(RETENTION.values())
# Linux runs at most 2^22 tasks (PID_MAX_LIMIT), so no more can wait to run; and it counts
# an interface's bytes in 64 bits.
MAX_LOAD = 2**22
MAX_COUNTER = 2**64 - 1


def bucket(at: dt.datetime, step_s: int) -> dt.datetime:
    """The start of the `step_s` point `at` falls in."""
    seconds = int(at.timestamp())
    return dt.datetime.fromtimestamp(seconds - seconds % step_s, dt.UTC)


class Metrics(Repository):
    """The servers' metric history."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._points = schema.metadata().tables["metric_points"]

    def record(self, fleet: str, server: str, at: dt.datetime, values: Mapping[str, float]) -> None:
        """Add one heartbeat's `values` to the points of every step it falls in."""
        if not values:
            return
        table = self._points
        with self._write() as connection:
            for step in RETENTION:
                start = bucket(at, step)
                key = (
                    table.c.fleet == fleet,
                    table.c.server == server,
                    table.c.step_s == step,
                    table.c.at == start,
                )
                row = connection.execute(
                    self._db.for_update(
                        select(table.c.samples, table.c.sums, table.c.counts).where(*key)
                    )
                ).first()
                if row is None:
                    connection.execute(
                        insert(table).values(
                            fleet=fleet,
                            server=server,
                            step_s=step,
                            at=start,
                            samples=1,
                            sums={k: float(v) for k, v in values.items()},
                            counts=dict.fromkeys(values, 1),
                        )
                    )
                    continue
                sums, counts = dict(row.sums), _counts(row)
                for name, value in values.items():
                    sums[name] = float(sums.get(name, 0.0)) + float(value)
                    counts[name] = counts.get(name, 0) + 1
                connection.execute(
                    update(table)
                    .where(*key)
                    .values(samples=row.samples + 1, sums=sums, counts=counts)
                )

    def series(
        self, fleet: str, server: str, *, since: dt.datetime, step_s: int
    ) -> tuple[MetricPoint, ...]:
        """The server's points from `since`, one per `step_s` (a multiple of 60), oldest first:
        read from the 15-minute points when the step is a multiple of 15 minutes or the
        1-minute points are gone by `since`, else from the 1-minute points."""
        now = self._db.now()
        fine = 60 if step_s % 900 and since >= now - RETENTION[60] else 900
        table = self._points
        with self._read() as connection:
            rows = connection.execute(
                select(table)
                .where(
                    table.c.fleet == fleet,
                    table.c.server == server,
                    table.c.step_s == fine,
                    table.c.at >= bucket(since, fine),
                )
                .order_by(table.c.at)
            ).all()
        merged: dict[dt.datetime, tuple[int, dict[str, float], dict[str, int]]] = {}
        for row in rows:
            start = bucket(row.at, max(step_s, fine))
            samples, sums, counts = merged.get(start, (0, {}, {}))
            for name, value in row.sums.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            for name, count in _counts(row).items():
                counts[name] = counts.get(name, 0) + count
            merged[start] = (samples + row.samples, sums, counts)
        return tuple(
            MetricPoint(
                fleet=fleet,
                server=server,
                step_s=max(step_s, fine),
                at=start,
                samples=samples,
                values={k: round(v / counts[k], 2) for k, v in sorted(sums.items())},
            )
            for start, (samples, sums, counts) in merged.items()
        )

    def prune(self) -> int:
        """Drop the points older than their step's retention; how many went."""
        table = self._points
        now = self._db.now()
        dropped = 0
        with self._write() as connection:
            for step, kept in RETENTION.items():
                done = connection.execute(
                    delete(table).where(table.c.step_s == step, table.c.at < now - kept)
                )
                dropped += done.rowcount
        return dropped

    def forget_fleet(self, fleet: str) -> None:
        """Drop the fleet's history."""
        with self._write() as connection:
            connection.execute(delete(self._points).where(self._points.c.fleet == fleet))


def _counts(row: Row[Any]) -> dict[str, int]:
    """How many samples of a point carried each of its metrics; a point made before they were
    counted (migration 9) has every metric in each of its samples."""
    if row.counts is None:
        return dict.fromkeys(row.sums, int(row.samples))
    return {name: int(count) for name, count in row.counts.items()}


def heartbeat_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The series kept of one heartbeat's metrics (as the agent reports them): cpu, memory
    and disk (the fullest) in percent used, load the 1-minute load average. A reading out of
    its range (a percent past 100, a load past MAX_LOAD) is no reading: a point's sum of
    them would not stay finite."""
    values: dict[str, float] = {}

    def number(value: Any, high: float) -> float | None:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if is_number and 0 <= value <= high else None

    for name, section, key in (("cpu", "cpu", "percent"), ("memory", "memory", "percent")):
        part = metrics.get(section)
        found = number(part.get(key), 100) if isinstance(part, Mapping) else None
        if found is not None:
            values[name] = found
    load = metrics.get("load")
    found = number(load.get("1m"), MAX_LOAD) if isinstance(load, Mapping) else None
    if found is not None:
        values["load"] = found
    disks = metrics.get("disks")
    if isinstance(disks, list):
        used = [number(d.get("percent"), 100) for d in disks if isinstance(d, Mapping)]
        percents = [p for p in used if p is not None]
        if percents:
            values["disk"] = max(percents)
    return values


def _counted_at(metrics: Mapping[str, Any]) -> dt.datetime | None:
    collected = metrics.get("collected_at")
    if not isinstance(collected, str):
        return None
    try:
        return dt.datetime.fromisoformat(collected.replace("Z", "+00:00"))
    except ValueError:
        return None


def _byte_counters(metrics: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    counters = {}
    interfaces = metrics.get("network")
    for interface in interfaces if isinstance(interfaces, list) else []:
        if not isinstance(interface, Mapping):
            continue
        received, sent = interface.get("bytes_recv"), interface.get("bytes_sent")
        if (
            isinstance(received, int)
            and isinstance(sent, int)
            and 0 <= min(received, sent) <= max(received, sent) <= MAX_COUNTER
        ):
            counters[str(interface.get("interface", ""))] = (received, sent)
    return counters


def network_rates(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, float]:
    """rx and tx, bytes per second received and sent over the interfaces both heartbeats'
    metrics list, between their collection times; nothing when either lacks a time or the
    counters, or any counter went back (the server restarted, or an interface came anew).
    eth0 received 1000 then 21000 bytes, 10 s apart: rx 2000.0."""
    start, end = _counted_at(before), _counted_at(after)
    if start is None or end is None or end <= start:
        return {}
    old, new = _byte_counters(before), _byte_counters(after)
    both = old.keys() & new.keys()
    if not both or any(new[i][0] < old[i][0] or new[i][1] < old[i][1] for i in both):
        return {}
    seconds = (end - start).total_seconds()
    return {
        "rx": round(sum(new[i][0] - old[i][0] for i in both) / seconds, 1),
        "tx": round(sum(new[i][1] - old[i][1] for i in both) / seconds, 1),
    }
