"""engine deploy SPEC [APP] [--format text|json]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import spec_file


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "deploy",
        parents=[common],
        help="roll the spec's apps (or one) out to the fleet's servers, through their agents",
        description="Roll each app whose version differs from the spec's out to the servers "
        "of its groups that are ready, through their agents (never SSH): one group after the "
        "other, update.max_unavailable servers at a time; each new container must be healthy "
        "within update.health_timeout and stay healthy for update.monitor (watched while the "
        "next ones switch). A failed server "
        "stops the rollout and (rollback: auto) puts every server it changed back. Servers "
        "themselves are not touched. Holds the fleet's lock. Exit 0 when every rollout "
        "succeeded, 1 otherwise.",
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    parser.add_argument("app", metavar="APP", nargs="?", help="only this app")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people; json streams one event per line (rollout, app, done) for CI",
    )
    parser.set_defaults(run=run, changes=True)


def run(args: argparse.Namespace) -> int:
    from engine.apps.commands import deploy
    from engine.cli.up import run_options

    return deploy(Path(args.spec), args.app, run_options(args, yes=True), sys.stdout)
