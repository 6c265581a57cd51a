"""The exclusive stack lock: contention in one process and across processes, stale locks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.state.locks import StackLockedError
from engine.state.store import Store, open_store


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with open_store(url) as opened:
        yield opened


def test_a_second_taker_learns_who_holds_the_lock(store: Store) -> None:
    with store.locks.hold("web-prod", command="engine up specs/web.yaml") as held:
        with pytest.raises(StackLockedError) as info:
            store.locks.acquire("web-prod", command="engine up specs/web.yaml")
        message = str(info.value)
        for part in (
            f"locked by {held.holder}@{socket.gethostname()}",
            f"pid {os.getpid()}",
            "`engine up specs/web.yaml`",
            held.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            f"lock id {held.lock_id}",
            f"process {os.getpid()} is running on this host: wait for that run to finish",
        ):
            assert part in message
        # A holder that runs is waited for, never released from under it.
        assert "stale" not in message and "engine unlock" not in message
        with store.locks.hold("other-fleet", command="engine up other.yaml"):
            assert {lock.stack for lock in store.locks.all()} == {"web-prod", "other-fleet"}
    assert store.locks.all() == ()


def test_the_lock_is_released_when_the_block_fails(store: Store) -> None:
    with pytest.raises(RuntimeError), store.locks.hold("web-prod", command="engine up"):
        raise RuntimeError("the run failed")
    with store.locks.hold("web-prod", command="engine up"):
        pass


def test_secrets_in_the_command_are_not_recorded(store: Store) -> None:
    from engine.secrets import register_secret

    token = register_secret("hcloud-token-abcdef0123456789")
    with store.locks.hold("web-prod", command=f"engine up --token {token}") as held:
        assert token not in held.command
        assert store.locks.all()[0].command == "engine up --token ***"


_HOLDER = textwrap.dedent(
    """
    import os, socket, sys
    from engine.state.store import open_store
    if sys.argv[2] == "elsewhere":
        socket.gethostname = lambda: "build-7"  # a holder on another host
    store = open_store(sys.argv[1])
    held = store.locks.acquire("web-prod", command="engine up specs/web.yaml")
    print(held.lock_id, flush=True)
    if sys.argv[2] == "die":
        os._exit(0)  # a crash: the lock is never given back
    sys.stdin.readline()
    store.locks.release(held)
    print("released", flush=True)
    """
)


def _holder(url: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )


def test_two_processes_contend_for_the_lock(store: Store, url: str) -> None:
    holder = _holder(url, "wait")
    try:
        assert holder.stdout is not None and holder.stdin is not None
        lock_id = holder.stdout.readline().strip()  # the holder has the lock once it says so
        with pytest.raises(StackLockedError) as info:
            store.locks.acquire("web-prod", command="engine up specs/web.yaml")
        assert info.value.lock.lock_id == lock_id
        assert info.value.lock.pid == holder.pid
        assert f"process {holder.pid} is running on this host" in str(info.value)
        assert "stale" not in str(info.value) and "engine unlock" not in str(info.value)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    with store.locks.hold("web-prod", command="engine up specs/web.yaml") as mine:
        assert mine.pid == os.getpid()


def test_a_dead_holder_leaves_a_stale_lock_that_unlock_releases(store: Store, url: str) -> None:
    holder = _holder(url, "die")
    assert holder.stdout is not None
    lock_id = holder.stdout.readline().strip()
    assert holder.wait(timeout=30) == 0
    with pytest.raises(StackLockedError) as info:
        store.locks.acquire("web-prod", command="engine up specs/web.yaml")
    assert str(info.value).endswith(
        f"process {holder.pid} is no longer running on this host, so the lock is stale: "
        f"release it with: engine unlock {lock_id}"
    )
    released = store.locks.unlock(lock_id)
    assert released.pid == holder.pid
    (event,) = store.events.all("web-prod")
    assert event.kind == "lock.released" and lock_id in event.message
    with store.locks.hold("web-prod", command="engine up specs/web.yaml"):
        pass


def test_a_holder_on_another_host_is_waited_for_or_released_if_it_died(
    store: Store, url: str
) -> None:
    holder = _holder(url, "elsewhere")
    try:
        assert holder.stdout is not None and holder.stdin is not None
        lock_id = holder.stdout.readline().strip()
        with pytest.raises(StackLockedError) as info:
            store.locks.acquire("web-prod", command="engine up specs/web.yaml")
        assert f"@build-7 (pid {holder.pid}," in str(info.value)
        assert str(info.value).endswith(
            f". Wait for that run to finish; if it died, release the lock with: "
            f"engine unlock {lock_id}"
        )
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_unlocking_an_unknown_lock_lists_the_held_ones(store: Store) -> None:
    with store.locks.hold("web-prod", command="engine up") as held:
        with pytest.raises(EngineError) as info:
            store.locks.unlock("0000")
        assert f"held now: {held.lock_id} (web-prod)" in str(info.value)
    with pytest.raises(EngineError, match="no lock is held"):
        store.locks.unlock("0000")


def test_a_run_that_accepts_it_takes_over_a_lock_whose_holder_died(store: Store, url: str) -> None:
    holder = _holder(url, "die")
    assert holder.stdout is not None
    lock_id = holder.stdout.readline().strip()
    assert holder.wait(timeout=30) == 0
    taken: list[str] = []
    with store.locks.hold(
        "web-prod", command="engine up specs/web.yaml", on_stale=lambda s: taken.append(s.lock_id)
    ) as mine:
        assert taken == [lock_id] and mine.pid == os.getpid()
        with (  # a live holder is never taken over
            pytest.raises(StackLockedError),
            store.locks.hold("web-prod", command="engine up", on_stale=lambda s: taken.append("x")),
        ):
            pass
        assert taken == [lock_id]
    assert [e.kind for e in store.events.all("web-prod")] == ["lock.released"]
