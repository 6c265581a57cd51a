"""Benchmark: how long the dashboard's pages take with a fleet of 1,000 servers (the issue's
bar: under a second each on this machine).

The store (SQLite) is filled as a served fleet leaves it (tests/support/dashboard.py: every
server ready with its agent's last heartbeat and the stages it went through, three with an
hour of metric history, and an alert about every server: one in ten firing, the others
resolved); the app runs on a real uvicorn on loopback, signed in with a read key. Printed per
page: the median and the slowest of `--runs` requests, from sending to the last byte.

    python bench/dashboard.py [--servers 1000] [--runs 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.controlplane.apikeys import create_api_key  # noqa: E402
from engine.controlplane.app import AppSettings, create_app  # noqa: E402
from engine.model import Stage  # noqa: E402
from engine.state import AlertRecord, AlertState  # noqa: E402
from engine.state.store import open_store  # noqa: E402
from tests.support.dashboard import fill_store, sign_in  # noqa: E402
from tests.support.http import serve  # noqa: E402

PAGES = (
    ("fleet page 1", "/fleets/demo"),
    ("fleet page 10", "/fleets/demo?page=10"),
    ("fleet filtered", "/fleets/demo?stage=ready&q=web-9"),
    ("fleets overview", "/"),
    ("server, 1 h charts", "/fleets/demo/servers/web-1"),
    ("events", "/fleets/demo/events"),
    ("alerts", "/alerts"),
    ("alerts filtered", "/alerts?state=firing&q=web-9"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, open_store(f"sqlite:///{tmp}/state.db") as store:
        state_dir = Path(tmp) / "state"
        fill_store(store, servers=args.servers)
        # Each server's way to ready, as the fleet page's step medians read it.
        with store.transaction() as tx:
            for n in range(1, args.servers + 1):
                for stage in (Stage.CREATING, Stage.BOOTING, Stage.PHONED_HOME, Stage.READY):
                    tx.servers.set_stage("demo", f"web-{n}", stage)
        # A bad day's alerts: every server ran hot once; one in ten still does.
        now = dt.datetime.now(dt.UTC)
        for n in range(1, args.servers + 1):
            firing = n % 10 == 0
            store.alerts.save(
                AlertRecord(
                    fleet="demo",
                    alert="hot",
                    subject=f"web-{n}",
                    state=AlertState.FIRING if firing else AlertState.RESOLVED,
                    since=now - dt.timedelta(minutes=n),
                    value=97.5,
                    fired_at=now - dt.timedelta(minutes=n + 5),
                    resolved_at=None if firing else now - dt.timedelta(minutes=n),
                )
            )
        key = create_api_key(store, state_dir, "bench")
        app = create_app(store, AppSettings(state_dir=state_dir), dashboard=True)
        with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            if sign_in(client, key).status_code != 303:
                raise SystemExit("could not sign in")
            print(f"dashboard pages with {args.servers} servers, {args.runs} runs each")
            for label, path in PAGES:
                took = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    answer = client.get(path)
                    took.append(time.perf_counter() - start)
                    if answer.status_code != 200:
                        raise SystemExit(f"{path}: HTTP {answer.status_code}")
                print(
                    f"  {label:<20} median {statistics.median(took) * 1000:7.1f} ms   "
                    f"slowest {max(took) * 1000:7.1f} ms   {len(answer.content) // 1024} KiB"
                )


if __name__ == "__main__":
    main()
