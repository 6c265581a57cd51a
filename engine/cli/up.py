"""engine up SPEC [--yes] [--format text|json] [--timeout DURATION] [--delete-orphans]
engine destroy SPEC [--yes] [--format text|json]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "up",
        parents=[common],
        help="make the fleet exist and every server ready",
        description="Show the plan, ask (or --yes), then create, change and delete servers, "
        "wait for each to phone home, install it over SSH and hear from its agent. Holds the "
        "fleet's lock. A run that is interrupted is finished by the next one. Exit 0 when "
        "every server is ready, 1 otherwise.",
    )
    up.add_argument("spec", metavar="SPEC", help="the fleet spec (YAML)")
    up.add_argument("--yes", action="store_true", help="apply without asking")
    up.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people; json streams one event per line (plan, stages, done) for CI",
    )
    up.add_argument(
        "--timeout",
        default="15m",
        metavar="DURATION",
        help="how long to wait for servers to become ready, e.g. 900s, 15m (default 15m)",
    )
    up.add_argument(
        "--delete-orphans",
        action="store_true",
        help="also delete servers that carry the fleet's labels but that neither the spec "
        "nor the state store knows",
    )
    up.set_defaults(run=run_up)
    destroy = sub.add_parser(
        "destroy",
        parents=[common],
        help="delete every server of the fleet, its network, state and keys",
        description="Delete everything the fleet owns (found by its labels), its rows in the "
        "state store and its keys. Asks first unless --yes.",
    )
    destroy.add_argument("spec", metavar="SPEC", help="the fleet spec (YAML)")
    destroy.add_argument("--yes", action="store_true", help="destroy without asking")
    destroy.add_argument("--format", choices=("text", "json"), default="text")
    destroy.set_defaults(run=run_destroy)


def ask(question: str) -> bool:
    """Ask on the terminal; without one, refuse (a pipeline must say --yes)."""
    if not sys.stdin.isatty():
        raise EngineError(
            "nothing was changed: this needs a confirmation and there is no terminal to ask "
            "on; run again with --yes"
        )
    answer = input(f"{question} Only 'yes' goes ahead: ")
    return answer.strip() == "yes"


def _options(args: argparse.Namespace, timeout_s: float = 900.0) -> Any:
    from engine.up import RunOptions

    return RunOptions(
        state_dir=Path(args.state_dir),
        state=args.state,
        yes=args.yes,
        json_lines=args.format == "json",
        timeout_s=timeout_s,
        delete_orphans=getattr(args, "delete_orphans", False),
    )


def run_up(args: argparse.Namespace) -> int:
    import re

    from engine.spec import parse_duration
    from engine.up import up

    if not re.fullmatch(r"[1-9][0-9]{0,5}[smh]", args.timeout):
        raise EngineError(f"--timeout {args.timeout}: write a duration such as 900s, 15m or 1h")
    options = _options(args, timeout_s=parse_duration(args.timeout))
    return up(Path(args.spec), options, sys.stdout, ask)


def run_destroy(args: argparse.Namespace) -> int:
    from engine.up import destroy

    return destroy(Path(args.spec), _options(args), sys.stdout, ask)
