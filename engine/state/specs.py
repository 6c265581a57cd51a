"""Fleet specs registered through the API (`PUT /v1/fleets/{fleet}`): each fleet's desired
state as it was sent, and its digest.

    store.specs.save(FleetSpec(fleet="web", text=..., digest=..., updated_at=..., updated_by="ci"))
    store.specs.get("web")                         # or None
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.state import FleetSpec, schema
from engine.state.database import Database, Repository, row_fields


class Specs(Repository):
    """The fleets' desired states."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._specs = schema.metadata().tables["fleet_specs"]

    def save(self, spec: FleetSpec) -> None:
        """Insert or replace a fleet's spec."""
        values = {
            "fleet": spec.fleet,
            "text": spec.text,
            "digest": spec.digest,
            "updated_at": spec.updated_at,
            "updated_by": spec.updated_by,
        }
        with self._write() as connection:
            done = connection.execute(
                update(self._specs).where(self._specs.c.fleet == spec.fleet).values(values)
            )
            if done.rowcount == 0:
                connection.execute(insert(self._specs).values(values))

    def get(self, fleet: str) -> FleetSpec | None:
        """The fleet's spec, or None when none was registered through the API."""
        with self._read() as connection:
            row = connection.execute(
                select(self._specs).where(self._specs.c.fleet == fleet)
            ).first()
        return None if row is None else _spec(row)

    def all(self) -> tuple[FleetSpec, ...]:
        """Every registered spec, by fleet."""
        with self._read() as connection:
            rows = connection.execute(select(self._specs).order_by(self._specs.c.fleet)).all()
        return tuple(_spec(row) for row in rows)

    def forget(self, fleet: str) -> None:
        """Drop the fleet's spec."""
        with self._write() as connection:
            connection.execute(delete(self._specs).where(self._specs.c.fleet == fleet))


def _spec(row: Row[Any]) -> FleetSpec:
    return FleetSpec(**row_fields(row, FleetSpec))
