"""A second preview after `engine up` is empty: what a program declares, listed by the provider
and read back by the engine's own inventory reader, is exactly what the spec wants.

Each program runs under Pulumi's mocks; what it declared is loaded into the stateful fake of
the provider's API (servers, firewalls, networks, placement groups, VPCs, as the API lists
them), read back with the real reader over HTTP, recorded as `engine up` records it, and
diffed against the same spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from engine.catalog import load_catalog
from engine.diff import diff_fleet
from engine.model import Fleet
from engine.plan import Action, Plan
from engine.providers.registry import inventory_reader
from engine.state import ServerRecord
from tests.fakes.digitalocean import FakeDigitalOcean
from tests.fakes.hcloud import FakeHcloud
from tests.stacks import test_digitalocean, test_hcloud
from tests.stacks.harness import Answers, Run, fleet_from, run_program, stack_inputs
from tests.stacks.listed import list_on_digitalocean, list_on_hcloud
from tests.support.http import serve


@dataclass(frozen=True, slots=True)
class Case:
    fleet: Fleet
    answers: Answers
    fake: Callable[[], Any]
    list_on: Callable[[Run, Any], None]
    api_path: str


def hetzner(**changes: Any) -> Case:
    return Case(
        fleet_from(test_hcloud.SPEC, **changes),
        test_hcloud.ANSWERS,
        FakeHcloud,
        list_on_hcloud,
        "/v1",
    )


def digitalocean(**changes: Any) -> Case:
    return Case(
        fleet_from(test_digitalocean.SPEC, **changes),
        test_digitalocean.ANSWERS,
        FakeDigitalOcean,
        list_on_digitalocean,
        "",
    )


CASES = {
    # Spread placement, a private network with a subnet, two spec firewalls and the engine's.
    "hetzner": hetzner(),
    # A load balancer that reaches its group over the public network: a firewall of its own.
    "hetzner-public-lb": hetzner(
        groups=[{"name": "web", "count": 3, "firewalls": ["web", "ssh-only"]}], networks=[]
    ),
    # VPCs per region, firewalls per group, the member tags, a load balancer's firewall.
    "digitalocean": digitalocean(),
    # A spec firewall that opens nothing still exists and is read back.
    "digitalocean-closed": digitalocean(
        firewalls=[{"name": "https", "inbound": []}, {"name": "ssh", "inbound": []}]
    ),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture
def fake(case: Case) -> Any:
    return case.fake()


@pytest.fixture
def endpoint(case: Case, fake: Any) -> Iterator[str]:
    with serve(fake.app()) as base:
        yield base + case.api_path


def plan_against(case: Case, fake: Any, endpoint: str, recorded: dict[str, str]) -> Plan:
    """The plan for the case's spec against what the fake lists, with `recorded` (server ->
    provider id) in the state store as `engine up` leaves it before the installs."""
    fleet = replace(case.fleet, provider=replace(case.fleet.provider, endpoint=endpoint))
    catalog = load_catalog(fleet.provider.name)
    actual = inventory_reader(fleet, token=fake.token).read_servers()
    records = [
        ServerRecord(
            fleet=fleet.name,
            name=server.name,
            group=server.group,
            provider=fleet.provider.name,
            provider_id=recorded[server.name],
            location=server.location,
        )
        for server in stack_inputs(fleet).servers
        if server.name in recorded
    ]
    return diff_fleet(fleet, catalog, actual, records)


def test_what_the_program_declares_reads_back_as_no_change(
    case: Case, fake: Any, endpoint: str
) -> None:
    run = run_program(stack_inputs(case.fleet), case.answers)
    case.list_on(run, fake)
    plan = plan_against(case, fake, endpoint, {n: str(out["id"]) for n, out in run.outputs.items()})
    assert plan.changes == (), [(c.action, c.server, c.fields) for c in plan.changes]
    assert plan.problems == ()
    assert plan.unchanged == len(run.outputs)


def test_on_an_empty_account_the_plan_creates_exactly_the_declared_servers(
    case: Case, fake: Any, endpoint: str
) -> None:
    run = run_program(stack_inputs(case.fleet), case.answers)
    plan = plan_against(case, fake, endpoint, {})
    assert {c.action for c in plan.changes} == {Action.CREATE}
    assert {c.server for c in plan.changes} == set(run.outputs) != set()
