"""Phone-home tokens in tests: minted and stored as `engine up` does, and what one looks like
from the outside: the user_data the engine sends, and every token a reader of the state
store's files could lift and use."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from engine.cloudinit import UserDataStore, pinned_user_data
from engine.state.store import Store
from engine.tokens import (
    PhoneHomeSeal,
    is_genuine,
    mint_phone_home_token,
    parse_token,
    read_fleet_key,
)

# Anything shaped like a token, however mangled, so the check below decides, not this pattern.
_CANDIDATE = re.compile(rb"ph1\.[0-9]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def mint_stored(
    store: Store,
    key: bytes,
    *,
    fleet: str,
    server: str,
    ttl_s: int,
    now: dt.datetime | None = None,
) -> str:
    """A new phone-home token for `server` of `fleet`, its record kept in `store`."""
    token, record = mint_phone_home_token(key, fleet=fleet, server=server, ttl_s=ttl_s, now=now)
    store.phone_homes.add_token(record)
    return token


def sent_user_data(store: UserDataStore, state_dir: Path, fleet: str, server: str) -> str | None:
    """The user_data the engine sends for `server`: the kept one with its token unsealed."""
    seal = PhoneHomeSeal(key=read_fleet_key(state_dir, fleet), fleet=fleet, server=server)
    return pinned_user_data(store, fleet=fleet, server=server, seal=seal)


def store_files(database: Path) -> list[Path]:
    """The SQLite file and the companions SQLite keeps beside it (log, shared memory)."""
    names = (database.name + suffix for suffix in ("", "-wal", "-shm", "-journal"))
    return [database.with_name(name) for name in names if database.with_name(name).exists()]


def candidates(database: Path) -> set[str]:
    """Every token-shaped string in the store: in the raw bytes of its files (free pages and
    the write-ahead log included) and in every text value its tables hold (a value longer
    than a page is split across pages, so a byte scan alone could miss it)."""
    found = {m.decode() for path in store_files(database) for m in _scan(path.read_bytes())}
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        for (table,) in connection.execute(query).fetchall():
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, str):
                        found |= {m.decode() for m in _scan(value.encode())}
    finally:
        connection.close()
    return found


def _scan(data: bytes) -> Iterable[bytes]:
    return (match.group() for match in _CANDIDATE.finditer(data))


def usable_tokens(database: Path, state_dir: Path, servers: dict[str, list[str]]) -> list[str]:
    """The token-shaped strings in the store that the control plane's check would accept for
    one of `servers` (fleet -> server names): well-formed, with a MAC made by the fleet key."""
    usable = []
    for text in sorted(candidates(database)):
        token = parse_token(text)
        if token is None:
            continue
        for fleet, names in servers.items():
            key = read_fleet_key(state_dir, fleet)
            if any(is_genuine(key, token, fleet=fleet, server=name) for name in names):
                usable.append(text)
    return usable
