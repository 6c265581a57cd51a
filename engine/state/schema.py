"""The state store's tables, built by an ordered list of numbered migrations.

`MIGRATIONS` is the whole history of the schema. Opening a store applies the ones its
`schema_version` table does not list yet, in order, in one transaction, under a lock that
makes two processes opening the same store at once safe (SQLite: `BEGIN IMMEDIATE`;
PostgreSQL: a transaction-scoped advisory lock). A store written by a newer engine (a version
above the last one here) is refused rather than guessed at.

Adding a table (jobs, one-time tokens, API keys, heartbeats, ...) is one function and one
line, appended at the end; never edit or reorder a migration that has shipped:

    def _jobs(metadata: MetaData) -> None:
        Table(
            "jobs",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("fleet", String(63), nullable=False, index=True),
            Column("kind", String(40), nullable=False),
            Column("created_at", UtcDateTime(), nullable=False),
        )

    MIGRATIONS = (
        ...,
        Migration(2, "jobs", _jobs),
    )

The tables a migration declares are created for it. A migration that changes an existing
table declares the change on the metadata (e.g. `metadata.tables["servers"].append_column(
column)`) and does the DDL in `upgrade`, e.g. `add_column(connection, "servers", column)`.
Queries live only in `engine.state.store`, and use `metadata().tables[...]`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    sql,
    text,
    update,
)
from sqlalchemy.schema import CreateColumn
from sqlalchemy.types import TypeDecorator

from engine.errors import EngineError
from engine.state.database import Database

# Any fixed 64-bit number: the key of the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK_KEY = 0x466C656574456E67


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the state store only takes timezone-aware datetimes")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Migration:
    """Schema version `version`: the tables `declare` adds, then any extra DDL in `upgrade`.

    `scrub` says `upgrade` rewrites rows that held secrets: SQLite keeps the old text in free
    pages (and its write-ahead log) until the file is rebuilt, so the store vacuums it after.
    """

    version: int
    description: str
    declare: Callable[[MetaData], None]
    upgrade: Callable[[Connection], None] | None = None
    scrub: bool = False


def add_column(connection: Connection, table: str, column: Column[Any]) -> None:
    """`ALTER TABLE table ADD COLUMN ...` for an `upgrade` step, in the backend's dialect."""
    spec = CreateColumn(column).compile(dialect=connection.dialect)
    connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {spec}")


def declare_schema_version(metadata: MetaData) -> None:
    Table(
        "schema_version",
        metadata,
        Column("version", Integer, primary_key=True, autoincrement=False),
        Column("description", Text, nullable=False),
        Column("applied_at", UtcDateTime(), nullable=False),
    )


def _servers_events_locks(metadata: MetaData) -> None:
    Table(
        "servers",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("name", String(63), primary_key=True),
        Column("group", String(63), nullable=False),
        Column("provider", String(20), nullable=False),
        Column("provider_id", String(100), nullable=False, default=""),
        Column("location", String(40), nullable=False, default=""),
        Column("server_type", String(80), nullable=False, default=""),
        Column("image", Text, nullable=False, default=""),
        Column("stage", String(20), nullable=False),
        Column("stage_reason", Text, nullable=False, default=""),
        Column("ipv4", String(15)),
        Column("ipv6", String(50)),
        Column("private_ips", JSON, nullable=False),
        Column("labels", JSON, nullable=False),
        Column("user_data_hash", String(80)),
        Column("install_hash", String(80)),
        Column("host_keys", JSON, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
    )
    Table(
        "server_transitions",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("fleet", String(63), nullable=False),
        Column("server", String(63), nullable=False),
        Column("stage", String(20), nullable=False),
        Column("at", UtcDateTime(), nullable=False),
        Column("reason", Text, nullable=False, default=""),
        Index("ix_server_transitions_server", "fleet", "server"),
    )
    Table(
        "events",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("fleet", String(63), nullable=False, index=True),
        Column("server", String(63)),
        Column("kind", String(60), nullable=False),
        Column("message", Text, nullable=False),
        Column("data", JSON, nullable=False),
        Column("at", UtcDateTime(), nullable=False),
    )
    Table(
        "locks",
        metadata,
        Column("stack", String(63), primary_key=True),
        Column("lock_id", String(32), nullable=False, unique=True),
        Column("holder", String(100), nullable=False),
        Column("host", String(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("command", Text, nullable=False),
        Column("acquired_at", UtcDateTime(), nullable=False),
    )


def _server_columns_2() -> tuple[Column[Any], ...]:
    """Fresh column objects each call: one set for the metadata, one for each ALTER."""
    return (
        Column("host_keys_source", String(20), nullable=False, server_default=""),
        Column("cloud_init_finished_at", UtcDateTime()),
        Column("installed_at", UtcDateTime()),
        Column("inventory_seen_at", UtcDateTime()),
    )


def _control_plane(metadata: MetaData) -> None:
    servers = metadata.tables["servers"]
    for column in _server_columns_2():
        servers.append_column(column)
    Table(
        "fleets",
        metadata,
        Column("name", String(63), primary_key=True),
        Column("provider", String(20), nullable=False),
        Column("provider_endpoint", Text),
        Column("token_env", String(200)),
        Column("readiness", String(20), nullable=False),
        Column("token_ttl_s", Integer, nullable=False),
        Column("phone_home_timeout_s", Integer, nullable=False),
        Column("verify_source_ip", Boolean, nullable=False),
        Column("heartbeat_s", Integer, nullable=False),
        Column("ssh_user", String(63), nullable=False),
        Column("ssh_port", Integer, nullable=False),
        Column("install", JSON, nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
    )
    Table(
        "phone_home_tokens",
        metadata,
        Column("token_hash", String(64), primary_key=True),
        Column("fleet", String(63), nullable=False),
        Column("server", String(63), nullable=False),
        Column("expires_at", UtcDateTime(), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("spent_at", UtcDateTime()),
        Column("fingerprint", String(64)),
        Index("ix_phone_home_tokens_server", "fleet", "server"),
    )
    Table(
        "jobs",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(40), nullable=False),
        Column("fleet", String(63), nullable=False),
        Column("server", String(63)),
        Column("payload", JSON, nullable=False),
        Column("state", String(20), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("max_attempts", Integer, nullable=False),
        Column("run_after", UtcDateTime(), nullable=False),
        Column("lease_owner", String(120)),
        Column("lease_expires_at", UtcDateTime()),
        # Set while the job is queued or running, cleared when it ends: at most one live job
        # per key (e.g. one install per server), however many times it is enqueued.
        Column("active_key", String(200), unique=True),
        Column("last_error", Text, nullable=False),
        Column("result", JSON, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
        Column("finished_at", UtcDateTime()),
        Index("ix_jobs_claim", "state", "run_after"),
        Index("ix_jobs_server", "fleet", "server"),
    )
    Table(
        "api_keys",
        metadata,
        Column("key_id", String(32), primary_key=True),
        Column("name", String(63), nullable=False, unique=True),
        Column("secret_hash", String(64), nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("revoked_at", UtcDateTime()),
    )
    Table(
        "agent_reports",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("server", String(63), primary_key=True),
        Column("last_heartbeat_at", UtcDateTime(), nullable=False),
        Column("sequence", Integer, nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("containers", JSON),
        Column("tls_fingerprint", String(200), nullable=False),
    )
    Table(
        "agent_event_ids",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("server", String(63), primary_key=True),
        Column("event_id", String(200), primary_key=True),
    )


def _add_server_columns_2(connection: Connection) -> None:
    for column in _server_columns_2():
        add_column(connection, "servers", column)


def _user_data(metadata: MetaData) -> None:
    # The user_data rendered for each server, kept so that it is rendered once and never
    # changes (a change would replace the server). It holds the server's one-time phone-home
    # token, short-lived and spent at the first phone-home (sealed since migration 4).
    Table(
        "user_data",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("server", String(63), primary_key=True),
        Column("content", Text(), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("rendered_at", UtcDateTime(), nullable=False),
    )


def _nothing(metadata: MetaData) -> None:
    """For a migration that changes rows, not tables."""


def _seal_user_data_tokens(connection: Connection) -> None:
    # Imported here: the token format is engine.tokens', a layer above the store.
    from engine.tokens import seal_tokens

    # The table as this migration found it, whatever later ones make of it.
    kept = sql.table("user_data", sql.column("fleet"), sql.column("server"), sql.column("content"))
    rows = connection.execute(select(kept.c.fleet, kept.c.server, kept.c.content)).all()
    for row in rows:
        sealed = seal_tokens(row.content)
        if sealed != row.content:
            connection.execute(
                update(kept)
                .where(kept.c.fleet == row.fleet, kept.c.server == row.server)
                .values(content=sealed)
            )


def _fleet_columns_5() -> tuple[Column[Any], ...]:
    """Fresh column objects each call: one set for the metadata, one for each ALTER."""
    return (
        Column("control_plane_url", Text, nullable=False, server_default=""),
        Column("control_plane_sources", JSON),
    )


def _control_plane_address(metadata: MetaData) -> None:
    # Where the fleet's last control plane listened: part of what its servers were installed
    # with (engine.install.digest), which a preview compares without a control plane of its own.
    fleets = metadata.tables["fleets"]
    for column in _fleet_columns_5():
        fleets.append_column(column)


def _add_fleet_columns_5(connection: Connection) -> None:
    for column in _fleet_columns_5():
        add_column(connection, "fleets", column)


def _api_key_columns_7() -> tuple[Column[Any], ...]:
    """Fresh column objects each call: one set for the metadata, one for each ALTER."""
    return (
        # Keys made before scopes could only read servers and events: they keep doing that.
        Column("scope", String(10), nullable=False, server_default="read"),
        Column("fleets", JSON),
        # Their secrets were stored as a plain SHA-256; the verifier rehashes each on first use.
        Column("hashing", String(20), nullable=False, server_default="sha256"),
    )


def _write_api(metadata: MetaData) -> None:
    api_keys = metadata.tables["api_keys"]
    for column in _api_key_columns_7():
        api_keys.append_column(column)
    Table(
        "audit",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", UtcDateTime(), nullable=False, index=True),
        Column("actor", String(63), nullable=False),
        Column("action", Text, nullable=False),
        Column("fleet", String(63), index=True),
        Column("status", Integer, nullable=False),
        Column("result", Text, nullable=False),
        Column("detail", JSON, nullable=False),
    )
    Table(
        "fleet_specs",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("text", Text, nullable=False),
        Column("digest", String(64), nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
        Column("updated_by", String(63), nullable=False),
    )
    Table(
        "plans",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("fleet", String(63), nullable=False, index=True),
        Column("spec_digest", String(64), nullable=False),
        Column("world_digest", String(64), nullable=False),
        Column("document", JSON, nullable=False),
        Column("has_changes", Boolean, nullable=False),
        Column("blocked", Boolean, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
        Column("created_by", String(63), nullable=False),
    )
    Table(
        "runs",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("fleet", String(63), nullable=False, index=True),
        Column("kind", String(20), nullable=False),
        Column("status", String(12), nullable=False),
        Column("plan_id", String(32)),
        Column("request", JSON, nullable=False),
        Column("progress", JSON, nullable=False),
        Column("result", JSON, nullable=False),
        Column("error", Text, nullable=False, server_default=""),
        Column("created_at", UtcDateTime(), nullable=False, index=True),
        Column("created_by", String(63), nullable=False),
        Column("started_at", UtcDateTime()),
        Column("finished_at", UtcDateTime()),
    )


def _add_api_key_columns_7(connection: Connection) -> None:
    for column in _api_key_columns_7():
        add_column(connection, "api_keys", column)


def _serve(metadata: MetaData) -> None:
    # Who runs each fleet's reconcile loop: one owner among the `engine serve` on a store.
    Table(
        "reconcile_leases",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("owner", String(200), nullable=False),
        Column("acquired_at", UtcDateTime(), nullable=False),
        Column("expires_at", UtcDateTime(), nullable=False),
        Column("last_run_at", UtcDateTime()),
        Column("last_result", JSON, nullable=False),
    )
    # Heartbeats' metrics kept as averages per step (1 minute, 15 minutes), pruned by age.
    Table(
        "metric_points",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("server", String(63), primary_key=True),
        Column("step_s", Integer, primary_key=True, autoincrement=False),
        Column("at", UtcDateTime(), primary_key=True),
        Column("samples", Integer, nullable=False),
        Column("sums", JSON, nullable=False),
        Index("ix_metric_points_age", "step_s", "at"),
    )
    Table(
        "alerts",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("alert", String(63), primary_key=True),
        Column("subject", String(63), primary_key=True),
        Column("state", String(20), nullable=False),
        Column("since", UtcDateTime(), nullable=False),
        Column("value", JSON),
        Column("fired_at", UtcDateTime()),
        Column("resolved_at", UtcDateTime()),
    )


def _apps(metadata: MetaData) -> None:
    # The definition of every version of an app the engine deployed: secret variables by
    # name, never a value (engine.apps.versions.AppDefinition).
    Table(
        "app_versions",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("app", String(63), primary_key=True),
        Column("version", String(64), primary_key=True),
        Column("definition", JSON, nullable=False),
        Column("created_at", UtcDateTime(), nullable=False),
    )
    Table(
        "app_servers",
        metadata,
        Column("fleet", String(63), primary_key=True),
        Column("app", String(63), primary_key=True),
        Column("server", String(63), primary_key=True),
        Column("version", String(64), nullable=False),
        Column("deployed_at", UtcDateTime(), nullable=False),
    )
    Table(
        "rollouts",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("fleet", String(63), nullable=False),
        Column("app", String(63), nullable=False),
        Column("version", String(64), nullable=False),
        Column("phase", String(20), nullable=False),
        Column("reason", Text, nullable=False),
        Column("document", JSON, nullable=False),
        Column("started_at", UtcDateTime(), nullable=False),
        Column("updated_at", UtcDateTime(), nullable=False),
        Column("finished_at", UtcDateTime()),
        Index("ix_rollouts_app", "fleet", "app"),
    )


def _metric_columns_9() -> tuple[Column[Any], ...]:
    """Fresh column objects each call: one for the metadata, one for the ALTER."""
    # How many of a point's samples carried each metric (a heartbeat may lack one: the first
    # of an agent has no network rate yet). NULL on the points made before: there, every
    # metric counts `samples`, as they were averaged.
    return (Column("counts", JSON),)


def _metric_counts(metadata: MetaData) -> None:
    points = metadata.tables["metric_points"]
    for column in _metric_columns_9():
        points.append_column(column)


def _add_metric_columns_9(connection: Connection) -> None:
    for column in _metric_columns_9():
        add_column(connection, "metric_points", column)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "servers, server_transitions, events, locks", _servers_events_locks),
    Migration(
        2,
        "control plane: fleets, phone-home tokens, jobs, API keys, agent reports",
        _control_plane,
        _add_server_columns_2,
    ),
    Migration(3, "user_data rendered once per server", _user_data),
    Migration(
        4,
        "user_data keeps its phone-home token sealed (no usable token in the store)",
        _nothing,
        _seal_user_data_tokens,
        scrub=True,
    ),
    Migration(
        5,
        "fleets: the control plane's address the last run installed servers with",
        _control_plane_address,
        _add_fleet_columns_5,
    ),
    Migration(6, "engine serve: reconcile leases, metric history, alert states", _serve),
    Migration(
        7,
        "the write API: key scopes, fleet grants and HMAC hashing; audit; specs, plans, runs",
        _write_api,
        _add_api_key_columns_7,
    ),
    Migration(8, "apps: versions deployed, where each runs, rollouts", _apps),
    Migration(
        9,
        "metric points count each metric's samples, so one a heartbeat lacks is not averaged low",
        _metric_counts,
        _add_metric_columns_9,
    ),
)


@cache
def metadata() -> MetaData:
    """The current schema: the schema_version table and every migration's declarations."""
    result = MetaData()
    declare_schema_version(result)
    for migration in MIGRATIONS:
        migration.declare(result)
    return result


def migrate(database: Database) -> None:
    """Apply the migrations the store lacks; refuse a store from a newer engine. A store that
    has them all (every open but the first of a new engine) is only read: no write lock, and
    no migration declared again."""
    if version(database) == MIGRATIONS[-1].version:
        return
    scratch = MetaData()
    declare_schema_version(scratch)
    with database.write() as connection:
        if database.is_postgresql:
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        versions = scratch.tables["schema_version"]
        _refuse_foreign(connection, database.url)
        versions.create(connection, checkfirst=True)
        applied = set(connection.scalars(select(versions.c.version)))
        known = MIGRATIONS[-1].version
        if applied and max(applied) > known:
            raise EngineError(
                f"the state store at {database.url} has schema version {max(applied)}, newer "
                f"than this engine knows ({known}); upgrade the engine"
            )
        scrub = False
        for migration in MIGRATIONS:
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
                    applied_at=database.now(),
                )
            )
    if scrub and not database.is_postgresql:
        database.rebuild_sqlite_file()


def _refuse_foreign(connection: Connection, url: str) -> None:
    """Refuse a database that holds tables but no engine schema (another program's): the
    engine's tables would be added beside that program's own."""
    tables = inspect(connection).get_table_names()
    if not tables or "schema_version" in tables:
        return
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise EngineError(
        f"the database at {url} is not an engine state store: it holds {len(tables)} "
        f"table(s) of something else ({shown}) and no schema_version; nothing was changed. "
        "Name an empty database or the engine's own store (--state or $ENGINE_STATE_URL)"
    )


def version(database: Database) -> int:
    """The newest migration applied to the store; 0 for a store without any."""
    versions = metadata().tables["schema_version"]
    with database.read() as connection:
        if not inspect(connection).has_table("schema_version"):
            return 0
        return max(connection.scalars(select(versions.c.version)), default=0)
