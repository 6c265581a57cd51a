"""Where the engine reaches a server, from what the state store records of it."""

from __future__ import annotations

from engine.state import ServerRecord


def ssh_address(record: ServerRecord) -> str | None:
    """Where to reach a server over SSH: its public IPv4, else IPv6, else a private address."""
    if record.ipv4:
        return record.ipv4
    if record.ipv6 and "/" not in record.ipv6:
        return record.ipv6
    return record.private_ips[0] if record.private_ips else None
