"""engine server reboot|poweroff|poweron|rebuild|snapshot SPEC NAME [--timeout DURATION]
[--format text|json] [--listen HOST:PORT] [--engine-address ADDRESS]...
engine server update|upgrade SPEC NAME...|--all [--timeout DURATION] [--format text|json]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import spec_file

SIGNALS = ("reboot", "poweroff", "poweron", "rebuild", "snapshot")
TASKS = ("update", "upgrade")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    from engine.cli.up import add_run_arguments

    parser = sub.add_parser(
        "server",
        parents=[common],
        help="reboot, power off, power on, rebuild or snapshot one server; update or upgrade "
        "packages on some or all",
        description="Send one server a signal through its provider and wait until the "
        "provider says it is done (a rebuilt server: until it is installed and ready again, "
        "with the control plane running as in `engine up`). update and upgrade run the "
        "agent's system task (apt-get update, apt-get upgrade) through the agents instead, "
        "on the servers named or --all: one group after another, one server at a time, each "
        "server's apps checked healthy after it; a failure stops there. Holds the fleet's "
        "lock; every signal and task is recorded in the state store. Exit 0 when done, 1 "
        "otherwise.",
    )
    parser.add_argument(
        "signal",
        choices=SIGNALS + TASKS,
        metavar="SIGNAL",
        help=", ".join(SIGNALS + TASKS),
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    parser.add_argument("names", metavar="NAME", nargs="*", help="the server(s), e.g. web-1")
    parser.add_argument(
        "--all", action="store_true", help="update or upgrade: every server of the fleet"
    )
    add_run_arguments(parser, waits_for="the provider's action (and a rebuilt server)")
    parser.set_defaults(run=run, changes=True)


def run(args: argparse.Namespace) -> int:
    from engine.cli.up import run_options
    from engine.providers.seam import Signal
    from engine.signals import run_system_task, signal_server

    if args.signal in TASKS:
        if bool(args.names) == args.all:
            args.command_parser.error(
                f"{args.signal}: name the servers or give --all (one of them, not both)"
            )
    elif args.all or len(args.names) != 1:
        args.command_parser.error(f"{args.signal}: name exactly one server (e.g. web-1)")
    options = run_options(args, yes=True)
    if args.signal in TASKS:
        names = None if args.all else args.names
        return run_system_task(Path(args.spec), names, args.signal, options, sys.stdout)
    return signal_server(Path(args.spec), args.names[0], Signal(args.signal), options, sys.stdout)
