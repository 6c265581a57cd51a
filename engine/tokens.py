"""Per-server tokens, derived from one secret key per fleet.

    key      <state_dir>/keys/<fleet>.key: 32 random bytes as hex, mode 0600, made on first use
    token    base64url(HMAC-SHA256(key, "fleet-engine/v1" US purpose US fleet US server US ...))

Nothing but the key is stored: every token can be recomputed from it, so the control plane
checks a token by deriving the expected one and comparing in constant time (`is_same_token`).
Each purpose gives unrelated tokens, so the agent's inbound token cannot be used as its
heartbeat token or the other way round, and a token of one server is useless for another.

    agent_token      engine -> agent (the agent stores only its SHA-256: `token_sha256`)
    heartbeat_token  agent -> control plane (heartbeats and container events)

Other parts add their own purposes (phone-home tokens bind an expiry through `context`).
Every token made here is registered with engine.secrets, so it is masked in any output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from enum import StrEnum
from pathlib import Path

from engine.errors import EngineError
from engine.secrets import register_secret
from engine.state.files import private_dir, private_file

KEY_BYTES = 32
DOMAIN = "fleet-engine/v1"
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in names, so parts never run together
_KEY_TEXT = re.compile(r"^[0-9a-f]{64}$")


class TokenPurpose(StrEnum):
    AGENT = "agent"
    HEARTBEAT = "heartbeat"


def key_path(state_dir: Path, fleet: str) -> Path:
    """Where the fleet's secret key lives."""
    return state_dir / "keys" / f"{fleet}.key"


def _parse_key(path: Path, text: str) -> bytes:
    text = text.strip()
    if not _KEY_TEXT.match(text):
        raise EngineError(
            f"{path} is not a fleet key (64 hex digits); restore it from your backup. Making a "
            "new one would lock the engine out of every agent of this fleet"
        )
    return bytes.fromhex(text)


def read_fleet_key(state_dir: Path, fleet: str) -> bytes:
    """The fleet's secret key; an EngineError when there is none yet."""
    path = key_path(state_dir, fleet)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise EngineError(
            f"no key for fleet {fleet} in {path.parent}; the engine makes it when it first "
            "sets the fleet up (engine up). Check --state-dir if the fleet already exists"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"cannot read the fleet key {path}: {exc}") from None
    return _parse_key(path, text)


def ensure_fleet_key(state_dir: Path, fleet: str) -> bytes:
    """The fleet's secret key, made (0600, in a 0700 folder) if it does not exist yet; the
    state directory, the keys folder and the key are tightened to that if they are more open.

    Creation is exclusive, so two engines starting at once end up with the same key.
    """
    path = key_path(state_dir, fleet)
    private_dir(state_dir, path.parent.name)
    if path.exists():
        private_file(path)
        return read_fleet_key(state_dir, fleet)
    key = secrets.token_bytes(KEY_BYTES)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(partial, path)  # fails if another process made the key first: keep theirs
    except FileExistsError:
        return read_fleet_key(state_dir, fleet)
    finally:
        partial.unlink()
    return key


def find_fleet_key(state_dir: Path, fleet: str) -> bytes | None:
    """The fleet's secret key, or None when there is none yet (a control plane asks this for
    every fleet that calls it, and must not make keys)."""
    if not key_path(state_dir, fleet).exists():
        return None
    return read_fleet_key(state_dir, fleet)


def expected_token(key: bytes, purpose: str, fleet: str, server: str, *context: str) -> str:
    """The token for `purpose` of one server of one fleet (43 characters, base64url), not
    registered as a secret: for checking a presented one, which a long-running control plane
    does for every request (registering each would grow the secret set without bound).

    `context` binds more facts into it (an expiry, an instance id); the verifier must pass the
    same ones.
    """
    parts = (DOMAIN, purpose, fleet, server, *context)
    if any(_SEPARATOR in part for part in parts):
        raise ValueError("token parts must not contain the unit separator")
    digest = hmac.new(key, _SEPARATOR.join(parts).encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def derive_token(key: bytes, purpose: str, fleet: str, server: str, *context: str) -> str:
    """The same token, registered as a secret: for tokens the engine hands out."""
    return register_secret(expected_token(key, purpose, fleet, server, *context))


def agent_token(key: bytes, fleet: str, server: str) -> str:
    """The bearer token the engine sends to the agent of `server`."""
    return derive_token(key, TokenPurpose.AGENT, fleet, server)


def heartbeat_token(key: bytes, fleet: str, server: str) -> str:
    """The bearer token the agent of `server` sends to the control plane."""
    return derive_token(key, TokenPurpose.HEARTBEAT, fleet, server)


def token_sha256(token: str) -> str:
    """What the agent stores instead of its token: SHA-256, 64 lowercase hex digits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_same_token(expected: str, presented: str) -> bool:
    """Whether `presented` is `expected`, in time independent of where they differ."""
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))
