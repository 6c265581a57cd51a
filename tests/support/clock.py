"""A clock a test moves by hand, for code that takes `now` or `clock`."""

from __future__ import annotations

import datetime as dt


class Clock:
    """Stands still at `start` (default 2026-11-05 10:00 UTC) until advanced."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or dt.datetime(2026, 11, 5, 10, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
