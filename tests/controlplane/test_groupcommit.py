"""GroupCommit: requests that arrive together share one apply call, and each gets its own
outcome, or its own exception."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from engine.controlplane.groupcommit import GroupCommit


class Recorder:
    """An apply function that keeps each batch, holds the first one until released, and
    fails any batch holding the item "bad"."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.entered.set()
        self.release.wait(10)
        self.batches.append(list(items))
        if "bad" in items:
            raise ValueError("cannot apply bad")
        return [item.upper() for item in items]


async def _submit_all(committer: GroupCommit[str, str], items: list[str]) -> list[object]:
    tasks = [asyncio.ensure_future(committer.submit(item)) for item in items]
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_items_queued_while_a_batch_is_applied_form_the_next_batch() -> None:
    apply = Recorder()
    committer = GroupCommit(apply, name="test")

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(committer.submit("first"))
        entered = asyncio.get_running_loop().run_in_executor(None, apply.entered.wait, 10)
        assert await entered, "the writer never took the first item"
        rest = [asyncio.ensure_future(committer.submit(f"item-{n}")) for n in range(50)]
        await asyncio.sleep(0)  # one turn of the loop: every task has queued its item
        apply.release.set()
        return [await first, *(await asyncio.gather(*rest))]

    try:
        results = asyncio.run(scenario())
    finally:
        committer.close()
    assert results == ["FIRST", *(f"ITEM-{n}" for n in range(50))]
    assert apply.batches[0] == ["first"]
    assert apply.batches[1] == [f"item-{n}" for n in range(50)]  # one batch, in order


def test_a_failing_batch_is_applied_item_by_item_so_only_the_bad_item_fails() -> None:
    apply = Recorder()
    apply.release.set()
    committer = GroupCommit(apply, name="test", max_batch=10)

    async def scenario() -> list[object]:
        return await _submit_all(committer, ["a", "bad", "c"])

    try:
        results = asyncio.run(scenario())
    finally:
        committer.close()
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError) and str(results[1]) == "cannot apply bad"
    assert ["bad"] in apply.batches


def test_close_applies_what_is_queued() -> None:
    apply = Recorder()
    committer = GroupCommit(apply, name="test")

    async def scenario() -> list[object]:
        tasks = [asyncio.ensure_future(committer.submit(item)) for item in ("x", "y")]
        await asyncio.sleep(0)
        apply.release.set()
        closing = asyncio.get_running_loop().run_in_executor(None, committer.close)
        results = await asyncio.gather(*tasks)
        await closing
        return list(results)

    assert asyncio.run(scenario()) == ["X", "Y"]
    assert sum(len(batch) for batch in apply.batches) == 2


def test_an_apply_returning_the_wrong_count_fails_every_item() -> None:
    committer = GroupCommit(lambda items: [], name="test")

    async def scenario() -> object:
        return await committer.submit("lost")

    try:
        with pytest.raises(ValueError):
            asyncio.run(scenario())
    finally:
        committer.close()
