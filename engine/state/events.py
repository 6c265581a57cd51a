"""Events: each fleet's history, appended to and read in order.

    store.events.record("web-prod", "server.created", "web-1 created", server="web-1")
    store.events.all("web-prod", after_id=41)     # oldest first
    store.events.latest("web-prod", limit=20)     # newest first

Secrets are redacted from every message before it is written.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from engine.secrets import redact
from engine.state import Event, NewEvent, schema
from engine.state.database import Database, Repository


class Events(Repository):
    """The fleets' histories."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._events = schema.metadata().tables["events"]

    def record(
        self,
        fleet: str,
        kind: str,
        message: str,
        *,
        server: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        """Append one event to the fleet's history (secrets are redacted from the message)."""
        with self._write() as connection:
            recorded = Event(
                id=0,
                fleet=fleet,
                server=server,
                kind=kind,
                message=redact(message),
                data=dict(data or {}),
                at=self._db.now(),
            )
            values = {
                "fleet": recorded.fleet,
                "server": recorded.server,
                "kind": recorded.kind,
                "message": recorded.message,
                "data": recorded.data,
                "at": recorded.at,
            }
            event_id = connection.execute(
                insert(self._events).values(values).returning(self._events.c.id)
            ).scalar_one()
        return replace(recorded, id=event_id)

    def record_many(self, events: Iterable[NewEvent], at: dt.datetime) -> None:
        """Append events that happened at `at`, with one statement. No answer is awaited (not
        even their ids): inside `Database.pipelined`, this costs no round trip of its own."""
        rows = [
            {
                "fleet": new.fleet,
                "server": new.server,
                "kind": new.kind,
                "message": redact(new.message),
                "data": dict(new.data),
                "at": at,
            }
            for new in events
        ]
        if rows:
            with self._write() as connection:
                connection.execute(_insert_inline(), rows)

    def all(
        self, fleet: str, *, server: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> tuple[Event, ...]:
        """The fleet's events after `after_id`, oldest first, at most `limit`."""
        table = self._events
        query = select(table).where(table.c.fleet == fleet, table.c.id > after_id)
        if server is not None:
            query = query.where(table.c.server == server)
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.id).limit(limit)).all()
        return tuple(_event(row) for row in rows)

    def latest(
        self, fleet: str, *, server: str | None = None, kind: str | None = None, limit: int = 50
    ) -> tuple[Event, ...]:
        """The fleet's last `limit` events (of `server`, of kinds starting with `kind`),
        newest first."""
        table = self._events
        query = select(table).where(table.c.fleet == fleet)
        if server is not None:
            query = query.where(table.c.server == server)
        if kind:
            query = query.where(table.c.kind.startswith(kind, autoescape=True))
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.id.desc()).limit(limit)).all()
        return tuple(_event(row) for row in rows)

    def forget_fleet(self, fleet: str) -> None:
        """Drop the fleet's history."""
        with self._write() as connection:
            connection.execute(delete(self._events).where(self._events.c.fleet == fleet))


def _event(row: Any) -> Event:
    return Event(
        id=row.id,
        fleet=row.fleet,
        server=row.server,
        kind=row.kind,
        message=row.message,
        data=row.data,
        at=row.at,
    )


@functools.cache
def _insert_inline() -> Any:
    # inline(): no RETURNING of the new ids, which would wait for the answer.
    return insert(schema.metadata().tables["events"]).inline()
