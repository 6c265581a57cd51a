"""engine dashboard SPEC [--port N]: a local fleet's control plane with its dashboard on
loopback, and a one-time sign-in link to it.

It runs `engine serve --spec SPEC` in this process (the spec stored as the fleet's desired
state, the fleet's provider opened as `engine up` opens it: for a local fleet, its Docker
engine, images and network), makes an API key of apply scope for that fleet alone, and prints
a link that signs a browser in with it once.
The key is revoked when the command stops (Ctrl-C), which ends the sessions it gave.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

from engine.cli.options import count, spec_file
from engine.errors import EngineError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "dashboard",
        parents=[common],
        help="serve a local fleet's dashboard on loopback and print a one-time sign-in link",
        description="Run the control plane for a local fleet (as `engine serve --spec SPEC` "
        "does) on 127.0.0.1 and print a link that signs a browser in to its dashboard, once. "
        "Ctrl-C stops it.",
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the local fleet's spec")
    parser.add_argument(
        "--port",
        type=count(0, 65535),
        default=0,
        metavar="N",
        help="port on 127.0.0.1 (default: a free one)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli.serve import configure_logging
    from engine.controlplane.apikeys import create_api_key, revoke_api_key
    from engine.controlplane.app import install_log_redaction
    from engine.controlplane.dashboard import SignInLinks
    from engine.model import ProviderName
    from engine.serve import serve
    from engine.spec import load_spec
    from engine.state import Scope
    from engine.state.store import open_state

    fleet = load_spec(args.spec, state_dir=args.state_dir)
    if fleet.provider.name is not ProviderName.LOCAL:
        raise EngineError(
            f"{args.spec}: fleet {fleet.name} runs on {fleet.provider.name}; engine dashboard "
            "serves a local fleet. For this one run `engine serve --spec "
            f"{args.spec}`, where its servers reach it, and open its address"
        )
    configure_logging("text")
    install_log_redaction()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    links = SignInLinks()
    state_dir = Path(args.state_dir)
    with open_state(state_dir, args.state) as store:
        name = f"dashboard-{secrets.token_hex(4)}"
        create_api_key(
            store,
            state_dir,
            name,
            scope=Scope.APPLY,
            fleets=(fleet.name,),
            actor="engine dashboard",
        )
        (key,) = [k for k in store.api_keys.all() if k.name == name]
        link = links.issue(key.key_id, then=f"/fleets/{fleet.name}")

        def listening(base: str, _line: str) -> None:
            print(
                f"dashboard of fleet {fleet.name}: {base}/\n"
                f"sign in (works once, for {links.ttl_s / 60:.0f} min): {base}{link}\n"
                "Ctrl-C stops it.",
                flush=True,
            )

        try:
            serve(
                store,
                state_dir,
                [Path(args.spec)],
                state=args.state,
                listen=("127.0.0.1", args.port),
                stop=stop,
                on_listening=listening,
                sign_in_links=links,
            )
        finally:
            revoke_api_key(store, name, actor="engine dashboard")
    print("stopped; the sign-in key is revoked", flush=True)
    return 0
