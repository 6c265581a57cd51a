"""engine up SPEC [--yes] [--dry-run] [--format text|json] [--timeout DURATION]
               [--attempts N] [--delete-orphans] [--adopt] [--listen HOST:PORT]
               [--engine-address ADDRESS]...
engine destroy SPEC [--yes] [--delete-snapshots] [--format text|json]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.options import address, count, duration, spec_file
from engine.errors import EngineError


def add_run_arguments(parser: argparse.ArgumentParser, *, waits_for: str) -> None:
    """--format, --timeout, and where a cloud run's control plane listens (up, server)."""
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people; json streams one event per line (plan, stages, done) for CI",
    )
    parser.add_argument(
        "--timeout",
        type=duration,
        default="15m",
        metavar="DURATION",
        help=f"how long to wait for {waits_for}, e.g. 900s, 15m (default 15m)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="Hetzner Cloud and DigitalOcean: where this run's control plane listens; servers "
        "phone home to control_plane.url, which must lead here (default: 0.0.0.0 and the "
        "URL's port). The local provider picks its own",
    )
    parser.add_argument(
        "--engine-address",
        action="append",
        type=address,
        default=[],
        metavar="ADDRESS",
        help="Hetzner Cloud and DigitalOcean: an address (or CIDR range) the engine connects "
        "to servers from; the servers' firewalls let SSH and the agent port in from these "
        "only (repeatable; default: control_plane.url's host, resolved)",
    )


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
    up.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    up.add_argument("--yes", action="store_true", help="apply without asking")
    add_run_arguments(up, waits_for="servers to become ready")
    up.add_argument(
        "--delete-orphans",
        action="store_true",
        help="also delete servers that carry the fleet's labels but that neither the spec "
        "nor the state store knows",
    )
    up.add_argument(
        "--attempts",
        type=count(1, 100),
        default=3,
        metavar="N",
        help="tries each server gets in this run: one that fails is looked at again and "
        "repaired after a back-off (5 s, 10 s, ...) until it is ready or its tries are spent "
        "(default 3); the next run starts with a fresh budget",
    )
    up.add_argument(
        "--adopt",
        action="store_true",
        help="take over servers that another state directory made for a fleet of this name "
        "(they carry another fleet id): each is made anew with this engine's keys",
    )
    up.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing: show the plan and ask every installed server over SSH which "
        "install operations would change something",
    )
    up.set_defaults(run=run_up, changes=True)
    destroy = sub.add_parser(
        "destroy",
        parents=[common],
        help="delete every server of the fleet, its network, state and keys",
        description="Delete everything the fleet owns (found by its labels), its rows in the "
        "state store, its install logs and its keys. Its snapshots (`engine server snapshot`) "
        "are backups: the plan lists them and they are kept unless --delete-snapshots. Asks "
        "first unless --yes.",
    )
    destroy.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    destroy.add_argument("--yes", action="store_true", help="destroy without asking")
    destroy.add_argument(
        "--delete-snapshots",
        action="store_true",
        help="delete the snapshots this state directory made of the fleet too (kept "
        "otherwise: they are backups)",
    )
    destroy.add_argument("--format", choices=("text", "json"), default="text")
    destroy.set_defaults(run=run_destroy, changes=True)


def ask(question: str) -> bool:
    """Ask on the terminal; without one, refuse (a pipeline must say --yes)."""
    if not sys.stdin.isatty():
        raise EngineError(
            "nothing was changed: this needs a confirmation and there is no terminal to ask "
            "on; run again with --yes"
        )
    answer = input(f"{question} Only 'yes' goes ahead: ")
    return answer.strip() == "yes"


def run_options(args: argparse.Namespace, *, yes: bool) -> Any:
    """The RunOptions the arguments give (those a command lacks keep their defaults)."""
    from engine.cli.serve import parse_listen
    from engine.providers.seam import RunOptions

    listen = getattr(args, "listen", None)
    return RunOptions(
        state_dir=Path(args.state_dir),
        state=args.state,
        yes=yes,
        json_lines=args.format == "json",
        timeout_s=getattr(args, "timeout", 900.0),
        delete_orphans=getattr(args, "delete_orphans", False),
        listen=parse_listen(listen) if listen else None,
        engine_addresses=tuple(getattr(args, "engine_address", ())),
        attempts=getattr(args, "attempts", 3),
        adopt=getattr(args, "adopt", False),
    )


def run_up(args: argparse.Namespace) -> int:
    from engine.up import dry_run, up

    options = run_options(args, yes=args.yes)
    if args.dry_run:
        from engine.cli import recorded_store

        recorded_store(args)  # a store --state names and that is missing: said
        return dry_run(Path(args.spec), options, sys.stdout)
    return up(Path(args.spec), options, sys.stdout, ask)


def run_destroy(args: argparse.Namespace) -> int:
    from engine.up import destroy

    return destroy(
        Path(args.spec),
        run_options(args, yes=args.yes),
        sys.stdout,
        ask,
        delete_snapshots=args.delete_snapshots,
    )
