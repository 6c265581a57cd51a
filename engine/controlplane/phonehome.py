"""POST /v1/phone-home: who may claim to be which server, checked in this order.

1. The bearer token is well formed and its MAC verifies under the claimed fleet's key for
   the claimed server. A genuine token presented for another server or fleet is told apart
   (by its hash in the store) from a forged one: 403 rather than 401. It has not expired
   (the expiry is bound by the MAC), unless this very request spent it in time.
2. The store has a record of the server (it is registered), and the claimed instance id is
   the server's: the provider id the store recorded at creation, or, when the store has
   none yet, the one the provider's inventory lists for the server with the fleet's
   ownership labels (a cached, rate-limited read: engine.controlplane.lookup).
3. The request comes from one of the server's addresses (fleet setting verify_source_ip; off
   for servers behind NAT).
4. The store issued the token for this server (its hash is there), and it is unspent, or
   spent by this very request (same token, instance id, host keys and addresses: a retry
   whose answer was lost, answered 200 again without doing anything twice).
5. The server is not being deleted; if polling reached it first, it pinned these very host
   keys (then the phone-home confirms them and the server keeps its stage).
6. The store applies it atomically: token spent, addresses filled in where the provider gave
   none, host keys pinned, stage phoned_home, install job enqueued.

Checks 2 to 5 and what step 6 writes are one pure function, `decide_phone_home`, that the
store's transaction calls with the server's record and the token's as they are then
(engine.state.phonehomes). Phone-homes arriving together share that transaction (a group
commit, engine.controlplane.groupcommit), each with its own outcome: a refused one changes
nothing and gets its own error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from engine.controlplane.errors import ApiError
from engine.controlplane.groupcommit import GroupCommit
from engine.controlplane.keys import TimedCache
from engine.controlplane.lookup import InventoryLookup, InventoryUnavailable
from engine.model import Labels, Stage
from engine.providers import ActualServer
from engine.state import (
    FleetSettings,
    HostKeySource,
    NewEvent,
    NewJob,
    PhoneHomeDecision,
    PhoneHomeOutcome,
    PhoneHomeToken,
    ServerRecord,
)
from engine.state.store import Store
from engine.tokens import ParsedToken, find_fleet_key, is_genuine, parse_token, token_sha256

INSTALL_JOB = "install"
# Tries of one install job: one more after a failure, for what passes (a mirror's hiccup).
# What does not pass is for `engine up`'s own tries, which look at the server again first.
INSTALL_ATTEMPTS = 2
RETRY_SOON_S = 5
RETRY_LATER_S = 15


def install_job(fleet: str, server: str) -> NewJob:
    """The install job of a server that is ready for it; one live install per server."""
    return NewJob(
        kind=INSTALL_JOB,
        fleet=fleet,
        server=server,
        key=f"install/{fleet}/{server}",
        max_attempts=INSTALL_ATTEMPTS,
    )


def fingerprint(body: Mapping[str, Any]) -> str:
    """What makes two phone-homes the same request: instance id, host keys and addresses
    (a retry differs only in `attempt` and `boot.sent_at`)."""
    essence = {
        "instance_id": body["instance_id"],
        "host_keys": body["host_keys"],
        "addresses": body["addresses"],
    }
    canonical = json.dumps(essence, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    outcome: PhoneHomeOutcome
    server: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PhoneHomeClaim:
    """A phone-home whose token and body passed their checks (step 1), for
    `decide_phone_home` to judge against the server's record and the token's.

    Addresses fill in only what the record lacks; `provider_id` (the claimed instance id)
    too. `install` is the job enqueued when the server moves on. `source` is the address the
    request came from, `verify_source_ip` the fleet's setting, and `listed` the server as the
    provider's inventory lists it, once asked (None: not asked).
    """

    token_hash: str
    fingerprint: str
    fleet: str
    server: str
    source: str
    provider_id: str
    ipv4: str | None
    ipv6: str | None
    private_ips: tuple[str, ...]
    host_keys: Labels
    cloud_init_finished_at: dt.datetime | None
    event_data: Mapping[str, Any]
    install: NewJob
    verify_source_ip: bool
    listed: ActualServer | None = None


class PhoneHomeService:
    """Checks phone-homes and applies them through one group-committing writer.

    `handle` runs on the event loop: what it checks there costs microseconds (the token's
    MAC, the cached fleet settings); the store's part goes to the writer, and the rare slow
    paths (forged or expired tokens, the provider's inventory) to threads. Close it when done.
    """

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        lookup: InventoryLookup,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._lookup = lookup
        self._clock = clock
        self.keys = TimedCache(lambda fleet: find_fleet_key(state_dir, fleet), 5.0)
        self._fleets = TimedCache(store.fleets.get, 5.0)
        # Loads under way on the event loop, by (cache, name).
        self._first_loads: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._committer: GroupCommit[PhoneHomeClaim, PhoneHomeOutcome] = GroupCommit(
            self._apply, name="phone-home"
        )

    def warm(self) -> None:
        """Load what the first phone-homes would otherwise wait for: the keys and settings
        of the fleets registered now, and the store's statements (an empty batch)."""
        for settings in self._store.fleets.all():
            self.keys.get(settings.name)
            self._fleets.get(settings.name)
        self._store.phone_homes.accept([], decide_phone_home)

    def _apply(self, claims: Sequence[PhoneHomeClaim]) -> list[PhoneHomeOutcome]:
        return self._store.phone_homes.accept(claims, decide_phone_home)

    def close(self) -> None:
        """Apply the phone-homes still queued, then stop the writer."""
        self._committer.close()

    async def handle(self, raw_token: str, body: Mapping[str, Any], source: str) -> Answer:
        """Accept a phone-home whose body passed the schema, or raise ApiError."""
        fleet, server = str(body["fleet"]), str(body["server"])
        token = await self._genuine_token(raw_token, fleet, server)
        digest = token_sha256(token.raw)
        request_print = fingerprint(body)
        # The expiry is bound by the MAC, so it needs no lookup; whether the store issued the
        # token and whether it was spent is settled when it is claimed, in one write.
        if self._clock().timestamp() > token.expires:
            return await run_in_threadpool(self._expired, digest, request_print, server)
        settings: FleetSettings | None = await self._cached(self._fleets, fleet)
        if settings is None:
            raise ApiError(
                503,
                "not_ready",
                f"{server} is not registered with the control plane yet",
                retry_after_s=RETRY_SOON_S,
            )
        instance_id = str(body["instance_id"])
        addresses = body["addresses"]
        claim = PhoneHomeClaim(
            token_hash=digest,
            fingerprint=request_print,
            fleet=fleet,
            server=server,
            source=source,
            provider_id=instance_id,
            ipv4=_first(addresses["public_ipv4"]),
            ipv6=_first(addresses["public_ipv6"]),
            private_ips=tuple(addresses["private"]),
            host_keys=tuple(sorted(body["host_keys"].items())),
            cloud_init_finished_at=_timestamp(body["boot"]["cloud_init_finished_at"]),
            event_data={
                "source": source,
                "instance_id": instance_id,
                "attempt": body["attempt"],
                "boot": body["boot"],
                "cloud_init": body["cloud_init"],
            },
            install=install_job(fleet, server),
            verify_source_ip=settings.verify_source_ip,
        )
        outcome = await self._committer.submit(claim)
        if outcome is PhoneHomeOutcome.INSTANCE_UNCONFIRMED:
            listed = await run_in_threadpool(self._listed, settings, server)
            outcome = await self._committer.submit(replace(claim, listed=listed))
        refusal = _REFUSALS.get(outcome)
        if refusal is not None:
            status, code, message = refusal
            raise ApiError(
                status,
                code,
                message.format(server=server),
                retry_after_s=RETRY_SOON_S if status == 503 else None,
            )
        return Answer(outcome=outcome, server=server)

    async def _genuine_token(self, raw: str, fleet: str, server: str) -> ParsedToken:
        token = parse_token(raw)
        if token is None:
            raise ApiError(401, "token_invalid", "the bearer token is not a phone-home token")
        key: bytes | None = await self._cached(self.keys, fleet)
        if key is not None and is_genuine(key, token, fleet=fleet, server=server):
            return token
        raise await run_in_threadpool(self._why_not_genuine, raw, fleet, server)

    async def _cached(self, cache: TimedCache[Any], name: str) -> Any:
        """What `cache` holds for `name`. The first load (a file or the store) runs in a
        thread, once however many requests want it, so the event loop never waits for it
        and a fleet's first burst of phone-homes does not load it once each."""
        held, value = cache.held(name)
        if held:
            return value
        key = (id(cache), name)
        loading = self._first_loads.get(key)
        if loading is None:
            loading = asyncio.ensure_future(run_in_threadpool(cache.get, name))
            self._first_loads[key] = loading
            loading.add_done_callback(lambda _done: self._first_loads.pop(key, None))
        return await asyncio.shield(loading)

    def _why_not_genuine(self, raw: str, fleet: str, server: str) -> ApiError:
        """A genuine token for another server or fleet is told apart from a forged one."""
        minted = self._store.phone_homes.token(token_sha256(raw))
        if minted is not None and minted.fleet != fleet:
            return ApiError(403, "token_wrong_fleet", "this token belongs to another fleet")
        if minted is not None and minted.server != server:
            return ApiError(403, "token_wrong_server", "this token belongs to another server")
        return ApiError(401, "token_invalid", "the bearer token does not verify")

    def _expired(self, digest: str, request_print: str, server: str) -> Answer:
        """An expired token is refused, unless this very request spent it in time."""
        minted = self._store.phone_homes.token(digest)
        if minted is not None and _is_spent_by(minted, request_print):
            return Answer(outcome=PhoneHomeOutcome.REPLAYED, server=server)
        raise ApiError(401, "token_expired", "this one-time token has expired")

    def _listed(self, settings: FleetSettings, server: str) -> ActualServer:
        """The server as the provider's inventory lists it, or ApiError 503."""
        try:
            listed = self._lookup.find(settings, server)
        except InventoryUnavailable:
            raise ApiError(
                503,
                "not_ready",
                "the provider inventory cannot confirm this instance now",
                retry_after_s=RETRY_LATER_S,
            ) from None
        if listed is None:
            raise ApiError(
                503,
                "not_ready",
                "the provider does not list this server yet",
                retry_after_s=RETRY_SOON_S,
            )
        return listed


# What the refusals answer: status, code, message.
_REFUSALS: dict[PhoneHomeOutcome, tuple[int, str, str]] = {
    PhoneHomeOutcome.UNKNOWN_TOKEN: (
        401,
        "token_invalid",
        "this token was not issued by this control plane",
    ),
    PhoneHomeOutcome.SPENT: (409, "token_spent", "this one-time token has been used already"),
    PhoneHomeOutcome.HOST_KEYS_DIFFER: (
        409,
        "host_keys_conflict",
        "the host keys differ from the ones already pinned for this server",
    ),
    PhoneHomeOutcome.DELETING: (409, "server_deleting", "{server} is being deleted"),
    PhoneHomeOutcome.UNKNOWN_SERVER: (503, "not_ready", "{server} is not registered yet"),
    PhoneHomeOutcome.INSTANCE_UNCONFIRMED: (
        503,
        "not_ready",
        "the provider inventory has not confirmed this instance yet",
    ),
    PhoneHomeOutcome.INSTANCE_MISMATCH: (
        403,
        "instance_mismatch",
        "the instance id is not this server's",
    ),
    PhoneHomeOutcome.ADDRESSES_UNKNOWN: (
        503,
        "not_ready",
        "the addresses of {server} are not known yet",
    ),
    PhoneHomeOutcome.SOURCE_MISMATCH: (
        403,
        "source_address_mismatch",
        "the request does not come from one of the server's addresses (behind NAT? set "
        "control_plane.verify_source_ip: false)",
    ),
}
# Stages after the phone-home: a late phone-home can only confirm what polling found.
_PAST_PHONE_HOME = frozenset({Stage.PHONED_HOME, Stage.INSTALLING, Stage.READY, Stage.UNHEALTHY})


def decide_phone_home(
    claim: PhoneHomeClaim,
    record: ServerRecord | None,
    token: PhoneHomeToken | None,
    now: dt.datetime,
) -> PhoneHomeDecision:
    """What a phone-home does, given the server's record and its token's as the store holds
    them (None: it holds none): checks 2 to 5 of this module, in order, and what step 6
    writes, stamped `now`. Pure: the store's transaction calls it (engine.state.phonehomes).

    A booting server's first phone-home with its unspent token is ACCEPTED: the record as it
    becomes (phoned_home, host keys pinned), the token spent, a server.phoned_home event and
    the install job. A refusal writes nothing but, for HOST_KEYS_DIFFER, a conflict event.
    """
    if record is None:
        return PhoneHomeDecision(outcome=PhoneHomeOutcome.UNKNOWN_SERVER)
    objection = _objection(claim, record)
    if objection is not None:
        return PhoneHomeDecision(outcome=objection)
    if token is None or (token.fleet, token.server) != (claim.fleet, claim.server):
        return PhoneHomeDecision(outcome=PhoneHomeOutcome.UNKNOWN_TOKEN)
    if token.spent_at is not None:
        if _is_spent_by(token, claim.fingerprint):
            return PhoneHomeDecision(outcome=PhoneHomeOutcome.REPLAYED)
        return PhoneHomeDecision(outcome=PhoneHomeOutcome.SPENT)
    if record.stage is Stage.DELETING:
        return PhoneHomeDecision(outcome=PhoneHomeOutcome.DELETING)
    moved_on = record.stage in _PAST_PHONE_HOME
    if moved_on and dict(record.host_keys) != dict(claim.host_keys):
        conflict = _event(
            claim,
            "server.host_keys_conflict",
            f"{claim.server} phoned home with host keys other than the ones polling pinned; "
            "refused. Check the server before trusting it",
            {"source": claim.source, "host_keys": dict(claim.host_keys)},
        )
        return PhoneHomeDecision(outcome=PhoneHomeOutcome.HOST_KEYS_DIFFER, events=(conflict,))
    phoned = _phoned_home(record, claim, now)
    spent = replace(token, spent_at=now, fingerprint=claim.fingerprint)
    if moved_on:
        late = f"{claim.server} phoned home late; the host keys polling found are confirmed"
        return PhoneHomeDecision(
            outcome=PhoneHomeOutcome.CONFIRMED,
            server=phoned,
            token=spent,
            events=(_event(claim, "server.phoned_home", late, claim.event_data),),
        )
    pinned = f"{claim.server} phoned home; its host keys are pinned"
    return PhoneHomeDecision(
        outcome=PhoneHomeOutcome.ACCEPTED,
        server=phoned,
        token=spent,
        events=(_event(claim, "server.phoned_home", pinned, claim.event_data),),
        jobs=(claim.install,),
    )


def _is_spent_by(token: PhoneHomeToken, fingerprint: str) -> bool:
    """Whether the token was spent by a request with this fingerprint (a retry of it)."""
    return token.spent_at is not None and token.fingerprint == fingerprint


def _objection(claim: PhoneHomeClaim, record: ServerRecord) -> PhoneHomeOutcome | None:
    """Whether the claimed instance id is the server's (the provider id the store recorded,
    else the one the inventory lists) and the request comes from one of its addresses."""
    known = _addresses(record.ipv4, record.ipv6, record.private_ips)
    listed = claim.listed
    if not record.provider_id:
        if listed is None:
            return PhoneHomeOutcome.INSTANCE_UNCONFIRMED
        if listed.provider_id != claim.provider_id:
            return PhoneHomeOutcome.INSTANCE_MISMATCH
        known |= _addresses(listed.ipv4, listed.ipv6, listed.private_ips)
    elif record.provider_id != claim.provider_id:
        return PhoneHomeOutcome.INSTANCE_MISMATCH
    if not claim.verify_source_ip:
        return None
    if not known:
        return PhoneHomeOutcome.ADDRESSES_UNKNOWN
    if not is_address_of(claim.source, known):
        return PhoneHomeOutcome.SOURCE_MISMATCH
    return None


def _phoned_home(old: ServerRecord, claim: PhoneHomeClaim, now: dt.datetime) -> ServerRecord:
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


def _event(claim: PhoneHomeClaim, kind: str, message: str, data: Mapping[str, Any]) -> NewEvent:
    return NewEvent(
        fleet=claim.fleet, server=claim.server, kind=kind, message=message, data=dict(data)
    )


def _is_network_of(network: str, address: str) -> bool:
    """Whether `network` (e.g. Hetzner's `2001:db8:1::/64`) is a network holding `address`."""
    if "/" not in network:
        return False
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def _addresses(ipv4: str | None, ipv6: str | None, private: tuple[str, ...]) -> set[str]:
    return {a for a in (ipv4, ipv6, *private) if a}


def is_address_of(source: str, known: set[str]) -> bool:
    """Whether `source` is one of `known` addresses or inside one of its networks (Hetzner
    gives a server a whole IPv6 /64)."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in known:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def _timestamp(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
