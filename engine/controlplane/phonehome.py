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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.controlplane.errors import ApiError
from engine.controlplane.keys import TimedCache, fleet_key
from engine.controlplane.lookup import InventoryLookup, InventoryUnavailable
from engine.controlplane.tokens import ParsedToken, is_genuine, parse_token, token_hash
from engine.state import (
    FleetSettings,
    NewJob,
    PhoneHomeAcceptance,
    PhoneHomeOutcome,
    ServerRecord,
)
from engine.state.store import Store

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


class PhoneHomeService:
    """Checks and applies phone-homes. `handle` blocks (store, inventory): run it in a thread."""

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
        self.keys = TimedCache(lambda fleet: fleet_key(state_dir, fleet, create=False), 5.0)
        self._fleets = TimedCache(store.fleet, 5.0)

    def handle(self, raw_token: str, body: Mapping[str, Any], source: str) -> Answer:
        """Accept a phone-home whose body passed the schema, or raise ApiError."""
        fleet, server = str(body["fleet"]), str(body["server"])
        token = self._genuine_token(raw_token, fleet, server)
        digest = token_hash(token.raw)
        request_print = fingerprint(body)
        # The expiry is bound by the MAC, so it needs no lookup; whether the store issued the
        # token and whether it was spent is settled when it is claimed, in one write.
        if self._clock().timestamp() > token.expires:
            minted = self._store.phone_home_token(digest)
            if minted is not None and minted.spent_at and minted.fingerprint == request_print:
                return Answer(outcome=PhoneHomeOutcome.REPLAYED, server=server)
            raise ApiError(401, "token_expired", "this one-time token has expired")
        settings: FleetSettings | None = self._fleets.get(fleet)
        record = self._store.server(fleet, server)
        if settings is None or record is None:
            raise ApiError(
                503,
                "not_ready",
                f"{server} is not registered with the control plane yet",
                retry_after_s=RETRY_SOON_S,
            )
        known = self._check_instance(settings, record, str(body["instance_id"]))
        if settings.verify_source_ip:
            _check_source(source, known, server)
        addresses = body["addresses"]
        acceptance = PhoneHomeAcceptance(
            token_hash=digest,
            fingerprint=request_print,
            fleet=fleet,
            server=server,
            provider_id=str(body["instance_id"]),
            ipv4=_first(addresses["public_ipv4"]),
            ipv6=_first(addresses["public_ipv6"]),
            private_ips=tuple(addresses["private"]),
            host_keys=tuple(sorted(body["host_keys"].items())),
            cloud_init_finished_at=_timestamp(body["boot"]["cloud_init_finished_at"]),
            event_data={
                "source": source,
                "instance_id": body["instance_id"],
                "attempt": body["attempt"],
                "boot": body["boot"],
                "cloud_init": body["cloud_init"],
            },
            install=install_job(fleet, server),
        )
        outcome = self._store.accept_phone_home(acceptance)
        if outcome is PhoneHomeOutcome.UNKNOWN_TOKEN:
            raise ApiError(401, "token_invalid", "this token was not issued by this control plane")
        if outcome is PhoneHomeOutcome.SPENT:
            raise ApiError(409, "token_spent", "this one-time token has been used already")
        if outcome is PhoneHomeOutcome.HOST_KEYS_DIFFER:
            self._store.record_event(
                fleet,
                "server.host_keys_conflict",
                f"{server} phoned home with host keys other than the ones polling pinned; "
                "refused. Check the server before trusting it",
                server=server,
                data={"source": source, "host_keys": dict(body["host_keys"])},
            )
            raise ApiError(
                409,
                "host_keys_conflict",
                "the host keys differ from the ones already pinned for this server",
            )
        if outcome is PhoneHomeOutcome.DELETING:
            raise ApiError(409, "server_deleting", f"{server} is being deleted")
        if outcome is PhoneHomeOutcome.UNKNOWN_SERVER:
            raise ApiError(
                503, "not_ready", f"{server} is not registered yet", retry_after_s=RETRY_SOON_S
            )
        return Answer(outcome=outcome, server=server)

    def _genuine_token(self, raw: str, fleet: str, server: str) -> ParsedToken:
        token = parse_token(raw)
        if token is None:
            raise ApiError(401, "token_invalid", "the bearer token is not a phone-home token")
        key: bytes | None = self.keys.get(fleet)
        if key is not None and is_genuine(key, token, fleet=fleet, server=server):
            return token
        minted = self._store.phone_home_token(token_hash(raw))
        if minted is not None and minted.fleet != fleet:
            raise ApiError(403, "token_wrong_fleet", "this token belongs to another fleet")
        if minted is not None and minted.server != server:
            raise ApiError(403, "token_wrong_server", "this token belongs to another server")
        raise ApiError(401, "token_invalid", "the bearer token does not verify")

    def _check_instance(
        self, settings: FleetSettings, record: ServerRecord, instance_id: str
    ) -> set[str]:
        """Check the claimed instance id; return the server's addresses the provider knows."""
        known = _addresses(record.ipv4, record.ipv6, record.private_ips)
        if record.provider_id:
            if record.provider_id != instance_id:
                raise ApiError(403, "instance_mismatch", "the instance id is not this server's")
            return known
        try:
            listed = self._lookup.find(settings, record.name)
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
        if listed.provider_id != instance_id:
            raise ApiError(403, "instance_mismatch", "the instance id is not this server's")
        return known | _addresses(listed.ipv4, listed.ipv6, listed.private_ips)


def _addresses(ipv4: str | None, ipv6: str | None, private: tuple[str, ...]) -> set[str]:
    return {a for a in (ipv4, ipv6, *private) if a}


def _check_source(source: str, known: set[str], server: str) -> None:
    if not known:
        raise ApiError(
            503,
            "not_ready",
            f"the addresses of {server} are not known yet",
            retry_after_s=RETRY_SOON_S,
        )
    if not is_address_of(source, known):
        raise ApiError(
            403,
            "source_address_mismatch",
            "the request does not come from one of the server's addresses (behind NAT? set "
            "control_plane.verify_source_ip: false)",
        )


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
