"""API keys: who may call the control plane's API, each known by its id, the hash of its
secret part, its scope and the fleets it is granted (engine.controlplane.apikeys makes and
checks them).

    store.api_keys.add(ApiKey(key_id=..., name="ci", secret_hash=..., scope=Scope.PLAN, ...))
    store.api_keys.rehash(key_id, new_hash)      # a key made before migration 7, on first use
    store.api_keys.revoke("ci")
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, exc, insert, select, update

from engine.errors import EngineError
from engine.state import ApiKey, KeyHashing, Scope, schema
from engine.state.database import Database, Repository, row_fields


class ApiKeys(Repository):
    """The API keys, revoked ones included."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._api_keys = schema.metadata().tables["api_keys"]

    def add(self, key: ApiKey) -> None:
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
                        scope=str(key.scope),
                        fleets=list(key.fleets),
                        hashing=str(key.hashing),
                    )
                )
        except exc.IntegrityError:
            raise EngineError(
                f"there is an API key called {key.name} already; pick another name, or revoke "
                f"it first (engine apikey revoke {key.name})"
            ) from None

    def get(self, key_id: str) -> ApiKey | None:
        """The API key with this id, or None."""
        with self._read() as connection:
            row = connection.execute(
                select(self._api_keys).where(self._api_keys.c.key_id == key_id)
            ).first()
        return None if row is None else _api_key(row)

    def all(self) -> tuple[ApiKey, ...]:
        """Every API key, revoked ones included, by name."""
        with self._read() as connection:
            rows = connection.execute(select(self._api_keys).order_by(self._api_keys.c.name))
            return tuple(_api_key(row) for row in rows)

    def rehash(self, key_id: str, secret_hash: str) -> None:
        """Store a key's secret under HMAC-SHA256 instead of the plain SHA-256 it had."""
        table = self._api_keys
        with self._write() as connection:
            connection.execute(
                update(table)
                .where(table.c.key_id == key_id)
                .values(secret_hash=secret_hash, hashing=str(KeyHashing.HMAC_SHA256))
            )

    def revoke(self, name: str) -> ApiKey:
        """Revoke the key called `name`; an EngineError if there is none."""
        table = self._api_keys
        with self._write() as connection:
            connection.execute(
                update(table)
                .where(table.c.name == name, table.c.revoked_at.is_(None))
                .values(revoked_at=self._db.now())
            )
            row = connection.execute(select(table).where(table.c.name == name)).first()
        if row is None:
            raise unknown_key(name)
        return _api_key(row)


def unknown_key(name: str) -> EngineError:
    """The error for a key `name` that no key has."""
    return EngineError(f"there is no API key called {name}; list them: engine apikey list")


def _api_key(row: Row[Any]) -> ApiKey:
    values = row_fields(row, ApiKey)
    values["scope"] = Scope(values["scope"])
    values["fleets"] = tuple(values["fleets"] or ())
    values["hashing"] = KeyHashing(values["hashing"])
    return ApiKey(**values)
