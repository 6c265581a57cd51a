"""The state store on SQLite and on a real PostgreSQL server: records, history, migrations."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, text
from sqlalchemy.exc import StatementError

from engine.errors import EngineError
from engine.model import Stage
from engine.secrets import register_secret
from engine.state import ServerRecord, stage_durations
from engine.state import schema as state_schema
from engine.state.store import Store, open_state, open_store, state_url, store_exists
from tests.support.clock import Clock
from tests.support.postgres import Cluster


def _record(**overrides: object) -> ServerRecord:
    values: dict[str, object] = {
        "fleet": "web-prod",
        "name": "web-1",
        "group": "web",
        "provider": "hcloud",
        "provider_id": "4711",
        "location": "fsn1",
        "server_type": "cx22",
        "image": "debian-12",
        "stage": Stage.CREATING,
        "ipv4": "203.0.113.7",
        "ipv6": "2001:db8::/64",
        "private_ips": ("10.10.0.2",),
        "labels": (("fleet", "web-prod"), ("role", "web")),
        "user_data_hash": "sha256:aa",
        "install_hash": None,
        "host_keys": (("ssh-ed25519", "AAAAC3Nza..."),),
    }
    values.update(overrides)
    return ServerRecord(**values)  # type: ignore[arg-type]


def test_a_fresh_store_has_every_migration(store: Store) -> None:
    assert store.schema_version() == state_schema.MIGRATIONS[-1].version
    assert store.servers.all("web-prod") == ()
    assert store.locks.all() == ()


def test_opening_again_changes_nothing(url: str, clock: Clock) -> None:
    with open_store(url, now=clock) as first:
        first.servers.save(_record())
    with open_store(url, now=clock) as second:
        assert second.schema_version() == state_schema.MIGRATIONS[-1].version
        assert [r.name for r in second.servers.all("web-prod")] == ["web-1"]


def test_a_server_record_round_trips(store: Store, clock: Clock) -> None:
    saved = store.servers.save(_record())
    assert saved.created_at == clock.now and saved.updated_at == clock.now
    loaded = store.servers.get("web-prod", "web-1")
    assert loaded == saved
    assert loaded is not None and loaded.created_at is not None
    assert loaded.created_at.tzinfo is not None
    assert store.servers.get("web-prod", "web-2") is None
    assert store.servers.all("other-fleet") == ()


def test_every_field_of_a_record_reads_back_alike_one_by_one_and_by_fleet(
    store: Store, clock: Clock
) -> None:
    times = {
        "cloud_init_finished_at": clock.now - dt.timedelta(seconds=90),
        "installed_at": clock.now - dt.timedelta(seconds=30, microseconds=250),
        "inventory_seen_at": clock.now.replace(microsecond=0),  # a time SQLite writes short
    }
    full = store.servers.save(
        _record(stage=Stage.READY, install_hash="sha256:bb", host_keys_source="phone-home", **times)
    )
    bare = store.servers.save(
        _record(name="web-2", private_ips=(), labels=(), host_keys=(), ipv4=None, ipv6=None)
    )
    assert store.servers.all("web-prod") == (full, bare)
    assert store.servers.get("web-prod", "web-1") == full
    for name, at in times.items():
        assert getattr(full, name) == at and at.tzinfo is not None
    assert bare.cloud_init_finished_at is None and bare.labels == ()


def test_transitions_are_read_into_the_stages_asked_for(store: Store) -> None:
    store.servers.save(_record(stage=Stage.BOOTING))
    for stage in (Stage.FAILED, Stage.INSTALLING, Stage.READY, Stage.FAILED):
        store.servers.set_stage("web-prod", "web-1", stage)
    asked = store.servers.transitions("web-prod", stages=(Stage.READY, Stage.FAILED))
    assert [t.stage for t in asked] == [Stage.FAILED, Stage.READY, Stage.FAILED]
    assert len(store.servers.transitions("web-prod")) == 5


def test_transitions_of_failed_servers_leave_out_those_that_never_failed(store: Store) -> None:
    store.servers.save(_record(name="web-1", stage=Stage.BOOTING))
    store.servers.save(_record(name="web-2", stage=Stage.BOOTING))
    store.servers.save(_record(name="other", fleet="db-prod", stage=Stage.BOOTING))
    for stage in (Stage.FAILED, Stage.READY):
        store.servers.set_stage("web-prod", "web-1", stage)
        store.servers.set_stage("db-prod", "other", stage)
    store.servers.set_stage("web-prod", "web-2", Stage.READY)
    asked = store.servers.transitions(
        "web-prod", stages=(Stage.READY, Stage.FAILED), of_failed=True
    )
    assert [(t.server, t.stage) for t in asked] == [("web-1", Stage.FAILED), ("web-1", Stage.READY)]
    assert store.servers.transitions("web-prod", "web-2", of_failed=True) == ()


def test_saving_again_keeps_created_at_and_records_stage_changes(
    store: Store, clock: Clock
) -> None:
    created = store.servers.save(_record())
    clock.advance(30)
    again = store.servers.save(_record(ipv4="203.0.113.8"))  # same stage: no transition
    clock.advance(12)
    store.servers.save(_record(stage=Stage.BOOTING))
    assert again.created_at == created.created_at
    loaded = store.servers.get("web-prod", "web-1")
    assert loaded is not None and loaded.updated_at == clock.now
    assert [t.stage for t in store.servers.transitions("web-prod", "web-1")] == [
        Stage.CREATING,
        Stage.BOOTING,
    ]


def test_many_records_are_saved_in_one_transaction(store: Store) -> None:
    saved = store.servers.save_all(_record(name=f"web-{n}") for n in range(1, 201))
    assert len(saved) == 200 and len(store.servers.all("web-prod")) == 200
    naive = dt.datetime(2026, 1, 1)  # refused: the store only takes aware datetimes
    with pytest.raises(StatementError):  # a bad record in the batch saves none of it
        store.servers.save_all([_record(name="web-201"), _record(name="web-202", created_at=naive)])
    assert store.servers.get("web-prod", "web-201") is None


def test_per_step_durations_come_from_transitions(store: Store, clock: Clock) -> None:
    store.servers.save(_record(stage=Stage.REQUESTED))
    for stage, seconds in [
        (Stage.CREATING, 1),
        (Stage.BOOTING, 9),
        (Stage.PHONED_HOME, 24),
        (Stage.INSTALLING, 2),
        (Stage.READY, 41),
    ]:
        clock.advance(seconds)
        store.servers.set_stage("web-prod", "web-1", stage, reason=f"after {seconds}s")
    store.servers.set_stage("web-prod", "web-1", Stage.READY)  # not a transition: already there
    transitions = store.servers.transitions("web-prod", "web-1")
    assert transitions[-1].reason == "after 41s"
    assert stage_durations(transitions) == (
        (Stage.REQUESTED, 1.0),
        (Stage.CREATING, 9.0),
        (Stage.BOOTING, 24.0),
        (Stage.PHONED_HOME, 2.0),
        (Stage.INSTALLING, 41.0),
    )
    loaded = store.servers.get("web-prod", "web-1")
    assert loaded is not None and loaded.stage is Stage.READY


def test_set_stage_of_an_unknown_server_is_an_error(store: Store) -> None:
    with pytest.raises(EngineError, match="no server web-9 in fleet web-prod"):
        store.servers.set_stage("web-prod", "web-9", Stage.READY)


def test_forgetting_a_server_keeps_its_history(store: Store) -> None:
    store.servers.save(_record())
    store.servers.forget("web-prod", "web-1")
    assert store.servers.all("web-prod") == ()
    assert len(store.servers.transitions("web-prod", "web-1")) == 1


def test_a_transaction_across_repositories_commits_all_of_it_or_none(store: Store) -> None:
    store.servers.save(_record())
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.servers.set_stage("web-prod", "web-1", Stage.FAILED, reason="no answer")
        tx.events.record("web-prod", "server.failed", "web-1: no answer", server="web-1")
        raise RuntimeError("the step after them failed")
    assert store.servers.get("web-prod", "web-1").stage is Stage.CREATING  # type: ignore[union-attr]
    assert store.events.all("web-prod") == ()
    with store.transaction() as tx:
        tx.servers.set_stage("web-prod", "web-1", Stage.FAILED, reason="no answer")
        tx.events.record("web-prod", "server.failed", "web-1: no answer", server="web-1")
    assert store.servers.get("web-prod", "web-1").stage is Stage.FAILED  # type: ignore[union-attr]
    assert [e.kind for e in store.events.all("web-prod")] == ["server.failed"]


def test_events_are_appended_in_order_and_redacted(store: Store) -> None:
    secret = register_secret("tok-0123456789-abcdef")
    first = store.events.record("web-prod", "server.created", "web-1 created", server="web-1")
    second = store.events.record(
        "web-prod", "phone_home.refused", f"bad token {secret}", data={"ip": "203.0.113.7"}
    )
    store.events.record("other", "server.created", "x")
    events = store.events.all("web-prod")
    assert [e.id for e in events] == [first.id, second.id]
    assert events[1].message == "bad token ***"
    assert events[1].data == {"ip": "203.0.113.7"}
    assert store.events.all("web-prod", after_id=first.id) == (events[1],)
    assert store.events.all("web-prod", server="web-1") == (events[0],)


def test_a_store_from_a_newer_engine_is_refused(url: str) -> None:
    open_store(url).close()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO schema_version (version, description, applied_at) "
                "VALUES (999, 'future', CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    with pytest.raises(EngineError, match="schema version 999, newer than this engine"):
        open_store(url)


def test_a_current_store_opens_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    # Opening checks the migrations: a store that has them all is only read, so a preview
    # need not wait for (or take) the write lock a running `engine up` may hold.
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(url) as store:
        store.servers.save(_record())
    writer = sqlite3.connect(tmp_path / "state.db", isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with open_store(url) as store:
            assert [r.name for r in store.servers.all("web-prod")] == ["web-1"]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_an_appended_migration_is_applied_to_an_existing_store(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(url) as old:
        old.servers.save(_record())

    def heartbeats(metadata: MetaData) -> None:
        Table(
            "heartbeats",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("server", String(63), nullable=False),
        )
        metadata.tables["servers"].append_column(Column("agent_version", String(20)))

    def add_agent_version(connection: object) -> None:
        state_schema.add_column(connection, "servers", Column("agent_version", String(20)))  # type: ignore[arg-type]

    version = state_schema.MIGRATIONS[-1].version + 1
    extra = state_schema.Migration(
        version, "heartbeats, servers.agent_version", heartbeats, add_agent_version
    )
    monkeypatch.setattr(state_schema, "MIGRATIONS", (*state_schema.MIGRATIONS, extra))
    state_schema.metadata.cache_clear()
    try:
        with open_store(url) as upgraded:
            assert upgraded.schema_version() == version
            assert [r.name for r in upgraded.servers.all("web-prod")] == ["web-1"]
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO heartbeats (server) VALUES ('web-1')"))
            agent = connection.execute(text("SELECT agent_version FROM servers")).scalar_one()
        engine.dispose()
        assert agent is None
    finally:
        state_schema.metadata.cache_clear()


def _open_and_close(url: str) -> int:
    with open_store(url) as opened:
        return opened.schema_version()


def test_processes_opening_a_fresh_store_at_once_all_succeed(url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        versions = pool.map(_open_and_close, [url] * 4)
    assert versions == [state_schema.MIGRATIONS[-1].version] * 4
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT version FROM schema_version")).all()
    engine.dispose()
    assert sorted(r[0] for r in rows) == [m.version for m in state_schema.MIGRATIONS]


def test_state_url_prefers_the_option_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENGINE_STATE_URL", raising=False)
    assert state_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/state.db"
    monkeypatch.setenv("ENGINE_STATE_URL", "postgresql://team@db/fleet")
    assert state_url(tmp_path) == "postgresql://team@db/fleet"
    assert state_url(tmp_path, "sqlite:////x.db") == "sqlite:////x.db"


def test_store_exists_only_after_the_first_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    assert not store_exists(url)
    open_store(url).close()
    assert store_exists(url)
    assert store_exists("postgresql://team@db/fleet")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("mysql://root@db/fleet", "names the mysql database"),
        ("not a url", "is not a database URL"),
    ],
)
def test_unusable_urls_are_clear_errors(bad: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        open_store(bad)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_text("this is not a database, just text in the way\n" * 50)
    with pytest.raises(EngineError, match=r"cannot open the state store at sqlite:///.*database"):
        open_store(f"sqlite:///{tmp_path / 'state.db'}")


def test_a_file_where_the_stores_folder_belongs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EngineError, match=r"to be a file in .*/file, which is not a folder"):
        open_store(f"sqlite:///{tmp_path / 'file' / 'state.db'}")


def test_a_store_whose_folder_does_not_exist_is_refused_and_no_folder_is_made(
    tmp_path: Path,
) -> None:
    # `--state sqlite:////nonexistent/dir/x.db` once made /nonexistent/dir (as root).
    url = f"sqlite:///{tmp_path / 'nonexistent' / 'dir' / 'x.db'}"
    assert not store_exists(url)
    with pytest.raises(EngineError) as info:
        open_store(url)
    assert str(info.value) == (
        f"the folder of the state store {url} does not exist: {tmp_path}/nonexistent/dir; "
        f"create it (mkdir -p {tmp_path}/nonexistent/dir) or fix the URL (--state or "
        "$ENGINE_STATE_URL): the engine makes no folder outside its state directory"
    )
    assert list(tmp_path.iterdir()) == []


def test_open_state_makes_the_state_directory_for_its_own_store_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ENGINE_STATE_URL", raising=False)
    with open_state(tmp_path / "own" / ".engine"):
        pass
    assert (tmp_path / "own" / ".engine" / "state.db").is_file()
    named = f"sqlite:///{tmp_path / 'team' / 'state.db'}"
    with pytest.raises(EngineError, match=r"the folder of the state store .* does not exist"):
        open_state(tmp_path / "by-option", named)
    monkeypatch.setenv("ENGINE_STATE_URL", named)
    with pytest.raises(EngineError, match=r"the folder of the state store .* does not exist"):
        open_state(tmp_path / "by-environment")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own"]


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe")
    return folder / "pipe"


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda folder: folder, r"names the folder .*, and a SQLite store is a file: name a file"),
        (_fifo, r"names .*/pipe, which is a named pipe, and a SQLite store is a regular file"),
    ],
    ids=["folder", "named-pipe"],
)
def test_a_url_naming_a_folder_or_a_device_is_a_clear_error_that_changes_nothing(
    make: Callable[[Path], Path], said: str, tmp_path: Path
) -> None:
    # SQLite said only "unable to open database file" (a folder) or "database is locked"
    # (/dev/null), after the engine had made what the URL named 0600 (or 0700).
    target = make(tmp_path)
    target.chmod(0o755)
    url = f"sqlite:///{target}"
    with pytest.raises(EngineError, match=said):  # first: the old store_exists said False
        store_exists(url)
    with pytest.raises(EngineError, match=said):
        open_store(url)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ([] if target == tmp_path else ["pipe"])


def test_a_file_that_is_not_a_database_is_left_as_it_is(tmp_path: Path) -> None:
    # --state sqlite:////etc/passwd made /etc/passwd 0600 before SQLite refused it.
    other = tmp_path / "passwd"
    other.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    other.chmod(0o644)
    with pytest.raises(EngineError) as info:
        open_store(f"sqlite:///{other}")
    assert f"{other} is not a SQLite database (it holds something else; left as it is)" in str(
        info.value
    )
    assert stat.S_IMODE(other.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]


def test_an_unreachable_postgresql_names_the_url_without_the_password() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(EngineError) as info:
        open_store(f"postgresql://team:hunter2-secret@127.0.0.1:{port}/fleet?connect_timeout=2")
    message = str(info.value)
    assert f"cannot open the state store at postgresql://team:***@127.0.0.1:{port}" in message
    assert "hunter2" not in message


def test_opening_a_second_store_in_a_process_keeps_the_locks_of_the_first(
    tmp_path: Path,
) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process holds on it. A
    # process whose locks are gone looks closed to others: the last one to leave then empties
    # and deletes the write-ahead log under it, and the file is corrupt. `engine serve`'s
    # server-action jobs open a second store in its process; the `engine runs` CLI leaves.
    database = tmp_path / "state.db"
    with open_store(f"sqlite:///{database}") as first:
        first.events.record("web-prod", "test.written", "in the write-ahead log")
        open_store(f"sqlite:///{database}").close()
        subprocess.run([sys.executable, "-c", READ_AND_LEAVE, str(database)], check=True)
        assert (tmp_path / "state.db-wal").exists()
        first.events.record("web-prod", "test.written", "still a sound file")
        assert len(first.events.all("web-prod")) == 2


READ_AND_LEAVE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM events").fetchall()
connection.close()
"""


def test_another_programs_sqlite_database_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    # A database named by mistake got the engine's tables beside its own, in WAL mode.
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        connection.execute("INSERT INTO users (email) VALUES ('a@example.com')")
    connection.close()
    before = other.read_bytes()
    with pytest.raises(EngineError) as info:
        open_store(f"sqlite:///{other}")
    said = str(info.value)
    assert f"the database at sqlite:///{other} is not an engine state store" in said
    assert "1 table(s) of something else (users)" in said
    assert "nothing was changed" in said
    assert other.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["app.db"]


def test_an_empty_sqlite_database_becomes_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with open_store(f"sqlite:///{empty}") as store:
        assert store.servers.all("web") == ()
    with sqlite3.connect(empty) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_another_programs_postgresql_database_is_refused(postgres: Cluster) -> None:
    url = postgres.create_database()
    foreign = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with foreign.begin() as connection:
        connection.execute(text("CREATE TABLE invoices (id integer PRIMARY KEY)"))
    with pytest.raises(EngineError, match=r"1 table\(s\) of something else \(invoices\)"):
        open_store(url)
    with foreign.connect() as connection:
        tables = connection.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        assert list(tables) == ["invoices"]
    foreign.dispose()
