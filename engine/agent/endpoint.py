"""How the engine reaches the agent of one server.

An endpoint is an address, a port, the SHA-256 fingerprint of the agent's certificate (pinned:
read over SSH at install, or from the agent's first heartbeat) and the bearer token derived
from the fleet's key. `resolve_endpoint` is the one place that finds them for a server; it is
the seam to the state store (see its docstring).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError
from engine.model import Fleet
from engine.state import AgentReport, ServerRecord
from engine.tokens import agent_token, find_fleet_key, read_fleet_key

if TYPE_CHECKING:
    from engine.state.store import Store

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentEndpoint:
    server: str
    address: str
    port: int
    fingerprint: str
    token: str = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"

    def where(self) -> str:
        """`web-1 at 10.0.0.5:7567`, for messages."""
        return f"{self.server} at {self.url.removeprefix('https://')}"


def fingerprint_of(cert_pem: str) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as the agent reports it (64 hex digits)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(cert_pem)
    except ValueError as exc:
        raise EngineError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """64 lowercase hex digits from the usual spellings of a SHA-256 fingerprint.

    >>> normalise_fingerprint("sha256 Fingerprint=AB:" + "00:" * 30 + "CD")
    'ab000000000000000000000000000000000000000000000000000000000000cd'
    """
    value = text.strip().lower()
    value = re.sub(r"^(sha256\s*fingerprint\s*=|sha256:)", "", value).replace(":", "")
    if not _HEX64.match(value):
        raise EngineError(
            "a certificate fingerprint is the SHA-256 of the certificate: 64 hex digits "
            "(colons allowed), e.g. from `openssl x509 -in cert.pem -noout -fingerprint -sha256`"
        )
    return value


def parse_address(text: str, *, default_port: int) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `IPv6` or `[IPv6]:PORT` -> (host, port)."""
    text = text.strip()
    host, port = text, default_port
    bracketed = re.match(r"^\[([^\]]+)\](?::(\d+))?$", text)
    if bracketed:
        host, port = bracketed.group(1), int(bracketed.group(2) or default_port)
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        if not digits.isdigit():
            raise EngineError(f"{text!r}: the port after ':' must be a number")
        port = int(digits)
    if not host or not 0 < port < 65536 or (":" in host and not _is_ipv6(host)):
        raise EngineError(f"{text!r} is not an address; use HOST, HOST:PORT or [IPv6]:PORT")
    return host, port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def recorded_endpoints(
    state_dir: Path, fleet: Fleet, state: str | None = None
) -> dict[str, AgentEndpoint]:
    """How to reach each agent of `fleet` that has reported, as the state store knows it:
    the address the install reached the server at, and the certificate fingerprint the
    agent sent in its heartbeats (authenticated by its heartbeat token, so only the real
    agent can pin it). Servers without a heartbeat are left out."""
    from engine.state.store import open_store, state_url, store_exists

    url = state_url(state_dir, state)
    if not store_exists(url):
        return {}
    with open_store(url) as store:
        return stored_endpoints(state_dir, fleet, store)


def stored_endpoints(
    state_dir: Path,
    fleet: Fleet,
    store: Store,
    records: Sequence[ServerRecord] | None = None,
) -> dict[str, AgentEndpoint]:
    """`recorded_endpoints` read from a store the caller holds open; `records` are the fleet's
    server records when the caller has read them already (else they are read here)."""
    key = find_fleet_key(state_dir, fleet.name)
    if key is None:
        return {}
    if records is None:
        records = store.servers.all(fleet.name)
    return agent_endpoints(fleet, key, records, store.agents.reports(fleet.name))


def agent_endpoints(
    fleet: Fleet, key: bytes, records: Sequence[ServerRecord], reports: Sequence[AgentReport]
) -> dict[str, AgentEndpoint]:
    """The endpoints of the agents that have reported (see `recorded_endpoints`), from the
    store's records and reports as the caller read them."""
    from engine.addresses import ssh_address

    by_name = {r.name: r for r in records}
    endpoints = {}
    for report in reports:
        record = by_name.get(report.server)
        address = ssh_address(record) if record else None
        if address is None or not report.tls_fingerprint:
            continue
        endpoints[report.server] = AgentEndpoint(
            server=report.server,
            address=address,
            port=fleet.install.agent.port,
            fingerprint=normalise_fingerprint(report.tls_fingerprint),
            token=agent_token(key, fleet.name, report.server),
        )
    return endpoints


def resolve_endpoint(
    state_dir: Path,
    fleet: Fleet,
    server: str,
    *,
    address: str | None = None,
    fingerprint: str | None = None,
    state: str | None = None,
) -> AgentEndpoint:
    """How to reach the agent of `server` in `fleet`: from the state store (see
    `recorded_endpoints`), or at the `address` and pinned `fingerprint` the caller gives
    (the CLI's --agent and --fingerprint), for a server installed by another engine.
    The token always comes from the fleet's key in `state_dir`.
    """
    if (address is None) != (fingerprint is None):
        given, missing = (
            ("--agent", "--fingerprint") if fingerprint is None else ("--fingerprint", "--agent")
        )
        raise EngineError(
            f"{given} goes with {missing}: give both (an agent the engine has no record of), "
            "or neither (the address and fingerprint the engine recorded)"
        )
    if address is None and fingerprint is None:
        recorded = recorded_endpoints(state_dir, fleet, state).get(server)
        if recorded is not None:
            return recorded
    if address is None or fingerprint is None:
        raise EngineError(
            f"the engine has no record of how to reach the agent of {server} (it has not "
            "reported yet, or it was installed by another engine); give its address and "
            "certificate fingerprint with --agent HOST[:PORT] and --fingerprint SHA256 (on "
            "the server: openssl x509 -noout -fingerprint -sha256 -in "
            "/etc/fleet-agent/tls/cert.pem)"
        )
    host, port = parse_address(address, default_port=fleet.install.agent.port)
    token = agent_token(read_fleet_key(state_dir, fleet.name), fleet.name, server)
    return AgentEndpoint(
        server=server,
        address=host,
        port=port,
        fingerprint=normalise_fingerprint(fingerprint),
        token=token,
    )
