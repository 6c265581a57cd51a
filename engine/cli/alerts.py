"""engine alerts [--fleet NAME] [--all] [--format text|json] [--state URL]"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "alerts",
        parents=[common],
        help="list the alerts engine serve raised: firing and pending, or all",
        description="The alerts the fleets' specs declare, as engine serve last judged them: "
        "firing (and pending) ones by default, resolved ones too with --all.",
    )
    parser.add_argument("--fleet", metavar="NAME", help="only this fleet's alerts")
    parser.add_argument("--all", action="store_true", help="resolved alerts too")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli import recorded_store
    from engine.state import AlertRecord, AlertState
    from engine.state.store import open_store

    url = recorded_store(args)
    found: list[AlertRecord] = []
    if url is not None:  # no store: no alert was raised, and none is made
        with open_store(url) as store:
            found = [
                a
                for a in store.alerts.all(args.fleet)
                if args.all or a.state is not AlertState.RESOLVED
            ]
    if args.format == "json":
        print(
            json.dumps(
                [
                    {
                        "fleet": a.fleet,
                        "alert": a.alert,
                        "subject": a.subject,
                        "state": str(a.state),
                        "since": a.since.isoformat(),
                        "value": a.value,
                        "fired_at": a.fired_at.isoformat() if a.fired_at else None,
                        "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
                    }
                    for a in found
                ],
                indent=2,
            )
        )
        return 0
    if not found:
        print("no alert is firing" if not args.all else "no alert was raised")
        return 0
    for a in found:
        value = "" if a.value is None else f"{a.value:g}"
        subject = a.subject or "(fleet)"
        print(
            f"{a.fleet}\t{a.alert}\t{subject}\t{a.state}\tsince {a.since:%Y-%m-%d %H:%M}\t{value}"
        )
    return 0
