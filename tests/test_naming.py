"""Provider-side names and the way back: every name a program gives reads back as the spec's."""

from __future__ import annotations

import pytest

from engine.model import fleet_resource_name
from engine.providers.digitalocean.naming import is_member_tag, member_tag
from engine.providers.naming import (
    engine_resource_name,
    lb_firewall_name,
    qualified_name,
    spec_resource,
    spec_resources,
)


@pytest.mark.parametrize(
    ("fleet", "given", "read_back"),
    [
        ("web-prod", fleet_resource_name("web-prod", "web"), "web-prod-web"),
        ("api-prod", qualified_name("api-prod", "https", "api"), "api-prod-https"),
        ("api-prod", qualified_name("api-prod", "vpc", "fra1"), "api-prod-vpc"),
        # A group or a region with dashes in its name cannot leak into the spec name.
        ("api-prod", qualified_name("api-prod", "ssh", "back-office"), "api-prod-ssh"),
        ("web-prod", engine_resource_name("web-prod", "engine"), None),
        ("web-prod", lb_firewall_name("web-prod", "web"), None),
        ("web-prod", "legacy-office", "legacy-office"),
    ],
)
def test_a_provider_side_name_reads_back_as_the_spec_resource(
    fleet: str, given: str, read_back: str | None
) -> None:
    assert spec_resource(fleet, given) == read_back


def test_a_spec_firewall_named_engine_is_not_the_engines_own() -> None:
    spec_firewall = fleet_resource_name("web-prod", "engine")
    assert spec_firewall != engine_resource_name("web-prod", "engine")
    assert spec_resource("web-prod", spec_firewall) == "web-prod-engine"


def test_a_group_of_names_reads_back_sorted_once_without_the_engines() -> None:
    names = ["web-prod-web.b", "web-prod.engine", "web-prod-web.a", "legacy", "web-prod.lb-x"]
    assert spec_resources("web-prod", names) == ("legacy", "web-prod-web")


def test_the_member_tag_is_recognised() -> None:
    assert member_tag("web-prod", "web") == "fleet-member:web-prod:web"
    assert is_member_tag(member_tag("web-prod", "web"))
    assert not is_member_tag("fleet:web-prod") and not is_member_tag("fleet-members:x")
