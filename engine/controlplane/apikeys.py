"""API keys for the fleet API: `fek_<id>_<secret>`, shown once, stored as id + HMAC-SHA256.

    key = create_api_key(store, state_dir, "deploy-bot", scope=Scope.APPLY, fleets=("web",))
    Authorization: Bearer fek_0123456789abcdef_<64 hex digits>

A key has a scope (`read` < `plan` < `apply` < `admin`, each including the ones before) and
optionally the fleets it is granted (none named: every fleet). Its secret part is 256 random
bits, stored as HMAC-SHA256 under the control plane's API-key secret
(engine.tokens.ensure_api_key_secret, 0600 in the state directory's keys folder), so a copy
of the store alone is no way to test guesses. Keys made before scopes existed keep the read
scope they had in effect and their plain SHA-256, which is replaced by the HMAC the first
time the key is used. Comparisons are constant-time. Verified keys are remembered for a few
seconds, so a request costs no database read, and a revocation takes effect within that time.

Making and revoking a key is written to the audit trail (who: `cli`), never the key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from engine.controlplane.errors import ApiError
from engine.controlplane.keys import TimedCache
from engine.errors import EngineError
from engine.secrets import register_secret
from engine.state import ApiKey, AuditEntry, KeyHashing, Scope
from engine.state.store import Store
from engine.tokens import ensure_api_key_secret

_SHAPE = re.compile(r"fek_([0-9a-f]{16})_([0-9a-f]{64})")
_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
_FLEET = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
CLI_ACTOR = "cli"


def create_api_key(
    store: Store,
    state_dir: Path,
    name: str,
    *,
    scope: Scope = Scope.READ,
    fleets: Sequence[str] = (),
    actor: str = CLI_ACTOR,
) -> str:
    """Make a key called `name` and return it (the only time it exists in clear)."""
    check_key_request(name, fleets)
    key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
    made = ApiKey(
        key_id=key_id,
        name=name,
        secret_hash=_hmac(ensure_api_key_secret(state_dir), secret),
        created_at=dt.datetime.now(dt.UTC),
        scope=scope,
        fleets=tuple(sorted(set(fleets))),
    )
    with store.transaction() as tx:
        tx.api_keys.add(made)
        tx.audit.record(
            AuditEntry(
                at=made.created_at,
                actor=actor,
                action=f"apikey create {name}",
                status=201,
                result="created",
                detail={"scope": str(scope), "fleets": list(made.fleets)},
            )
        )
    return register_secret(f"fek_{key_id}_{secret}")


def check_key_request(name: str, fleets: Sequence[str] = ()) -> None:
    """An EngineError unless `name` is a usable key name and `fleets` fleet names: checked
    before anything is opened or made."""
    if not _NAME.fullmatch(name):
        raise EngineError(
            f"{name!r} is not a usable key name; use lowercase letters, digits, '.', '_' and "
            "'-' (at most 63), e.g. ops-dashboard"
        )
    for fleet in fleets:
        if not _FLEET.fullmatch(fleet):
            raise EngineError(
                f"--fleet {fleet!r} is not a fleet name; fleet names are lowercase DNS labels "
                "(letters, digits, '-'), e.g. --fleet web-prod"
            )


def revoke_api_key(store: Store, name: str, *, actor: str = CLI_ACTOR) -> ApiKey:
    """Revoke the key called `name` (recorded in the audit trail)."""
    with store.transaction() as tx:
        key = tx.api_keys.revoke(name)
        tx.audit.record(
            AuditEntry(
                at=dt.datetime.now(dt.UTC),
                actor=actor,
                action=f"apikey revoke {name}",
                status=200,
                result="revoked",
            )
        )
    return key


def permit(key: ApiKey, needed: Scope, fleet: str | None) -> None:
    """403 unless `key` may do what needs `needed` (on `fleet`, when one is named)."""
    if not key.may(needed, fleet):
        why = (
            f"it is not granted fleet {fleet}"
            if key.scope.allows(needed)
            else f"it has the {key.scope} scope and this needs {needed}"
        )
        raise ApiError(403, "forbidden", f"the key {key.name} may not do this: {why}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _hmac(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode("ascii"), hashlib.sha256).hexdigest()


class ApiKeyVerifier:
    """Checks presented keys against the store, remembering the stored keys for `ttl_s`."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        *,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._secret = ensure_api_key_secret(state_dir)
        self._keys = TimedCache(store.api_keys.get, ttl_s, clock=clock)

    def verify(self, presented: str) -> ApiKey | None:
        """The live key `presented` is, or None (unknown, wrong secret, revoked)."""
        match = _SHAPE.fullmatch(presented)
        if match is None:
            return None
        key_id, secret = match[1], match[2]
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return None
        if key.hashing is KeyHashing.SHA256:
            if not hmac.compare_digest(key.secret_hash, _sha256(secret)):
                return None
            rehashed = _hmac(self._secret, secret)
            self._store.api_keys.rehash(key_id, rehashed)
            return replace(key, secret_hash=rehashed, hashing=KeyHashing.HMAC_SHA256)
        if not hmac.compare_digest(key.secret_hash, _hmac(self._secret, secret)):
            return None
        return key
