"""The state store on SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL.

    url = state_url(state_dir, option)        # --state, else $ENGINE_STATE_URL, else SQLite
    if store_exists(url):                     # a command that only reads makes nothing:
        with open_store(url) as store: ...    # without a store, nothing is recorded
    with open_state(state_dir, option) as store:   # a command that writes: made on first
                                                   # use; pending migrations applied
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
import stat
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
_NAMED_BY = f"--state or ${STATE_URL_ENV}"


def state_url(state_dir: Path, url: str | None = None) -> str:
    """The store to use: `url` (--state), else $ENGINE_STATE_URL, else SQLite in state_dir."""
    return named_state_url(url) or f"sqlite:///{(state_dir / SQLITE_FILE).resolve()}"


def named_state_url(url: str | None = None) -> str:
    """The store `url` (--state) or $ENGINE_STATE_URL names; "" when neither does, and the
    store is the state directory's own (an empty variable counts as unset)."""
    return url or os.environ.get(STATE_URL_ENV, "").strip()


def store_exists(url: str) -> bool:
    """False only for a SQLite file that has not been created yet (nothing recorded). An
    EngineError when the URL names something that cannot be a store (a folder, a device, a
    file in a file)."""
    parsed = _parse_url(url)
    database = _sqlite_file(parsed)
    if database is None:
        return True
    shown = parsed.render_as_string(hide_password=True)
    _check_sqlite_file(database, shown)
    if database.parent.exists():
        _check_sqlite_folder(database.parent, shown)
    return database.is_file()


def absent_store(url: str) -> str:
    """Why a read-only command finds nothing recorded at `url`, a SQLite store that does not
    exist (store_exists is False), and what to check, for a URL the user named."""
    parsed = _parse_url(url)
    shown = parsed.render_as_string(hide_password=True)
    database = _sqlite_file(parsed)
    folder = database.parent if database is not None else None
    why = (
        f"its folder {folder} does not exist"
        if folder is not None and not folder.is_dir()
        else "no such file"
    )
    return (
        f"there is no state store at {shown} ({why}), so nothing is recorded there; if you "
        f"meant another store, fix {_NAMED_BY}"
    )


def check_state(state_dir: Path, url: str | None = None) -> str:
    """The URL `state_url` chooses, checked as `open_state` checks it, making nothing: for a
    command to refuse a store it could not open before it changes anything else."""
    chosen = state_url(state_dir, url)
    parsed = _parse_url(chosen)
    _check_backend(parsed)
    database = _sqlite_file(parsed)
    if database is not None:
        shown = parsed.render_as_string(hide_password=True)
        _check_sqlite_file(database, shown)
        if named_state_url(url):
            _check_sqlite_folder(database.parent, shown)
    return chosen


def open_state(
    state_dir: Path, url: str | None = None, *, now: Callable[[], dt.datetime] | None = None
) -> Store:
    """The store `state_url` chooses, for a command that writes to it (`open_store`: made on
    first use). The state directory's own store gets the state directory made for it (0700)
    when missing; the folder of a store that --state or $ENGINE_STATE_URL names is the user's
    to make, and a missing one is an error, not a folder made somewhere by mistake."""
    if not named_state_url(url):
        private_dir(state_dir)
    return open_store(state_url(state_dir, url), now=now)


def open_store(url: str, *, now: Callable[[], dt.datetime] | None = None) -> Store:
    """Open the store at `url`, creating it (SQLite: a file in an existing folder) and applying
    pending migrations."""
    parsed = _parse_url(url)
    if parsed.password:
        register_secret(parsed.password)
    shown = parsed.render_as_string(hide_password=True)
    backend = _check_backend(parsed)
    options: dict[str, Any] = {}
    path = _sqlite_file(parsed)
    if path is not None:
        _new_sqlite_file(path, shown)
    if backend == "sqlite":
        options["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
    else:
        parsed = parsed.set(drivername="postgresql+psycopg")
        options["pool_pre_ping"] = True
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
        if reason == "file is not a database" and path is not None:
            reason = f"{path} is not a SQLite database (it holds something else; left as it is)"
        raise EngineError(
            f"cannot open the state store at {shown}: {reason}; check {_NAMED_BY}"
        ) from None
    except BaseException:
        database.close()
        raise
    if path is not None:
        # Only now, SQLite having taken it for a database: a file named by mistake (--state
        # sqlite:////etc/passwd) is not the engine's to make private.
        for suffix in ("", "-wal", "-shm", "-journal"):
            private_file(path.with_name(path.name + suffix))
    return Store(database)


def _check_backend(parsed: Any) -> str:
    backend: str = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        shown = parsed.render_as_string(hide_password=True)
        raise EngineError(
            f"the state store URL {shown} names the {backend} database; "
            "use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return backend


def _sqlite_file(parsed: Any) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL and for SQLite in memory."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_sqlite_file(database: Path, shown: str) -> None:
    """An EngineError when something is at `database` that cannot be a SQLite store: SQLite
    would say only "unable to open database file" (a folder) or "database is locked" (a
    device). Only stat: opening and closing a descriptor of a database this process has open
    would drop every POSIX lock SQLite holds on it."""
    try:
        mode = database.stat().st_mode
    except OSError:
        return  # nothing there (or no folder to hold it): the folder check says so
    if stat.S_ISDIR(mode):
        raise EngineError(
            f"the state store {shown} names the folder {database}, and a SQLite store is a "
            f"file: name a file in it (sqlite:///{database / SQLITE_FILE}) with {_NAMED_BY}, "
            "or choose another --state-dir"
        )
    if not stat.S_ISREG(mode):
        what = {
            stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device",
            stat.S_IFIFO: "a named pipe",
            stat.S_IFSOCK: "a socket",
        }.get(stat.S_IFMT(mode), "not a regular file")
        raise EngineError(
            f"the state store {shown} names {database}, which is {what}, and a SQLite store "
            f"is a regular file the engine writes: name one (sqlite:///PATH/{SQLITE_FILE}) "
            f"with {_NAMED_BY}, or choose another --state-dir"
        )


def _check_sqlite_folder(folder: Path, shown: str) -> None:
    """An EngineError unless `folder` is one to make the store's file in."""
    if folder.is_dir():
        return
    if folder.exists():
        raise EngineError(
            f"the state store {shown} is to be a file in {folder}, which is not a folder; "
            f"fix the URL ({_NAMED_BY})"
        )
    raise EngineError(
        f"the folder of the state store {shown} does not exist: {folder}; create it "
        f"(mkdir -p {folder}) or fix the URL ({_NAMED_BY}): the engine makes no folder "
        "outside its state directory"
    )


def _new_sqlite_file(database: Path, shown: str) -> None:
    """Make the SQLite file, if it is not there, readable by its owner only (0600) rather than
    let SQLite make it (0644 under the usual umask); the -wal, -shm and -journal files SQLite
    makes take the database file's mode. Its folder must exist: `open_state` makes the state
    directory; any other is the user's to make."""
    _check_sqlite_file(database, shown)
    _check_sqlite_folder(database.parent, shown)
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
