"""DigitalOcean's own names: the tag the engine's firewalls select a group's droplets by.

Firewalls on DigitalOcean select droplets by tag, and the `fleet-group:<g>` ownership tag alone
is not unique across fleets sharing an account, so every droplet also carries
`member_tag(fleet, group)`. It is the engine's, not a label: the inventory leaves it out of a
droplet's labels (`is_member_tag`). Names both clouds share are in engine.providers.naming.
"""

from __future__ import annotations

MEMBER_TAG = "fleet-member"
_MEMBER_PREFIX = f"{MEMBER_TAG}:"


def member_tag(fleet: str, group: str) -> str:
    """The DigitalOcean tag firewalls select a group's droplets by: `fleet-member:web-prod:web`.

    The `fleet-group:<g>` ownership tag alone is not unique across fleets sharing an account.
    """
    return f"{MEMBER_TAG}:{fleet}:{group}"


def is_member_tag(tag: str) -> bool:
    """Whether `tag` is a member tag (the engine's, not a label)."""
    return tag.startswith(_MEMBER_PREFIX)
