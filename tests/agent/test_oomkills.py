"""OOM kills per container from the kernel's log and Docker's events. The records
(cases/oom_kill_records.json) are as Linux 6.1 writes them; a file stands in for /dev/kmsg in
the sequences, and the real device is opened once."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_agent.oomkills import KMSG, KernelOomLog, OomWitness, killed_container

CASES = json.loads((Path(__file__).parent / "cases" / "oom_kill_records.json").read_text())["cases"]
KILLED = CASES[0]["record"]
CONTAINER = CASES[0]["container"]
OTHER = CASES[1]["record"]


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_an_oom_kill_record_names_the_victims_container(case: dict[str, Any]) -> None:
    assert killed_container(case["record"]) == case["container"]


class Kernel:
    """A file the witness reads as its kernel log; `log` appends records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text(KILLED + "\n")  # logged before the agent started: never counts

    def log(self, *records: str) -> None:
        with self.path.open("a") as out:
            out.writelines(f"{r}\n" for r in records)


@pytest.fixture
def kernel(tmp_path: Path) -> Kernel:
    return Kernel(tmp_path / "kmsg")


@pytest.fixture
def witness(kernel: Kernel) -> Iterator[OomWitness]:
    made = OomWitness(kernel.path)
    yield made
    made.close()


def test_a_kill_logged_before_docker_reports_the_start_explains_the_death(
    kernel: Kernel, witness: OomWitness
) -> None:
    kernel.log(CASES[4]["record"], KILLED, " SUBSYSTEM=memory")
    witness.saw("start", CONTAINER)
    assert witness.death_was_oom(CONTAINER)
    assert witness.last_death_was_oom(CONTAINER)
    witness.saw("start", CONTAINER)  # restarted: a new life
    assert not witness.last_death_was_oom(CONTAINER)
    assert not witness.death_was_oom(CONTAINER)  # the kill explained one death only


def test_kills_before_the_agent_started_and_of_other_containers_do_not_count(
    kernel: Kernel, witness: OomWitness
) -> None:
    kernel.log(OTHER)
    assert not witness.death_was_oom(CONTAINER)
    assert witness.death_was_oom(CASES[1]["container"])


def test_dockers_oom_event_after_the_die_still_explains_it(tmp_path: Path) -> None:
    witness = OomWitness(tmp_path / "no-kernel-log")
    assert not witness.death_was_oom(CONTAINER)  # the die came first
    witness.saw("oom", CONTAINER)
    assert witness.death_was_oom(CONTAINER)
    witness.close()


def test_a_late_oom_event_does_not_explain_the_next_life(
    kernel: Kernel, witness: OomWitness
) -> None:
    kernel.log(KILLED)
    assert witness.death_was_oom(CONTAINER)  # the kernel said so at once
    witness.saw("oom", CONTAINER)  # Docker, late, about the same kill
    witness.saw("start", CONTAINER)
    assert not witness.death_was_oom(CONTAINER)


def test_an_unreadable_log_is_said_once_and_knows_of_no_kill(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        kernel = KernelOomLog(tmp_path / "missing")
        assert kernel.new_kills() == []
        assert kernel.new_kills() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read the kernel log at {tmp_path / 'missing'} (No such file or directory): "
        "an OOM kill Docker misses is reported as no OOM kill"
    ]


def test_the_real_kernel_log_opens_and_is_read_without_blocking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        kernel = KernelOomLog(KMSG)  # as root, like the agent
        try:
            kernel.new_kills()  # returns once nothing new is left: no wait for more
        finally:
            kernel.close()
    assert caplog.records == []
