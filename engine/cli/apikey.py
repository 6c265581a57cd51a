"""engine apikey create NAME [--scope S] [--fleet F]... | list | revoke NAME [--state URL]"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SCOPES = ("read", "plan", "apply", "admin")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "apikey",
        help="create, list or revoke keys for the control plane's fleet API",
        description="Keys for the /v1 fleet API (Authorization: Bearer KEY). A new key is "
        "printed once and stored only as an HMAC under the state directory's API-key secret.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, helptext in (
        ("create", "make a key and print it (the only time it is shown)"),
        ("revoke", "revoke a key by name"),
        ("list", "list the keys (names, scopes, fleets and dates, never the keys)"),
    ):
        child = actions.add_parser(action, parents=[common], help=helptext)
        if action != "list":
            child.add_argument("name", metavar="NAME")
        if action == "create":
            child.add_argument(
                "--scope",
                choices=SCOPES,
                default="read",
                help="what the key may do, each including the ones before: read (GET), plan "
                "(register specs, make plans), apply (apply, scale, server actions), admin "
                "(default: read)",
            )
            child.add_argument(
                "--fleet",
                action="append",
                default=[],
                metavar="FLEET",
                help="grant only this fleet (repeat for several; default: every fleet)",
            )
        child.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli import recorded_store
    from engine.controlplane.apikeys import check_key_request, create_api_key, revoke_api_key
    from engine.state import Scope
    from engine.state.apikeys import unknown_key
    from engine.state.store import open_state, open_store

    state_dir = Path(args.state_dir)
    if args.action == "create":
        check_key_request(args.name, args.fleet)  # bad input makes no store
        with open_state(state_dir, args.state) as store:
            key = create_api_key(
                store, state_dir, args.name, scope=Scope(args.scope), fleets=args.fleet
            )
        print(key)
        return 0
    url = recorded_store(args)
    if url is None:  # no store: no key to list or revoke, and none is made
        if args.action == "revoke":
            raise unknown_key(args.name)
        return 0
    with open_store(url) as store:
        if args.action == "revoke":
            revoke_api_key(store, args.name)
            print(f"revoked {args.name}")
            return 0
        keys = store.api_keys.all()
    for found in keys:
        state = f"revoked {found.revoked_at:%Y-%m-%d}" if found.revoked_at else "active"
        fleets = ",".join(found.fleets) or "all fleets"
        print(
            f"{found.name}\t{found.scope}\t{fleets}\t"
            f"created {found.created_at:%Y-%m-%d %H:%M}\t{state}"
        )
    return 0
