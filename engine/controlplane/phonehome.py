"""POST /v1/phone-home: who may claim to be which server, checked in this order.

1. The bearer token is well formed and its MAC verifies under the claimed fleet's key for
   the claimed server. A genuine token presented for another server or fleet is told apart
   (by its hash in the store) from a forged one: 403 rather than 401.
2. The store issued it (its hash is there), it is unspent, or spent by this very request
   (same token, instance id, host keys and addresses: a retry whose answer was lost, answered
   200 again without doing anything twice), and it has not expired.
3. The claimed instance id is the server's: the provider id the store recorded at creation,
   or, when the store has none yet, the one the provider's inventory lists for the server
   with the fleet's ownership labels (a cached, rate-limited read: engine.controlplane.lookup).
4. The request comes from one of the server's addresses (fleet setting verify_source_ip; off
   for servers behind NAT).
5. The store applies it atomically: token spent, addresses filled in where the provider gave
   none, host keys pinned, stage phoned_home, install job enqueued.

Checks 3 and 4 and the claim of the token run inside the store's transaction, against the
record as it is then. Phone-homes arriving together share that transaction (a group commit,
engine.controlplane.groupcommit), each with its own outcome: a refused one changes nothing
and gets its own error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from engine.controlplane.errors import ApiError
from engine.controlplane.groupcommit import GroupCommit
from engine.controlplane.keys import TimedCache
from engine.controlplane.lookup import InventoryLookup, InventoryUnavailable
from engine.controlplane.tokens import ParsedToken, is_genuine, parse_token, token_hash
from engine.inventory import ActualServer
from engine.state import (
    FleetSettings,
    NewJob,
    PhoneHomeAcceptance,
    PhoneHomeOutcome,
    ServerRecord,
)
from engine.state.store import Store
from engine.tokens import find_fleet_key

INSTALL_JOB = "install"
RETRY_SOON_S = 5
RETRY_LATER_S = 15


def install_job(fleet: str, server: str) -> NewJob:
    """The install job of a server that is ready for it; one live install per server."""
    return NewJob(kind=INSTALL_JOB, fleet=fleet, server=server, key=f"install/{fleet}/{server}")


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


class _Unvouched(ApiError):
    """The store has no provider id for the server: ask the provider's inventory."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "not_ready",
            "the provider inventory has not confirmed this instance yet",
            retry_after_s=RETRY_SOON_S,
        )


Claim = tuple[PhoneHomeAcceptance, Callable[[ServerRecord], ApiError | None]]


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
        self._committer: GroupCommit[Claim, PhoneHomeOutcome | ApiError] = GroupCommit(
            self._apply, name="phone-home"
        )

    def warm(self) -> None:
        """Load what the first phone-homes would otherwise wait for: the keys and settings
        of the fleets registered now, and the store's statements (an empty batch)."""
        for settings in self._store.fleets.all():
            self.keys.get(settings.name)
            self._fleets.get(settings.name)
        self._store.phone_homes.accept([])

    def _apply(self, claims: Sequence[Claim]) -> list[PhoneHomeOutcome | ApiError]:
        return self._store.phone_homes.accept(claims)

    def close(self) -> None:
        """Apply the phone-homes still queued, then stop the writer."""
        self._committer.close()

    async def handle(self, raw_token: str, body: Mapping[str, Any], source: str) -> Answer:
        """Accept a phone-home whose body passed the schema, or raise ApiError."""
        fleet, server = str(body["fleet"]), str(body["server"])
        token = await self._genuine_token(raw_token, fleet, server)
        digest = token_hash(token.raw)
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
        acceptance = PhoneHomeAcceptance(
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
        )
        check = partial(_check_claim, settings, instance_id, source, None)
        outcome = await self._committer.submit((acceptance, check))
        if isinstance(outcome, _Unvouched):
            listed = await run_in_threadpool(self._listed, settings, server)
            check = partial(_check_claim, settings, instance_id, source, listed)
            outcome = await self._committer.submit((acceptance, check))
        if isinstance(outcome, ApiError):
            raise outcome
        assert isinstance(outcome, PhoneHomeOutcome)
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
        minted = self._store.phone_homes.token(token_hash(raw))
        if minted is not None and minted.fleet != fleet:
            return ApiError(403, "token_wrong_fleet", "this token belongs to another fleet")
        if minted is not None and minted.server != server:
            return ApiError(403, "token_wrong_server", "this token belongs to another server")
        return ApiError(401, "token_invalid", "the bearer token does not verify")

    def _expired(self, digest: str, request_print: str, server: str) -> Answer:
        """An expired token is refused, unless this very request spent it in time."""
        minted = self._store.phone_homes.token(digest)
        if minted is not None and minted.spent_at and minted.fingerprint == request_print:
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


# What the store's refusals answer: status, code, message.
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
}


def _check_claim(
    settings: FleetSettings,
    instance_id: str,
    source: str,
    listed: ActualServer | None,
    record: ServerRecord,
) -> ApiError | None:
    """Whether the claimed instance id is the server's (the provider id the store recorded,
    else the one the inventory lists) and the request comes from one of its addresses."""
    known = _addresses(record.ipv4, record.ipv6, record.private_ips)
    if not record.provider_id:
        if listed is None:
            return _Unvouched()
        if listed.provider_id != instance_id:
            return ApiError(403, "instance_mismatch", "the instance id is not this server's")
        known |= _addresses(listed.ipv4, listed.ipv6, listed.private_ips)
    elif record.provider_id != instance_id:
        return ApiError(403, "instance_mismatch", "the instance id is not this server's")
    if settings.verify_source_ip:
        return _source_refusal(source, known, record.name)
    return None


def _addresses(ipv4: str | None, ipv6: str | None, private: tuple[str, ...]) -> set[str]:
    return {a for a in (ipv4, ipv6, *private) if a}


def _source_refusal(source: str, known: set[str], server: str) -> ApiError | None:
    if not known:
        return ApiError(
            503,
            "not_ready",
            f"the addresses of {server} are not known yet",
            retry_after_s=RETRY_SOON_S,
        )
    if not is_address_of(source, known):
        return ApiError(
            403,
            "source_address_mismatch",
            "the request does not come from one of the server's addresses (behind NAT? set "
            "control_plane.verify_source_ip: false)",
        )
    return None


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
