"""Servers: one record per server of a fleet, and one transition per stage it entered.

    store.servers.save(ServerRecord(fleet="web-prod", name="web-1", ...))
    store.servers.set_stage("web-prod", "web-1", Stage.BOOTING)
    store.servers.get("web-prod", "web-1")        # or None
    store.servers.all("web-prod")                 # by name

A new or changed stage is a transition (with its time and reason), so each step's duration
can be computed (engine.state.stage_durations); forgetting a server keeps its history.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Iterable
from dataclasses import fields, replace
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from engine.errors import EngineError
from engine.model import Labels, Stage
from engine.state import HostKeySource, NewJob, ServerRecord, Transition, schema
from engine.state.database import (
    Database,
    Repository,
    as_stored,
    stored_json,
    stored_utc,
)
from engine.state.events import Events
from engine.state.jobs import Jobs

# What `update` changes on request: neither the key, the group, the provider nor the record's
# own times; the stage has an argument of its own.
_UPDATABLE = frozenset(
    {
        "provider_id",
        "location",
        "server_type",
        "image",
        "ipv4",
        "ipv6",
        "private_ips",
        "labels",
        "user_data_hash",
        "install_hash",
        "host_keys",
        "host_keys_source",
        "cloud_init_finished_at",
        "installed_at",
        "inventory_seen_at",
    }
)
# A server still waiting to be reached (a failed one too: a late answer revives it).
_AWAITING_READINESS = frozenset({Stage.BOOTING, Stage.FAILED})

ServerKey = tuple[str, str]  # (fleet, name)


class Servers(Repository):
    """The servers' records and their transitions."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        tables = schema.metadata().tables
        self._servers = tables["servers"]
        self._transitions = tables["server_transitions"]

    def all(self, fleet: str) -> tuple[ServerRecord, ...]:
        """Every server the store holds for `fleet`, by name."""
        query = select(*as_stored(self._servers, _FIELDS)).where(self._servers.c.fleet == fleet)
        with self._read() as connection:
            rows = connection.execute(query.order_by(self._servers.c.name)).all()
        return tuple(_server_record(row) for row in rows)

    def get(self, fleet: str, name: str) -> ServerRecord | None:
        """One server's record, or None."""
        with self._read() as connection:
            row = connection.execute(self._query(fleet, name)).first()
        return None if row is None else _server_record(row)

    def get_for_update(self, fleet: str, name: str) -> ServerRecord | None:
        """One server's record, or None; its row stays locked until the transaction ends."""
        with self._write() as connection:
            row = connection.execute(self._db.for_update(self._query(fleet, name))).first()
        return None if row is None else _server_record(row)

    def get_many_for_update(self, keys: Collection[ServerKey]) -> dict[ServerKey, ServerRecord]:
        """The records of these servers that exist, with one query, by key; their rows stay
        locked (in key order, so concurrent writers never deadlock) until the transaction
        ends."""
        parameters = {
            "fleets": sorted({fleet for fleet, _ in keys}),
            "names": sorted({name for _, name in keys}),
        }
        statement = _select_many_statement(self._db.is_postgresql)
        with self._write() as connection:
            rows = connection.execute(statement, parameters)
            found = {(row.fleet, row.name): _server_record(row) for row in rows}
        return {key: record for key, record in found.items() if key in keys}

    def _query(self, fleet: str, name: str) -> Any:
        return select(*as_stored(self._servers, _FIELDS)).where(
            self._servers.c.fleet == fleet, self._servers.c.name == name
        )

    def save(self, record: ServerRecord) -> ServerRecord:
        """Insert or replace a server's record; a new or changed stage is a transition.

        Returns the record as stored, with created_at and updated_at filled in.
        """
        (stored,) = self.save_all([record])
        return stored

    def save_all(self, records: Iterable[ServerRecord]) -> tuple[ServerRecord, ...]:
        """`save` for many records, in one transaction (all or none are saved)."""
        now = self._db.now()
        saved = []
        with self._write() as connection:
            for record in records:
                old = connection.execute(
                    self._db.for_update(self._query(record.fleet, record.name))
                ).first()
                created_at = (
                    stored_utc(old.created_at) if old is not None else (record.created_at or now)
                )
                stored = replace(record, created_at=created_at, updated_at=now)
                values = _server_values(stored)
                if old is None:
                    connection.execute(insert(self._servers).values(values))
                else:
                    connection.execute(
                        update(self._servers)
                        .where(
                            self._servers.c.fleet == record.fleet,
                            self._servers.c.name == record.name,
                        )
                        .values(values)
                    )
                if old is None or old.stage != record.stage:
                    self._add_transition(
                        connection, stored.fleet, stored.name, stored.stage, now, ""
                    )
                saved.append(stored)
        return tuple(saved)

    def update_many(self, changes: Iterable[tuple[ServerRecord, ServerRecord]]) -> None:
        """Write records as they become, given as (as read in this transaction, as it
        becomes) pairs, with one statement for the columns that changed, and a transition for
        each whose stage changed (at its updated_at, for its stage_reason). No answer is
        awaited: inside `Database.pipelined`, this costs no round trip of its own."""
        pairs = list(changes)
        columns = tuple(
            column
            for column in _WRITTEN
            if any(getattr(old, column) != getattr(new, column) for old, new in pairs)
        )
        if not columns:
            return
        rows, transitions = [], []
        for old, new in pairs:
            values = _server_values(new)
            rows.append(
                {
                    "b_fleet": new.fleet,
                    "b_name": new.name,
                    **{column: values[column] for column in columns},
                }
            )
            if new.stage != old.stage:
                transitions.append(
                    {
                        "fleet": new.fleet,
                        "server": new.name,
                        "stage": str(new.stage),
                        "at": new.updated_at,
                        "reason": new.stage_reason,
                    }
                )
        with self._write() as connection:
            connection.execute(_update_statement(columns), rows)
            if transitions:
                connection.execute(_add_transition_statement(), transitions)

    def set_stage(self, fleet: str, name: str, stage: Stage, reason: str = "") -> None:
        """Move a server to `stage` (recording the transition and why)."""
        now = self._db.now()
        with self._write() as connection:
            old = connection.execute(self._db.for_update(self._query(fleet, name))).first()
            if old is None:
                raise EngineError(f"the state store has no server {name} in fleet {fleet}")
            connection.execute(
                update(self._servers)
                .where(self._servers.c.fleet == fleet, self._servers.c.name == name)
                .values(stage=str(stage), stage_reason=reason, updated_at=now)
            )
            if old.stage != stage:
                self._add_transition(connection, fleet, name, stage, now, reason)

    def update(
        self, fleet: str, name: str, *, stage: Stage | None = None, reason: str = "", **fields: Any
    ) -> ServerRecord:
        """Change some fields of a server's record, and its stage if given, in one transaction.

        `fields` are ServerRecord field names (e.g. provider_id="4711", ipv4="203.0.113.7").
        Returns the record as stored.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable server fields: {sorted(unknown)}")
        with self._write() as connection:
            old = connection.execute(self._db.for_update(self._query(fleet, name))).first()
            if old is None:
                raise EngineError(f"the state store has no server {name} in fleet {fleet}")
            now = self._db.now()
            record = replace(_server_record(old), **fields, updated_at=now)
            if stage is not None:
                record = replace(record, stage=stage, stage_reason=reason)
            values = _server_values(record)
            changed = (*fields, "stage", "stage_reason", "updated_at")
            connection.execute(
                update(self._servers)
                .where(self._servers.c.fleet == fleet, self._servers.c.name == name)
                .values({key: values[key] for key in changed})
            )
            if stage is not None and old.stage != stage:
                self._add_transition(connection, fleet, name, stage, now, reason)
        return record

    def set_user_data_hash(self, fleet: str, name: str, user_data_hash: str) -> None:
        """Note on a server's record the hash of the user_data kept for it (UserData.put);
        neither a change of the record's time nor an error if there is no such server."""
        with self._write() as connection:
            connection.execute(
                update(self._servers)
                .where(self._servers.c.fleet == fleet, self._servers.c.name == name)
                .values(user_data_hash=user_data_hash)
            )

    def move_on_by_polling(
        self, fleet: str, server: str, host_keys: Labels, install: NewJob
    ) -> bool:
        """A booting server found by polling (listed, answering SSH) moves on as if it had
        phoned home, with host keys from a key scan: stage phoned_home, install enqueued,
        atomically. False (nothing changed) if it is not booting any more."""
        with self._write() as connection:
            servers = Servers(self._db, connection)
            record = servers.get_for_update(fleet, server)
            if record is None or record.stage not in _AWAITING_READINESS:
                return False
            servers.update(
                fleet,
                server,
                stage=Stage.PHONED_HOME,
                reason="reached by polling: no phone-home; host keys from ssh-keyscan",
                host_keys=host_keys,
                host_keys_source=str(HostKeySource.KEYSCAN),
            )
            Events(self._db, connection).record(
                fleet,
                "server.polled",
                f"{server} answers SSH; its host keys were read by ssh-keyscan, NOT pinned "
                "from a phone-home",
                server=server,
                data={"host_keys": dict(host_keys)},
            )
            Jobs(self._db, connection).enqueue(install)
        return True

    def forget(self, fleet: str, name: str) -> None:
        """Drop a server's record (its transitions and events stay as history)."""
        with self._write() as connection:
            connection.execute(
                delete(self._servers).where(
                    self._servers.c.fleet == fleet, self._servers.c.name == name
                )
            )

    def forget_fleet(self, fleet: str) -> None:
        """Drop every record and transition of `fleet`."""
        with self._write() as connection:
            connection.execute(delete(self._servers).where(self._servers.c.fleet == fleet))
            connection.execute(delete(self._transitions).where(self._transitions.c.fleet == fleet))

    def _add_transition(
        self,
        connection: Connection,
        fleet: str,
        server: str,
        stage: Stage,
        at: dt.datetime,
        reason: str,
    ) -> None:
        connection.execute(
            insert(self._transitions).values(
                fleet=fleet, server=server, stage=str(stage), at=at, reason=reason
            )
        )

    def transitions(
        self,
        fleet: str,
        server: str | None = None,
        *,
        stages: Collection[Stage] = (),
        of_failed: bool = False,
    ) -> tuple[Transition, ...]:
        """A fleet's (or one server's) lifecycle transitions, oldest first; with `stages`,
        only those into one of them; with `of_failed`, only those of servers that have
        failed at some time (what counting failures needs: a preview of 10,000 ready servers
        then reads none)."""
        table = self._transitions
        query = select(*as_stored(table)).where(table.c.fleet == fleet)
        if server is not None:
            query = query.where(table.c.server == server)
        if of_failed:
            failed = select(table.c.server).where(
                table.c.fleet == fleet, table.c.stage == str(Stage.FAILED)
            )
            query = query.where(table.c.server.in_(failed))
        if stages:
            query = query.where(table.c.stage.in_([str(stage) for stage in stages]))
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.at, table.c.id)).all()
        return tuple(
            Transition(
                fleet=row.fleet,
                server=row.server,
                stage=Stage(row.stage),
                at=stored_utc(row.at),
                reason=row.reason,
            )
            for row in rows
        )

    def entered(
        self, fleet: str, stage: Stage, *, before: dt.datetime | None = None
    ) -> dict[str, dt.datetime]:
        """When each server of `fleet` that is in `stage` now entered it, by server name;
        with `before`, only the servers that entered it at or before then.

        The monitor asks every second: one indexed query that returns only what it acts on,
        not a read of the whole fleet.
        """
        table, servers = self._transitions, self._servers
        query = (
            select(table.c.server, func.max(table.c.at).label("at"))
            .join(servers, (servers.c.fleet == table.c.fleet) & (servers.c.name == table.c.server))
            .where(
                servers.c.fleet == fleet,
                servers.c.stage == str(stage),
                table.c.stage == str(stage),
            )
            .group_by(table.c.server)
        )
        if before is not None:
            query = query.having(func.max(table.c.at) <= before)
        with self._read() as connection:
            return {row.server: row.at for row in connection.execute(query)}


# What a server's row is read as: the record's fields, in its order.
_FIELDS = tuple(f.name for f in fields(ServerRecord))
# The record's times (UtcDateTime columns).
_TIMES = ("cloud_init_finished_at", "installed_at", "inventory_seen_at", "created_at", "updated_at")


def _server_record(row: Row[Any]) -> ServerRecord:
    """A server's record from its row, read `as_stored` (`_FIELDS`)."""
    values = dict(zip(_FIELDS, row, strict=True))
    for name in _TIMES:
        if values[name] is not None:
            values[name] = stored_utc(values[name])
    # From `values`, not the row: a Row's attribute costs ten times a dict's item.
    values.update(
        stage=Stage(values["stage"]),
        private_ips=tuple(stored_json(values["private_ips"])),
        labels=tuple(sorted(stored_json(values["labels"]).items())),
        host_keys=tuple(sorted(stored_json(values["host_keys"]).items())),
    )
    return ServerRecord(**values)


def _server_values(record: ServerRecord) -> dict[str, Any]:
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    values.update(
        stage=str(record.stage),
        private_ips=list(record.private_ips),
        labels=dict(record.labels),
        host_keys=dict(record.host_keys),
    )
    return values


# What update_many may write: every column but the key and created_at.
_WRITTEN = tuple(
    f.name for f in fields(ServerRecord) if f.name not in ("fleet", "name", "created_at")
)


@functools.cache
def _select_many_statement(postgresql: bool) -> Any:
    """get_many_for_update's statement, built once (building one costs about as much as
    running it)."""
    servers = schema.metadata().tables["servers"]
    query = (
        select(*as_stored(servers, _FIELDS))
        # Not `(fleet, name) IN (...)`, which SQLite answers by scanning the table: these two
        # use the primary key. Rows of servers no key names are dropped after.
        .where(
            servers.c.fleet.in_(bindparam("fleets", expanding=True)),
            servers.c.name.in_(bindparam("names", expanding=True)),
        )
        .order_by(servers.c.fleet, servers.c.name)
    )
    return query.with_for_update() if postgresql else query


@functools.cache
def _update_statement(columns: tuple[str, ...]) -> Any:
    """update_many's statement for these columns, built once per set of columns."""
    servers = schema.metadata().tables["servers"]
    return (
        update(servers)
        .where(servers.c.fleet == bindparam("b_fleet"), servers.c.name == bindparam("b_name"))
        .values({column: bindparam(column) for column in columns})
    )


@functools.cache
def _add_transition_statement() -> Any:
    # inline(): no RETURNING of the new ids, which would wait for the answer.
    return insert(schema.metadata().tables["server_transitions"]).inline()
