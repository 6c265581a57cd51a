"""The state store on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL.

    url = state_url(state_dir, option)        # --state, else $ENGINE_STATE_URL, else SQLite
    with open_store(url) as store:            # applies pending migrations
        with store.locks.hold("web-prod", command="engine up specs/web.yaml"):
            store.servers.save(record)
            store.servers.set_stage("web-prod", "web-1", Stage.BOOTING)
        with store.transaction() as tx:       # one transaction across aggregates
            tx.servers.update("web-prod", "web-1", stage=Stage.FAILED, reason="...")
            tx.events.record("web-prod", "server.failed", "web-1: ...", server="web-1")

A store is a repository per aggregate over one database (engine.state.database): every query
of the engine lives in these repositories, and the rest of the engine calls their named
methods and gets the frozen records of `engine.state`:

    servers      servers' records and lifecycle transitions   engine.state.servers
    events       each fleet's history                         engine.state.events
    fleets       the settings of the fleets served            engine.state.fleets
    phone_homes  one-time tokens, and accepting phone-homes   engine.state.phonehomes
    jobs         the control plane's durable job queue        engine.state.jobs
    api_keys     the control plane's API keys                 engine.state.apikeys
    agents       agents' heartbeats and events                engine.state.agents
    user_data    the user_data rendered for each server       engine.state.userdata
    locks        the exclusive stack locks                    engine.state.locks
    audit        writes through the API and the key commands  engine.state.audit
    specs        fleet specs registered through the API       engine.state.specs
    runs         plans made through the API and their runs    engine.state.runs
    leases       who runs each fleet's reconcile loop         engine.state.leases
    metrics      each server's metric history                 engine.state.metrics
    alerts       each declared alert's state                  engine.state.alerts
    apps         app versions, where they run, rollouts       engine.state.apps

The tables and their migrations are in engine.state.schema.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, create_engine, exc, make_url

from engine.errors import EngineError
from engine.secrets import redact, register_secret
from engine.state import schema
from engine.state.agents import Agents
from engine.state.alerts import Alerts
from engine.state.apikeys import ApiKeys
from engine.state.apps import Apps
from engine.state.audit import Audit
from engine.state.database import BUSY_TIMEOUT_S, Database
from engine.state.events import Events
from engine.state.files import FILE_MODE, private_dir, private_file
from engine.state.fleets import Fleets
from engine.state.jobs import Jobs
from engine.state.leases import Leases
from engine.state.locks import Locks
from engine.state.metrics import Metrics
from engine.state.phonehomes import PhoneHomes
from engine.state.runs import Runs
from engine.state.servers import Servers
from engine.state.specs import Specs
from engine.state.userdata import UserData

STATE_URL_ENV = "ENGINE_STATE_URL"
SQLITE_FILE = "state.db"


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
        options["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
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
    database = Database(engine, shown, now=now)
    try:
        schema.migrate(database)
    except exc.DBAPIError as error:
        database.close()
        reason = redact(str(error.orig).strip().splitlines()[0]) if error.orig else "unknown"
        raise EngineError(
            f"cannot open the state store at {shown}: {reason}; check --state or ${STATE_URL_ENV}"
        ) from None
    except BaseException:
        database.close()
        raise
    return Store(database)


def _private_sqlite_file(database: Path) -> None:
    """The SQLite file and its companions readable by their owner only. The file is made here
    (0600) rather than by SQLite (0644 under the usual umask); the -wal, -shm and -journal
    files SQLite makes take the database file's mode. A folder made for it is 0700; an
    existing one is left as it is (it may be the user's own, not the state directory)."""
    folder = database.parent
    if not folder.is_dir():
        private_dir(folder)
    try:
        # Only ever a new file: closing a descriptor of a database this process already has
        # open would drop every POSIX lock SQLite holds on it (a second store opened in
        # `engine serve`'s process, by a server-action job, corrupted the file that way).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(database, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
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


class Repositories:
    """A repository per aggregate, over one database: each call a transaction of its own,
    or, given a connection, every call in that connection's transaction."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        self.servers = Servers(database, connection)
        self.events = Events(database, connection)
        self.fleets = Fleets(database, connection)
        self.phone_homes = PhoneHomes(database, connection)
        self.jobs = Jobs(database, connection)
        self.api_keys = ApiKeys(database, connection)
        self.agents = Agents(database, connection)
        self.user_data = UserData(database, connection)
        self.locks = Locks(database, connection)
        self.audit = Audit(database, connection)
        self.specs = Specs(database, connection)
        self.runs = Runs(database, connection)
        self.leases = Leases(database, connection)
        self.metrics = Metrics(database, connection)
        self.alerts = Alerts(database, connection)
        self.apps = Apps(database, connection)


class Store(Repositories):
    """The state store: its repositories, and transactions across them. Close it (or use
    `with`) when done."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self._database = database
        self.url = database.url

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
        self._database.close()

    @contextmanager
    def transaction(self) -> Iterator[Repositories]:
        """The repositories with every call in one write transaction, committed when the
        block ends without error (and none of it otherwise). Inside the block, write through
        them, not through the store's own: on SQLite those would wait for this one to end."""
        with self._database.write() as connection:
            yield Repositories(self._database, connection)

    def schema_version(self) -> int:
        """The newest migration applied to this store."""
        return schema.version(self._database)

    def forget_fleet(self, fleet: str) -> None:
        """Drop everything the store holds for `fleet` but its stack lock (held by whoever
        destroys it): servers, history, tokens, jobs, reports, user_data, apps, settings."""
        with self.transaction() as tx:
            tx.servers.forget_fleet(fleet)
            tx.events.forget_fleet(fleet)
            tx.phone_homes.forget_fleet(fleet)
            tx.jobs.forget_fleet(fleet)
            tx.agents.forget_fleet(fleet)
            tx.user_data.forget_fleet(fleet)
            tx.leases.forget_fleet(fleet)
            tx.metrics.forget_fleet(fleet)
            tx.alerts.forget_fleet(fleet)
            tx.apps.forget_fleet(fleet)
            tx.fleets.forget(fleet)
            tx.specs.forget(fleet)
            tx.runs.forget_fleet(fleet)
