"""The state store on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL.

    url = state_url(state_dir, option)        # --state, else $ENGINE_STATE_URL, else SQLite
    with open_store(url) as store:            # applies pending migrations
        with store.lock("web-prod", command="engine up specs/web.yaml"):
            store.save_server(record)
            store.set_stage("web-prod", "web-1", Stage.BOOTING)

Every query of the engine lives in this module; the rest of the engine calls named methods
and gets the frozen records of `engine.state`. SQLite runs in WAL mode with a busy timeout,
and write transactions start with `BEGIN IMMEDIATE`, so concurrent processes queue instead
of failing half-way.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Row,
    Table,
    create_engine,
    delete,
    event,
    exc,
    insert,
    make_url,
    select,
    text,
    update,
)

from engine.errors import EngineError
from engine.model import Stage
from engine.secrets import redact, register_secret
from engine.state import Event, Lock, ServerRecord, Transition, schema

STATE_URL_ENV = "ENGINE_STATE_URL"
SQLITE_FILE = "state.db"
# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK_KEY = 0x466C656574456E67
_BUSY_TIMEOUT_S = 30


def state_url(state_dir: Path, url: str | None = None) -> str:
    """The store to use: `url` (--state), else $ENGINE_STATE_URL, else SQLite in state_dir."""
    chosen = url or os.environ.get(STATE_URL_ENV, "").strip()
    if chosen:
        return chosen
    return f"sqlite:///{(state_dir / SQLITE_FILE).resolve()}"


def store_exists(url: str) -> bool:
    """False only for a SQLite file that has not been created yet (nothing recorded)."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).is_file()


def open_store(url: str, *, now: Callable[[], dt.datetime] | None = None) -> Store:
    """Open the store at `url`, creating it (SQLite) and applying pending migrations."""
    parsed = _parse_url(url)
    if parsed.password:
        register_secret(parsed.password)
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise EngineError(
                    f"cannot create the state store's folder {folder}: {error.strerror}; "
                    "choose another with --state-dir or --state"
                ) from None
        options["connect_args"] = {"timeout": _BUSY_TIMEOUT_S}
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        options["pool_pre_ping"] = True
    else:
        raise EngineError(
            f"the state store URL {shown} names the {backend} database; "
            "use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    try:
        engine = create_engine(parsed, **options)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise EngineError(f"cannot use the state store URL {shown}: {error}") from None
    if backend == "sqlite":
        _use_sqlite_transactions(engine)
    store = Store(engine, shown, now=now)
    try:
        store.migrate()
    except exc.DBAPIError as error:
        engine.dispose()
        reason = redact(str(error.orig).strip().splitlines()[0]) if error.orig else "unknown"
        raise EngineError(
            f"cannot open the state store at {shown}: {reason}; check --state or ${STATE_URL_ENV}"
        ) from None
    except BaseException:
        engine.dispose()
        raise
    return store


def _parse_url(url: str) -> Any:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        return make_url(url)
    except exc.ArgumentError:
        raise EngineError(
            f"{redact(url)!r} is not a database URL; use sqlite:///PATH or "
            "postgresql://USER@HOST/DB"
        ) from None


def _use_sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, start transactions (SQLAlchemy's recipe).

    pysqlite defers BEGIN to the first write, which makes read-then-write races; writes here
    start with BEGIN IMMEDIATE and wait for the file lock up to the busy timeout instead.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable in WAL mode against application crashes; only a power loss can
        # lose the last commits, which the next run's reconciliation re-reads from the provider.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("engine_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StackLockedError(EngineError):
    """Another command holds the stack's lock; `lock` says who, where and since when."""

    def __init__(self, lock: Lock, *, is_stale: bool) -> None:
        self.lock = lock
        since = lock.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        stale = (
            f"; process {lock.pid} is no longer running on this host, so the lock is stale"
            if is_stale
            else ""
        )
        super().__init__(
            f"the stack {lock.stack} is locked by {lock.holder}@{lock.host} "
            f"(pid {lock.pid}, `{lock.command}`) since {since}, lock id {lock.lock_id}{stale}. "
            f"Wait for that run to finish; if it died, release the lock with: "
            f"engine unlock {lock.lock_id}"
        )


class Store:
    """Named reads and writes of the state store. Close it (or use `with`) when done."""

    def __init__(
        self, engine: Engine, shown_url: str, *, now: Callable[[], dt.datetime] | None = None
    ) -> None:
        self._engine = engine
        self.url = shown_url
        self._now = now or _utcnow
        tables = schema.metadata().tables
        self._servers: Table = tables["servers"]
        self._transitions: Table = tables["server_transitions"]
        self._events: Table = tables["events"]
        self._locks: Table = tables["locks"]
        self._versions: Table = tables["schema_version"]

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection.execution_options(engine_write=True)
            with connection.begin():
                yield connection

    @property
    def _is_postgresql(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    # --- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply the migrations this store lacks; refuse a store from a newer engine."""
        scratch = MetaData()
        schema.declare_schema_version(scratch)
        with self._write() as connection:
            if self._is_postgresql:
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            versions = scratch.tables["schema_version"]
            versions.create(connection, checkfirst=True)
            applied = set(connection.scalars(select(versions.c.version)))
            known = schema.MIGRATIONS[-1].version
            if applied and max(applied) > known:
                raise EngineError(
                    f"the state store at {self.url} has schema version {max(applied)}, newer "
                    f"than this engine knows ({known}); upgrade the engine"
                )
            for migration in schema.MIGRATIONS:
                before = set(scratch.tables)
                migration.declare(scratch)
                if migration.version in applied:
                    continue
                new = [table for name, table in scratch.tables.items() if name not in before]
                scratch.create_all(connection, tables=new)
                if migration.upgrade is not None:
                    migration.upgrade(connection)
                connection.execute(
                    insert(versions).values(
                        version=migration.version,
                        description=migration.description,
                        applied_at=self._now(),
                    )
                )

    def schema_version(self) -> int:
        """The newest migration applied to this store."""
        with self._read() as connection:
            return max(connection.scalars(select(self._versions.c.version)), default=0)

    # --- servers ---------------------------------------------------------------------------

    def servers(self, fleet: str) -> tuple[ServerRecord, ...]:
        """Every server the store holds for `fleet`, by name."""
        query = select(self._servers).where(self._servers.c.fleet == fleet)
        with self._read() as connection:
            rows = connection.execute(query.order_by(self._servers.c.name)).all()
        return tuple(_server_record(row) for row in rows)

    def server(self, fleet: str, name: str) -> ServerRecord | None:
        """One server's record, or None."""
        with self._read() as connection:
            row = connection.execute(self._server_query(fleet, name)).first()
        return None if row is None else _server_record(row)

    def _server_query(self, fleet: str, name: str, *, for_update: bool = False) -> Any:
        query = select(self._servers).where(
            self._servers.c.fleet == fleet, self._servers.c.name == name
        )
        return query.with_for_update() if for_update and self._is_postgresql else query

    def save_server(self, record: ServerRecord) -> ServerRecord:
        """Insert or replace a server's record; a new or changed stage is a transition.

        Returns the record as stored, with created_at and updated_at filled in.
        """
        (stored,) = self.save_servers([record])
        return stored

    def save_servers(self, records: Iterable[ServerRecord]) -> tuple[ServerRecord, ...]:
        """save_server for many records, in one transaction (all or none are saved)."""
        now = self._now()
        saved = []
        with self._write() as connection:
            for record in records:
                old = connection.execute(
                    self._server_query(record.fleet, record.name, for_update=True)
                ).first()
                created_at = old.created_at if old is not None else (record.created_at or now)
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

    def set_stage(self, fleet: str, name: str, stage: Stage, reason: str = "") -> None:
        """Move a server to `stage` (recording the transition and why)."""
        now = self._now()
        with self._write() as connection:
            old = connection.execute(self._server_query(fleet, name, for_update=True)).first()
            if old is None:
                raise EngineError(f"the state store has no server {name} in fleet {fleet}")
            connection.execute(
                update(self._servers)
                .where(self._servers.c.fleet == fleet, self._servers.c.name == name)
                .values(stage=str(stage), stage_reason=reason, updated_at=now)
            )
            if old.stage != stage:
                self._add_transition(connection, fleet, name, stage, now, reason)

    def forget_server(self, fleet: str, name: str) -> None:
        """Drop a server's record (its transitions and events stay as history)."""
        with self._write() as connection:
            connection.execute(
                delete(self._servers).where(
                    self._servers.c.fleet == fleet, self._servers.c.name == name
                )
            )

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

    def transitions(self, fleet: str, server: str | None = None) -> tuple[Transition, ...]:
        """A fleet's (or one server's) lifecycle transitions, oldest first."""
        table = self._transitions
        query = select(table).where(table.c.fleet == fleet)
        if server is not None:
            query = query.where(table.c.server == server)
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.at, table.c.id)).all()
        return tuple(
            Transition(
                fleet=row.fleet,
                server=row.server,
                stage=Stage(row.stage),
                at=row.at,
                reason=row.reason,
            )
            for row in rows
        )

    # --- events ----------------------------------------------------------------------------

    def record_event(
        self,
        fleet: str,
        kind: str,
        message: str,
        *,
        server: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        """Append one event to the fleet's history (secrets are redacted from the message)."""
        recorded = Event(
            id=0,
            fleet=fleet,
            server=server,
            kind=kind,
            message=redact(message),
            data=dict(data or {}),
            at=self._now(),
        )
        values = {
            "fleet": recorded.fleet,
            "server": recorded.server,
            "kind": recorded.kind,
            "message": recorded.message,
            "data": recorded.data,
            "at": recorded.at,
        }
        with self._write() as connection:
            event_id = connection.execute(
                insert(self._events).values(values).returning(self._events.c.id)
            ).scalar_one()
        return replace(recorded, id=event_id)

    def events(
        self, fleet: str, *, server: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> tuple[Event, ...]:
        """The fleet's events after `after_id`, oldest first, at most `limit`."""
        table = self._events
        query = select(table).where(table.c.fleet == fleet, table.c.id > after_id)
        if server is not None:
            query = query.where(table.c.server == server)
        with self._read() as connection:
            rows = connection.execute(query.order_by(table.c.id).limit(limit)).all()
        return tuple(
            Event(
                id=row.id,
                fleet=row.fleet,
                server=row.server,
                kind=row.kind,
                message=row.message,
                data=row.data,
                at=row.at,
            )
            for row in rows
        )

    # --- locks -----------------------------------------------------------------------------

    @contextmanager
    def lock(self, stack: str, *, command: str) -> Iterator[Lock]:
        """Hold the exclusive lock on `stack` for the duration of the block.

        A second taker gets StackLockedError naming the holder, host, pid, command, time and
        lock id. The lock is released when the block ends, however it ends.
        """
        held = self.acquire_lock(stack, command=command)
        try:
            yield held
        finally:
            self.release_lock(held)

    def acquire_lock(self, stack: str, *, command: str) -> Lock:
        """Take the lock on `stack` or raise StackLockedError. Prefer `lock()`."""
        held = Lock(
            stack=stack,
            lock_id=secrets.token_hex(8),
            holder=_user(),
            host=socket.gethostname(),
            pid=os.getpid(),
            command=redact(command),
            acquired_at=self._now().replace(microsecond=0),
        )
        for _ in range(3):
            try:
                with self._write() as connection:
                    connection.execute(insert(self._locks).values(asdict(held)))
                return held
            except exc.IntegrityError:
                pass
            holder = self._lock_where(self._locks.c.stack == stack)
            if holder is not None:
                raise StackLockedError(holder, is_stale=_is_stale(holder))
        raise EngineError(f"could not take the lock on {stack}: it changed hands repeatedly")

    def release_lock(self, held: Lock) -> None:
        """Give back a lock this process holds (no error if it was force-released)."""
        with self._write() as connection:
            connection.execute(delete(self._locks).where(self._locks.c.lock_id == held.lock_id))

    def unlock(self, lock_id: str) -> Lock:
        """Force-release a stale lock by its id (`engine unlock`); records an event."""
        with self._write() as connection:
            row = connection.execute(
                select(self._locks).where(self._locks.c.lock_id == lock_id)
            ).first()
            if row is not None:
                connection.execute(delete(self._locks).where(self._locks.c.lock_id == lock_id))
        if row is None:
            held = self.locks()
            listing = (
                "held now: " + ", ".join(f"{lock.lock_id} ({lock.stack})" for lock in held)
                if held
                else "no lock is held"
            )
            raise EngineError(f"there is no lock {lock_id} in {self.url}; {listing}")
        released = _lock(row)
        self.record_event(
            released.stack,
            "lock.released",
            f"lock {released.lock_id} of {released.holder}@{released.host} "
            f"(pid {released.pid}, `{released.command}`) released by {_user()}",
            data={"lock_id": released.lock_id, "host": released.host, "pid": released.pid},
        )
        return released

    def locks(self) -> tuple[Lock, ...]:
        """Every lock held now, by stack."""
        with self._read() as connection:
            rows = connection.execute(select(self._locks).order_by(self._locks.c.stack)).all()
        return tuple(_lock(row) for row in rows)

    def _lock_where(self, condition: Any) -> Lock | None:
        with self._read() as connection:
            row = connection.execute(select(self._locks).where(condition)).first()
        return None if row is None else _lock(row)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _is_stale(lock: Lock) -> bool:
    """True when the holder ran on this host and its process is gone."""
    if lock.host != socket.gethostname():
        return False
    try:
        os.kill(lock.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _server_values(record: ServerRecord) -> dict[str, Any]:
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    values.update(
        stage=str(record.stage),
        private_ips=list(record.private_ips),
        labels=dict(record.labels),
        host_keys=dict(record.host_keys),
    )
    return values


def _known(row: Row[Any], record: type[Any]) -> dict[str, Any]:
    """The row's columns that `record` has: a column added later does not break it."""
    return {f.name: row._mapping[f.name] for f in fields(record)}


def _server_record(row: Row[Any]) -> ServerRecord:
    values = _known(row, ServerRecord)
    values.update(
        stage=Stage(row.stage),
        private_ips=tuple(row.private_ips),
        labels=tuple(sorted(row.labels.items())),
        host_keys=tuple(sorted(row.host_keys.items())),
    )
    return ServerRecord(**values)


def _lock(row: Row[Any]) -> Lock:
    return Lock(**_known(row, Lock))
