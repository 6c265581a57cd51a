"""engine unlock LOCK_ID"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "unlock",
        parents=[common],
        help="release a stack lock left behind by a run that died",
        description="Mutating commands (engine up, destroy) hold an exclusive lock on the "
        "fleet's stack; a second one is refused with the holder, host, pid, command, time and "
        "lock id. If that run died, release its lock by id. The release is recorded in the "
        "fleet's event history.",
    )
    parser.add_argument("lock_id", metavar="LOCK_ID", help="the lock id the refusal printed")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.errors import EngineError
    from engine.state.store import open_store, state_url, store_exists

    url = state_url(args.state_dir, args.state)
    if not store_exists(url):
        raise EngineError(f"there is no state store at {url}, so nothing is locked")
    with open_store(url) as store:
        lock = store.locks.unlock(args.lock_id)
    since = lock.acquired_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    print(
        f"released lock {lock.lock_id} on {lock.stack}, held by {lock.holder}@{lock.host} "
        f"(pid {lock.pid}, `{lock.command}`) since {since}"
    )
    return 0
