"""Progress output: a live board on terminals, change lines in logs, JSON lines for machines."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from engine.model import Stage
from engine.progress import ServerStage, StageBoard, render_timings

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def _stages(*pairs: tuple[str, Stage]) -> list[ServerStage]:
    return [ServerStage(name=n, stage=s, since=T0) for n, s in pairs]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    out = io.StringIO()
    board = StageBoard(out)
    board.update(_stages(("web-1", Stage.BOOTING), ("web-2", Stage.BOOTING)), T0)
    board.update(_stages(("web-1", Stage.BOOTING), ("web-2", Stage.BOOTING)), T0)
    board.update(_stages(("web-1", Stage.READY), ("web-2", Stage.BOOTING)), T0)
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["web-1", "booting"],
        ["web-2", "booting"],
        ["web-1", "ready"],
    ]


def test_a_terminal_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Tty()
    board = StageBoard(out)
    board.update(_stages(("web-1", Stage.BOOTING)), T0 + dt.timedelta(seconds=3))
    board.update(_stages(("web-1", Stage.BOOTING)), T0 + dt.timedelta(seconds=4))
    text = out.getvalue()
    assert text.count("\x1b[1F") == 1  # the second draw moved up over the first
    assert "3.0s" in text and "4.0s" in text
    board.note("pulling the agent image")
    assert out.getvalue().endswith("pulling the agent image\n")


def test_json_lines_carry_every_change() -> None:
    out = io.StringIO()
    board = StageBoard(out, json_lines=True)
    board.update(_stages(("web-1", Stage.CREATING)), T0)
    board.update([ServerStage(name="web-1", stage=Stage.FAILED, since=T0, reason="no ssh")], T0)
    board.note("done")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events == [
        {"event": "stage", "server": "web-1", "stage": "creating", "at": T0.isoformat(),
         "reason": ""},
        {"event": "stage", "server": "web-1", "stage": "failed", "at": T0.isoformat(),
         "reason": "no ssh"},
        {"event": "note", "message": "done"},
    ]  # fmt: skip


def test_timing_table() -> None:
    table = render_timings(
        {"web-1": {"create": 1.25, "boot": None}, "web-2": {"create": 2.0, "boot": 3.5}},
        {"create": 1.625, "boot": 3.5},
        ("create", "boot"),
    )
    assert table.splitlines() == [
        "  server                    create        boot",
        "  web-1                       1.2s           -",
        "  web-2                       2.0s        3.5s",
        "  median                      1.6s        3.5s",
    ]
