"""engine status SPEC [--format text|json] [--state URL]"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from engine.term import paint

_STEP_TITLES = ("create", "boot", "phone-home", "install", "agent")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "status",
        parents=[common],
        help="show each server's stage, age and how long each step took",
        description="Each server's lifecycle stage and age, and the time each step took "
        "(create, boot, phone-home, install, agent ready) with the medians over the fleet.",
    )
    parser.add_argument("spec", metavar="SPEC", help="the fleet spec (YAML)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(run=run)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


def run(args: argparse.Namespace) -> int:
    from engine.controlplane.views import server_document
    from engine.lifecycle import STEPS, median_durations
    from engine.spec import load_spec
    from engine.state.store import open_store, state_url, store_exists

    fleet = load_spec(args.spec, state_dir=args.state_dir)
    url = state_url(Path(args.state_dir), args.state)
    now = dt.datetime.now(dt.UTC)
    documents: list[dict[str, Any]] = []
    if store_exists(url):
        with open_store(url) as store:
            transitions = store.transitions(fleet.name)
            reports = {r.server: r for r in store.agent_reports(fleet.name)}
            documents = [
                server_document(r, transitions, reports.get(r.name), now=now)
                for r in store.servers(fleet.name)
            ]
    medians = dict(median_durations([d["steps"] for d in documents]))
    if args.format == "json":
        print(
            json.dumps(
                {"version": 1, "fleet": fleet.name, "servers": documents, "medians": medians},
                indent=2,
            )
        )
        return 0
    if not documents:
        print(f"fleet {fleet.name}: no servers recorded yet (run engine up {args.spec})")
        return 0
    header = f"{'server':<16} {'stage':<12} {'age':>7}  " + " ".join(
        f"{t:>10}" for t in _STEP_TITLES
    )
    print(paint(header, "bold"))
    for d in documents:
        colour = {"ready": "green", "failed": "red", "unhealthy": "red"}.get(d["stage"], "yellow")
        steps = " ".join(f"{_seconds(d['steps'][s]):>10}" for s in STEPS)
        stage = paint(f"{d['stage']:<12}", colour)
        print(f"{d['name']:<16} {stage} {_seconds(d['age_s']):>7}  {steps}")
        if d["stage_reason"]:
            print(f"{'':<16} {d['stage_reason']}")
    print(
        f"{'median':<16} {'':<12} {'':>7}  "
        + " ".join(f"{_seconds(medians[s]):>10}" for s in STEPS)
    )
    scanned = [d["name"] for d in documents if d["host_keys_source"] == "keyscan"]
    if scanned:
        print(
            paint("warning: ", "yellow") + f"host keys of {', '.join(scanned)} were read by "
            "ssh-keyscan during polling, NOT pinned from an authenticated phone-home"
        )
    return 0
