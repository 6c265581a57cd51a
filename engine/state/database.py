"""One state store's database: its SQLAlchemy engine, its clock and its transactions.

Every repository of the store (engine.state.servers, engine.state.jobs, ...) is a
`Repository` over the one `Database` of its store. Each call runs in a transaction of its
own, or, when the repository is bound to a connection, in the transaction that connection is
in: that is how a write spanning aggregates (a phone-home: token, server, event, job) is one
transaction (engine.state.store.Store.transaction).

SQLite runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE`, so concurrent processes queue instead of failing half-way.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields
from types import MappingProxyType
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, Label, Row, Table, event, type_coerce
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import NullType

BUSY_TIMEOUT_S = 30


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Database:
    """The connections of one store (SQLite or PostgreSQL) and the clock its rows are stamped
    with. Close it when done."""

    def __init__(
        self, engine: Engine, shown_url: str, *, now: Callable[[], dt.datetime] | None = None
    ) -> None:
        self._engine = engine
        self.url = shown_url
        self.now = now or _utcnow
        self.is_postgresql = engine.dialect.name == "postgresql"
        if engine.dialect.name == "sqlite":
            _use_sqlite_transactions(engine)
        # SQLite has one writer at a time; threads of this process queue on this lock rather
        # than in SQLite's busy handler, which sleeps in steps of up to 100 ms.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction."""
        with self._engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed when the block ends without error."""
        if self._write_lock is None:
            with self._engine.connect() as connection:
                connection.execution_options(engine_write=True)
                with connection.begin():
                    yield connection
            return
        with self._write_lock, self._engine.connect() as connection:
            connection.execution_options(engine_write=True)
            with connection.begin():
                yield connection

    def for_update(self, query: Any) -> Any:
        """`query` locking the rows it reads until the transaction ends, on PostgreSQL (on
        SQLite a write transaction holds the whole file)."""
        return query.with_for_update() if self.is_postgresql else query

    @contextmanager
    def pipelined(self, connection: Connection) -> Iterator[None]:
        """On PostgreSQL, send the block's statements without waiting for each one's answer
        (psycopg's pipeline mode; an error surfaces at the end of the block): one round trip
        instead of one a statement. SQLite is in-process: nothing to save."""
        if not self.is_postgresql:
            yield
            return
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.pipeline():
            yield

    def rebuild_sqlite_file(self) -> None:
        """VACUUM (outside any transaction) and empty the write-ahead log: the text of rows a
        migration rewrote stays in free pages and in the log until then. (PostgreSQL's own
        vacuum reclaims dead rows; nothing there is a file a user copies around.)"""
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        finally:
            connection.close()


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"


def _use_sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, start transactions (SQLAlchemy's recipe).

    pysqlite defers BEGIN to the first write, which makes read-then-write races; writes here
    start with BEGIN IMMEDIATE and wait for the file lock up to the busy timeout instead.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Not on another program's database (tables, none of them the engine's), which
        # schema.migrate refuses: the journal mode is written into the file.
        tables = {name for (name,) in cursor.execute(_TABLES)}
        if not tables or "schema_version" in tables:
            cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses no committed transaction when a process dies, only (at
        # worst) the last ones on a power cut, and it saves an fsync per commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("engine_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def dialect_insert(table: Table, *, postgresql: bool) -> Any:
    """INSERT that can say ON CONFLICT DO NOTHING, in the store's dialect."""
    if postgresql:
        # Loaded with the PostgreSQL dialect only (20 ms a process that reads SQLite saves).
        from sqlalchemy.dialects import postgresql as pg

        return pg.insert(table)
    return sqlite.insert(table)


class Repository:
    """What every repository has: the store's database and, when bound, the connection whose
    transaction each of its calls joins (unbound, each call is a transaction of its own)."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        self._db = database
        self._connection = connection

    def _read(self) -> AbstractContextManager[Connection]:
        if self._connection is not None:
            return nullcontext(self._connection)
        return self._db.read()

    def _write(self) -> AbstractContextManager[Connection]:
        if self._connection is not None:
            return nullcontext(self._connection)
        return self._db.write()


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(record: type[Any]) -> tuple[str, ...]:
    """The field names of a record type, looked up once per type (rows come by thousands)."""
    names = _FIELD_NAMES.get(record)
    if names is None:
        names = _FIELD_NAMES[record] = tuple(f.name for f in fields(record))
    return names


def row_fields(row: Row[Any], record: type[Any]) -> dict[str, Any]:
    """The row's columns that `record` has: a column added later does not break it."""
    mapping = row._mapping
    return {name: mapping[name] for name in _field_names(record)}


def as_stored(table: Table, names: Sequence[str] | None = None) -> tuple[Label[Any], ...]:
    """`table`'s columns (or those `names`d, in that order), each value as the driver gives
    it: no column type's conversion, which for thousands of rows (a fleet's servers) costs
    more than the query. Read them with `stored_utc` and `stored_json`."""
    columns = table.c if names is None else [table.c[name] for name in names]
    return tuple(type_coerce(column, NullType()).label(column.name) for column in columns)


def stored_utc(value: str | dt.datetime) -> dt.datetime:
    """A UtcDateTime column's value (not NULL) read through `as_stored`: SQLite's text,
    PostgreSQL's naive datetime (both in UTC)."""
    if isinstance(value, str):
        # Parsed with its offset: a fifth of the cost of replace(tzinfo=) after.
        return dt.datetime.fromisoformat(f"{value}+00:00")
    return value.replace(tzinfo=dt.UTC)


# Most rows hold empty lists and objects: given back read-only and shared, not decoded.
_EMPTY_JSON: dict[str, Any] = {"[]": (), "{}": MappingProxyType({})}


def stored_json(value: Any) -> Any:
    """A JSON column's value read through `as_stored`: SQLite's text, decoded; PostgreSQL's
    driver decodes it itself (msgspec: a twentieth of json.loads' time a value). Empty lists
    and objects come back as a read-only empty tuple and mapping."""
    if not isinstance(value, str):
        return value
    empty = _EMPTY_JSON.get(value)
    return msgspec.json.decode(value) if empty is None else empty
