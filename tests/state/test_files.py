"""The state directory and the SQLite store are their owner's only: made 0700 and 0600, and
the folders and files inside tightened to that when an older engine (or a umask) left them more
open. A state directory that was already there keeps its mode: it may be the user's folder."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.install.deploykey import deploy_key_path, ensure_deploy_key
from engine.model import Stage
from engine.state import ServerRecord
from engine.state.files import private_dir
from engine.state.store import open_state, open_store, state_url
from engine.tokens import ensure_fleet_key, key_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read what is made, so only the engine's modes protect it."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_a_new_state_directory_and_store_are_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "project" / ".engine"
    with open_state(state_dir) as store:
        store.servers.save(ServerRecord(fleet="f", name="web-1", group="web", provider="local"))
        store.servers.set_stage("f", "web-1", Stage.CREATING)
        # While a connection is open in WAL mode, the -wal and -shm files exist.
        files = sorted(state_dir.iterdir())
        assert [f.name for f in files] == ["state.db", "state.db-shm", "state.db-wal"]
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert _mode(state_dir) == 0o700
    assert _mode(state_dir.parent) == 0o700  # made for it too


def test_an_open_store_and_the_folders_in_the_state_directory_are_tightened(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / ".engine"
    open_state(state_dir).close()
    database = state_dir / "state.db"
    left_over = state_dir / "state.db-journal"
    left_over.write_bytes(b"")
    for path, mode in ((state_dir, 0o755), (database, 0o644), (left_over, 0o664)):
        path.chmod(mode)
    open_store(state_url(state_dir)).close()
    assert _mode(database) == 0o600 and _mode(left_over) == 0o600
    ensure_fleet_key(state_dir, "f")
    assert _mode(state_dir) == 0o755  # found there: not the engine's to change
    assert _mode(key_path(state_dir, "f").parent) == 0o700


def test_a_user_chosen_folder_of_the_store_is_left_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    with open_store(f"sqlite:///{folder / 'fleet.db'}"):
        pass
    assert _mode(folder) == 0o755
    assert _mode(folder / "fleet.db") == 0o600


def test_keys_made_or_found_more_open_end_up_private(tmp_path: Path) -> None:
    state_dir = tmp_path / ".engine"
    ensure_fleet_key(state_dir, "f")
    ensure_deploy_key(state_dir, "f")
    keys = key_path(state_dir, "f").parent
    for path in (state_dir, keys):
        path.chmod(0o755)
    for path in (key_path(state_dir, "f"), deploy_key_path(state_dir, "f")):
        path.chmod(0o644)
    ensure_fleet_key(state_dir, "f")
    ensure_deploy_key(state_dir, "f")
    assert [_mode(p) for p in (state_dir, keys)] == [0o755, 0o700]
    assert _mode(key_path(state_dir, "f")) == 0o600
    assert _mode(deploy_key_path(state_dir, "f")) == 0o600


def test_private_dir_makes_and_tightens_every_level_below_its_base(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    logs = outside / "state" / "logs"
    logs.mkdir(parents=True)
    logs.chmod(0o775)
    (outside / "state").chmod(0o775)
    made = private_dir(outside / "state", "logs", "install")
    assert made == logs / "install"
    assert [_mode(p) for p in (logs, made)] == [0o700] * 2
    # The base and what is above it were there before: not the engine's to change.
    assert [_mode(p) for p in (outside, outside / "state")] == [0o755, 0o775]


def test_private_dir_makes_a_missing_base_and_its_missing_parents_private(
    tmp_path: Path,
) -> None:
    made = private_dir(tmp_path / "a" / "state", "keys")
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "a" / "state", made)] == [0o700] * 3


def test_the_current_directory_as_state_directory_keeps_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--state-dir .` is explicit, but the current directory (a repository's root) is the
    # user's: the engine's keys and store in it are private, the folder itself is left alone.
    tmp_path.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    ensure_fleet_key(Path("."), "f")
    with open_store(state_url(Path("."))):
        pass
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "keys") == 0o700
    assert _mode(key_path(tmp_path, "f")) == 0o600
    assert _mode(tmp_path / "state.db") == 0o600


def test_a_file_where_a_state_folder_belongs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("not a folder")
    with pytest.raises(EngineError, match=r"keys is a file, where the engine keeps a folder"):
        private_dir(tmp_path, "keys")
