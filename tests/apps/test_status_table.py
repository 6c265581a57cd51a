"""engine.apps.commands: the status table's SINCE column as Docker writes its times, and the
history of an app that left the spec."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from engine.apps.commands import AppOnServerStatus, render_status
from engine.state.store import open_state
from tests.support.cli import engine


@pytest.mark.parametrize(
    "since",
    [
        "{t}.420709591Z",  # nanoseconds
        "{t}.42070959Z",  # Docker drops trailing zeros: 8 digits
        "{t}.4207Z",
        "{t}Z",
    ],
)
def test_since_is_an_age_whatever_digits_of_a_second_docker_wrote(since: str) -> None:
    # With 7 or 8 digits, cutting the text at 32 characters cut its UTC offset: the raw time.
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    status = AppOnServerStatus(
        app="web", server="web-1", version="v1", state="running", health="healthy",
        since=since.format(t=started.strftime("%Y-%m-%dT%H:%M:%S")),
    )  # fmt: skip
    row = render_status([(status, "v1")]).splitlines()[1]
    assert row.endswith("5m ago"), row


def test_the_history_of_an_app_gone_from_the_spec_is_still_shown(tmp_path: Path) -> None:
    # `engine apps history SPEC talker` said "fleet demo has no app talker", though plain
    # `engine apps history SPEC` listed talker's rollouts.
    state = tmp_path / "state"
    with open_state(state) as store:
        failed = {"server": "web-1", "step": "failed", "reason": ""}
        store.apps.add_rollout(
            {"fleet": "demo", "app": "talker", "version": "v1", "phase": "failed",
             "reason": "health check failed", "servers": [failed]}
        )  # fmt: skip
    result = engine("apps", "history", "specs/demo.yaml", "talker", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ID  APP")
    _, row, reason = result.stdout.splitlines()
    assert row.split()[1:4] == ["talker", "v1", "failed"]
    assert reason.endswith(": health check failed")
    unknown = engine("apps", "history", "specs/demo.yaml", "nope", "--state-dir", str(state))
    assert unknown.returncode == 1
    assert "fleet demo has no app nope (its apps: none)" in unknown.stderr
