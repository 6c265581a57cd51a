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
import ipaddress
import os
import secrets
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Row,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    exc,
    func,
    insert,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from engine.errors import EngineError
from engine.model import Labels, Stage
from engine.secrets import redact, register_secret
from engine.state import (
    AgentReport,
    ApiKey,
    Event,
    FleetSettings,
    HostKeySource,
    Job,
    JobState,
    Lock,
    NewJob,
    PhoneHomeAcceptance,
    PhoneHomeOutcome,
    PhoneHomeToken,
    ServerRecord,
    StoredUserData,
    Transition,
    schema,
)
from engine.state.files import FILE_MODE, private_dir, private_file

STATE_URL_ENV = "ENGINE_STATE_URL"
SQLITE_FILE = "state.db"
# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK_KEY = 0x466C656574456E67
_BUSY_TIMEOUT_S = 30
R = TypeVar("R")


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
            _private_sqlite_file(Path(parsed.database))
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


def _private_sqlite_file(database: Path) -> None:
    """The SQLite file and its companions readable by their owner only. The file is made here
    (0600) rather than by SQLite (0644 under the usual umask); the -wal, -shm and -journal
    files SQLite makes take the database file's mode. A folder made for it is 0700; an
    existing one is left as it is (it may be the user's own, not the state directory)."""
    folder = database.parent
    if not folder.is_dir():
        private_dir(folder)
    try:
        os.close(os.open(database, os.O_RDWR | os.O_CREAT, FILE_MODE))
    except OSError as error:
        raise EngineError(
            f"cannot create the state store {database}: {error.strerror}; "
            "choose another with --state-dir or --state"
        ) from None
    for suffix in ("", "-wal", "-shm", "-journal"):
        private_file(database.with_name(database.name + suffix))


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
        # In WAL mode NORMAL loses no committed transaction when a process dies, only (at
        # worst) the last ones on a power cut, and it saves an fsync per commit.
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
        self._fleets: Table = tables["fleets"]
        self._tokens: Table = tables["phone_home_tokens"]
        self._jobs: Table = tables["jobs"]
        self._api_keys: Table = tables["api_keys"]
        self._reports: Table = tables["agent_reports"]
        self._agent_event_ids: Table = tables["agent_event_ids"]
        self._user_data: Table = tables["user_data"]
        # SQLite has one writer at a time; threads of this process queue on this lock rather
        # than in SQLite's busy handler, which sleeps in steps of up to 100 ms.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._phone_home: _PhoneHomeStatements | None = None

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
            scrub = False
            for migration in schema.MIGRATIONS:
                before = set(scratch.tables)
                migration.declare(scratch)
                if migration.version in applied:
                    continue
                scrub = scrub or migration.scrub
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
        if scrub and not self._is_postgresql:
            self._rebuild_sqlite_file()

    def _rebuild_sqlite_file(self) -> None:
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

    def update_server(
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
            return self._update_server(connection, fleet, name, stage, reason, fields)

    def _update_server(
        self,
        connection: Connection,
        fleet: str,
        name: str,
        stage: Stage | None,
        reason: str,
        fields: Mapping[str, Any],
    ) -> ServerRecord:
        old = connection.execute(self._server_query(fleet, name, for_update=True)).first()
        if old is None:
            raise EngineError(f"the state store has no server {name} in fleet {fleet}")
        now = self._now()
        record = replace(_server_record(old), **fields, updated_at=now)
        if stage is not None:
            record = replace(record, stage=stage, stage_reason=reason)
        values = _server_values(record)
        connection.execute(
            update(self._servers)
            .where(self._servers.c.fleet == fleet, self._servers.c.name == name)
            .values({key: values[key] for key in (*fields, "stage", "stage_reason", "updated_at")})
        )
        if stage is not None and old.stage != stage:
            self._add_transition(connection, fleet, name, stage, now, reason)
        return record

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
        with self._write() as connection:
            return self._insert_event(connection, fleet, kind, message, server, data or {})

    def _insert_event(
        self,
        connection: Connection,
        fleet: str,
        kind: str,
        message: str,
        server: str | None,
        data: Mapping[str, Any],
    ) -> Event:
        recorded = Event(
            id=0,
            fleet=fleet,
            server=server,
            kind=kind,
            message=redact(message),
            data=dict(data),
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

    # --- fleets ----------------------------------------------------------------------------

    def save_fleet(self, settings: FleetSettings) -> None:
        """Insert or replace a fleet's control-plane settings."""
        values = {
            "name": settings.name,
            "provider": settings.provider,
            "provider_endpoint": settings.provider_endpoint,
            "token_env": settings.token_env,
            "readiness": settings.readiness,
            "token_ttl_s": settings.token_ttl_s,
            "phone_home_timeout_s": settings.phone_home_timeout_s,
            "verify_source_ip": settings.verify_source_ip,
            "heartbeat_s": settings.heartbeat_s,
            "ssh_user": settings.ssh_user,
            "ssh_port": settings.ssh_port,
            "install": dict(settings.install),
            "updated_at": self._now(),
        }
        with self._write() as connection:
            done = connection.execute(
                update(self._fleets).where(self._fleets.c.name == settings.name).values(values)
            )
            if done.rowcount == 0:
                connection.execute(insert(self._fleets).values(values))

    def fleet(self, name: str) -> FleetSettings | None:
        """A fleet's settings, or None when no `engine up` registered it."""
        with self._read() as connection:
            row = connection.execute(
                select(self._fleets).where(self._fleets.c.name == name)
            ).first()
        return None if row is None else _fleet(row)

    def fleets(self) -> tuple[FleetSettings, ...]:
        """Every registered fleet, by name."""
        with self._read() as connection:
            rows = connection.execute(select(self._fleets).order_by(self._fleets.c.name)).all()
        return tuple(_fleet(row) for row in rows)

    # --- phone-home tokens -----------------------------------------------------------------

    def add_phone_home_token(self, token: PhoneHomeToken) -> None:
        """Remember a minted token by its hash (the token itself is never stored)."""
        with self._write() as connection:
            connection.execute(
                insert(self._tokens).values(
                    token_hash=token.token_hash,
                    fleet=token.fleet,
                    server=token.server,
                    expires_at=token.expires_at,
                    created_at=token.created_at,
                    spent_at=token.spent_at,
                    fingerprint=token.fingerprint,
                )
            )

    def phone_home_token(self, token_hash: str) -> PhoneHomeToken | None:
        """The token with this SHA-256, or None."""
        with self._read() as connection:
            row = connection.execute(
                select(self._tokens).where(self._tokens.c.token_hash == token_hash)
            ).first()
        return None if row is None else _token(row)

    def accept_phone_homes(
        self, claims: Sequence[tuple[PhoneHomeAcceptance, Callable[[ServerRecord], R | None]]]
    ) -> list[PhoneHomeOutcome | R]:
        """Apply verified phone-homes in one transaction, each as if it came alone, in order:
        spend the token, record what the server said, move it to phoned_home and enqueue its
        install; or say why not. One outcome per claim, in the claims' order.

        Each claim carries a check of what the request says against the server's record as it
        is in this transaction (instance id, source address); what the check returns instead
        of None is that claim's outcome, and the claim changes nothing. Then: a token the
        store never issued is UNKNOWN_TOKEN; one spent by an identical request (same
        fingerprint) is REPLAYED and changes nothing, by another request SPENT. A server that
        polling already moved on keeps its stage: if polling pinned the same host keys they
        count as pinned by phone-home now (CONFIRMED); if not, only a conflict event is
        recorded (HOST_KEYS_DIFFER).

        The claimed tokens and the servers' rows are read with one query each (on PostgreSQL
        both are locked, tokens first, each in key order: concurrent control planes serialise
        on what they share, see each other's spends, and never deadlock) and written with one
        executemany per table, sent in one round trip: a phone-home costs a few rows, not a few
        transactions.
        """
        statements = self._phone_home_statements()
        now = self._now()
        parameters = {
            "hashes": sorted({claim.token_hash for claim, _ in claims}),
            "fleets": sorted({claim.fleet for claim, _ in claims}),
            "names": sorted({claim.server for claim, _ in claims}),
        }
        outcomes: list[PhoneHomeOutcome | R] = []
        with self._write() as connection:
            # token hash -> fingerprint of the request that spent it ("" while unspent), for
            # the tokens minted for the server that claims them
            claimed = {claim.token_hash: (claim.fleet, claim.server) for claim, _ in claims}
            spent_by = {
                row.token_hash: (row.fingerprint or "-") if row.spent_at is not None else ""
                for row in connection.execute(statements.tokens, parameters)
                if claimed[row.token_hash] == (row.fleet, row.server)
            }
            records = {
                (row.fleet, row.name): _server_record(row)
                for row in connection.execute(statements.servers, parameters)
            }
            spends: list[dict[str, Any]] = []
            updated: dict[tuple[str, str], ServerRecord] = {}
            transitions: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            installs: list[dict[str, Any]] = []
            for claim, check in claims:
                key = (claim.fleet, claim.server)
                old = records.get(key)
                if old is None:
                    outcomes.append(PhoneHomeOutcome.UNKNOWN_SERVER)
                    continue
                objection = check(old)
                if objection is not None:
                    outcomes.append(objection)
                    continue
                refusal = _phone_home_refusal(claim, old, spent_by)
                if refusal is not None:
                    if refusal is PhoneHomeOutcome.HOST_KEYS_DIFFER:
                        events.append(_host_keys_conflict_event(claim, now))
                    outcomes.append(refusal)
                    continue
                moved_on = old.stage in _PAST_PHONE_HOME
                records[key] = updated[key] = _phoned_home(old, claim, now)
                spent_by[claim.token_hash] = claim.fingerprint
                spends.append({"b_hash": claim.token_hash, "fingerprint": claim.fingerprint})
                events.append(_phoned_home_event(claim, now, moved_on=moved_on))
                if moved_on:
                    outcomes.append(PhoneHomeOutcome.CONFIRMED)
                    continue
                transitions.append(
                    {
                        "fleet": claim.fleet,
                        "server": claim.server,
                        "stage": str(Stage.PHONED_HOME),
                        "at": now,
                        "reason": "",
                    }
                )
                installs.append(self._job_values(claim.install, now))
                outcomes.append(PhoneHomeOutcome.ACCEPTED)
            with self._pipelined(connection):
                if spends:
                    connection.execute(statements.spend, [{**s, "spent_at": now} for s in spends])
                if updated:
                    rows = [_phoned_home_values(record) for record in updated.values()]
                    connection.execute(statements.update_server, rows)
                if transitions:
                    connection.execute(statements.add_transition, transitions)
                if events:
                    connection.execute(statements.add_event, events)
                if installs:
                    connection.execute(statements.enqueue, installs)
        return outcomes

    def _phone_home_statements(self) -> _PhoneHomeStatements:
        """The statements of accept_phone_homes, built once per store (building one costs
        about as much as running it)."""
        if self._phone_home is None:
            tokens, servers = self._tokens, self._servers
            token_query = (
                select(
                    tokens.c.token_hash,
                    tokens.c.fleet,
                    tokens.c.server,
                    tokens.c.spent_at,
                    tokens.c.fingerprint,
                )
                .where(tokens.c.token_hash.in_(bindparam("hashes", expanding=True)))
                .order_by(tokens.c.token_hash)
            )
            server_query = (
                select(servers)
                # Not `(fleet, name) IN (...)`, which SQLite answers by scanning the table:
                # these two use the primary key. Rows of servers no claim names are unused.
                .where(
                    servers.c.fleet.in_(bindparam("fleets", expanding=True)),
                    servers.c.name.in_(bindparam("names", expanding=True)),
                )
                .order_by(servers.c.fleet, servers.c.name)
            )
            if self._is_postgresql:
                token_query = token_query.with_for_update()
                server_query = server_query.with_for_update()
            self._phone_home = _PhoneHomeStatements(
                tokens=token_query,
                servers=server_query,
                spend=update(tokens)
                .where(tokens.c.token_hash == bindparam("b_hash"), tokens.c.spent_at.is_(None))
                .values(spent_at=bindparam("spent_at"), fingerprint=bindparam("fingerprint")),
                update_server=update(servers)
                .where(
                    servers.c.fleet == bindparam("b_fleet"), servers.c.name == bindparam("b_name")
                )
                .values({column: bindparam(column) for column in _PHONED_HOME_COLUMNS}),
                # inline(): no RETURNING of the new ids, which would wait for the answer.
                add_transition=insert(self._transitions).inline(),
                add_event=insert(self._events).inline(),
                enqueue=self._dialect_insert(self._jobs)
                .inline()
                .on_conflict_do_nothing(index_elements=["active_key"]),
            )
        return self._phone_home

    @contextmanager
    def _pipelined(self, connection: Connection) -> Iterator[None]:
        """On PostgreSQL, send the block's statements without waiting for each one's answer
        (psycopg's pipeline mode; an error surfaces at the end of the block): one round trip
        instead of one a statement. SQLite is in-process: nothing to save."""
        if not self._is_postgresql:
            yield
            return
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.pipeline():
            yield

    def move_on_by_polling(
        self, fleet: str, server: str, host_keys: Labels, install: NewJob
    ) -> bool:
        """A booting server found by polling (listed, answering SSH) moves on as if it had
        phoned home, with host keys from a key scan: stage phoned_home, install enqueued,
        atomically. False (nothing changed) if it is not booting any more."""
        with self._write() as connection:
            row = connection.execute(self._server_query(fleet, server, for_update=True)).first()
            if row is None or row.stage not in _AWAITING_READINESS:
                return False
            fields = {"host_keys": host_keys, "host_keys_source": str(HostKeySource.KEYSCAN)}
            reason = "reached by polling: no phone-home; host keys from ssh-keyscan"
            self._update_server(connection, fleet, server, Stage.PHONED_HOME, reason, fields)
            self._insert_event(
                connection,
                fleet,
                "server.polled",
                f"{server} answers SSH; its host keys were read by ssh-keyscan, NOT pinned "
                "from a phone-home",
                server,
                {"host_keys": dict(host_keys)},
            )
            self._enqueue(connection, install)
        return True

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

    # --- jobs ------------------------------------------------------------------------------

    def enqueue(self, job: NewJob) -> Job:
        """Add a job (or, if its key is live already, return the live job)."""
        with self._write() as connection:
            return self._enqueue(connection, job)

    def _enqueue(self, connection: Connection, job: NewJob) -> Job:
        statement = (
            self._dialect_insert(self._jobs)
            .values(self._job_values(job, self._now()))
            .on_conflict_do_nothing(index_elements=["active_key"])
            .returning(self._jobs)
        )
        row = connection.execute(statement).first()
        if row is None:
            row = connection.execute(
                select(self._jobs).where(self._jobs.c.active_key == job.key)
            ).one()
        return _job(row)

    def _job_values(self, job: NewJob, now: dt.datetime) -> dict[str, Any]:
        return {
            "kind": job.kind,
            "fleet": job.fleet,
            "server": job.server,
            "payload": dict(job.payload),
            "state": str(JobState.QUEUED),
            "attempts": 0,
            "max_attempts": job.max_attempts,
            "run_after": now + dt.timedelta(seconds=job.delay_s),
            "active_key": job.key,
            "last_error": "",
            "result": {},
            "created_at": now,
            "updated_at": now,
        }

    def _dialect_insert(self, table: Table) -> Any:
        """INSERT that can say ON CONFLICT DO NOTHING, in this store's dialect."""
        return (postgresql.insert if self._is_postgresql else sqlite.insert)(table)

    def claim_job(self, owner: str, kinds: Collection[str], lease_s: float) -> Job | None:
        """Take the next job of `kinds` that is due (or whose worker's lease ran out).

        The claim and the lease are one atomic step: on PostgreSQL the row is locked with
        FOR UPDATE SKIP LOCKED, so workers never wait for each other nor take the same job;
        on SQLite the write transaction holds the database's one write lock.
        """
        jobs = self._jobs
        now = self._now()
        due = or_(
            (jobs.c.state == str(JobState.QUEUED)) & (jobs.c.run_after <= now),
            (jobs.c.state == str(JobState.RUNNING)) & (jobs.c.lease_expires_at < now),
        )
        query = (
            select(jobs.c.id)
            .where(jobs.c.kind.in_(list(kinds)), due)
            .order_by(jobs.c.run_after, jobs.c.id)
            .limit(1)
        )
        if self._is_postgresql:
            query = query.with_for_update(skip_locked=True)
        with self._write() as connection:
            job_id = connection.execute(query).scalar()
            if job_id is None:
                return None
            row = connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=str(JobState.RUNNING),
                    attempts=jobs.c.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    updated_at=now,
                )
                .returning(jobs)
            ).one()
        return _job(row)

    def renew_lease(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend a running job's lease; False if `owner` no longer holds it."""
        now = self._now()
        return self._while_leased(
            job_id, owner, lease_expires_at=now + dt.timedelta(seconds=lease_s), updated_at=now
        )

    def finish_job(self, job_id: int, owner: str, result: Mapping[str, Any]) -> bool:
        """Mark a job succeeded; False (and nothing changed) if `owner` lost its lease."""
        now = self._now()
        return self._while_leased(
            job_id,
            owner,
            state=str(JobState.SUCCEEDED),
            result=dict(result),
            active_key=None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            finished_at=now,
        )

    def retry_job(
        self,
        job_id: int,
        owner: str,
        *,
        delay_s: float,
        error: str = "",
        payload: Mapping[str, Any] | None = None,
        count_attempt: bool = True,
    ) -> bool:
        """Put a running job back in the queue to run again after `delay_s`.

        `count_attempt=False` is for a handler that is waiting for something (polling), not
        failing: the claim's attempt is given back. False if `owner` lost its lease.
        """
        now = self._now()
        values: dict[str, Any] = {
            "state": str(JobState.QUEUED),
            "run_after": now + dt.timedelta(seconds=delay_s),
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": redact(error),
            "updated_at": now,
        }
        if payload is not None:
            values["payload"] = dict(payload)
        if not count_attempt:
            values["attempts"] = self._jobs.c.attempts - 1
        return self._while_leased(job_id, owner, **values)

    def fail_job(self, job_id: int, owner: str, error: str) -> bool:
        """Give a job up for good; False if `owner` lost its lease."""
        now = self._now()
        return self._while_leased(
            job_id,
            owner,
            state=str(JobState.FAILED),
            last_error=redact(error),
            active_key=None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            finished_at=now,
        )

    def _while_leased(self, job_id: int, owner: str, **values: Any) -> bool:
        jobs = self._jobs
        with self._write() as connection:
            done = connection.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.lease_owner == owner,
                    jobs.c.state == str(JobState.RUNNING),
                )
                .values(values)
            )
        return bool(done.rowcount)

    def expire_leases(self, owners: Collection[str]) -> int:
        """End the leases of these (dead) workers now, so their jobs can be claimed again."""
        if not owners:
            return 0
        jobs = self._jobs
        with self._write() as connection:
            done = connection.execute(
                update(jobs)
                .where(jobs.c.state == str(JobState.RUNNING), jobs.c.lease_owner.in_(list(owners)))
                .values(lease_expires_at=self._now())
            )
        return int(done.rowcount)

    def lease_owners(self) -> tuple[str, ...]:
        """The workers holding a lease on a running job now."""
        jobs = self._jobs
        with self._read() as connection:
            owners = connection.scalars(
                select(jobs.c.lease_owner)
                .where(jobs.c.state == str(JobState.RUNNING), jobs.c.lease_owner.is_not(None))
                .distinct()
            ).all()
        return tuple(str(owner) for owner in owners)

    def job(self, job_id: int) -> Job | None:
        """One job, or None."""
        with self._read() as connection:
            row = connection.execute(select(self._jobs).where(self._jobs.c.id == job_id)).first()
        return None if row is None else _job(row)

    def jobs(
        self,
        fleet: str | None = None,
        *,
        kind: str | None = None,
        server: str | None = None,
        states: Collection[JobState] = (),
    ) -> tuple[Job, ...]:
        """Jobs, oldest first, filtered by fleet, kind, server and states."""
        jobs = self._jobs
        query = select(jobs)
        if fleet is not None:
            query = query.where(jobs.c.fleet == fleet)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if server is not None:
            query = query.where(jobs.c.server == server)
        if states:
            query = query.where(jobs.c.state.in_([str(s) for s in states]))
        with self._read() as connection:
            rows = connection.execute(query.order_by(jobs.c.id)).all()
        return tuple(_job(row) for row in rows)

    # --- API keys --------------------------------------------------------------------------

    def add_api_key(self, key: ApiKey) -> None:
        """Store a new API key (its name must be new)."""
        try:
            with self._write() as connection:
                connection.execute(
                    insert(self._api_keys).values(
                        key_id=key.key_id,
                        name=key.name,
                        secret_hash=key.secret_hash,
                        created_at=key.created_at,
                        revoked_at=key.revoked_at,
                    )
                )
        except exc.IntegrityError:
            raise EngineError(
                f"there is an API key called {key.name} already; pick another name, or revoke "
                f"it first (engine apikey revoke {key.name})"
            ) from None

    def api_key(self, key_id: str) -> ApiKey | None:
        """The API key with this id, or None."""
        with self._read() as connection:
            row = connection.execute(
                select(self._api_keys).where(self._api_keys.c.key_id == key_id)
            ).first()
        return None if row is None else _api_key(row)

    def api_keys(self) -> tuple[ApiKey, ...]:
        """Every API key, revoked ones included, by name."""
        with self._read() as connection:
            rows = connection.execute(select(self._api_keys).order_by(self._api_keys.c.name))
            return tuple(_api_key(row) for row in rows)

    def revoke_api_key(self, name: str) -> ApiKey:
        """Revoke the key called `name`; an EngineError if there is none."""
        table = self._api_keys
        with self._write() as connection:
            connection.execute(
                update(table)
                .where(table.c.name == name, table.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            row = connection.execute(select(table).where(table.c.name == name)).first()
        if row is None:
            raise EngineError(f"there is no API key called {name}; list them: engine apikey list")
        return _api_key(row)

    # --- agents ----------------------------------------------------------------------------

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
            row = connection.execute(
                self._server_query(report.fleet, report.server, for_update=True)
            ).first()
            if row is None:
                raise EngineError(f"the state store has no server {report.server}")
            done = connection.execute(
                update(reports)
                .where(reports.c.fleet == report.fleet, reports.c.server == report.server)
                .values(values)
            )
            if done.rowcount == 0:
                connection.execute(insert(reports).values(values))
            record = _server_record(row)
            if record.stage is Stage.UNHEALTHY:
                return self._update_server(
                    connection, report.fleet, report.server, Stage.READY, "heartbeats resumed", {}
                )
            if record.stage is Stage.INSTALLING and record.installed_at is not None:
                return self._update_server(
                    connection, report.fleet, report.server, Stage.READY, "", {}
                )
        return record

    def agent_report(self, fleet: str, server: str) -> AgentReport | None:
        """The last heartbeat of a server's agent, or None."""
        reports = self._reports
        with self._read() as connection:
            row = connection.execute(
                select(reports).where(reports.c.fleet == fleet, reports.c.server == server)
            ).first()
        return None if row is None else _report(row)

    def agent_reports(self, fleet: str) -> tuple[AgentReport, ...]:
        """The last heartbeat of every agent of a fleet, by server."""
        reports = self._reports
        with self._read() as connection:
            rows = connection.execute(
                select(reports).where(reports.c.fleet == fleet).order_by(reports.c.server)
            ).all()
        return tuple(_report(row) for row in rows)

    def record_agent_event(
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
                self._dialect_insert(self._agent_event_ids)
                .values(fleet=fleet, server=server, event_id=event_id)
                .on_conflict_do_nothing()
            )
            if not added.rowcount:
                return False
            self._insert_event(connection, fleet, kind, message, server, data)
        return True

    def mark_unhealthy(self, misses: int) -> tuple[ServerRecord, ...]:
        """Move ready servers whose agent missed `misses` heartbeats in a row to unhealthy.

        A server's interval is its fleet's heartbeat_s; a ready server that never reported
        counts from when it became ready. Returns the servers moved.
        """
        now = self._now()
        servers, reports = self._servers, self._reports
        query = (
            select(
                servers.c.fleet,
                servers.c.name,
                servers.c.updated_at,
                reports.c.last_heartbeat_at,
                self._fleets.c.heartbeat_s,
            )
            .join(self._fleets, self._fleets.c.name == servers.c.fleet)
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
            silent_s = (now - last).total_seconds()
            if silent_s <= misses * row.heartbeat_s:
                continue
            with self._write() as connection:
                current = connection.execute(
                    self._server_query(row.fleet, row.name, for_update=True)
                ).first()
                if current is None or current.stage != str(Stage.READY):
                    continue
                reason = (
                    f"no heartbeat for {silent_s:.0f} s ({misses} intervals of {row.heartbeat_s} s)"
                )
                moved.append(
                    self._update_server(
                        connection, row.fleet, row.name, Stage.UNHEALTHY, reason, {}
                    )
                )
                self._insert_event(
                    connection, row.fleet, "server.unhealthy", f"{row.name}: {reason}", row.name, {}
                )
        return tuple(moved)

    # --- user_data ---------------------------------------------------------------------------

    def get_user_data(self, fleet: str, server: str) -> StoredUserData | None:
        """The user_data kept for a server, or None (engine.cloudinit.UserDataStore)."""
        table = self._user_data
        with self._read() as connection:
            row = connection.execute(
                select(table.c.content, table.c.sha256).where(
                    table.c.fleet == fleet, table.c.server == server
                )
            ).first()
        return None if row is None else StoredUserData(content=row.content, sha256=row.sha256)

    def put_user_data(self, fleet: str, server: str, user_data: StoredUserData) -> None:
        """Keep the user_data rendered for a server (replacing what was there), its hash on
        the server's record as `sha256:<hex>`."""
        table = self._user_data
        with self._write() as connection:
            connection.execute(
                delete(table).where(table.c.fleet == fleet, table.c.server == server)
            )
            connection.execute(
                insert(table).values(
                    fleet=fleet,
                    server=server,
                    content=user_data.content,
                    sha256=user_data.sha256,
                    rendered_at=self._now(),
                )
            )
            connection.execute(
                update(self._servers)
                .where(self._servers.c.fleet == fleet, self._servers.c.name == server)
                .values(user_data_hash=f"sha256:{user_data.sha256}")
            )

    def forget_fleet(self, fleet: str) -> None:
        """Drop everything the store holds for `fleet` but its stack lock (held by whoever
        destroys it): servers, history, tokens, jobs, reports, user_data, settings."""
        fleet_columns = (
            (self._servers, self._servers.c.fleet),
            (self._transitions, self._transitions.c.fleet),
            (self._events, self._events.c.fleet),
            (self._tokens, self._tokens.c.fleet),
            (self._jobs, self._jobs.c.fleet),
            (self._reports, self._reports.c.fleet),
            (self._agent_event_ids, self._agent_event_ids.c.fleet),
            (self._user_data, self._user_data.c.fleet),
            (self._fleets, self._fleets.c.name),
        )
        with self._write() as connection:
            for table, column in fleet_columns:
                connection.execute(delete(table).where(column == fleet))

    # --- locks -----------------------------------------------------------------------------

    @contextmanager
    def lock(
        self,
        stack: str,
        *,
        command: str,
        on_stale: Callable[[Lock], None] | None = None,
    ) -> Iterator[Lock]:
        """Hold the exclusive lock on `stack` for the duration of the block.

        A second taker gets StackLockedError naming the holder, host, pid, command, time and
        lock id. With `on_stale`, a lock whose holder provably died (same host, process gone,
        e.g. after `kill -9`) is released instead, and `on_stale` is told which. The lock is
        released when the block ends, however it ends.
        """
        try:
            held = self.acquire_lock(stack, command=command)
        except StackLockedError as locked:
            if on_stale is None or not _is_stale(locked.lock):
                raise
            self.unlock(locked.lock.lock_id)
            on_stale(locked.lock)
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
                pass  # someone holds it: who (it may have been released meanwhile)?
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


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(record: type[Any]) -> tuple[str, ...]:
    """The field names of a record type, looked up once per type (rows come by thousands)."""
    names = _FIELD_NAMES.get(record)
    if names is None:
        names = _FIELD_NAMES[record] = tuple(f.name for f in fields(record))
    return names


def _known(row: Row[Any], record: type[Any]) -> dict[str, Any]:
    """The row's columns that `record` has: a column added later does not break it."""
    mapping = row._mapping
    return {name: mapping[name] for name in _field_names(record)}


def _server_record(row: Row[Any]) -> ServerRecord:
    values = _known(row, ServerRecord)
    values.update(
        stage=Stage(row.stage),
        private_ips=tuple(row.private_ips),
        labels=tuple(sorted(row.labels.items())),
        host_keys=tuple(sorted(row.host_keys.items())),
    )
    return ServerRecord(**values)


# A server still waiting to be reached (a failed one too: a late answer revives it).
_AWAITING_READINESS = frozenset({str(Stage.BOOTING), str(Stage.FAILED)})
# Stages after the phone-home: a late phone-home can only confirm what polling found.
_PAST_PHONE_HOME = frozenset({Stage.PHONED_HOME, Stage.INSTALLING, Stage.READY, Stage.UNHEALTHY})
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


def _is_network_of(network: str, address: str) -> bool:
    """Whether `network` (e.g. Hetzner's `2001:db8:1::/64`) is a network holding `address`."""
    if "/" not in network:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _PhoneHomeStatements:
    tokens: Any
    servers: Any
    spend: Any
    update_server: Any
    add_transition: Any
    add_event: Any
    enqueue: Any


# What a phone-home changes in a server's row (accept_phone_homes writes them all).
_PHONED_HOME_COLUMNS = (
    "provider_id",
    "ipv4",
    "ipv6",
    "private_ips",
    "host_keys",
    "host_keys_source",
    "cloud_init_finished_at",
    "stage",
    "stage_reason",
    "updated_at",
)


def _phone_home_refusal(
    claim: PhoneHomeAcceptance, old: ServerRecord, spent_by: Mapping[str, str]
) -> PhoneHomeOutcome | None:
    """Why the token or the server's stage refuses a checked claim; None if neither does."""
    if claim.token_hash not in spent_by:
        return PhoneHomeOutcome.UNKNOWN_TOKEN
    if spent_by[claim.token_hash]:
        if spent_by[claim.token_hash] == claim.fingerprint:
            return PhoneHomeOutcome.REPLAYED
        return PhoneHomeOutcome.SPENT
    if old.stage is Stage.DELETING:
        return PhoneHomeOutcome.DELETING
    if old.stage in _PAST_PHONE_HOME and dict(old.host_keys) != dict(claim.host_keys):
        return PhoneHomeOutcome.HOST_KEYS_DIFFER
    return None


def _phoned_home(old: ServerRecord, claim: PhoneHomeAcceptance, now: dt.datetime) -> ServerRecord:
    """The record once the phone-home is applied: host keys pinned, addresses and id filled
    in where the record lacks them, stage phoned_home unless polling moved it on before."""
    ipv6 = old.ipv6
    if claim.ipv6 and (old.ipv6 is None or _is_network_of(old.ipv6, claim.ipv6)):
        ipv6 = claim.ipv6
    moved_on = old.stage in _PAST_PHONE_HOME
    return replace(
        old,
        provider_id=old.provider_id or claim.provider_id,
        ipv4=old.ipv4 if old.ipv4 is not None or not claim.ipv4 else claim.ipv4,
        ipv6=ipv6,
        private_ips=old.private_ips or claim.private_ips,
        host_keys=claim.host_keys,
        host_keys_source=str(HostKeySource.PHONE_HOME),
        cloud_init_finished_at=claim.cloud_init_finished_at,
        stage=old.stage if moved_on else Stage.PHONED_HOME,
        stage_reason=old.stage_reason if moved_on else "",
        updated_at=now,
    )


def _phoned_home_values(record: ServerRecord) -> dict[str, Any]:
    values = _server_values(record)
    return {
        "b_fleet": record.fleet,
        "b_name": record.name,
        **{column: values[column] for column in _PHONED_HOME_COLUMNS},
    }


def _phoned_home_event(
    claim: PhoneHomeAcceptance, now: dt.datetime, *, moved_on: bool
) -> dict[str, Any]:
    message = (
        f"{claim.server} phoned home late; the host keys polling found are confirmed"
        if moved_on
        else f"{claim.server} phoned home; its host keys are pinned"
    )
    return _event_values(claim, "server.phoned_home", message, claim.event_data, now)


def _host_keys_conflict_event(claim: PhoneHomeAcceptance, now: dt.datetime) -> dict[str, Any]:
    return _event_values(
        claim,
        "server.host_keys_conflict",
        f"{claim.server} phoned home with host keys other than the ones polling pinned; "
        "refused. Check the server before trusting it",
        {"source": claim.source, "host_keys": dict(claim.host_keys)},
        now,
    )


def _event_values(
    claim: PhoneHomeAcceptance, kind: str, message: str, data: Mapping[str, Any], at: dt.datetime
) -> dict[str, Any]:
    return {
        "fleet": claim.fleet,
        "server": claim.server,
        "kind": kind,
        "message": redact(message),
        "data": dict(data),
        "at": at,
    }


def _fleet(row: Row[Any]) -> FleetSettings:
    return FleetSettings(**_known(row, FleetSettings))


def _token(row: Row[Any]) -> PhoneHomeToken:
    return PhoneHomeToken(**_known(row, PhoneHomeToken))


def _job(row: Row[Any]) -> Job:
    return Job(**{**_known(row, Job), "state": JobState(row.state)})


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(**_known(row, ApiKey))


def _report(row: Row[Any]) -> AgentReport:
    return AgentReport(**_known(row, AgentReport))


def _lock_values(held: Lock) -> dict[str, Any]:
    return {
        "stack": held.stack,
        "lock_id": held.lock_id,
        "holder": held.holder,
        "host": held.host,
        "pid": held.pid,
        "command": held.command,
        "acquired_at": held.acquired_at,
    }


def _lock(row: Row[Any]) -> Lock:
    return Lock(**_known(row, Lock))
