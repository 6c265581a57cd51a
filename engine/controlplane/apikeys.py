"""API keys for the fleet API: `fek_<id>_<secret>`, shown once, stored as id + SHA-256.

    key = create_api_key(store, "ops-dashboard")   # print it once; it cannot be shown again
    Authorization: Bearer fek_0123456789abcdef_<64 hex digits>

The secret part is 256 random bits, so a plain SHA-256 is enough to store it safely (no
password stretching needed); it is compared in constant time. Verified keys are remembered
for a few seconds, so a request costs no database read, and a revocation takes effect within
that time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

from engine.controlplane.keys import TimedCache
from engine.errors import EngineError
from engine.secrets import register_secret
from engine.state import ApiKey
from engine.state.store import Store

_SHAPE = re.compile(r"fek_([0-9a-f]{16})_([0-9a-f]{64})")
_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")


def create_api_key(store: Store, name: str) -> str:
    """Make a key called `name` and return it (the only time it exists in clear)."""
    if not _NAME.fullmatch(name):
        raise EngineError(
            f"{name!r} is not a usable key name; use lowercase letters, digits, '.', '_' and "
            "'-' (at most 63), e.g. ops-dashboard"
        )
    key_id, secret = secrets.token_hex(8), secrets.token_hex(32)
    store.api_keys.add(
        ApiKey(
            key_id=key_id,
            name=name,
            secret_hash=_sha256(secret),
            created_at=dt.datetime.now(dt.UTC),
        )
    )
    return register_secret(f"fek_{key_id}_{secret}")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class ApiKeyVerifier:
    """Checks presented keys against the store, remembering the stored keys for `ttl_s`."""

    def __init__(
        self, store: Store, *, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
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
        if not hmac.compare_digest(key.secret_hash, _sha256(secret)):
            return None
        return key
