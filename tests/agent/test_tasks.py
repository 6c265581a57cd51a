"""System tasks run in the background with a status and a log.

The agents here run their tasks behind a harmless prefix instead of nsenter into the host
(`echo`, so the log shows the exact argument list that would run; `false`; a sleeping Python),
so the machinery is exercised for real without touching this machine's packages. apt itself
runs, through nsenter, inside a local server in test_image.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.agent.client import AgentClient
from fleet_agent.tasks import TaskKind, TaskRunner
from tests.support.agent import AgentProcess
from tests.support.wait import wait_until

APT = "apt-get -q -o DPkg::Lock::Timeout=300"


def finished(client: AgentClient, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = client.call("GET", f"/v1/tasks/{task_id}")
        return task if task["state"] != "running" else None

    result: dict[str, Any] = wait_until(done, what=f"task {task_id} to finish")
    return result


def full_log(client: AgentClient, task_id: str, limit: int = 65536) -> str:
    text, offset = "", 0
    while True:
        page = client.call(
            "GET", f"/v1/tasks/{task_id}/log", params={"offset": offset, "limit": limit}
        )
        assert page["offset"] == offset
        text += page["text"]
        offset = page["next_offset"]
        if page["complete"]:
            return text


@pytest.mark.parametrize(
    ("kind", "command"),
    [
        ("update", f"{APT} update"),
        (
            "upgrade",
            f"{APT} -y -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold upgrade",
        ),
        ("reboot", "systemctl reboot"),
    ],
)
def test_a_system_task_runs_in_the_background_with_status_and_log(
    client: AgentClient, kind: str, command: str
) -> None:
    response = client.send("POST", f"/v1/system/{kind}")
    assert response.status_code == 202
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["kind"] == kind
    assert task["command"] == ["echo", *command.split()]
    done = finished(client, task["id"])
    assert (done["state"], done["exit_code"], done["error"]) == ("succeeded", 0, None)
    assert full_log(client, task["id"]) == f"$ echo {command}\n{command}\n# exit code 0\n"
    listed = client.call("GET", "/v1/tasks")["tasks"]
    assert listed[0]["id"] == task["id"]  # newest first


def test_a_failing_task_says_so(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent(host_command_prefix=["false"])
    with AgentClient(agent.endpoint()) as client:
        task = client.call("POST", "/v1/system/update")
        done = finished(client, task["id"])
    assert (done["state"], done["exit_code"], done["error"]) == ("failed", 1, "exit code 1")


def test_a_task_that_cannot_start_says_why(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent(host_command_prefix=["/no/such/nsenter"])
    with AgentClient(agent.endpoint()) as client:
        task = client.call("POST", "/v1/system/upgrade")
        done = finished(client, task["id"])
    assert done["state"] == "failed" and done["exit_code"] is None
    assert done["error"].startswith("could not start: ")
    assert "/no/such/nsenter" in done["error"]


def test_one_task_at_a_time_and_a_restart_marks_it_interrupted(
    make_agent: Callable[..., AgentProcess],
) -> None:
    slow = [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(5)"]
    agent = make_agent(host_command_prefix=slow)
    with AgentClient(agent.endpoint()) as client:
        task = client.call("POST", "/v1/system/update")
        busy = client.send("POST", "/v1/system/reboot")
        assert busy.status_code == 409
        assert busy.json() == {"detail": f"task {task['id']} (update) is still running"}
        wait_until(lambda: "working" in full_log_so_far(client, task["id"]), what="output")
    agent.stop()
    assert agent.log_text().rstrip().endswith("stopped cleanly")
    agent.start()
    with AgentClient(agent.endpoint()) as client:
        after = client.call("GET", f"/v1/tasks/{task['id']}")
        assert after["state"] == "interrupted"
        assert after["error"] == "the agent stopped while it ran"
        assert "working" in full_log(client, task["id"])
        again = client.send("POST", "/v1/system/update")
        assert again.status_code == 202  # nothing holds the slot any more


def full_log_so_far(client: AgentClient, task_id: str) -> str:
    page: dict[str, Any] = client.call("GET", f"/v1/tasks/{task_id}/log")
    text: str = page["text"]
    return text


def test_unknown_tasks_are_404(client: AgentClient) -> None:
    for path in ("/v1/tasks/0123456789abcdef", "/v1/tasks/0123456789abcdef/log"):
        response = client.send("GET", path)
        assert response.status_code == 404
        assert response.json() == {"detail": "no task 0123456789abcdef"}


def test_log_pages_never_split_a_character(tmp_path: Path) -> None:
    text = "héllo wörld — ünïcödé ✓ 日本語 " * 3
    runner = TaskRunner(tmp_path, (sys.executable, "-c", f"print({text!r})"))

    async def run() -> str:
        runner.load()
        task = runner.start(TaskKind.UPDATE)
        async with asyncio.timeout(30):  # the task runs in this loop: poll it, with a deadline
            while runner.get(task.id).state == "running":  # type: ignore[union-attr]
                await asyncio.sleep(0.02)
        return task.id

    task_id = asyncio.run(run())
    whole, _, complete = runner.read_log(task_id, 0, 1 << 20)
    assert complete and text in whole
    for limit in range(16, 24):
        pages, offset = [], 0
        while True:
            page, offset, complete = runner.read_log(task_id, offset, limit)
            pages.append(page)
            if complete:
                break
        assert "".join(pages) == whole
        assert "\ufffd" not in "".join(pages)
