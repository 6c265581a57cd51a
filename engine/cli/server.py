"""engine server reboot|poweroff|poweron|rebuild|snapshot SPEC NAME [--timeout DURATION]
[--format text|json] [--listen HOST:PORT] [--engine-address ADDRESS]..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SIGNALS = ("reboot", "poweroff", "poweron", "rebuild", "snapshot")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    from engine.cli.up import add_run_arguments

    parser = sub.add_parser(
        "server",
        parents=[common],
        help="reboot, power off, power on, rebuild or snapshot one server",
        description="Send one server a signal through its provider and wait until the "
        "provider says it is done (a rebuilt server: until it is installed and ready again, "
        "with the control plane running as in `engine up`). Holds the fleet's lock; every "
        "signal is recorded in the state store. Exit 0 when done, 1 otherwise.",
    )
    parser.add_argument("signal", choices=SIGNALS, metavar="SIGNAL", help=", ".join(SIGNALS))
    parser.add_argument("spec", metavar="SPEC", help="the fleet spec (YAML)")
    parser.add_argument("name", metavar="NAME", help="the server, e.g. web-1")
    add_run_arguments(parser, waits_for="the provider's action (and a rebuilt server)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli.up import run_options
    from engine.providers.seam import Signal
    from engine.signals import signal_server

    return signal_server(
        Path(args.spec), args.name, Signal(args.signal), run_options(args, yes=True), sys.stdout
    )
