"""user_data is stored once per server (the replacement guard's storage) with its one-time
token sealed, comes back byte for byte when it is sent, and destroying a fleet forgets every
row of it. Stores from before the seal are rewritten when opened."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, event

from engine.cloudinit import UserDataError, pin_user_data, pinned_user_data, render_user_data
from engine.model import ProviderName, Stage
from engine.state import ServerRecord, StoredUserData
from engine.state import schema as state_schema
from engine.state.store import Store, open_store
from engine.tokens import PhoneHomeSeal, ensure_fleet_key
from tests.support.tokens import mint_stored, usable_tokens

FLEET = "f"


def _document(store: Store, key: bytes, server: str = "web-1", *, users: int = 1) -> str:
    """What `engine up` renders: the engine's user_data with a freshly minted token."""
    token = mint_stored(store, key, fleet=FLEET, server=server, ttl_s=600)
    return render_user_data(
        fleet=FLEET,
        server=server,
        hostname=server,
        phone_home_url="http://10.0.0.1:8080/v1/phone-home",
        token=token,
        admin_user="fleet",
        authorized_keys=[f"ssh-ed25519 AAAAC3Nz user{n}@laptop" for n in range(users)],
        provider=ProviderName.LOCAL,
    )


def _seal(key: bytes, server: str = "web-1") -> PhoneHomeSeal:
    return PhoneHomeSeal(key=key, fleet=FLEET, server=server)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_user_data_is_rendered_once_kept_sealed_and_sent_as_rendered(
    store: Store, tmp_path: Path
) -> None:
    key = ensure_fleet_key(tmp_path, FLEET)
    store.servers.save(ServerRecord(fleet=FLEET, name="web-1", group="web", provider="local"))
    renders: list[str] = []

    def render() -> str:
        renders.append(_document(store, key))
        return renders[-1]

    first = pin_user_data(
        store.user_data, fleet=FLEET, server="web-1", seal=_seal(key), render=render
    )
    again = pin_user_data(
        store.user_data, fleet=FLEET, server="web-1", seal=_seal(key), render=render
    )
    assert first == again == renders[0] and len(renders) == 1
    record = store.servers.get(FLEET, "web-1")
    assert record is not None and record.user_data_hash == f"sha256:{_sha256(first)}"
    kept = store.user_data.get(FLEET, "web-1")
    assert kept is not None and kept.sha256 == _sha256(first)
    token = next(line for line in first.splitlines() if "ph1." in line).split()[-1]
    assert token not in kept.content
    assert kept.content == first.replace(token, token.rsplit(".", 1)[0] + ".MAC-NOT-STORED")

    fresh = pin_user_data(
        store.user_data, fleet=FLEET, server="web-1", seal=_seal(key), render=render, fresh=True
    )
    assert fresh == renders[1] != first
    assert pinned_user_data(store.user_data, fleet=FLEET, server="web-1", seal=_seal(key)) == fresh
    assert store.user_data.get(FLEET, "web-2") is None


def test_user_data_kept_under_another_key_is_refused_not_sent_changed(
    store: Store, tmp_path: Path
) -> None:
    key = ensure_fleet_key(tmp_path / "one", FLEET)
    other = ensure_fleet_key(tmp_path / "other", FLEET)
    document = _document(store, key)
    pin_user_data(
        store.user_data, fleet=FLEET, server="web-1", seal=_seal(key), render=lambda: document
    )
    with pytest.raises(UserDataError, match=r"user_data kept for web-1 of f does not come back"):
        pin_user_data(
            store.user_data, fleet=FLEET, server="web-1", seal=_seal(other), render=lambda: ""
        )
    assert (
        pinned_user_data(store.user_data, fleet=FLEET, server="web-1", seal=_seal(key)) == document
    )


def test_forget_fleet_leaves_no_row_of_it(store: Store) -> None:
    kept = StoredUserData(content="#cloud-config\nhostname: web-1\n", sha256="0" * 64)
    for fleet in ("gone", "kept"):
        store.servers.save(ServerRecord(fleet=fleet, name="web-1", group="web", provider="local"))
        store.servers.set_stage(fleet, "web-1", Stage.CREATING)
        store.user_data.put(fleet, "web-1", kept)
        store.events.record(fleet, "test.event", "something happened", server="web-1")
    store.forget_fleet("gone")
    assert store.servers.all("gone") == () and store.servers.transitions("gone") == ()
    assert store.events.all("gone") == () and store.user_data.get("gone", "web-1") is None
    assert len(store.servers.all("kept")) == 1 and store.user_data.get("kept", "web-1") == kept


@pytest.mark.usefixtures("sqlite_keeps_deleted_text")
def test_a_store_that_kept_tokens_in_clear_is_sealed_when_opened(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ensure_fleet_key(tmp_path, FLEET)
    database = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else None
    # The repositories query the whole schema, as an engine of then had it for its tables:
    # made before the migrations are cut back, whichever test ran first.
    state_schema.metadata()
    with monkeypatch.context() as before_the_seal:
        before_the_seal.setattr(state_schema, "MIGRATIONS", state_schema.MIGRATIONS[:3])
        with open_store(url) as old:
            assert old.schema_version() == 3
            documents = {}
            # What engines before the seal kept: the whole document. web-3's was deleted with
            # its server, so it is deleted text in the file.
            for name in ("web-1", "web-2", "web-3"):
                text = documents[name] = _document(old, key, name)
                old.user_data.put(FLEET, name, StoredUserData(content=text, sha256=_sha256(text)))
        gone = state_schema.metadata().tables["user_data"]
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(delete(gone).where(gone.c.server == "web-3"))
        engine.dispose()
    servers = {FLEET: list(documents)}
    if database is not None:
        assert len(usable_tokens(database, tmp_path, servers)) == 3
    del documents["web-3"]
    with open_store(url) as store:
        assert store.schema_version() == state_schema.MIGRATIONS[-1].version
        for name, text in documents.items():
            kept = store.user_data.get(FLEET, name)
            assert kept is not None and "MAC-NOT-STORED" in kept.content
            assert (
                pinned_user_data(store.user_data, fleet=FLEET, server=name, seal=_seal(key, name))
                == text
            )
    if database is not None:
        # Neither the rows, nor free pages, nor the write-ahead log keep the old text.
        assert usable_tokens(database, tmp_path, servers) == []


@pytest.fixture
def sqlite_keeps_deleted_text() -> Iterator[None]:
    """SQLite as most builds have it: Debian's zeroes what it deletes, most others do not."""
    event.listen(Engine, "connect", _keep_deleted_text)
    yield
    event.remove(Engine, "connect", _keep_deleted_text)


def _keep_deleted_text(connection: Any, _record: Any) -> None:
    if isinstance(connection, sqlite3.Connection):
        connection.execute("PRAGMA secure_delete=OFF")
