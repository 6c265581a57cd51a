"""The audit trail: every write through the API, and every key made or revoked, in order.

    store.audit.record(AuditEntry(at=..., actor="ci", action="PUT /v1/fleets/web",
                                  fleet="web", status=200, result="spec stored"))
    store.audit.all(fleet="web", after_id=0)

Entries say who, what, when and how it ended; they never hold a request body or a key, and
their text is redacted of registered secrets before it is written.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import Connection, insert, select

from engine.secrets import redact
from engine.state import AuditEntry, schema
from engine.state.database import Database, Repository


class Audit(Repository):
    """The audit trail."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._audit = schema.metadata().tables["audit"]

    def record(self, entry: AuditEntry) -> AuditEntry:
        """Append one entry (its text redacted); the entry as stored, with its id."""
        clean = replace(entry, action=redact(entry.action), result=redact(entry.result))
        with self._write() as connection:
            entry_id = connection.execute(
                insert(self._audit)
                .values(
                    at=clean.at,
                    actor=clean.actor,
                    action=clean.action,
                    fleet=clean.fleet,
                    status=clean.status,
                    result=clean.result,
                    detail=dict(clean.detail),
                )
                .returning(self._audit.c.id)
            ).scalar_one()
        return replace(clean, id=entry_id)

    def all(
        self, *, fleet: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> tuple[AuditEntry, ...]:
        """Entries after `after_id` (of `fleet`, when given), oldest first, at most `limit`."""
        table = self._audit
        query = select(table).where(table.c.id > after_id)
        if fleet is not None:
            query = query.where(table.c.fleet == fleet)
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.id).limit(limit)).all()
        return tuple(
            AuditEntry(
                id=row.id,
                at=row.at,
                actor=row.actor,
                action=row.action,
                fleet=row.fleet,
                status=row.status,
                result=row.result,
                detail=row.detail,
            )
            for row in rows
        )
