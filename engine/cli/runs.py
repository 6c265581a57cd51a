"""engine runs [FLEET] [RUN] [--format text|json] [--state URL]"""

from __future__ import annotations

import argparse
import json
from typing import Any

from engine.cli.options import count


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "runs",
        parents=[common],
        help="list the runs the fleet API started (applies, scaling, server actions)",
        description="The latest runs of every fleet, or of FLEET; with RUN, that run's "
        "progress and per-step timings (as GET /v1/fleets/FLEET/runs/RUN answers).",
    )
    parser.add_argument("fleet", nargs="?", metavar="FLEET")
    parser.add_argument("run_id", nargs="?", metavar="RUN")
    parser.add_argument(
        "--limit", type=count(1, 10_000), default=20, metavar="N", help="at most N runs"
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli import recorded_store
    from engine.controlplane.fleetapi import run_document
    from engine.errors import EngineError
    from engine.state import Run
    from engine.state.store import open_store

    url = recorded_store(args)
    runs: tuple[Run, ...] = ()
    if url is not None:  # no store: no run recorded, and none is made
        with open_store(url) as store:
            if args.run_id:
                found = store.runs.get(args.fleet, args.run_id)
                runs = () if found is None else (found,)
            else:
                runs = store.runs.all(args.fleet, limit=args.limit)
    if args.run_id and not runs:
        raise EngineError(
            f"fleet {args.fleet} has no run {args.run_id}; `engine runs {args.fleet}` lists them"
        )
    documents = [run_document(r) for r in runs]
    if args.format == "json":
        print(json.dumps({"runs": documents}, indent=2))
        return 0
    if not documents:
        print("no run recorded" + (f" for fleet {args.fleet}" if args.fleet else ""))
    for doc in documents:
        what = doc["kind"] + (
            f" {doc['request'].get('server')}" if "server" in doc["request"] else ""
        )
        print(
            f"{doc['id']}\t{doc['fleet']}\t{what}\t{doc['status']}\t{doc['created_at']}\t"
            f"by {doc['created_by']}" + (f"\t{doc['error']}" if doc["error"] else "")
        )
    if args.run_id and documents:
        timings = documents[0]["result"].get("timings", {}).get("servers", {})
        for server, steps in timings.items():
            shown = ", ".join(f"{k} {v:.1f} s" for k, v in steps.items() if v is not None)
            print(f"  {server}: {shown}")
    return 0
