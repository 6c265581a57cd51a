"""engine containers SPEC SERVER [--all] [--format text|json] [--agent HOST[:PORT]]
[--fingerprint SHA256]"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from engine.cli.options import seconds, spec_file
from engine.errors import EngineError
from engine.term import paint

if TYPE_CHECKING:
    from engine.agent.client import ContainerSummary

STATE_COLOURS = {"running": "green", "exited": "dim", "dead": "red", "restarting": "yellow"}


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "containers",
        parents=[common],
        help="list a server's containers, through its agent",
        description="List the containers on one server of a fleet, asked of the server's agent "
        "over HTTPS (its certificate pinned, the fleet's token sent). Exit 0 on success, 1 when "
        "the server or its agent cannot be reached or refuses.",
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    parser.add_argument("server", metavar="SERVER", help="a server of the fleet, e.g. web-1")
    parser.add_argument("--all", action="store_true", help="also list stopped containers")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--agent",
        metavar="HOST[:PORT]",
        help="the agent's address, instead of the one the engine recorded",
    )
    parser.add_argument(
        "--fingerprint",
        metavar="SHA256",
        help="the agent certificate's SHA-256 fingerprint to pin, instead of the recorded one",
    )
    parser.add_argument(
        "--timeout",
        type=seconds(at_most=3600),
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the agent's answer (default: 10)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.agent.client import AgentClient
    from engine.agent.endpoint import resolve_endpoint
    from engine.placement import fleet_server_names
    from engine.spec import load_spec

    fleet = load_spec(args.spec, state_dir=args.state_dir)
    names = fleet_server_names(fleet)
    if args.server not in names:
        raise EngineError(
            f"{args.server} is not a server of fleet {fleet.name} (its servers: "
            f"{', '.join(names)}); check the name"
        )
    endpoint = resolve_endpoint(
        args.state_dir,
        fleet,
        args.server,
        address=args.agent,
        fingerprint=args.fingerprint,
        state=args.state,
    )
    with AgentClient(endpoint, timeout_s=args.timeout) as client:
        containers = client.containers(include_stopped=args.all)
    if args.format == "json":
        document = {
            "version": 1,
            "fleet": fleet.name,
            "server": args.server,
            "containers": [_to_json(c) for c in containers],
        }
        print(json.dumps(document, indent=2))
    else:
        print(render_containers(args.server, containers, include_stopped=args.all))
    return 0


def _to_json(container: ContainerSummary) -> dict[str, Any]:
    return {
        "id": container.id,
        "name": container.name,
        "image": container.image,
        "state": container.state,
        "status": container.status,
        "created": container.created,
        "ports": list(container.ports),
    }


def render_containers(
    server: str, containers: Sequence[ContainerSummary], *, include_stopped: bool
) -> str:
    """A table of containers, like `docker ps`, or one line saying there are none."""
    if not containers:
        hint = "" if include_stopped else " (--all lists stopped ones too)"
        return f"no {'' if include_stopped else 'running '}containers on {server}{hint}"
    rows = [("NAME", "IMAGE", "STATE", "STATUS", "PORTS")]
    rows += [(c.name, c.image, c.state, c.status, ", ".join(c.ports)) for c in containers]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        if n > 0:
            padding = cells[2][len(row[2]) :]
            cells[2] = paint(row[2], STATE_COLOURS.get(row[2], "bold")) + padding
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)
