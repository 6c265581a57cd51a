"""engine.lifecycle.step_durations: each step of a server's latest way to ready, timed within
that way (a server made again, rebuilt or reinstalled enters stages more than once)."""

from __future__ import annotations

import datetime as dt

from engine.lifecycle import step_durations
from engine.model import Stage
from engine.state import ServerRecord, Transition

T0 = dt.datetime(2026, 12, 6, 7, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _way(*stages: tuple[Stage, float]) -> list[Transition]:
    return [Transition(fleet="f", server="web-1", stage=s, at=_at(t)) for s, t in stages]


def _record(*, cloud_init: float | None, installed: float | None) -> ServerRecord:
    return ServerRecord(
        fleet="f",
        name="web-1",
        group="web",
        provider="local",
        stage=Stage.READY,
        cloud_init_finished_at=None if cloud_init is None else _at(cloud_init),
        installed_at=None if installed is None else _at(installed),
    )


FIRST = _way(
    (Stage.CREATING, 0),
    (Stage.BOOTING, 1),
    (Stage.PHONED_HOME, 4),
    (Stage.INSTALLING, 4),
    (Stage.READY, 16),
)


def test_a_first_way_to_ready() -> None:
    assert step_durations(_record(cloud_init=3.5, installed=15), FIRST) == {
        "create": 1.0,
        "boot": 2.5,
        "phone_home": 0.5,
        "install": 11.0,
        "agent": 1.0,
    }


def test_a_server_made_again_is_timed_by_its_latest_making() -> None:
    # It showed "boot 1075.8s" and "install 1081.3s" beside "ready in 15.9 s".
    again = FIRST + _way(
        (Stage.FAILED, 1000),
        (Stage.CREATING, 1070),
        (Stage.BOOTING, 1071.5),
        (Stage.PHONED_HOME, 1075),
        (Stage.INSTALLING, 1075),
        (Stage.READY, 1086),
    )
    assert step_durations(_record(cloud_init=1074, installed=1085), again) == {
        "create": 1.5,
        "boot": 2.5,
        "phone_home": 1.0,
        "install": 10.0,
        "agent": 1.0,
    }


def test_a_reinstall_times_the_latest_install_and_keeps_the_first_making() -> None:
    reinstalled = FIRST + _way(
        (Stage.UNHEALTHY, 300),
        (Stage.READY, 310),
        (Stage.INSTALLING, 800),
        (Stage.READY, 809),
    )
    durations = step_durations(_record(cloud_init=3.5, installed=808), reinstalled)
    assert durations == {
        "create": 1.0,
        "boot": 2.5,
        "phone_home": 0.5,
        "install": 8.0,
        "agent": 1.0,
    }


def test_a_rebuild_times_its_boot_and_keeps_the_first_making() -> None:
    rebuilt = FIRST + _way(
        (Stage.BOOTING, 900),
        (Stage.PHONED_HOME, 905),
        (Stage.INSTALLING, 905),
        (Stage.READY, 918),
    )
    assert step_durations(_record(cloud_init=904, installed=917), rebuilt) == {
        "create": 1.0,
        "boot": 4.0,
        "phone_home": 1.0,
        "install": 12.0,
        "agent": 1.0,
    }


def test_a_server_booting_again_has_no_boot_time_yet() -> None:
    booting = FIRST + _way((Stage.CREATING, 1070), (Stage.BOOTING, 1071))
    durations = step_durations(_record(cloud_init=3.5, installed=15), booting)
    assert (durations["create"], durations["boot"], durations["phone_home"]) == (1.0, None, None)
