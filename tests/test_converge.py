"""A run's budget of tries: a server that fails is planned again after a back-off and its
repair carried out, until it is ready or its tries are spent (engine.converge), on a real
state store; time is a fake clock the loop's sleeps move on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.converge import backoff_s, converge
from engine.model import Fleet, Stage
from engine.plan import NO_USAGE, Action, Change, Plan, RetryBy
from engine.progress import StageBoard
from engine.state import ServerRecord
from engine.state.store import Store, open_store, state_url
from tests.stacks.harness import fleet_from


@dataclass
class Run:
    """What converge needs of a run: the fleet, the store and the board."""

    fleet: Fleet
    store: Store
    board: StageBoard
    fleet_id: str = ""


@dataclass
class World:
    """A fake clock and what the loop asked for: replans, carried-out plans, sleeps."""

    store: Store
    now: float = 0.0
    replans: list[float] = field(default_factory=list)
    carried: list[tuple[str, ...]] = field(default_factory=list)
    # What a carried-out repair leads to, per try: the stage the server ends in.
    outcomes: list[Stage] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def replan(self) -> Plan:
        self.replans.append(self.now)
        retry = Change(
            action=Action.RETRY,
            server="web-2",
            group="web",
            reasons=("failed",),
            retry_by=RetryBy.INSTALL,
        )
        return plan_of(retry, Change(action=Action.REINSTALL, server="web-1", group="web",
                                     reasons=("drift",)))  # fmt: skip

    def carry_out(self, plan: Plan) -> None:
        self.carried.append(tuple(c.server for c in plan.changes))
        outcome = self.outcomes.pop(0)
        self.store.servers.update("demo", "web-2", stage=outcome, reason=f"try {self.tries}")

    @property
    def tries(self) -> int:
        return len(self.carried) + 1


def plan_of(*changes: Change) -> Plan:
    return Plan(fleet="demo", provider="local", source="demo.yaml", compared_with="local",
                currency="", changes=changes, unchanged=0, before=NO_USAGE, after=NO_USAGE,
                install_hash="sha256:0123456789abcdef")  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_store(state_url(tmp_path)) as store:
        for name, stage in (("web-1", Stage.READY), ("web-2", Stage.FAILED)):
            record = ServerRecord(fleet="demo", name=name, group="web", provider="local")
            store.servers.save(record)
            reason = "install failed" if name == "web-2" else ""
            store.servers.set_stage("demo", name, stage, reason)
        yield World(store)


Outcome = tuple[dict[str, Stage], dict[str, int], str]


def run_converge(world: World, tries: int, timeout_s: float = 600) -> Outcome:
    """The stages and tries converge ends with, and what the board said."""
    out = io.StringIO()
    run = Run(fleet_from("specs/demo.yaml"), world.store, StageBoard(out))
    records, tried = converge(
        run,
        ["web-1", "web-2"],
        replan=world.replan,
        carry_out=world.carry_out,
        tries=tries,
        timeout_s=timeout_s,
        clock=world.clock,
        sleep=world.sleep,
    )
    return {n: r.stage for n, r in records.items()}, tried, out.getvalue()


def test_a_failed_server_is_tried_again_after_a_back_off_until_its_tries_are_spent(
    world: World,
) -> None:
    world.outcomes = [Stage.FAILED, Stage.FAILED]
    stages, tried, said = run_converge(world, tries=3)
    assert stages == {"web-1": Stage.READY, "web-2": Stage.FAILED}
    assert tried == {"web-1": 1, "web-2": 3}
    # Only the failed server's repair is carried out, each after its back-off.
    assert world.carried == [("web-2",), ("web-2",)]
    assert world.replans == [backoff_s(1), backoff_s(1) + backoff_s(2)]
    assert "web-2 failed (try 1 of 3): install failed; looking at it again in 5 s" in said
    assert "web-2 failed (try 2 of 3): try 2; looking at it again in 10 s" in said
    assert "try 3 of 3" not in said  # spent: it stays failed, for the report to say


def test_a_server_that_makes_it_on_a_later_try_ends_the_wait(world: World) -> None:
    world.outcomes = [Stage.READY]
    stages, tried, _ = run_converge(world, tries=3)
    assert stages == {"web-1": Stage.READY, "web-2": Stage.READY}
    assert tried["web-2"] == 2 and world.carried == [("web-2",)]


def test_one_try_means_no_retry_and_the_timeout_still_bounds_the_wait(world: World) -> None:
    stages, tried, _ = run_converge(world, tries=1)
    assert (stages["web-2"], tried["web-2"], world.carried) == (Stage.FAILED, 1, [])
    world.store.servers.set_stage("demo", "web-2", Stage.INSTALLING)
    start = world.now
    stages, _, _ = run_converge(world, tries=3, timeout_s=30)
    assert stages["web-2"] is Stage.INSTALLING and 30 <= world.now - start < 31


def test_the_back_off_doubles_up_to_a_minute() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4, 5, 6)] == [5, 10, 20, 40, 60, 60]
