"""engine logs SPEC APP [--server NAME] [--follow] [--tail N]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import count, spec_file


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "logs",
        parents=[common],
        help="show an app's output on its servers, through their agents",
        description="Print the output (stdout and stderr) of an app's container on each "
        "server that runs it, or on one, read through the servers' agents. With several "
        "servers each line starts with its server's name. Exit 0 when every server's log was "
        "read, 1 otherwise.",
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    parser.add_argument("app", metavar="APP", help="the app, e.g. web")
    parser.add_argument("--server", metavar="NAME", help="only this server, e.g. web-1")
    parser.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new output until Ctrl-C"
    )
    parser.add_argument(
        "--tail",
        type=count(0, 1_000_000),
        default=100,
        metavar="N",
        help="lines from the end of each log to start with (default 100)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.apps.commands import logs
    from engine.providers.seam import RunOptions

    options = RunOptions(state_dir=Path(args.state_dir), state=args.state)
    return logs(
        Path(args.spec),
        args.app,
        options,
        sys.stdout,
        server=args.server,
        follow=args.follow,
        tail=args.tail,
    )
