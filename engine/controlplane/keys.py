"""The fleet's secret key and the tokens derived from it (the seam to engine/tokens.py).

    key      <state_dir>/keys/<fleet>.key: 32 random bytes as 64 hex digits, mode 0600,
             in a 0700 folder, made on first use
    token    base64url(HMAC-SHA256(key, "fleet-engine/v1" US purpose US fleet US server US ...))

The agent's branch has the same key file and construction in engine/tokens.py
(`ensure_fleet_key`, `read_fleet_key`, `derive_token`, `is_same_token`). When both are
merged, this module's functions become imports from there (`expected_token` is
`derive_token` without registering the result as a secret); nothing else changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.secrets import register_secret

DOMAIN = "fleet-engine/v1"
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in names, so parts never run together


def fleet_key(state_dir: Path, fleet: str, *, create: bool) -> bytes | None:
    """The fleet's secret key; made (exclusively, so racing processes agree) when `create`,
    else None when there is none yet."""
    path = state_dir / "keys" / f"{fleet}.key"
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_bytes(32).hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:
            pass
        finally:
            partial.unlink()
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise EngineError(f"cannot read the fleet key {path}: {error}") from None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise EngineError(f"{path} is not a fleet key (64 hex digits); restore it from a backup")
    return bytes.fromhex(text)


def derive_token(key: bytes, purpose: str, fleet: str, server: str, *context: str) -> str:
    """The token for `purpose` of one server of one fleet, binding `context` too (43
    base64url characters), registered as a secret: for tokens the engine hands out."""
    return register_secret(expected_token(key, purpose, fleet, server, *context))


def expected_token(key: bytes, purpose: str, fleet: str, server: str, *context: str) -> str:
    """The same token, not registered: for checking a presented one, which a long-running
    control plane does for every request (registering each would grow without bound)."""
    parts = (DOMAIN, purpose, fleet, server, *context)
    if any(_SEPARATOR in part for part in parts):
        raise ValueError("token parts must not contain the unit separator")
    digest = hmac.new(key, _SEPARATOR.join(parts).encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def is_same_token(expected: str, presented: str) -> bool:
    """Whether `presented` is `expected`, in time independent of where they differ."""
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


class TimedCache:
    """Values by name for `ttl_s` seconds: fleet keys and settings are read for every
    request otherwise. A name with nothing to hold (None: no key or no fleet yet) is looked
    up again next time, so a fleet registered a moment ago is served at once."""

    def __init__(self, load: Callable[[str], Any], ttl_s: float) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._values: dict[str, tuple[float, Any]] = {}
        self._reloading: set[str] = set()
        self._lock = threading.Lock()

    def held(self, name: str) -> tuple[bool, Any]:
        """(True, value) when a value is held, at once; a stale one is reloaded in a thread
        meanwhile (one reload at a time), so callers on an event loop never wait for a load
        and do not all load at once when it expires. (False, None) when none is held."""
        with self._lock:
            held = self._values.get(name)
            if held is None:
                return False, None
            if time.monotonic() - held[0] >= self._ttl_s and name not in self._reloading:
                self._reloading.add(name)
                threading.Thread(target=self._reload, args=(name,), daemon=True).start()
        return True, held[1]

    def _reload(self, name: str) -> None:
        try:
            self.get(name)
        finally:
            with self._lock:
                self._reloading.discard(name)

    def get(self, name: str) -> Any:
        """The value, loaded (in the caller's thread) when none is held or it is stale."""
        now = time.monotonic()
        with self._lock:
            held = self._values.get(name)
        if held is not None and now - held[0] < self._ttl_s:
            return held[1]
        value = self._load(name)
        with self._lock:
            if value is None:  # gone (or never there): nothing to hold
                self._values.pop(name, None)
                return None
            if len(self._values) > 10_000:
                self._values.clear()
            self._values[name] = (now, value)
        return value
