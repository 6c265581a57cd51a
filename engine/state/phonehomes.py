"""Phone-homes: the one-time tokens minted for servers (by their SHA-256 only), and the
transaction that applies verified phone-homes.

    store.phone_homes.add_token(PhoneHomeToken(token_hash=..., fleet=..., server=..., ...))
    outcomes = store.phone_homes.accept(claims, decide_phone_home)

What a phone-home does is decided by the control plane's rules
(engine.controlplane.phonehome.decide_phone_home, a pure function); this module reads what
they decide on and writes what they decide, atomically.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from engine.state import (
    NewEvent,
    NewJob,
    PhoneHomeDecision,
    PhoneHomeOutcome,
    PhoneHomeToken,
    ServerRecord,
    schema,
)
from engine.state.database import Database, Repository, row_fields
from engine.state.events import Events
from engine.state.jobs import Jobs
from engine.state.servers import ServerKey, Servers


class Claim(Protocol):
    """What the store reads a phone-home claim by: the token it presents, the server it
    claims to be."""

    @property
    def token_hash(self) -> str: ...

    @property
    def fleet(self) -> str: ...

    @property
    def server(self) -> str: ...


C = TypeVar("C", bound=Claim)
# The rules: a claim, the server's record and the token's as they are in the transaction
# (None: the store has none), and the transaction's time -> what to do.
Rules = Callable[[C, ServerRecord | None, PhoneHomeToken | None, dt.datetime], PhoneHomeDecision]


class PhoneHomes(Repository):
    """The phone-home tokens, and the phone-homes applied with them."""

    def __init__(self, database: Database, connection: Connection | None = None) -> None:
        super().__init__(database, connection)
        self._tokens = schema.metadata().tables["phone_home_tokens"]

    def add_token(self, token: PhoneHomeToken) -> None:
        """Remember a minted token by its hash (the token itself is never stored)."""
        with self._write() as connection:
            connection.execute(
                insert(self._tokens).values(
                    token_hash=token.token_hash,
                    fleet=token.fleet,
                    server=token.server,
                    expires_at=token.expires_at,
                    created_at=token.created_at,
                    spent_at=token.spent_at,
                    fingerprint=token.fingerprint,
                )
            )

    def token(self, token_hash: str) -> PhoneHomeToken | None:
        """The token with this SHA-256, or None."""
        with self._read() as connection:
            row = connection.execute(
                select(self._tokens).where(self._tokens.c.token_hash == token_hash)
            ).first()
        return None if row is None else _token(row)

    def accept(self, claims: Sequence[C], decide: Rules[C]) -> list[PhoneHomeOutcome]:
        """Apply phone-homes in one transaction, each as if it came alone, in order: what
        `decide` makes of each claim, given the server's record and the token's as they are
        then (after the claims before it), is written. One outcome per claim, in order.

        The claimed tokens and the servers' rows are read with one query each (on PostgreSQL
        both are locked, tokens first, each in key order: concurrent control planes serialise
        on what they share, see each other's spends, and never deadlock) and written with one
        executemany per table, sent in one round trip: a phone-home costs a few rows, not a few
        transactions.
        """
        now = self._db.now()
        statements = _statements(self._db.is_postgresql)
        hashes = sorted({claim.token_hash for claim in claims})
        outcomes: list[PhoneHomeOutcome] = []
        with self._write() as connection:
            servers = Servers(self._db, connection)
            tokens = {
                row.token_hash: _token(row)
                for row in connection.execute(statements.select, {"hashes": hashes})
            }
            read = servers.get_many_for_update({(claim.fleet, claim.server) for claim in claims})
            records = dict(read)
            spent: dict[str, PhoneHomeToken] = {}
            changed: dict[ServerKey, ServerRecord] = {}
            events: list[NewEvent] = []
            jobs: list[NewJob] = []
            for claim in claims:
                key = (claim.fleet, claim.server)
                decision = decide(claim, records.get(key), tokens.get(claim.token_hash), now)
                outcomes.append(decision.outcome)
                if decision.server is not None:
                    records[key] = changed[key] = decision.server
                if decision.token is not None:
                    tokens[claim.token_hash] = spent[claim.token_hash] = decision.token
                events.extend(decision.events)
                jobs.extend(decision.jobs)
            with self._db.pipelined(connection):
                if spent:
                    connection.execute(
                        statements.spend,
                        [
                            {
                                "b_hash": token.token_hash,
                                "spent_at": token.spent_at,
                                "fingerprint": token.fingerprint,
                            }
                            for token in spent.values()
                        ],
                    )
                servers.update_many((read[key], record) for key, record in changed.items())
                Events(self._db, connection).record_many(events, now)
                Jobs(self._db, connection).enqueue_many(jobs, now)
        return outcomes

    def forget_fleet(self, fleet: str) -> None:
        """Drop every token minted for a server of `fleet`."""
        with self._write() as connection:
            connection.execute(delete(self._tokens).where(self._tokens.c.fleet == fleet))


def _token(row: Row[Any]) -> PhoneHomeToken:
    return PhoneHomeToken(**row_fields(row, PhoneHomeToken))


@dataclass(frozen=True, slots=True)
class _Statements:
    select: Any
    spend: Any


@functools.cache
def _statements(postgresql: bool) -> _Statements:
    """The statements of accept, built once (building one costs about as much as running it)."""
    tokens = schema.metadata().tables["phone_home_tokens"]
    query = (
        select(tokens)
        .where(tokens.c.token_hash.in_(bindparam("hashes", expanding=True)))
        .order_by(tokens.c.token_hash)
    )
    return _Statements(
        select=query.with_for_update() if postgresql else query,
        spend=update(tokens)
        .where(tokens.c.token_hash == bindparam("b_hash"), tokens.c.spent_at.is_(None))
        .values(spent_at=bindparam("spent_at"), fingerprint=bindparam("fingerprint")),
    )
