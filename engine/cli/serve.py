"""engine serve [--listen HOST:PORT] [--state URL] [--spec SPEC]... [--workers N]"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from engine.cli.options import count, networks, seconds, spec_file
from engine.errors import EngineError
from engine.secrets import redact

DEFAULT_LISTEN = "127.0.0.1:8470"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve",
        parents=[common],
        help="run the control plane: phone-home, heartbeats, the fleet API and job workers",
        description="Run the control plane until interrupted, for fleets that live longer "
        "than one `engine up`. Several `engine serve` on one PostgreSQL store share the job "
        "queue. Every fleet whose spec the store holds (--spec, or PUT /v1/fleets/FLEET) is "
        "served: installed, watched and, with reconcile.mode repair, repaired.",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    parser.add_argument(
        "--spec",
        action="append",
        type=spec_file,
        default=[],
        metavar="SPEC",
        help="serve this fleet: its spec is stored as the fleet's desired state, as a PUT "
        "through the fleet API stores one (repeatable); its provider token variable lets the "
        "control plane read the provider inventory",
    )
    parser.add_argument(
        "--workers", type=count(0, 100), default=2, metavar="N", help="job worker threads"
    )
    parser.add_argument(
        "--install-entry",
        metavar="MODULE:FUNCTION",
        help="the install step to run install jobs with (a callable taking the target and "
        "the fleet's settings); without it install jobs wait for a control plane that has one",
    )
    parser.add_argument(
        "--heartbeat-misses",
        type=count(1, 1000),
        default=3,
        metavar="N",
        help="heartbeats in a row a ready server may miss before it is unhealthy (default 3)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        type=networks,
        metavar="IPS",
        help="proxies whose X-Forwarded-For is trusted as the client address (default "
        "127.0.0.1: a reverse proxy on this host)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="log lines as JSON objects (default) or as text",
    )
    parser.add_argument(
        "--drain",
        type=seconds(at_most=86400, zero=True),
        default=60.0,
        metavar="SECONDS",
        help="on SIGTERM, how long jobs under way may take to finish before they are handed "
        "back to the queue (default 60)",
    )
    parser.set_defaults(run=run)


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); an EngineError saying how to write it."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise EngineError(
            f"--listen {value}: give HOST:PORT, e.g. 0.0.0.0:8470, [::]:8470 or 127.0.0.1:0"
        )
    return host, int(port)


def load_entry(value: str) -> Any:
    """The callable MODULE:FUNCTION names."""
    module_name, sep, name = value.partition(":")
    if not sep or not module_name or not name:
        raise EngineError(f"--install-entry {value}: give MODULE:FUNCTION")
    try:
        entry = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise EngineError(f"--install-entry {value}: cannot load it ({error})") from None
    if not callable(entry):
        raise EngineError(f"--install-entry {value} is not callable")
    return entry


def run(args: argparse.Namespace) -> int:
    from engine.controlplane.app import install_log_redaction
    from engine.serve import serve
    from engine.spec import load_spec
    from engine.state.store import open_state

    host, port = parse_listen(args.listen)
    installer = load_entry(args.install_entry) if args.install_entry else None
    for path in args.spec:  # every spec checked before anything starts
        load_spec(path, state_dir=args.state_dir)
    configure_logging(args.log_format)
    install_log_redaction()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with open_state(Path(args.state_dir), args.state) as store:
        serve(
            store,
            Path(args.state_dir),
            [Path(path) for path in args.spec],
            state=args.state,
            listen=(host, port),
            stop=stop,
            workers=args.workers,
            install_entry=installer,
            heartbeat_misses=args.heartbeat_misses,
            forwarded_allow_ips=args.forwarded_allow_ips,
            access_log=args.access_log,
            drain_s=args.drain,
            on_listening=lambda _url, line: print(line, flush=True),
        )
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the fields a call passed in
    `extra` (fleet, seconds, api_calls). Secrets are masked before (RedactingFilter)."""

    # uvicorn adds its message again with terminal colours: not for a log file.
    _PLAIN = frozenset(vars(logging.makeLogRecord({}))) | {"color_message"}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(
            (k, v) for k, v in vars(record).items() if k not in self._PLAIN and k != "message"
        )
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def configure_logging(log_format: str) -> None:
    """The root logger writes to stderr, as JSON lines or as text."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # httpx says every request it sends (agents, webhooks) at INFO: the jobs say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
