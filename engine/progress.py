"""Progress of a long run, for people and for machines.

On a terminal, `StageBoard` keeps one line per server (its stage and how long it has been in
it) and redraws them in place. Anywhere else (CI logs, pipes) it prints a line only when a
server's stage changes, so logs stay short. With `--format json` every change is one JSON
object per line (`{"event": "stage", ...}`), for machines.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from engine.model import Stage
from engine.term import paint, use_colour

_COLOUR = {
    Stage.READY: "green",
    Stage.FAILED: "red",
    Stage.UNHEALTHY: "yellow",
    Stage.DELETING: "dim",
}
_DONE = {Stage.READY, Stage.FAILED}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStage:
    """Where one server is on its way to ready."""

    name: str
    stage: Stage
    since: dt.datetime
    reason: str = ""


def _age(since: dt.datetime, now: dt.datetime) -> str:
    seconds = max(0.0, (now - since).total_seconds())
    return f"{seconds:5.1f}s" if seconds < 600 else f"{seconds / 60:5.1f}m"


def render_line(server: ServerStage, now: dt.datetime, stream: TextIO) -> str:
    """`  web-1   installing      12.3s` (with the reason of a failure)."""
    stage = paint(f"{server.stage.value:<12}", _COLOUR.get(server.stage, "blue"), stream)
    reason = f"  {server.reason}" if server.reason and server.stage is Stage.FAILED else ""
    age = "" if server.stage in _DONE else _age(server.since, now)
    return f"  {server.name:<20} {stage} {age}{reason}".rstrip()


class StageBoard:
    """Shows each server's stage; call `update` as often as you like, `close` at the end."""

    def __init__(self, stream: TextIO, *, json_lines: bool = False) -> None:
        self.stream = stream
        self.json_lines = json_lines
        self.live = not json_lines and use_colour(stream)
        self.shown: dict[str, tuple[Stage, str]] = {}
        self.drawn = 0

    def update(self, servers: Sequence[ServerStage], now: dt.datetime | None = None) -> None:
        now = now or dt.datetime.now(dt.UTC)
        changed = [s for s in servers if self.shown.get(s.name) != (s.stage, s.reason)]
        for server in changed:
            self.shown[server.name] = (server.stage, server.reason)
        if self.json_lines:
            for server in changed:
                self.event("stage", server=server.name, stage=server.stage.value,
                           at=server.since.isoformat(), reason=server.reason)  # fmt: skip
        elif self.live:
            # Move up over the lines drawn last time and draw them all again.
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            lines = [f"{render_line(s, now, self.stream)}\x1b[K" for s in servers]
            self.stream.write(up + "\n".join(lines) + "\n")
            self.drawn = len(lines)
        else:
            for server in changed:
                self.stream.write(render_line(server, now, self.stream) + "\n")
        self.stream.flush()

    def event(self, kind: str, **fields: object) -> None:
        """One JSON line (only with json_lines)."""
        if self.json_lines:
            self.stream.write(json.dumps({"event": kind, **fields}) + "\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own that stays above the board (a JSON `note` event in JSON mode)."""
        if self.json_lines:
            self.event("note", message=message)
            return
        if self.live and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0
        self.stream.write(message + "\n")
        self.stream.flush()


def render_timings(
    rows: Mapping[str, Mapping[str, float | None]],
    medians: Mapping[str, float | None],
    steps: Sequence[str],
) -> str:
    """The per-step timing table: one row per server and a row of medians."""
    header = f"  {'server':<20}" + "".join(f"{step.replace('_', '-'):>12}" for step in steps)

    def cell(value: float | None) -> str:
        return f"{'-':>12}" if value is None else f"{value:>11.1f}s"

    lines = [header]
    for name, durations in rows.items():
        lines.append(f"  {name:<20}" + "".join(cell(durations.get(s)) for s in steps))
    lines.append(f"  {'median':<20}" + "".join(cell(medians.get(s)) for s in steps))
    return "\n".join(lines)
