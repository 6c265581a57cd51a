"""engine preview SPEC [--format text|markdown|json] [--detailed-exitcode] [--against-ref REF]
[--delete-orphans] [--adopt]"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.cli.options import spec_file


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "preview",
        parents=[common],
        help="show what would change to make the fleet match the spec, and what it costs",
        description="Compare the spec with what exists (read from the provider with paged list "
        "calls, and the state store) or with the spec at a git ref, and print the plan: every "
        "change with its reasons, disruptive changes, problems that block it, and the monthly "
        "cost before and after. Changes nothing and takes no lock. Exit 0 when the plan can be "
        "applied, 1 when it cannot or on error; with --detailed-exitcode, 2 when changes are "
        "pending.",
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there is nothing to do, 2 when changes are pending, 1 on errors",
    )
    parser.add_argument(
        "--against-ref",
        metavar="REF",
        help="compare with the spec as committed at this git ref instead of reading the "
        "provider: needs no credentials (pull requests from forks, offline review)",
    )
    parser.add_argument(
        "--delete-orphans",
        action="store_true",
        help="plan to delete servers that carry the fleet's labels but that neither the spec "
        "nor the state store knows (by default they are left alone with a warning)",
    )
    parser.add_argument(
        "--adopt",
        action="store_true",
        help="show what taking over servers made by another state directory for a fleet of "
        "this name would do (engine up --adopt)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import gc
    import json

    # A preview builds a few records per server (pages' JSON, servers, the store's rows, the
    # diff's), none of them in a cycle, and keeps most to the end: the cyclic collector would
    # walk them again and again as they pile up (0.4 s of CPU for 10,000 servers). Its imports
    # (the state store's, the provider's SDK) make objects that live to the end too.
    collecting = gc.isenabled()
    gc.disable()
    try:
        from engine.preview import plan_preview
        from engine.render import render_json, render_markdown, render_text
        from engine.term import use_colour

        plan = plan_preview(
            args.spec,
            state_dir=args.state_dir,
            state=args.state,
            against_ref=args.against_ref,
            delete_orphans=args.delete_orphans,
            adopt=args.adopt,
        )
        if args.against_ref is None:  # the store was read: a missing one --state names, said
            from engine.cli import recorded_store

            recorded_store(args)
        if args.format == "json":
            print(json.dumps(render_json(plan), indent=2))
        elif args.format == "markdown":
            print("\n".join(render_markdown(plan)), end="")
        else:
            print(render_text(plan, colour=use_colour(sys.stdout)), end="")
    finally:
        if collecting:
            gc.enable()
    if plan.is_blocked:
        return 1
    return 2 if args.detailed_exitcode and plan.has_changes else 0
