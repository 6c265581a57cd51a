"""Every token the engine hands out, derived from one secret key per fleet.

    key      <state_dir>/keys/<fleet>.key: 32 random bytes as hex, mode 0600, made on first use
    token    base64url(HMAC-SHA256(key, "fleet-engine/v1" US purpose US fleet US server US ...))
    id       <state_dir>/keys/<fleet>.id: 12 random hex digits, no secret: the fleet's id on every
             resource it makes (label or tag fleet-id), by which two state directories that
             manage fleets of one name tell their resources apart

Nothing but the key is stored: every token can be recomputed from it, so the control plane
checks a token by deriving the expected one and comparing in constant time (`is_same_token`).
Each purpose gives unrelated tokens, so the agent's inbound token cannot be used as its
heartbeat token or the other way round, and a token of one server is useless for another.

    agent_token      engine -> agent (the agent stores only its SHA-256: `token_sha256`)
    heartbeat_token  agent -> control plane (heartbeats and container events)
    phone-home       server -> control plane, once, when it has booted (below)

Every token made here is registered with engine.secrets, so it is masked in any output.

Phone-home tokens are minted when a server's user_data is rendered, and spent once:

    ph1.<expires, unix seconds>.<nonce>.<mac>
    mac = derive_token(fleet key, "phone-home", fleet, server, expires, nonce)

The token binds fleet, server and expiry under the fleet's secret key, so the control plane
checks it by recomputing the MAC (`is_genuine`) without trusting anything the request says.
The store keeps only its SHA-256 (the record `mint_phone_home_token` returns), with the fleet
and server it was minted for, when it expires and, once accepted, a fingerprint of the
accepting request (so an identical retry is answered again and anything else is refused).

The user_data a token is sent in is kept too (it must never change), but sealed: the MAC is
replaced by a placeholder no check accepts, and derived again from the key when the document
is sent (`PhoneHomeSeal`). Expiry and nonce stay, so the same token, and the same bytes, come
back; whoever reads the store holds nothing a phone-home would accept.

    ph1.1767225600.q1w2e3r4t5y6u7i8.MAC-NOT-STORED
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from engine.errors import EngineError
from engine.secrets import register_secret
from engine.state import PhoneHomeToken
from engine.state.files import private_dir, private_file

KEY_BYTES = 32
DOMAIN = "fleet-engine/v1"
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in names, so parts never run together
_KEY_TEXT = re.compile(r"^[0-9a-f]{64}$")
ID_BYTES = 6
_ID_TEXT = re.compile(r"^[0-9a-f]{12}$")


class TokenPurpose(StrEnum):
    AGENT = "agent"
    HEARTBEAT = "heartbeat"
    PHONE_HOME = "phone-home"


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


def _create_once(path: Path, text: str) -> bool:
    """Write `text` to `path` (0600) unless it exists; False when another process made it
    first (its content is kept). The file appears whole or not at all."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(partial, path)  # fails if another process made it first: keep theirs
    except FileExistsError:
        return False
    finally:
        partial.unlink()
    return True


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
    if not _create_once(path, key.hex()):
        return read_fleet_key(state_dir, fleet)
    return key


def api_key_secret_path(state_dir: Path) -> Path:
    """Where the control plane's API-key secret lives (the underscore keeps it apart from
    every fleet's key: fleet names are DNS labels)."""
    return state_dir / "keys" / "api_keys.key"


def ensure_api_key_secret(state_dir: Path) -> bytes:
    """The secret API keys are stored under (HMAC-SHA256), made like a fleet key on first use.

    Whoever reads the store without it cannot check a guess at a key offline; control planes
    sharing one store need the same file."""
    path = api_key_secret_path(state_dir)
    private_dir(state_dir, path.parent.name)
    if not path.exists():
        _create_once(path, secrets.token_bytes(KEY_BYTES).hex())
    private_file(path)
    try:
        text = path.read_bytes().decode("ascii", "replace").strip()
    except IsADirectoryError:
        raise _unusable_api_key_secret(path, "is a folder, not a file") from None
    except OSError as exc:
        raise _unusable_api_key_secret(path, f"cannot be read ({exc.strerror})") from None
    if not _KEY_TEXT.match(text):
        what = "is empty" if not text else "does not hold 64 hex digits"
        raise _unusable_api_key_secret(path, what)
    return bytes.fromhex(text)


def _unusable_api_key_secret(path: Path, what: str) -> EngineError:
    """Not a fleet key's message: this file locks no agent out, it checks the API keys."""
    return EngineError(
        f"{path}, the secret the control plane's API keys are checked with, {what}; restore "
        "it from your backup, or copy it from a control plane that shares this state store. "
        "Or remove it: the engine makes a new one, and every API key made so far stops "
        "working (revoke them, `engine apikey list` names them, and create new ones with "
        "`engine apikey create`)"
    )


def fleet_id_path(state_dir: Path, fleet: str) -> Path:
    """Where the fleet's id lives, beside its keys."""
    return state_dir / "keys" / f"{fleet}.id"


def find_fleet_id(state_dir: Path, fleet: str) -> str | None:
    """The fleet's id in this state directory, or None when it has none yet."""
    path = fleet_id_path(state_dir, fleet)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"cannot read the fleet id {path}: {exc}") from None
    if not _ID_TEXT.match(text):
        raise EngineError(
            f"{path} is not a fleet id (12 hex digits); restore it from your backup, or take "
            "the fleet's servers over with a new one (engine up --adopt)"
        )
    return text


def ensure_fleet_id(state_dir: Path, fleet: str) -> str:
    """The fleet's id, made on first use (exclusively: two engines starting at once agree)."""
    found = find_fleet_id(state_dir, fleet)
    if found is not None:
        return found
    path = fleet_id_path(state_dir, fleet)
    private_dir(state_dir, path.parent.name)
    made = secrets.token_hex(ID_BYTES)
    if not _create_once(path, made):
        return find_fleet_id(state_dir, fleet) or made
    return made


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
    """What is kept instead of a token (by the agent; by the store, of a phone-home token):
    its SHA-256, 64 lowercase hex digits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_same_token(expected: str, presented: str) -> bool:
    """Whether `presented` is `expected`, in time independent of where they differ."""
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


# --- phone-home tokens --------------------------------------------------------------------

_PHONE_HOME_PREFIX = "ph1"
_SHAPE = re.compile(r"ph1\.([0-9]{1,12})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})")
# Not 43 characters, so a sealed token fails the shape check before any MAC is compared.
_SEALED_MAC = "MAC-NOT-STORED"
# A token (or a sealed one) standing alone in a document, not part of a longer word.
_IN_TEXT = r"(?<![\w.-])ph1\.([0-9]{{1,12}})\.([A-Za-z0-9_-]{{16}})\.{mac}(?![\w-])"
_TOKEN_IN_TEXT = re.compile(_IN_TEXT.format(mac="[A-Za-z0-9_-]{43}"))
_SEALED_IN_TEXT = re.compile(_IN_TEXT.format(mac=re.escape(_SEALED_MAC)))


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedToken:
    raw: str
    expires: int
    nonce: str
    mac: str


def mint_phone_home_token(
    key: bytes,
    *,
    fleet: str,
    server: str,
    ttl_s: int,
    now: dt.datetime | None = None,
) -> tuple[str, PhoneHomeToken]:
    """A new one-time token for `server` of `fleet`, valid `ttl_s` seconds from `now`, and the
    record the store keeps of it (its hash, never the token): the caller stores the record.

    The token is registered as a secret, for the user_data renderer to embed.
    """
    minted_at = now or dt.datetime.now(dt.UTC)
    expires = int(minted_at.timestamp()) + ttl_s
    nonce = secrets.token_urlsafe(12)
    token = _phone_home_token(key, fleet, server, str(expires), nonce)
    record = PhoneHomeToken(
        token_hash=token_sha256(token),
        fleet=fleet,
        server=server,
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        created_at=minted_at,
    )
    return token, record


def _phone_home_token(key: bytes, fleet: str, server: str, expires: str, nonce: str) -> str:
    mac = derive_token(key, TokenPurpose.PHONE_HOME, fleet, server, expires, nonce)
    return register_secret(f"{_PHONE_HOME_PREFIX}.{expires}.{nonce}.{mac}")


def parse_token(raw: str) -> ParsedToken | None:
    """The parts of a well-formed phone-home token, or None."""
    match = _SHAPE.fullmatch(raw)
    if match is None:
        return None
    return ParsedToken(raw=raw, expires=int(match[1]), nonce=match[2], mac=match[3])


def is_genuine(key: bytes, token: ParsedToken, *, fleet: str, server: str) -> bool:
    """Whether `token` was minted with `key` for `server` of `fleet` (constant time)."""
    context = (str(token.expires), token.nonce)
    expected = expected_token(key, TokenPurpose.PHONE_HOME, fleet, server, *context)
    return is_same_token(expected, token.mac)


def seal_tokens(text: str) -> str:
    """`text` with the MAC of every phone-home token in it replaced by a placeholder."""
    return _TOKEN_IN_TEXT.sub(lambda m: f"{_PHONE_HOME_PREFIX}.{m[1]}.{m[2]}.{_SEALED_MAC}", text)


@dataclass(frozen=True, slots=True, kw_only=True)
class PhoneHomeSeal:
    """The engine.cloudinit.TokenSeal of the user_data of `server` of `fleet`: tokens sealed
    for the store, and unsealed with the fleet key when the document is sent."""

    key: bytes = field(repr=False)
    fleet: str
    server: str

    def conceal(self, text: str) -> str:
        return seal_tokens(text)

    def reveal(self, text: str) -> str:
        def unseal(match: re.Match[str]) -> str:
            return _phone_home_token(self.key, self.fleet, self.server, match[1], match[2])

        return _SEALED_IN_TEXT.sub(unseal, text)
