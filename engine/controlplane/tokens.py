"""One-time phone-home tokens: minted when a server's user_data is rendered, spent once.

    ph1.<expires, unix seconds>.<nonce>.<mac>
    mac = derive_token(fleet key, "phone-home", fleet, server, expires, nonce)

The token binds fleet, server and expiry under the fleet's secret key, so the control plane
checks it by recomputing the MAC (constant-time comparison) without trusting anything the
request says. The store keeps only its SHA-256, with the fleet and server it was minted for,
when it expires and, once accepted, a fingerprint of the accepting request (so an identical
retry is answered again and anything else is refused).

The user_data a token is sent in is kept too (it must never change), but sealed: the MAC is
replaced by a placeholder no check accepts, and derived again from the key when the document
is sent (`PhoneHomeSeal`). Expiry and nonce stay, so the same token, and the same bytes, come
back; whoever reads the store holds nothing a phone-home would accept.

    ph1.1767225600.q1w2e3r4t5y6u7i8.MAC-NOT-STORED
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass, field

from engine.secrets import register_secret
from engine.state import PhoneHomeToken
from engine.state.store import Store
from engine.tokens import derive_token, expected_token, is_same_token

PURPOSE = "phone-home"
_PREFIX = "ph1"
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
    store: Store,
    key: bytes,
    *,
    fleet: str,
    server: str,
    ttl_s: int,
    now: dt.datetime | None = None,
) -> str:
    """A new one-time token for `server` of `fleet`, valid `ttl_s` seconds from `now`.

    Its hash is recorded in `store`; the token itself is returned (registered as a secret)
    for the user_data renderer to embed, and is never stored.
    """
    minted_at = now or dt.datetime.now(dt.UTC)
    expires = int(minted_at.timestamp()) + ttl_s
    nonce = secrets.token_urlsafe(12)
    mac = derive_token(key, PURPOSE, fleet, server, str(expires), nonce)
    token = register_secret(f"{_PREFIX}.{expires}.{nonce}.{mac}")
    store.phone_homes.add_token(
        PhoneHomeToken(
            token_hash=token_hash(token),
            fleet=fleet,
            server=server,
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
            created_at=minted_at,
        )
    )
    return token


def parse_token(raw: str) -> ParsedToken | None:
    """The parts of a well-formed token, or None."""
    match = _SHAPE.fullmatch(raw)
    if match is None:
        return None
    return ParsedToken(raw=raw, expires=int(match[1]), nonce=match[2], mac=match[3])


def is_genuine(key: bytes, token: ParsedToken, *, fleet: str, server: str) -> bool:
    """Whether `token` was minted with `key` for `server` of `fleet` (constant time)."""
    expected = expected_token(key, PURPOSE, fleet, server, str(token.expires), token.nonce)
    return is_same_token(expected, token.mac)


def seal_tokens(text: str) -> str:
    """`text` with the MAC of every phone-home token in it replaced by a placeholder."""
    return _TOKEN_IN_TEXT.sub(lambda m: f"{_PREFIX}.{m[1]}.{m[2]}.{_SEALED_MAC}", text)


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
            expires, nonce = match[1], match[2]
            mac = derive_token(self.key, PURPOSE, self.fleet, self.server, expires, nonce)
            return register_secret(f"{_PREFIX}.{expires}.{nonce}.{mac}")

        return _SEALED_IN_TEXT.sub(unseal, text)


def token_hash(raw: str) -> str:
    """What the store keeps of a token: its SHA-256 in hex."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()
