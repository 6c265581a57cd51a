"""engine apps status SPEC [--format text|json]
engine apps history SPEC [APP] [--format text|json]
engine apps rollback SPEC APP [--format text|json]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import spec_file


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "apps",
        help="what the apps run where, their rollouts, and rolling one back",
        description="Day-2 views and actions on the spec's apps, through the servers' agents.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    status = verbs.add_parser(
        "status",
        parents=[common],
        help="each app on each server: version, state, health, restarts, since",
        description="Ask every server's agent what each app runs there: its version (marked "
        "when it is not the spec's), state, health (one check, as the spec says), restarts and "
        "since when it runs. Exit 0 when every server runs the spec's version, healthy.",
    )
    status.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(run=run_status)
    history = verbs.add_parser(
        "history",
        parents=[common],
        help="the rollouts the state store recorded, newest first",
        description="Every rollout of the fleet's apps (or of one) with its phase, when it "
        "started, how long it took and where each server ended.",
    )
    history.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    history.add_argument("app", metavar="APP", nargs="?", help="only this app")
    history.add_argument("--format", choices=("text", "json"), default="text")
    history.set_defaults(run=run_history)
    rollback = verbs.add_parser(
        "rollback",
        parents=[common],
        help="put every server the app's last rollout changed back on what it ran before",
        description="Put every server the last rollout of APP changed back on the version it "
        "ran before that rollout (each server's own: no version to name), one group after the "
        "other, update.max_unavailable at a time, each checked healthy. For rollback: manual, "
        "or to undo a rollout that succeeded. The spec still names the new version: the next "
        "`engine up` or `engine deploy` rolls it out again. Holds the fleet's lock. Exit 0 "
        "when every server is back.",
    )
    rollback.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    rollback.add_argument("app", metavar="APP", help="the app, e.g. web")
    rollback.add_argument("--format", choices=("text", "json"), default="text")
    rollback.set_defaults(run=run_rollback, changes=True)


def _options(args: argparse.Namespace) -> Any:
    from engine.providers.seam import RunOptions

    return RunOptions(
        state_dir=Path(args.state_dir), state=args.state, json_lines=args.format == "json"
    )


def run_status(args: argparse.Namespace) -> int:
    from engine.apps.commands import apps_status

    return apps_status(Path(args.spec), _options(args), sys.stdout, as_json=args.format == "json")


def run_history(args: argparse.Namespace) -> int:
    from engine.apps.commands import apps_history

    return apps_history(
        Path(args.spec), args.app, _options(args), sys.stdout, as_json=args.format == "json"
    )


def run_rollback(args: argparse.Namespace) -> int:
    from engine.apps.commands import rollback

    return rollback(Path(args.spec), args.app, _options(args), sys.stdout)
