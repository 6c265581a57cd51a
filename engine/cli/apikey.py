"""engine apikey create|list|revoke NAME [--state URL]"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "apikey",
        help="create, list or revoke keys for the control plane's fleet API",
        description="Keys for GET /v1/servers and /v1/events (Authorization: Bearer KEY). A "
        "new key is printed once and stored only as a hash.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, helptext in (
        ("create", "make a key and print it (the only time it is shown)"),
        ("revoke", "revoke a key by name"),
        ("list", "list the keys (names and dates, never the keys)"),
    ):
        child = actions.add_parser(action, parents=[common], help=helptext)
        if action != "list":
            child.add_argument("name", metavar="NAME")
        child.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.controlplane.apikeys import create_api_key
    from engine.state.store import open_store, state_url

    with open_store(state_url(Path(args.state_dir), args.state)) as store:
        if args.action == "create":
            print(create_api_key(store, args.name))
        elif args.action == "revoke":
            store.api_keys.revoke(args.name)
            print(f"revoked {args.name}")
        else:
            for key in store.api_keys.all():
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                print(f"{key.name}\tcreated {key.created_at:%Y-%m-%d %H:%M}\t{state}")
    return 0
