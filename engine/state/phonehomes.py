"""Phone-homes: the one-time tokens minted for servers (by their SHA-256 only), and the
transaction that applies verified phone-homes.

    store.phone_homes.add_token(PhoneHomeToken(token_hash=..., fleet=..., server=..., ...))
    outcomes = store.phone_homes.accept(claims)
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from engine.model import Stage
from engine.state import (
    HostKeySource,
    NewEvent,
    NewJob,
    PhoneHomeAcceptance,
    PhoneHomeOutcome,
    PhoneHomeToken,
    ServerRecord,
    schema,
)
from engine.state.database import Database, Repository, row_fields
from engine.state.events import Events
from engine.state.jobs import Jobs
from engine.state.servers import ServerKey, Servers

R = TypeVar("R")
# Stages after the phone-home: a late phone-home can only confirm what polling found.
_PAST_PHONE_HOME = frozenset({Stage.PHONED_HOME, Stage.INSTALLING, Stage.READY, Stage.UNHEALTHY})


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

    def accept(
        self, claims: Sequence[tuple[PhoneHomeAcceptance, Callable[[ServerRecord], R | None]]]
    ) -> list[PhoneHomeOutcome | R]:
        """Apply verified phone-homes in one transaction, each as if it came alone, in order:
        spend the token, record what the server said, move it to phoned_home and enqueue its
        install; or say why not. One outcome per claim, in the claims' order.

        Each claim carries a check of what the request says against the server's record as it
        is in this transaction (instance id, source address); what the check returns instead
        of None is that claim's outcome, and the claim changes nothing. Then: a token the
        store never issued is UNKNOWN_TOKEN; one spent by an identical request (same
        fingerprint) is REPLAYED and changes nothing, by another request SPENT. A server that
        polling already moved on keeps its stage: if polling pinned the same host keys they
        count as pinned by phone-home now (CONFIRMED); if not, only a conflict event is
        recorded (HOST_KEYS_DIFFER).

        The claimed tokens and the servers' rows are read with one query each (on PostgreSQL
        both are locked, tokens first, each in key order: concurrent control planes serialise
        on what they share, see each other's spends, and never deadlock) and written with one
        executemany per table, sent in one round trip: a phone-home costs a few rows, not a few
        transactions.
        """
        now = self._db.now()
        statements = _statements(self._db.is_postgresql)
        hashes = sorted({claim.token_hash for claim, _ in claims})
        outcomes: list[PhoneHomeOutcome | R] = []
        with self._write() as connection:
            servers = Servers(self._db, connection)
            tokens = {
                row.token_hash: _token(row)
                for row in connection.execute(statements.select, {"hashes": hashes})
            }
            read = servers.get_many_for_update({(claim.fleet, claim.server) for claim, _ in claims})
            records = dict(read)
            spent: dict[str, PhoneHomeToken] = {}
            changed: dict[ServerKey, ServerRecord] = {}
            events: list[NewEvent] = []
            jobs: list[NewJob] = []
            for claim, check in claims:
                key = (claim.fleet, claim.server)
                old = records.get(key)
                if old is None:
                    outcomes.append(PhoneHomeOutcome.UNKNOWN_SERVER)
                    continue
                objection = check(old)
                if objection is not None:
                    outcomes.append(objection)
                    continue
                token = tokens.get(claim.token_hash)
                refusal = _phone_home_refusal(claim, old, token)
                if refusal is not None:
                    if refusal is PhoneHomeOutcome.HOST_KEYS_DIFFER:
                        events.append(_host_keys_conflict_event(claim))
                    outcomes.append(refusal)
                    continue
                assert token is not None
                moved_on = old.stage in _PAST_PHONE_HOME
                records[key] = changed[key] = _phoned_home(old, claim, now)
                tokens[claim.token_hash] = spent[claim.token_hash] = replace(
                    token, spent_at=now, fingerprint=claim.fingerprint
                )
                events.append(_phoned_home_event(claim, moved_on=moved_on))
                if moved_on:
                    outcomes.append(PhoneHomeOutcome.CONFIRMED)
                    continue
                jobs.append(claim.install)
                outcomes.append(PhoneHomeOutcome.ACCEPTED)
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


def _phone_home_refusal(
    claim: PhoneHomeAcceptance, old: ServerRecord, token: PhoneHomeToken | None
) -> PhoneHomeOutcome | None:
    """Why the token or the server's stage refuses a checked claim; None if neither does."""
    if token is None or (token.fleet, token.server) != (claim.fleet, claim.server):
        return PhoneHomeOutcome.UNKNOWN_TOKEN
    if token.spent_at is not None:
        if token.fingerprint == claim.fingerprint:
            return PhoneHomeOutcome.REPLAYED
        return PhoneHomeOutcome.SPENT
    if old.stage is Stage.DELETING:
        return PhoneHomeOutcome.DELETING
    if old.stage in _PAST_PHONE_HOME and dict(old.host_keys) != dict(claim.host_keys):
        return PhoneHomeOutcome.HOST_KEYS_DIFFER
    return None


def _phoned_home(old: ServerRecord, claim: PhoneHomeAcceptance, now: dt.datetime) -> ServerRecord:
    """The record once the phone-home is applied: host keys pinned, addresses and id filled
    in where the record lacks them, stage phoned_home unless polling moved it on before."""
    ipv6 = old.ipv6
    if claim.ipv6 and (old.ipv6 is None or _is_network_of(old.ipv6, claim.ipv6)):
        ipv6 = claim.ipv6
    moved_on = old.stage in _PAST_PHONE_HOME
    return replace(
        old,
        provider_id=old.provider_id or claim.provider_id,
        ipv4=old.ipv4 if old.ipv4 is not None or not claim.ipv4 else claim.ipv4,
        ipv6=ipv6,
        private_ips=old.private_ips or claim.private_ips,
        host_keys=claim.host_keys,
        host_keys_source=str(HostKeySource.PHONE_HOME),
        cloud_init_finished_at=claim.cloud_init_finished_at,
        stage=old.stage if moved_on else Stage.PHONED_HOME,
        stage_reason=old.stage_reason if moved_on else "",
        updated_at=now,
    )


def _is_network_of(network: str, address: str) -> bool:
    """Whether `network` (e.g. Hetzner's `2001:db8:1::/64`) is a network holding `address`."""
    if "/" not in network:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def _phoned_home_event(claim: PhoneHomeAcceptance, *, moved_on: bool) -> NewEvent:
    message = (
        f"{claim.server} phoned home late; the host keys polling found are confirmed"
        if moved_on
        else f"{claim.server} phoned home; its host keys are pinned"
    )
    return _event(claim, "server.phoned_home", message, claim.event_data)


def _host_keys_conflict_event(claim: PhoneHomeAcceptance) -> NewEvent:
    return _event(
        claim,
        "server.host_keys_conflict",
        f"{claim.server} phoned home with host keys other than the ones polling pinned; "
        "refused. Check the server before trusting it",
        {"source": claim.source, "host_keys": dict(claim.host_keys)},
    )


def _event(
    claim: PhoneHomeAcceptance, kind: str, message: str, data: Mapping[str, Any]
) -> NewEvent:
    return NewEvent(fleet=claim.fleet, server=claim.server, kind=kind, message=message, data=data)


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
