"""A first spec is short: the local provider fills in what it has only one of."""

from __future__ import annotations

import pytest

from engine.catalog import load_catalog
from engine.errors import SpecError
from engine.model import ImageKind, ProviderName
from engine.spec import PROVIDER_DEFAULTS, parse_spec

FIVE_LINES = """apiVersion: fleet/v1
kind: Fleet
name: first
provider: {name: local}
groups: [{name: web, count: 2}]
"""


def test_five_lines_make_a_local_fleet() -> None:
    (group,) = parse_spec(FIVE_LINES.encode()).groups
    assert (group.server_type, group.image.kind, group.image.name, group.locations) == (
        "small",
        ImageKind.NAME,
        "debian-12",
        ("local",),
    )


def test_the_built_in_defaults_are_in_the_local_catalog() -> None:
    catalog = load_catalog("local")
    built_in = PROVIDER_DEFAULTS[ProviderName.LOCAL]
    assert built_in["server_type"] in catalog.server_types
    assert built_in["image"] in catalog.images
    assert set(built_in["locations"]) <= set(catalog.locations)


def test_the_spec_s_own_choice_wins() -> None:
    raw = FIVE_LINES + "defaults: {server_type: large}\n"
    raw = raw.replace("count: 2}", "count: 2}, {name: db, count: 1, server_type: medium}")
    web, db = parse_spec(raw.encode()).groups
    assert (web.server_type, db.server_type) == ("large", "medium")


def test_a_cloud_provider_still_asks_for_each() -> None:
    raw = FIVE_LINES.replace(
        "{name: local}", "{name: hcloud, token_env: HCLOUD_TOKEN}\ncontrol_plane: {readiness: poll}"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(raw.encode())
    assert sorted(d.message.split('"')[1] for d in info.value.diagnostics) == [
        "image",
        "locations",
        "server_type",
    ]


@pytest.mark.parametrize("swap", ["0", '"0"', "512M"])
def test_swap_takes_a_size_or_a_plain_zero(swap: str) -> None:
    fleet = parse_spec(f"{FIVE_LINES}install: {{system: {{swap: {swap}}}}}\n".encode())
    assert fleet.install.system.swap == swap.strip('"')
