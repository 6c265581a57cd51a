"""Reconcile leases: which `engine serve` runs each fleet's reconcile loop.

    if store.leases.take("web-prod", owner, ttl_s=30):   # taken, renewed, or None
        ...                                              # this process runs the loop now
    store.leases.record_run("web-prod", owner, {"drift": 2})
    store.leases.release("web-prod", owner)              # on a clean stop: the next takes it now

One owner per fleet among every `engine serve` on the store. Taking is one conditional
UPDATE (the row is ours, or its lease ran out) or, for a fleet never leased, one INSERT that
fails if another process inserted first: on PostgreSQL the UPDATE re-checks its condition on
the row it waits for, so two takers never both win. An owner renews well before its lease
runs out; one that dies stops renewing, and the next taker gets the fleet once `ttl_s` has
passed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, delete, exc, insert, or_, select, update

from engine.state import Lease, schema
from engine.state.database import Database, Repository, row_fields


class Leases(Repository):
    """The fleets' reconcile leases."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._leases = schema.metadata().tables["reconcile_leases"]

    def take(self, fleet: str, owner: str, *, ttl_s: float) -> Lease | None:
        """Take or renew the fleet's lease for `ttl_s`; the lease, or None when another owner
        holds it and it has not run out."""
        table = self._leases
        now = self._db.now()
        expires = now + dt.timedelta(seconds=ttl_s)
        with self._write() as connection:
            row = connection.execute(select(table.c.owner).where(table.c.fleet == fleet)).first()
            if row is not None:
                values: dict[str, Any] = {"owner": owner, "expires_at": expires}
                if row.owner != owner:
                    values["acquired_at"] = now
                done = connection.execute(
                    update(table)
                    .where(
                        table.c.fleet == fleet,
                        or_(table.c.owner == owner, table.c.expires_at < now),
                    )
                    .values(values)
                )
                if done.rowcount == 0:
                    return None
        if row is None:
            try:
                with self._write() as connection:
                    connection.execute(
                        insert(table).values(
                            fleet=fleet,
                            owner=owner,
                            acquired_at=now,
                            expires_at=expires,
                            last_result={},
                        )
                    )
            except exc.IntegrityError:
                return None  # another process took it first
        return self.get(fleet)

    def get(self, fleet: str) -> Lease | None:
        """The fleet's lease as it is now (it may have run out), or None."""
        with self._read() as connection:
            row = connection.execute(
                select(self._leases).where(self._leases.c.fleet == fleet)
            ).first()
        return None if row is None else _lease(row)

    def all(self) -> tuple[Lease, ...]:
        """Every fleet's lease, by fleet."""
        with self._read() as connection:
            rows = connection.execute(select(self._leases).order_by(self._leases.c.fleet)).all()
        return tuple(_lease(row) for row in rows)

    def record_run(self, fleet: str, owner: str, result: Mapping[str, Any]) -> bool:
        """Note a finished reconcile run; False when `owner` no longer holds the lease."""
        table = self._leases
        with self._write() as connection:
            done = connection.execute(
                update(table)
                .where(table.c.fleet == fleet, table.c.owner == owner)
                .values(last_run_at=self._db.now(), last_result=dict(result))
            )
        return bool(done.rowcount)

    def release(self, fleet: str, owner: str) -> None:
        """Let the lease run out now, if `owner` holds it (its last run stays recorded)."""
        table = self._leases
        past = self._db.now() - dt.timedelta(seconds=1)
        with self._write() as connection:
            connection.execute(
                update(table)
                .where(table.c.fleet == fleet, table.c.owner == owner)
                .values(expires_at=past)
            )

    def forget_fleet(self, fleet: str) -> None:
        """Drop the fleet's lease."""
        with self._write() as connection:
            connection.execute(delete(self._leases).where(self._leases.c.fleet == fleet))


def _lease(row: Row[Any]) -> Lease:
    values = row_fields(row, Lease)
    values["last_result"] = dict(values["last_result"] or {})
    return Lease(**values)
