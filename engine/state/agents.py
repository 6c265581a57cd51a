"""Agents: what each server's agent said in its last heartbeat, and the events it sent.

    store.agents.record_heartbeat(AgentReport(fleet="web-prod", server="web-1", ...))
    store.agents.mark_unhealthy(misses=3, listening_since=started)  # the monitor, each second

Heartbeats move servers on: an installed server whose agent reports is ready, an unhealthy
one has recovered; a ready one whose agent falls silent is unhealthy. Silence counts only
while a control plane listens: agents post heartbeats to it, so one missed while none ran
says nothing about the server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.errors import EngineError
from engine.model import Stage
from engine.state import AgentReport, ServerRecord, schema
from engine.state.database import Database, Repository, dialect_insert, row_fields
from engine.state.events import Events
from engine.state.servers import Servers


class Agents(Repository):
    """The agents' last reports, and the ids of the events they sent."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        tables = schema.metadata().tables
        self._reports = tables["agent_reports"]
        self._event_ids = tables["agent_event_ids"]

    def record_heartbeat(self, report: AgentReport) -> ServerRecord:
        """Keep an agent's latest report and move its server on: an installed server whose
        agent reports is ready; an unhealthy one has recovered. Returns the server record."""
        reports = self._reports
        values = {
            "fleet": report.fleet,
            "server": report.server,
            "last_heartbeat_at": report.last_heartbeat_at,
            "sequence": report.sequence,
            "metrics": dict(report.metrics),
            "containers": None if report.containers is None else dict(report.containers),
            "tls_fingerprint": report.tls_fingerprint,
        }
        with self._write() as connection:
            servers = Servers(self._db, connection)
            record = servers.get_for_update(report.fleet, report.server)
            if record is None:
                raise EngineError(f"the state store has no server {report.server}")
            done = connection.execute(
                update(reports)
                .where(reports.c.fleet == report.fleet, reports.c.server == report.server)
                .values(values)
            )
            if done.rowcount == 0:
                connection.execute(insert(reports).values(values))
            if record.stage is Stage.UNHEALTHY:
                return servers.update(
                    report.fleet, report.server, stage=Stage.READY, reason="heartbeats resumed"
                )
            if record.stage is Stage.INSTALLING and record.installed_at is not None:
                return servers.update(report.fleet, report.server, stage=Stage.READY)
        return record

    def report(self, fleet: str, server: str) -> AgentReport | None:
        """The last heartbeat of a server's agent, or None."""
        reports = self._reports
        with self._read() as connection:
            row = connection.execute(
                select(reports).where(reports.c.fleet == fleet, reports.c.server == server)
            ).first()
        return None if row is None else _report(row)

    def reports(self, fleet: str) -> tuple[AgentReport, ...]:
        """The last heartbeat of every agent of a fleet, by server."""
        reports = self._reports
        with self._read() as connection:
            rows = connection.execute(
                select(reports).where(reports.c.fleet == fleet).order_by(reports.c.server)
            ).all()
        return tuple(_report(row) for row in rows)

    def record_event(
        self,
        fleet: str,
        server: str,
        event_id: str,
        kind: str,
        message: str,
        data: Mapping[str, Any],
    ) -> bool:
        """Record an agent's event once: False if this event id was recorded before."""
        with self._write() as connection:
            added = connection.execute(
                dialect_insert(self._event_ids, postgresql=self._db.is_postgresql)
                .values(fleet=fleet, server=server, event_id=event_id)
                .on_conflict_do_nothing()
            )
            if not added.rowcount:
                return False
            Events(self._db, connection).record(fleet, kind, message, server=server, data=data)
        return True

    def mark_unhealthy(
        self, misses: int, *, listening_since: dt.datetime
    ) -> tuple[ServerRecord, ...]:
        """Move ready servers whose agent missed `misses` heartbeats in a row, while a control
        plane listened since `listening_since`, to unhealthy.

        A server's interval is its fleet's heartbeat_s; a ready server that never reported
        counts from when it became ready. A heartbeat due before `listening_since` had no one
        to reach: silence counts from then at the earliest. Returns the servers moved.
        """
        now = self._db.now()
        tables = schema.metadata().tables
        servers, fleets, reports = tables["servers"], tables["fleets"], self._reports
        query = (
            select(
                servers.c.fleet,
                servers.c.name,
                servers.c.updated_at,
                reports.c.last_heartbeat_at,
                fleets.c.heartbeat_s,
            )
            .join(fleets, fleets.c.name == servers.c.fleet)
            .outerjoin(
                reports, (reports.c.fleet == servers.c.fleet) & (reports.c.server == servers.c.name)
            )
            .where(servers.c.stage == str(Stage.READY))
        )
        with self._read() as connection:
            rows = connection.execute(query).all()
        moved = []
        for row in rows:
            last = row.last_heartbeat_at or row.updated_at
            silent_s = (now - max(last, listening_since)).total_seconds()
            if silent_s <= misses * row.heartbeat_s:
                continue
            with self._write() as connection:
                bound = Servers(self._db, connection)
                current = bound.get_for_update(row.fleet, row.name)
                if current is None or current.stage is not Stage.READY:
                    continue
                silence = (
                    f"no heartbeat for {silent_s:.0f} s"
                    if last >= listening_since
                    else f"no heartbeat in the {silent_s:.0f} s the control plane has listened"
                )
                reason = f"{silence} ({misses} intervals of {row.heartbeat_s} s)"
                moved.append(
                    bound.update(row.fleet, row.name, stage=Stage.UNHEALTHY, reason=reason)
                )
                Events(self._db, connection).record(
                    row.fleet, "server.unhealthy", f"{row.name}: {reason}", server=row.name
                )
        return tuple(moved)

    def forget_fleet(self, fleet: str) -> None:
        """Drop the reports and event ids of every agent of `fleet`."""
        with self._write() as connection:
            connection.execute(delete(self._reports).where(self._reports.c.fleet == fleet))
            connection.execute(delete(self._event_ids).where(self._event_ids.c.fleet == fleet))


def _report(row: Row[Any]) -> AgentReport:
    return AgentReport(**row_fields(row, AgentReport))
