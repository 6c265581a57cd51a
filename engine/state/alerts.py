"""Alert states: for each declared alert of a fleet and each subject it is about (a server,
or "" for the fleet itself), whether it is pending, firing or resolved, and since when.

    store.alerts.save(AlertRecord(fleet="web-prod", alert="hot", subject="web-1", ...))
    store.alerts.all("web-prod")                   # or all fleets' with no argument

The decisions (when a pending alert fires, when a firing one resolves) are the alert
evaluator's (engine.controlplane.alerts); this only keeps what it decided.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.state import AlertRecord, AlertState, schema
from engine.state.database import Database, Repository, row_fields


class Alerts(Repository):
    """The fleets' alert states."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._alerts = schema.metadata().tables["alerts"]

    def save(self, record: AlertRecord) -> None:
        """Insert or replace one alert's state about one subject."""
        table = self._alerts
        values = {
            "state": str(record.state),
            "since": record.since,
            "value": record.value,
            "fired_at": record.fired_at,
            "resolved_at": record.resolved_at,
        }
        key = (
            table.c.fleet == record.fleet,
            table.c.alert == record.alert,
            table.c.subject == record.subject,
        )
        with self._write() as connection:
            if connection.execute(update(table).where(*key).values(values)).rowcount == 0:
                connection.execute(
                    insert(table).values(
                        fleet=record.fleet, alert=record.alert, subject=record.subject, **values
                    )
                )

    def all(self, fleet: str | None = None) -> tuple[AlertRecord, ...]:
        """Every alert state (of `fleet`, if given), by fleet, alert and subject."""
        table = self._alerts
        query = select(table).order_by(table.c.fleet, table.c.alert, table.c.subject)
        if fleet is not None:
            query = query.where(table.c.fleet == fleet)
        with self._read() as connection:
            rows = connection.execute(query).all()
        return tuple(_alert(row) for row in rows)

    def forget(self, fleet: str, alert: str, subject: str) -> None:
        """Drop one alert's state about one subject."""
        table = self._alerts
        with self._write() as connection:
            connection.execute(
                delete(table).where(
                    table.c.fleet == fleet, table.c.alert == alert, table.c.subject == subject
                )
            )

    def forget_fleet(self, fleet: str) -> None:
        """Drop the fleet's alert states."""
        with self._write() as connection:
            connection.execute(delete(self._alerts).where(self._alerts.c.fleet == fleet))


def _alert(row: Row[Any]) -> AlertRecord:
    values = row_fields(row, AlertRecord)
    values["state"] = AlertState(values["state"])
    return AlertRecord(**values)
