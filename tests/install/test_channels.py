"""engine.install.worker.Channels: each command's SSH channel is opened while the command
before it runs (the installs in test_install.py run through it over real sshd; here the
order is checked with an opener that records what it was asked)."""

from __future__ import annotations

import threading
from typing import Any

from engine.install.worker import Channels

WAIT_S = 10


class Opener:
    """Stands in for `Transport.open_session`: hands out a new channel for each call,
    remembers the arguments, and says when it has been asked `count` times. With
    `failing_ahead`, the first channel opened ahead fails to open."""

    def __init__(self, *, failing_ahead: bool = False) -> None:
        self.handed: list[object] = []
        self.asked: list[dict[str, Any]] = []
        self._failing_ahead = failing_ahead
        self._changed = threading.Condition()

    def __call__(self, **kwargs: Any) -> object:
        with self._changed:
            self.asked.append(kwargs)
            self._changed.notify_all()
            if self._failing_ahead and threading.current_thread().name.startswith("ssh-channel"):
                self._failing_ahead = False
                raise EOFError("the connection dropped")
            channel = object()
            self.handed.append(channel)
            return channel

    def wait_for(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.asked) >= count, timeout=WAIT_S)


def test_the_next_channel_is_open_before_its_command_asks_for_it() -> None:
    opener = Opener()
    channels = Channels(opener)
    try:
        first = channels.open_session(timeout=5)
        # The second is opened without being asked for, as the first command runs.
        assert opener.wait_for(2)
        (ahead,) = [c for c in opener.handed if c is not first]
        assert channels.open_session(timeout=5) is ahead
        assert opener.wait_for(3)
        assert opener.asked == [{"timeout": 5}] * 3
        assert channels.opened == 2  # channels used, not the spare
    finally:
        channels.close()


def test_a_spare_that_could_not_be_opened_is_opened_again_when_asked_for() -> None:
    opener = Opener(failing_ahead=True)
    channels = Channels(opener)
    try:
        first = channels.open_session()
        assert opener.wait_for(2)
        assert opener.handed == [first]  # the spare failed
        second = channels.open_session()
        assert second is not first
        assert second in opener.handed
    finally:
        channels.close()


def test_a_channel_of_other_sizes_is_opened_as_asked() -> None:
    opener = Opener()
    channels = Channels(opener)
    try:
        sftp = channels.open_session(window_size=1 << 21, max_packet_size=1 << 15)
        assert opener.handed == [sftp]
        assert opener.asked == [{"window_size": 1 << 21, "max_packet_size": 1 << 15}]
        assert channels.opened == 1
    finally:
        channels.close()


def test_closing_stops_the_thread_that_opens_ahead() -> None:
    channels = Channels(Opener())
    channels.open_session()
    channels.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("ssh-channel")]
