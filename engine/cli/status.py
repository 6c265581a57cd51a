"""engine status SPEC [--format text|json] [--state URL]"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli.options import spec_file
from engine.term import paint

if TYPE_CHECKING:
    from engine.providers import ActualServer
    from engine.state import ServerRecord

_STEP_TITLES = ("create", "boot", "phone-home", "install", "agent")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "status",
        parents=[common],
        help="show each server's stage, age and how long each step took",
        description="Each server's lifecycle stage and age, and the time each step took "
        "(create, boot, phone-home, install, agent ready) with the medians over the fleet; "
        "beside the stored stage, what the provider says when the two disagree.",
    )
    parser.add_argument("spec", metavar="SPEC", type=spec_file, help="the fleet spec (YAML)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="show only what the state store knows: ask neither the provider what it has nor "
        "the agents for live metrics",
    )
    parser.set_defaults(run=run)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}m"


def run(args: argparse.Namespace) -> int:
    from engine.cli import recorded_store
    from engine.controlplane.views import provider_view, server_document
    from engine.lifecycle import STEPS, median_durations
    from engine.spec import load_spec
    from engine.state.store import open_store

    fleet = load_spec(args.spec, state_dir=args.state_dir)
    url = recorded_store(args)
    now = dt.datetime.now(dt.UTC)
    documents: list[dict[str, Any]] = []
    records: dict[str, ServerRecord] = {}
    if url is not None:
        with open_store(url) as store:
            transitions = store.servers.transitions(fleet.name)
            reports = {r.server: r for r in store.agents.reports(fleet.name)}
            records = {r.name: r for r in store.servers.all(fleet.name)}
            documents = [
                server_document(r, transitions, reports.get(r.name), now=now)
                for r in records.values()
            ]
    medians = dict(median_durations([d["steps"] for d in documents]))
    live = {} if args.no_live else _live_metrics(args, fleet, documents)
    actual, unread = (None, "not asked (--no-live)") if args.no_live else _provider(fleet)
    for document in documents:
        document["live"] = live.get(document["name"])
        document["provider_view"] = (
            None
            if actual is None
            else provider_view(records[document["name"]], actual.get(document["name"]))
        )
    if args.format == "json":
        document = {"version": 1, "fleet": fleet.name, "servers": documents, "medians": medians}
        print(json.dumps({**document, "provider_unread": unread or None}, indent=2))
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
        view = d["provider_view"]
        if view is not None and view["disagrees"]:
            print(f"{'':<16} " + paint(_disagreement(fleet.provider.name, view, d), "red"))
    print(
        f"{'median':<16} {'':<12} {'':>7}  "
        + " ".join(f"{_seconds(medians[s]):>10}" for s in STEPS)
    )
    if live:
        print()
        print(paint(f"{'server':<16} {'cpu':>6} {'load':>6} {'memory':>17}  fullest disk", "bold"))
        for name, metrics in live.items():
            if "error" in metrics:
                print(f"{name:<16} {paint('no answer', 'red')}: {metrics['error']}")
                continue
            memory = f"{metrics['memory_used_gb']:.1f}/{metrics['memory_total_gb']:.1f} GB"
            disk = metrics["fullest_disk"]
            shown = f"{disk['percent']:.0f}% {disk['mountpoint']}" if disk else "-"
            print(
                f"{name:<16} {metrics['cpu_percent']:>5.1f}% {metrics['load1']:>6.2f} "
                f"{memory:>17}  {shown}"
            )
    if unread:
        print(f"{fleet.provider.name} not read: {unread}")
    scanned = [d["name"] for d in documents if d["host_keys_source"] == "keyscan"]
    if scanned:
        print(
            paint("warning: ", "yellow") + f"host keys of {', '.join(scanned)} were read by "
            "ssh-keyscan during polling, NOT pinned from an authenticated phone-home"
        )
    return 0


def _disagreement(provider: str, view: dict[str, Any], document: dict[str, Any]) -> str:
    """`local says exited (exit code 137 at ...), not ready: engine up powers it on`."""
    if view["status"] == "missing":
        return f"{provider} has no such server, not {document['stage']}: engine up creates it"
    how = [f"exit code {view['exit_code']}"] if view["exit_code"] is not None else []
    how += [f"at {view['stopped_at']}"] if view["stopped_at"] else []
    detail = f" ({', '.join(how)})" if how else ""
    return (
        f"{provider} says {view['status']}{detail}, not {document['stage']}: engine up powers it on"
    )


def _provider(fleet: Any) -> tuple[dict[str, ActualServer] | None, str]:
    """The fleet's servers as the provider lists them now, by name; or None and why not."""
    from engine.errors import EngineError
    from engine.providers.registry import inventory_reader
    from engine.secrets import token_from_env

    env = fleet.provider.token_env
    try:
        token = token_from_env(env) if env else ""
        if env and not token:
            return None, f"export {env}=... (a read-only token is enough) to compare with it"
        reader = inventory_reader(fleet, token=token)
        return {server.name: server for server in reader.read_servers()}, ""
    except EngineError as error:
        return None, str(error)


def _live_metrics(
    args: argparse.Namespace, fleet: Any, documents: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Metrics from every ready server's agent, asked in parallel over HTTPS (no SSH): an
    agent that does not answer in time only costs its own row."""
    from engine.agent.client import gather_metrics
    from engine.agent.endpoint import recorded_endpoints

    ready = [d["name"] for d in documents if d["stage"] in ("ready", "unhealthy")]
    endpoints = recorded_endpoints(Path(args.state_dir), fleet, args.state)
    results = gather_metrics([endpoints[n] for n in ready if n in endpoints], timeout_s=5.0)
    live: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        if result.metrics is None:
            live[name] = {"error": result.error or "no answer"}
            continue
        m = result.metrics
        fullest = max(m.disks, key=lambda d: d.percent, default=None)
        live[name] = {
            "cpu_percent": m.cpu_percent,
            "load1": m.load[0],
            "memory_used_gb": m.memory_used_bytes / 1e9,
            "memory_total_gb": m.memory_total_bytes / 1e9,
            "memory_percent": m.memory_percent,
            "fullest_disk": None
            if fullest is None
            else {"mountpoint": fullest.mountpoint, "percent": fullest.percent},
            "uptime_s": m.uptime_s,
            "collected_at": m.collected_at,
        }
    return live
