"""Apps: the definition of each version deployed, which version runs where, and rollouts.

    store.apps.save_version("web-prod", "web", "3f2a9c1d0b4e", definition)
    store.apps.set_deployed("web-prod", "web", "web-1", "3f2a9c1d0b4e")   # None: removed
    rollout_id = store.apps.add_rollout(document)       # engine.apps.rollout.to_json(...)
    store.apps.save_rollout(rollout_id, document)       # after every transition
    store.apps.open_rollout("web-prod", "web")          # one a dead run left, or None

Definitions name secret variables, never their values; rollout documents hold versions,
steps, times and reasons only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from engine.secrets import redact
from engine.state import DeployedApp, RolloutRecord, schema
from engine.state.database import Database, Repository, row_fields

# Phases of a rollout still under way (engine.apps.rollout.Phase).
_OPEN_PHASES = ("rolling", "rolling_back")


class Apps(Repository):
    """Versions, where they run, and rollouts."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        tables = schema.metadata().tables
        self._versions = tables["app_versions"]
        self._servers = tables["app_servers"]
        self._rollouts = tables["rollouts"]

    def save_version(
        self, fleet: str, app: str, version: str, definition: Mapping[str, Any]
    ) -> None:
        """Keep the definition of a version (once: a version's definition never changes)."""
        table = self._versions
        with self._write() as connection:
            known = connection.execute(
                select(table.c.version).where(
                    table.c.fleet == fleet, table.c.app == app, table.c.version == version
                )
            ).first()
            if known is None:
                connection.execute(
                    insert(table).values(
                        fleet=fleet,
                        app=app,
                        version=version,
                        definition=dict(definition),
                        created_at=self._db.now(),
                    )
                )

    def definitions(self, fleet: str) -> dict[tuple[str, str], Mapping[str, Any]]:
        """Every version's definition, by (app, version)."""
        table = self._versions
        with self._read() as connection:
            rows = connection.execute(select(table).where(table.c.fleet == fleet)).all()
        return {(row.app, row.version): row.definition for row in rows}

    def set_deployed(self, fleet: str, app: str, server: str, version: str | None) -> None:
        """Record the version of `app` now on `server` (None: the app is gone from it)."""
        table = self._servers
        where = (table.c.fleet == fleet, table.c.app == app, table.c.server == server)
        with self._write() as connection:
            if version is None:
                connection.execute(delete(table).where(*where))
                return
            values = {"version": version, "deployed_at": self._db.now()}
            done = connection.execute(update(table).where(*where).values(values))
            if done.rowcount == 0:
                connection.execute(
                    insert(table).values(fleet=fleet, app=app, server=server, **values)
                )

    def deployed(self, fleet: str) -> tuple[DeployedApp, ...]:
        """Which version of which app the engine last put on each server."""
        table = self._servers
        with self._read() as connection:
            rows = connection.execute(
                select(table).where(table.c.fleet == fleet).order_by(table.c.app, table.c.server)
            ).all()
        return tuple(DeployedApp(**row_fields(row, DeployedApp)) for row in rows)

    def add_rollout(self, document: Mapping[str, Any]) -> int:
        """Record a new rollout; its id."""
        now = self._db.now()
        with self._write() as connection:
            return int(
                connection.execute(
                    insert(self._rollouts)
                    .values(
                        fleet=document["fleet"],
                        app=document["app"],
                        version=document["version"],
                        phase=document["phase"],
                        reason=redact(document["reason"]),
                        document=_redacted(document),
                        started_at=now,
                        updated_at=now,
                        finished_at=now if document.get("finished_at") else None,
                    )
                    .returning(self._rollouts.c.id)
                ).scalar_one()
            )

    def save_rollout(self, rollout_id: int, document: Mapping[str, Any]) -> None:
        """Keep a rollout as it is now."""
        now = self._db.now()
        with self._write() as connection:
            connection.execute(
                update(self._rollouts)
                .where(self._rollouts.c.id == rollout_id)
                .values(
                    phase=document["phase"],
                    reason=redact(document["reason"]),
                    document=_redacted(document),
                    updated_at=now,
                    finished_at=now if document.get("finished_at") else None,
                )
            )

    def open_rollout(self, fleet: str, app: str) -> RolloutRecord | None:
        """The newest rollout of `app` still rolling or rolling back (a run died in it)."""
        table = self._rollouts
        with self._read() as connection:
            row = connection.execute(
                select(table)
                .where(table.c.fleet == fleet, table.c.app == app)
                .where(table.c.phase.in_(_OPEN_PHASES))
                .order_by(table.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else _rollout(row)

    def rollouts(
        self, fleet: str, app: str | None = None, *, limit: int = 20
    ) -> tuple[RolloutRecord, ...]:
        """The fleet's rollouts (of one app, if given), newest first."""
        table = self._rollouts
        query = select(table).where(table.c.fleet == fleet)
        if app is not None:
            query = query.where(table.c.app == app)
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.id.desc()).limit(limit)).all()
        return tuple(_rollout(row) for row in rows)

    def forget_fleet(self, fleet: str) -> None:
        """Drop the fleet's versions, deployments and rollouts."""
        with self._write() as connection:
            for table in (self._versions, self._servers, self._rollouts):
                connection.execute(delete(table).where(table.c.fleet == fleet))


def _redacted(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document with its reasons (which quote agents and errors) redacted."""
    return {
        **document,
        "reason": redact(document["reason"]),
        "servers": [
            {**server, "reason": redact(server["reason"])} for server in document["servers"]
        ],
    }


def _rollout(row: Row[Any]) -> RolloutRecord:
    return RolloutRecord(**row_fields(row, RolloutRecord))
