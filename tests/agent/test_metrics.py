"""The agent's metrics agree with psutil read independently by the test, around the request.

Counters that only grow (network, uptime) must lie between the test's readings before and
after. CPU use is checked against the test's own psutil.cpu_percent() over an interval that
contains the agent's window, with one core kept busy by the test so the figure cannot be
faked by a constant: that core must read as busy, and the total cannot exceed what psutil saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from jsonschema import Draft202012Validator

from engine.agent.client import AgentClient
from fleet_agent.metrics import (
    FIRST_WINDOW_S,
    busy_percent,
    distinct_file_systems,
    host_partitions,
    overall_percent,
)
from tests.support.agent import SCHEMAS, AgentProcess
from tests.support.wait import wait_until

Times = namedtuple(
    "Times", "user nice system idle iowait irq softirq steal guest guest_nice", defaults=(0.0,) * 10
)
IDLE = Times(user=100, system=50, idle=1000, iowait=10)


@pytest.mark.parametrize(
    ("after", "percent"),
    [
        (IDLE._replace(idle=1100), 0.0),  # an idle host reads 0, not 100
        (IDLE._replace(user=200), 100.0),
        (IDLE._replace(iowait=110), 0.0),  # waiting for disks is idle time
        (IDLE._replace(user=150, guest=50, idle=1050), 50.0),  # guest time is inside user
        (IDLE._replace(user=110, system=60, irq=5, softirq=5, steal=10, idle=1060), 40.0),
        (IDLE, 0.0),  # counters that did not move
    ],
)
def test_cpu_use_between_two_readings(after: Times, percent: float) -> None:
    assert busy_percent(IDLE, after) == percent


def test_overall_cpu_use_weighs_every_core() -> None:
    assert overall_percent([IDLE, IDLE], [IDLE._replace(idle=1100), IDLE._replace(user=200)]) == 50
    assert overall_percent([IDLE], [IDLE]) == 0.0


def test_the_mount_table_is_read_like_psutil_reads_it() -> None:
    expected = [(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions()]
    assert host_partitions(Path("/proc")) == expected


def metrics_validator() -> Draft202012Validator:
    schema = json.loads((SCHEMAS / "heartbeat.v1.schema.json").read_text())
    return Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/metrics"})


def test_memory_disks_network_load_and_uptime_agree_with_psutil(client: AgentClient) -> None:
    load_before = os.getloadavg()
    net_before = psutil.net_io_counters(pernic=True)
    metrics = client.call("GET", "/v1/metrics")
    net_after = psutil.net_io_counters(pernic=True)
    load_after = os.getloadavg()
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()

    assert list(metrics_validator().iter_errors(metrics)) == []
    mem = metrics["memory"]
    assert mem["total_bytes"] == memory.total
    assert abs(mem["available_bytes"] - memory.available) < 512 * 2**20
    assert mem["used_bytes"] == mem["total_bytes"] - mem["available_bytes"]
    assert mem["percent"] == round(100 * mem["used_bytes"] / mem["total_bytes"], 1)
    assert metrics["swap"]["total_bytes"] == swap.total

    partitions = [
        (p.device, p.mountpoint, p.fstype)
        for p in psutil.disk_partitions()
        if Path(p.mountpoint).is_dir()
    ]
    expected = {mp: (dev, fs) for dev, mp, fs in distinct_file_systems(partitions)}
    disks = {d["mountpoint"]: d for d in metrics["disks"]}
    assert set(disks) == set(expected) and disks
    for mountpoint, disk in disks.items():
        usage = psutil.disk_usage(mountpoint)
        assert (disk["device"], disk["fstype"]) == expected[mountpoint]
        assert disk["total_bytes"] == usage.total
        assert abs(disk["used_bytes"] - usage.used) < 2 * 2**30  # other jobs write meanwhile

    interfaces = {n["interface"]: n for n in metrics["network"]}
    assert set(interfaces) == {n for n in net_after if not n.startswith(("lo", "veth"))}
    for name, counters in interfaces.items():
        for field, psutil_field in (("bytes_recv", "bytes_recv"), ("packets_sent", "packets_sent")):
            before = getattr(net_before[name], psutil_field)
            after = getattr(net_after[name], psutil_field)
            assert before <= counters[field] <= after, (name, field)

    assert metrics["load"]["1m"] in {round(load_before[0], 2), round(load_after[0], 2)}
    boot = psutil.boot_time()
    assert abs(time.time() - boot - metrics["uptime_s"]) < 60
    assert metrics["boot_time"].startswith(time.strftime("%Y-%m-%dT%H:%M", time.gmtime(boot)))


@pytest.fixture
def busy_core() -> Iterator[int]:
    """Keep core 0 busy (a spinning child of the test) for the test's duration."""
    spin = (
        "import os\nos.sched_setaffinity(0, {0})\nprint('spinning', flush=True)\n"
        "while True:\n    pass\n"
    )
    process = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "spinning\n"
        yield 0
    finally:
        process.kill()
        process.wait()


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_cpu_use_agrees_with_psutil_over_the_same_time(client: AgentClient, busy_core: int) -> None:
    psutil.cpu_percent()
    opened = time.time()

    def window_inside_bracket() -> dict[str, Any] | None:
        cpu: dict[str, Any] = client.call("GET", "/v1/metrics")["cpu"]
        return cpu if parse_time(cpu["window_start"]) >= opened else None

    cpu = wait_until(window_inside_bracket, what="a CPU window after the bracket opened")
    bracket_s = time.time() - opened
    seen = psutil.cpu_percent()
    assert cpu["count"] == psutil.cpu_count() == len(cpu["per_core"])
    assert cpu["per_core"][busy_core] >= 90.0
    assert cpu["percent"] >= 0.9 * 100 / cpu["count"]
    # Busy time is additive: the agent's window lies inside the test's bracket, so it cannot
    # hold more busy time than the bracket (plus a clock tick per core of rounding).
    tick = 100 * 0.02
    assert cpu["percent"] * cpu["window_s"] <= seen * bracket_s + tick


def test_a_fresh_agent_reports_a_real_window_not_a_first_reading(
    make_agent: Callable[..., AgentProcess],
) -> None:
    started = time.time()
    agent: AgentProcess = make_agent()
    with AgentClient(agent.endpoint()) as client:
        cpu = client.call("GET", "/v1/metrics")["cpu"]
    assert cpu["window_s"] >= FIRST_WINDOW_S - 0.01
    assert parse_time(cpu["window_start"]) >= started - 0.01
