"""Benchmark: what the reconcile loop of `engine serve` costs per interval for a fleet of
1,000 servers (1% drift), in report mode.

One run is what the loop does each `reconcile.interval`: the fleet's servers read with
paged list calls from the fake Hetzner API (tests/fakes/hcloud.py, in another process over
loopback, answering after `--latency-ms`), the store's records read from SQLite, the plan
made, the drift recorded as an event. Printed: per run, the API calls, the engine's CPU time
(this process; the fake's is its own) and the wall time; and what that is an hour at the
default 5-minute interval beside Hetzner's 3,600 requests an hour.

    python bench/reconcile.py [--servers 1000] [--runs 5] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.preview import bench_spec, drifted_inventory  # noqa: E402
from engine.catalog import load_catalog  # noqa: E402
from engine.providers.seam import RunOptions, Site  # noqa: E402
from engine.reconcile import FleetWatch  # noqa: E402
from engine.spec import load_spec  # noqa: E402
from engine.state.store import open_store  # noqa: E402
from engine.up import backend_for  # noqa: E402

HETZNER_PER_HOUR = 3600
STALE = "sha256:0000000000000000"  # bench.preview's drifted install


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain = folder / "plain.yaml"
        plain.write_text(yaml.safe_dump(bench_spec(servers=args.servers), sort_keys=False))
        fleet = load_spec(plain)
        _, records, _ = drifted_inventory(fleet, load_catalog("hcloud"))
        fake = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "preview.py"), "--serve-fake", str(plain),
             str(args.latency_ms / 1000)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            assert fake.stdout is not None
            url, _, token = fake.stdout.readline().strip().partition(" ")
            if not url:
                raise SystemExit("the fake Hetzner API did not start")
            live = folder / "live.yaml"
            live.write_text(yaml.safe_dump(bench_spec(f"{url}/v1", args.servers), sort_keys=False))
            fleet = load_spec(live)
            os.environ["HCLOUD_TOKEN"] = token
            state_dir = folder / "state"
            with open_store(f"sqlite:///{folder / 'state.db'}") as store:
                backend = backend_for(fleet, RunOptions(state_dir=state_dir), print)
                backend.connect()
                site = Site(host="127.0.0.1", port=8470, url="https://127.0.0.1:8470", sources=())
                watch = FleetWatch(fleet, store, backend, site, state_dir, opened=False)
                # Installed as this control plane installs, but for the 1% drifted on purpose.
                store.servers.save_all(
                    [
                        r
                        if r.install_hash == STALE
                        else dataclasses.replace(r, install_hash=watch.digest)
                        for r in records
                    ]
                )
                runs = []
                for _ in range(args.runs):
                    wall, cpu = time.perf_counter(), time.process_time()
                    outcome = watch.reconcile()
                    runs.append(
                        (outcome.api_calls, time.process_time() - cpu, time.perf_counter() - wall)
                    )
        finally:
            if fake.stdin:
                fake.stdin.close()
            fake.wait(timeout=30)
    calls = max(run[0] for run in runs)
    cpu = sorted(run[1] for run in runs)[len(runs) // 2]
    wall = sorted(run[2] for run in runs)[len(runs) // 2]
    per_hour = calls * 3600 // 300
    print(
        f"reconcile loop, {args.servers:,} servers on the fake Hetzner API answering after "
        f"{args.latency_ms:.0f} ms, {len(outcome.drift)} changes of drift, median of "
        f"{args.runs} runs (load average {os.getloadavg()[0]:.2f}):"
    )
    print(
        f"  per run:  {calls} API calls, {cpu * 1000:.0f} ms engine CPU, {wall * 1000:.0f} ms wall"
    )
    print(
        f"  an hour at the default 5m interval: {per_hour} calls "
        f"({100 * per_hour / HETZNER_PER_HOUR:.1f}% of Hetzner's {HETZNER_PER_HOUR}), "
        f"{cpu * 12:.1f} s CPU"
    )


if __name__ == "__main__":
    main()
