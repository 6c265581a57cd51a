"""What both providers' programs promise, checked on each under Pulumi's mocks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from stacks import fleet_program
from stacks.group import COMPONENT_TYPE
from stacks.inputs import StackInputs
from tests.stacks import test_digitalocean, test_hcloud
from tests.stacks.harness import (
    TOKEN,
    Answers,
    Run,
    fleet_from,
    run_program,
    stack_inputs,
    token_of,
)


@dataclass(frozen=True, slots=True)
class Case:
    spec: str
    provider: dict[str, str]
    server_type: str
    answers: Answers
    endpoint_input: str

    @property
    def provider_type(self) -> str:
        return f"pulumi:providers:{self.provider['name']}"


CASES = {
    "hcloud": Case(
        spec=test_hcloud.SPEC,
        provider={"name": "hcloud", "token_env": "HCLOUD_TOKEN"},
        server_type=test_hcloud.SERVER,
        answers=test_hcloud.ANSWERS,
        endpoint_input="endpoint",
    ),
    "digitalocean": Case(
        spec=test_digitalocean.SPEC,
        provider={"name": "digitalocean", "token_env": "DIGITALOCEAN_TOKEN"},
        server_type=test_digitalocean.DROPLET,
        answers=test_digitalocean.ANSWERS,
        endpoint_input="apiEndpoint",
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


@pytest.fixture(scope="module")
def inputs(case: Case) -> StackInputs:
    return stack_inputs(fleet_from(case.spec))


@pytest.fixture(scope="module")
def run(case: Case, inputs: StackInputs) -> Run:
    return run_program(inputs, case.answers)


def test_the_servers_are_exactly_the_expanded_fleet(
    case: Case, inputs: StackInputs, run: Run
) -> None:
    declared = run.of_type(case.server_type)
    assert set(declared) == {s.name for s in inputs.servers} == set(run.outputs)
    for name, server in declared.items():
        assert run.outputs[name]["id"] == server.id
        assert run.outputs[name]["ipv4"]


def _secret(value: object) -> str:
    """The plain text of a Pulumi secret input (as a mock receives it); fails if not secret."""
    from pulumi.runtime import rpc

    assert isinstance(value, dict), "user_data must be a secret: it holds a one-time token"
    assert value.get(rpc._special_sig_key) == rpc._special_secret_sig
    return str(value["value"])


def test_each_server_gets_its_own_user_data_with_only_its_own_token(
    case: Case, inputs: StackInputs, run: Run
) -> None:
    for name, server in run.of_type(case.server_type).items():
        user_data = _secret(server.inputs["userData"])
        assert user_data == inputs.user_data[name]
        assert token_of(name) in user_data
        others = [token_of(s.name) for s in inputs.servers if s.name != name]
        assert not [token for token in others if token in user_data]


def test_user_data_image_and_keys_are_fixed_at_creation(case: Case, run: Run) -> None:
    components = run.of_type(COMPONENT_TYPE)
    assert set(components) == {g.name for g in fleet_from(case.spec).groups}
    for name, server in run.of_type(case.server_type).items():
        assert {"userData", "image", "sshKeys"} <= set(server.ignore_changes), name
        assert server.parent == components[name.rsplit("-", 1)[0]].urn
        assert server.provider.startswith(
            run.of_type(case.provider_type)[case.provider["name"]].urn
        )


def test_only_a_server_the_plan_replaces_is_made_from_todays_inputs(
    case: Case, inputs: StackInputs
) -> None:
    first, second = inputs.servers[0].name, inputs.servers[1].name
    run = run_program(replace(inputs, replaced=frozenset({first})), case.answers)
    servers = run.of_type(case.server_type)
    assert servers[first].ignore_changes == ()
    assert _secret(servers[first].inputs["userData"]) == inputs.user_data[first]
    assert {"userData", "image", "sshKeys"} <= set(servers[second].ignore_changes)


def test_an_adopted_server_is_imported_not_created_again(case: Case, inputs: StackInputs) -> None:
    adopted = inputs.servers[-1].name
    run = run_program(replace(inputs, adopted={adopted: "4711"}), case.answers)
    imports = {name: r.import_id for name, r in run.of_type(case.server_type).items()}
    assert imports == {s.name: "4711" if s.name == adopted else "" for s in inputs.servers}


def test_the_api_token_reaches_the_provider_as_a_secret(case: Case, run: Run) -> None:
    provider = run.of_type(case.provider_type)[case.provider["name"]]
    assert provider.secrets == {"token"}
    assert TOKEN in repr(provider.inputs["token"])
    assert not [
        r.name for r in run.resources if r.type != case.provider_type and TOKEN in repr(r.inputs)
    ]


def test_the_provider_endpoint_is_settable(case: Case) -> None:
    fleet = fleet_from(case.spec, provider={**case.provider, "endpoint": "http://127.0.0.1:9/v1"})
    run = run_program(stack_inputs(fleet), case.answers)
    provider = run.of_type(case.provider_type)[case.provider["name"]]
    assert provider.inputs[case.endpoint_input] == "http://127.0.0.1:9/v1"


def test_two_runs_over_the_same_inputs_declare_identical_inputs(
    case: Case, inputs: StackInputs
) -> None:
    def declared(run: Run) -> list[tuple[Any, ...]]:
        return sorted(
            (r.urn, r.parent, repr(r.inputs), r.ignore_changes, tuple(sorted(r.depends_on)))
            for r in run.resources
        )

    first, second = run_program(inputs, case.answers), run_program(inputs, case.answers)
    assert declared(first) == declared(second)
    assert first.outputs == second.outputs


def test_the_inline_program_declares_the_same_fleet(
    case: Case, inputs: StackInputs, run: Run
) -> None:
    through_program = run_program(inputs, case.answers, program=fleet_program(inputs, token=TOKEN))
    assert {(r.type, r.name) for r in through_program.resources} == {
        (r.type, r.name) for r in run.resources
    }
