"""API keys in the store: migration 7 gives keys made before it the read scope and rehashes
them on first use; new keys are HMACs with a scope, fleet grants and an audit entry."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from engine.controlplane.apikeys import ApiKeyVerifier, create_api_key, revoke_api_key
from engine.errors import EngineError
from engine.state import KeyHashing, Scope
from engine.state import schema as state_schema
from engine.state.database import Database
from engine.state.store import Store, open_store
from engine.tokens import api_key_secret_path


def test_a_key_made_before_scopes_reads_and_is_rehashed_on_first_use(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tuple(m for m in state_schema.MIGRATIONS if m.version < 7)
    monkeypatch.setattr(state_schema, "MIGRATIONS", before)
    state_schema.metadata.cache_clear()
    Path(tmp_path / "nested").mkdir(exist_ok=True)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        state_schema.migrate(Database(engine, url))  # the store as the engine before made it
        key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO api_keys (key_id, name, secret_hash, created_at) "
                    "VALUES (:id, 'dashboard', :hash, '2026-11-01 10:00:00')"
                ),
                {"id": key_id, "hash": hashlib.sha256(secret.encode()).hexdigest()},
            )
    finally:
        engine.dispose()
        monkeypatch.undo()
        state_schema.metadata.cache_clear()
    with open_store(url) as upgraded:
        assert upgraded.schema_version() == state_schema.MIGRATIONS[-1].version
        (old_key,) = upgraded.api_keys.all()
        assert (old_key.scope, old_key.fleets, old_key.hashing) == (
            Scope.READ,
            (),
            KeyHashing.SHA256,
        )
        verifier = ApiKeyVerifier(upgraded, tmp_path / "state")
        presented = f"fek_{key_id}_{secret}"
        assert verifier.verify(presented) is not None
        rehashed = upgraded.api_keys.get(key_id)
        assert rehashed is not None and rehashed.hashing is KeyHashing.HMAC_SHA256
        assert rehashed.secret_hash != old_key.secret_hash
        assert ApiKeyVerifier(upgraded, tmp_path / "state").verify(presented) is not None
        assert verifier.verify(presented.replace(secret[-4:], "0000")) is None


def test_a_new_key_is_an_hmac_with_its_scope_and_fleets_and_is_audited(
    store: Store, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    key = create_api_key(store, state_dir, "deploy", scope=Scope.APPLY, fleets=("web", "api"))
    secret_file = api_key_secret_path(state_dir)
    assert secret_file.stat().st_mode & 0o777 == 0o600
    (stored,) = store.api_keys.all()
    assert (stored.scope, stored.fleets, stored.hashing) == (
        Scope.APPLY,
        ("api", "web"),
        KeyHashing.HMAC_SHA256,
    )
    # Without the secret file, the stored hash says nothing: another secret does not verify.
    assert ApiKeyVerifier(store, state_dir).verify(key) == stored
    assert ApiKeyVerifier(store, tmp_path / "elsewhere").verify(key) is None
    assert stored.may(Scope.PLAN, "web") and not stored.may(Scope.PLAN, "db")
    assert not stored.may(Scope.ADMIN, "web")
    revoke_api_key(store, "deploy")
    entries = store.audit.all()
    assert [(e.actor, e.action, e.result) for e in entries] == [
        ("cli", "apikey create deploy", "created"),
        ("cli", "apikey revoke deploy", "revoked"),
    ]
    assert entries[0].detail == {"scope": "apply", "fleets": ["api", "web"]}
    assert all(key.split("_")[-1] not in repr(e) for e in entries)


def test_a_bad_fleet_grant_is_refused_before_anything_is_stored(
    store: Store, tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match="--fleet 'Web_Prod' is not a fleet name"):
        create_api_key(store, tmp_path, "deploy", fleets=("Web_Prod",))
    assert store.api_keys.all() == () and store.audit.all() == ()
