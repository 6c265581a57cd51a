"""The rollout state machine: order, width, groups, failure and rollback, manual mode, and a
run that dies anywhere being taken up again from what the store kept."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from engine.apps.rollout import (
    ENDED,
    Phase,
    Rollout,
    RolloutError,
    Step,
    Target,
    finish,
    from_json,
    new_rollout,
    next_servers,
    resume,
    rollback,
    start,
    supersede,
    to_json,
    to_watch,
)
from engine.model import RollbackMode

T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def targets(
    groups: dict[str, int], *, old: str | None = "v1", new: str | None = "v2"
) -> list[Target]:
    return [
        Target(server=f"{group}-{n}", group=group, from_version=old, to_version=new)
        for group, count in groups.items()
        for n in range(1, count + 1)
    ]


def rolled(
    groups: dict[str, int], *, width: int = 1, mode: RollbackMode = RollbackMode.AUTO
) -> Rollout:
    return new_rollout(
        "prod", "web", "v2", targets(groups), max_unavailable=width, rollback=mode, now=T0
    )


def through(rollout: Rollout, server: str, second: float) -> Rollout:
    """`server` started, switched and watched."""
    rollout = finish(start(rollout, server, at(second)), server, ok=True, now=at(second + 0.5))
    return finish(rollout, server, ok=True, now=at(second + 0.9))


def stored(rollout: Rollout) -> Rollout:
    """What a new run reads back: the JSON document the store keeps."""
    return from_json(json.loads(json.dumps(to_json(rollout))))


def test_one_at_a_time_in_order_each_watched_while_the_next_switches() -> None:
    rollout = rolled({"web": 3})
    seen = []
    for second in range(3):
        (server,) = next_servers(rollout)
        seen.append(server)
        rollout = start(rollout, server, at(second))
        assert next_servers(rollout) == ()  # the only slot is taken
        rollout = finish(rollout, server, ok=True, now=at(second + 0.5), timings=[("health", 1)])
        assert rollout.server(server).step is Step.WATCHING
    assert seen == ["web-1", "web-2", "web-3"]
    assert to_watch(rollout) == ("web-1", "web-2", "web-3")
    assert rollout.phase is Phase.ROLLING  # switched, not yet watched long enough
    for n, server in enumerate(seen):
        rollout = finish(rollout, server, ok=True, now=at(30 + n), timings=[("monitor", 30)])
    assert rollout.phase is Phase.SUCCEEDED and rollout.is_over
    assert rollout.finished_at == at(32)
    assert dict(rollout.server("web-2").timings) == {"health": 1.0, "monitor": 30.0}


def test_max_unavailable_is_a_sliding_window_within_a_group() -> None:
    rollout = rolled({"web": 5}, width=2)
    assert next_servers(rollout) == ("web-1", "web-2")
    rollout = start(start(rollout, "web-1", T0), "web-2", T0)
    assert next_servers(rollout) == ()
    rollout = finish(rollout, "web-2", ok=True, now=at(1))
    assert next_servers(rollout) == ("web-3",)  # one slot free: the next in order


def test_the_next_group_waits_for_every_server_of_the_one_before() -> None:
    rollout = rolled({"web": 2, "api": 2}, width=2)
    rollout = start(start(rollout, "web-1", T0), "web-2", T0)
    rollout = finish(rollout, "web-1", ok=True, now=at(1))
    assert next_servers(rollout) == ()  # web-2 still switching: api does not start
    rollout = finish(rollout, "web-2", ok=True, now=at(2))
    rollout = finish(rollout, "web-1", ok=True, now=at(3))
    assert next_servers(rollout) == ()  # web-2 still watched: api does not start
    rollout = finish(rollout, "web-2", ok=True, now=at(4))
    assert next_servers(rollout) == ("api-1", "api-2")


def test_a_failure_stops_the_rollout_and_puts_back_every_changed_server_last_first() -> None:
    rollout = rolled({"web": 4}, width=1)
    rollout = through(rollout, "web-1", 0)
    rollout = finish(start(rollout, "web-2", at(1)), "web-2", ok=True, now=at(2))
    rollout = start(rollout, "web-3", at(3))  # while web-2 is watched
    rollout = finish(rollout, "web-3", ok=False, reason="not healthy within 60 s", now=at(4))
    assert rollout.phase is Phase.ROLLING_BACK
    assert rollout.reason == "web-3: not healthy within 60 s"
    order = []
    while not rollout.is_over:
        (server,) = next_servers(rollout)
        order.append(server)
        rollout = finish(start(rollout, server, at(9)), server, ok=True, now=at(10))
    assert order == ["web-3", "web-2", "web-1"]  # web-2 mid-watch; web-4 never touched
    assert rollout.phase is Phase.ROLLED_BACK
    assert rollout.steps() == {
        "web-1": Step.REVERTED,
        "web-2": Step.REVERTED,
        "web-3": Step.REVERTED,
        "web-4": Step.PENDING,
    }


def test_rolling_back_waits_for_servers_still_switching() -> None:
    rollout = rolled({"web": 3}, width=2)
    rollout = start(start(rollout, "web-1", T0), "web-2", T0)
    rollout = finish(rollout, "web-1", ok=False, reason="crashed", now=at(1))
    assert rollout.phase is Phase.ROLLING_BACK
    assert next_servers(rollout) == ()  # web-2 is mid-switch
    rollout = finish(rollout, "web-2", ok=True, now=at(2))
    assert next_servers(rollout) == ("web-2", "web-1")


def test_manual_mode_stops_and_a_later_rollback_puts_back() -> None:
    rollout = through(rolled({"web": 3}, mode=RollbackMode.MANUAL), "web-1", 0)
    rollout = finish(start(rollout, "web-2", at(1)), "web-2", ok=False, reason="x", now=at(2))
    assert rollout.phase is Phase.FAILED and rollout.is_over
    assert next_servers(rollout) == ()
    turned = rollback(rollout, at(10))
    assert turned.phase is Phase.ROLLING_BACK
    assert next_servers(turned) == ("web-2",)


def test_a_succeeded_rollout_can_be_turned_back_without_naming_a_version() -> None:
    rollout = rolled({"web": 2}, width=2)
    for server in ("web-1", "web-2"):
        rollout = start(rollout, server, T0)
    for _watched in range(2):
        for server in ("web-1", "web-2"):
            rollout = finish(rollout, server, ok=True, now=at(1))
    turned = rollback(rollout, at(5))
    assert set(next_servers(turned)) == {"web-1", "web-2"}
    for server in next_servers(turned):
        turned = start(turned, server, at(6))
    assert [s.from_version for s in turned.servers] == ["v1", "v1"]


def test_a_server_that_cannot_be_put_back_fails_the_rollout() -> None:
    rollout = rolled({"web": 2})
    rollout = finish(start(rollout, "web-1", T0), "web-1", ok=False, reason="bad", now=at(1))
    rollout = finish(start(rollout, "web-1", at(2)), "web-1", ok=False, reason="gone", now=at(3))
    assert rollout.phase is Phase.FAILED
    assert rollout.reason == "web-1: bad; could not put back web-1"


def test_illegal_transitions_are_refused() -> None:
    rollout = rolled({"web": 2})
    with pytest.raises(RolloutError):
        start(rollout, "web-2", T0)  # web-1 goes first
    with pytest.raises(RolloutError):
        finish(rollout, "web-1", ok=True, now=T0)  # never started
    with pytest.raises(RolloutError):
        rollback(start(rollout, "web-1", T0), T0)  # still rolling
    with pytest.raises(RolloutError):
        new_rollout("p", "a", "v", targets({"web": 1}) * 2, max_unavailable=1,
                    rollback=RollbackMode.AUTO, now=T0)  # fmt: skip


def test_a_crash_mid_rollout_is_taken_up_from_the_stored_document() -> None:
    rollout = rolled({"web": 4})
    rollout = through(rollout, "web-1", 0)
    rollout = finish(start(rollout, "web-2", at(1)), "web-2", ok=True, now=at(2))
    rollout = start(rollout, "web-3", at(2))
    # The run dies here; the store holds the document as of the last transition.
    taken_up = resume(stored(rollout), at(100))
    assert taken_up.steps() == {
        "web-1": Step.SWITCHED,
        "web-2": Step.WATCHING,
        "web-3": Step.PENDING,
        "web-4": Step.PENDING,
    }
    assert taken_up.server("web-3").reason == "interrupted"
    assert to_watch(taken_up) == ("web-2",)  # watched again from the start
    assert next_servers(taken_up) == ("web-3",)  # switched again from the start, not skipped
    for server in ("web-3", "web-4"):
        taken_up = finish(start(taken_up, server, at(101)), server, ok=True, now=at(102))
    for server in ("web-2", "web-3", "web-4"):
        taken_up = finish(taken_up, server, ok=True, now=at(130))
    assert taken_up.phase is Phase.SUCCEEDED


def test_a_crash_while_rolling_back_resumes_the_rolling_back() -> None:
    rollout = rolled({"web": 3}, width=3)
    for server in ("web-1", "web-2", "web-3"):
        rollout = start(rollout, server, T0)
    rollout = finish(rollout, "web-1", ok=True, now=at(1))
    rollout = finish(rollout, "web-2", ok=False, reason="unhealthy", now=at(2))
    # dies while web-3 still switches: web-3 may run either version now
    taken_up = resume(stored(rollout), at(50))
    assert taken_up.phase is Phase.ROLLING_BACK
    assert set(next_servers(taken_up)) == {"web-1", "web-2", "web-3"}
    taken_up = start(taken_up, "web-3", at(51))
    # and dies again while putting web-3 back
    again = resume(stored(taken_up), at(60))
    assert again.server("web-3").step is Step.FAILED  # to be put back once more
    while not again.is_over:
        for server in next_servers(again):
            again = finish(start(again, server, at(61)), server, ok=True, now=at(62))
    assert again.phase is Phase.ROLLED_BACK


def test_a_server_that_turns_unhealthy_while_watched_puts_back_every_changed_one() -> None:
    rollout = through(rolled({"web": 3}), "web-1", 0)
    rollout = finish(start(rollout, "web-2", at(1)), "web-2", ok=True, now=at(2))
    rollout = start(rollout, "web-3", at(2))
    rollout = finish(rollout, "web-2", ok=False, reason="restarted 1 time(s)", now=at(3))
    assert rollout.phase is Phase.ROLLING_BACK and to_watch(rollout) == ()
    assert next_servers(rollout) == ()  # web-3 is mid-switch
    rollout = finish(rollout, "web-3", ok=True, now=at(4))
    assert next_servers(rollout) == ("web-3",)  # the last changed first, one at a time


def test_superseding_ends_a_rollout_left_open() -> None:
    rollout = start(rolled({"web": 3}, width=2), "web-1", T0)
    rollout = finish(start(rollout, "web-2", T0), "web-2", ok=True, now=at(1))
    ended = supersede(stored(rollout), "v3", at(5))
    assert ended.phase is Phase.SUPERSEDED and ended.is_over
    assert ended.server("web-1").step is Step.FAILED
    assert ended.server("web-2").step is Step.FAILED  # mid-watch: may run v2
    assert ended.reason == "superseded by a rollout of v3"


def test_a_new_server_is_put_back_to_nothing() -> None:
    rollout = new_rollout(
        "prod", "web", "v2", targets({"web": 1}, old=None), max_unavailable=1,
        rollback=RollbackMode.AUTO, now=T0,
    )  # fmt: skip
    rollout = finish(start(rollout, "web-1", T0), "web-1", ok=False, reason="x", now=at(1))
    assert rollout.server("web-1").from_version is None  # the revert removes the app


@pytest.mark.parametrize("seed", range(40))
def test_random_runs_keep_the_invariants(seed: int) -> None:
    """Random widths, group sizes, failures and crashes: never more than max_unavailable of
    a group under way, never two groups switching at once, and every run ends either with
    every server switched, or (auto) with every changed server put back."""
    chance = random.Random(seed)
    groups = {name: chance.randint(1, 4) for name in ("web", "api", "db")[: chance.randint(1, 3)]}
    width = chance.randint(1, 3)
    rollout = rolled(groups, width=width)
    clock = 0.0
    for _ in range(500):
        if rollout.is_over:
            break
        clock += 1
        if chance.random() < 0.05:  # the run dies: a new one takes the stored document up
            rollout = resume(stored(rollout), at(clock))
            continue
        for server in next_servers(rollout):
            rollout = start(rollout, server, at(clock))
        busy = [s for s in rollout.servers if s.step in (Step.SWITCHING, Step.REVERTING)]
        for group in groups:
            assert sum(1 for s in busy if s.group == group) <= width
        rolling = (Step.SWITCHING, Step.WATCHING)
        assert len({s.group for s in rollout.servers if s.step in rolling}) <= 1
        # What the executor has under way: switches, reverts, and watches while rolling.
        in_flight = [s.server for s in busy] + list(to_watch(rollout))
        if in_flight:
            server = in_flight[chance.randrange(len(in_flight))]
            ok = chance.random() > 0.15
            rollout = finish(rollout, server, ok=ok, reason="" if ok else "boom", now=at(clock))
    assert rollout.is_over and rollout.phase in ENDED
    steps = set(rollout.steps().values())
    if rollout.phase is Phase.SUCCEEDED:
        assert steps == {Step.SWITCHED}
    elif rollout.phase is Phase.ROLLED_BACK:
        assert steps <= {Step.REVERTED, Step.PENDING}
    else:
        assert Step.REVERT_FAILED in steps


def test_the_apps_a_server_takes_ports_over_from_are_kept_in_the_stored_document() -> None:
    taking = Target(
        server="web-1", group="web", from_version=None, to_version="v2", replaces=(("old", "v1"),)
    )
    rollout = new_rollout(
        "prod", "www", "v2", [taking], max_unavailable=1, rollback=RollbackMode.AUTO, now=T0
    )
    assert stored(rollout).server("web-1").replaces == (("old", "v1"),)
    # A document stored before servers took ports over reads back with none.
    document = to_json(rollout)
    del document["servers"][0]["replaces"]
    assert from_json(document).server("web-1").replaces == ()
