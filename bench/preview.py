"""Benchmark: preview of a fleet against an inventory of the same size with 1% drift.

Prints, each measured in a fresh process:

1. pure, 10,000 servers: load + validate the spec, expand it, diff it against the inventory
   and the state store's records (given in memory), and render the plan as text, markdown and
   JSON (targets: <= 1.5 s, <= 300 MB peak RSS on a 2-core machine);
2. as users run it, for 1,000 and 10,000 servers on Hetzner and on DigitalOcean:
   `engine preview SPEC --format json` reading the inventory from the provider's fake API
   (tests/fakes/, another process, over loopback) that waits `--latency-ms` (default 50, a
   real API's round trip) before each answer, and the records from a SQLite state store: wall
   time, the engine's CPU time, peak memory and the API calls (targets for 10,000 at 50 ms:
   <= 2.5 s wall, <= 1.0 s engine CPU, <= ceil(N/50) + a few calls on Hetzner, ceil(N/200) + a
   few on DigitalOcean).

    python bench/preview.py [--latency-ms 50] [--sizes 1000,10000]
                            [--providers hcloud,digitalocean]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.validate import generated_spec  # noqa: E402
from engine.catalog import Catalog, load_catalog  # noqa: E402
from engine.diff import as_built, as_recorded  # noqa: E402
from engine.model import Fleet, Image, ImageKind, ownership_labels  # noqa: E402
from engine.placement import expand_fleet  # noqa: E402
from engine.plan import ACTIONS  # noqa: E402
from engine.providers import ActualServer  # noqa: E402
from engine.spec import load_spec  # noqa: E402
from engine.state import ServerRecord  # noqa: E402

GROUPS, PER_GROUP = 20, 500
GROUP_SIZE = 500  # servers per group in the generated specs
PROVIDERS = ("hcloud", "digitalocean")
TOKEN_ENV = {"hcloud": "HCLOUD_TOKEN", "digitalocean": "DIGITALOCEAN_TOKEN"}


@dataclasses.dataclass(frozen=True)
class Drift:
    """What a provider's drifted servers become: another type, another image."""

    server_type: str
    disk_gb: int
    image: str


# Sizes and images the fakes know (tests/fakes/).
DRIFT = {
    "hcloud": Drift(server_type="cpx11", disk_gb=40, image="debian-11"),
    "digitalocean": Drift(server_type="s-1vcpu-1gb", disk_gb=25, image="ubuntu-24-04-x64"),
}


def bench_spec(
    endpoint: str | None = None, servers: int = GROUPS * PER_GROUP, provider: str = "hcloud"
) -> dict[str, Any]:
    """bench/validate.py's generated spec of `servers` servers, with room in its limits and
    maybe an endpoint; on DigitalOcean, with sizes, an image and regions its fake knows."""
    spec = generated_spec(max(1, servers // GROUP_SIZE), min(servers, GROUP_SIZE))
    account = {"name": provider, "token_env": TOKEN_ENV[provider]}
    spec["provider"] = {**account, "endpoint": endpoint} if endpoint else account
    if provider == "digitalocean":
        spec["defaults"] = {
            **cast(dict[str, Any], spec["defaults"]),
            "server_type": "s-2vcpu-4gb",
            "image": "debian-12-x64",
            "locations": ["fra1", "ams3", "nyc3", "sgp1"],
        }
    spec["limits"] = {"servers": 20000, "monthly_cost": 500000}
    return spec


def bench_digest(fleet: Fleet) -> str:
    """The install digest the fleet's servers were installed with: the one `engine preview`
    expects where no run recorded its control plane (the benchmark's store has none)."""
    from engine.preview import recorded_digest

    return recorded_digest(fleet, None)


def drifted_inventory(
    fleet: Fleet, catalog: Catalog
) -> tuple[list[ActualServer], list[ServerRecord], dict[str, int]]:
    """The fleet as built and recorded, with 1% of it drifted in every way the diff knows."""
    changed = DRIFT[str(fleet.provider.name)]
    servers = [
        as_built(fleet, s, catalog, str(n)) for n, s in enumerate(expand_fleet(fleet, catalog), 1)
    ]
    digest = bench_digest(fleet)
    records = [as_recorded(fleet, s, dict(s.labels)["fleet-group"], digest) for s in servers]
    # 1% drift: 100 changes per 10,000 servers, at least one of each kind.
    per_10k = {"label": 30, "firewall": 20, "resize": 15, "replace": 10, "create": 10,
               "delete": 10, "reinstall": 5}  # fmt: skip
    drift = {kind: max(1, n * len(servers) // 10_000) for kind, n in per_10k.items()}
    chosen = iter(range(0, len(servers), max(1, len(servers) // sum(drift.values()))))
    for kind, count in drift.items():
        for _ in range(count if kind != "delete" else 0):
            i = next(chosen)
            server = servers[i]
            if kind == "label":
                labels = {**dict(server.labels), "role": "drifted"}
                servers[i] = dataclasses.replace(server, labels=tuple(sorted(labels.items())))
            elif kind == "firewall":
                servers[i] = dataclasses.replace(server, firewalls=())
            elif kind == "resize":
                servers[i] = dataclasses.replace(
                    server, server_type=changed.server_type, disk_gb=changed.disk_gb
                )
            elif kind == "replace":
                image = Image(kind=ImageKind.NAME, name=changed.image)
                servers[i] = dataclasses.replace(server, image=image)
            elif kind == "create":
                servers[i] = dataclasses.replace(server, provider_id="")  # removed below
            elif kind == "reinstall":
                records[i] = dataclasses.replace(records[i], install_hash="sha256:0000000000000000")
    missing = {s.name for s in servers if not s.provider_id}
    servers = [s for s in servers if s.provider_id]
    records = [r for r in records if r.name not in missing]
    first = fleet.groups[0].count
    for n in range(first + 1, first + 1 + drift["delete"]):
        name = f"g0-{n}"
        extra = dataclasses.replace(
            servers[0],
            name=name,
            provider_id=str(100_000 + n),
            labels=tuple(sorted({**dict(servers[0].labels),
                                 **dict(ownership_labels(fleet.name, "g0", name))}.items())),
        )  # fmt: skip
        servers.append(extra)
        records.append(as_recorded(fleet, extra, "g0", digest))
    return servers, records, drift


def run_pure(spec_path: str) -> dict[str, Any]:
    """Scenario 1, in this process: the work of a preview once the inventory is in memory."""
    from engine.diff import DiffOptions, diff_fleet
    from engine.render import render_json, render_markdown, render_text

    fleet = load_spec(spec_path)
    catalog = load_catalog("hcloud")
    servers, records, _ = drifted_inventory(fleet, catalog)
    best: dict[str, float] = {}
    for _ in range(5):
        steps: dict[str, float] = {}
        start = time.perf_counter()
        fleet = load_spec(spec_path)
        steps["load + validate"] = time.perf_counter() - start
        mark = time.perf_counter()
        plan = diff_fleet(
            fleet, catalog, servers, records, options=DiffOptions(install_hash=bench_digest(fleet))
        )
        steps["expand + diff"] = time.perf_counter() - mark
        mark = time.perf_counter()
        render_text(plan)
        render_markdown(plan)
        json.dumps(render_json(plan))
        steps["render text + markdown + json"] = time.perf_counter() - mark
        steps["total"] = time.perf_counter() - start
        best = {k: min(v, best.get(k, v)) for k, v in steps.items()}
    return {
        "seconds": best,
        "changes": {str(k): v for k, v in plan.counts().items()},
        "unchanged": plan.unchanged,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def serve_fake() -> None:
    """Scenario 2's fake provider API, in its own process, populated with the inventory."""
    from tests.support.http import serve

    fleet = load_spec(sys.argv[2])
    provider = str(fleet.provider.name)
    servers, _, _ = drifted_inventory(fleet, load_catalog(provider))
    fake = (hcloud_fake if provider == "hcloud" else digitalocean_fake)(fleet, servers)
    fake.latency_s = float(sys.argv[3])
    with serve(fake.app()) as url:
        print(url, fake.token, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


def hcloud_fake(fleet: Fleet, servers: list[ActualServer]) -> Any:
    """The fake Hetzner API holding `servers`."""
    from tests.fakes.hcloud import FakeHcloud

    fake = FakeHcloud()
    fake.add_firewall("bench-web")
    fake.add_network("bench-private")
    fake.images.append({**fake.images[0], "id": 99, "name": DRIFT["hcloud"].image})
    for server in servers:
        assert server.image is not None
        fake.add_server(
            server.name,
            labels=dict(server.labels),
            server_type=server.server_type,
            location=server.location,
            image=server.image.name,
            firewalls=server.firewalls,
            networks=server.networks,
            server_id=int(server.provider_id),
        )
    return fake


def digitalocean_fake(fleet: Fleet, servers: list[ActualServer]) -> Any:
    """The fake DigitalOcean API holding `servers` as droplets: tagged as the program tags
    them (a droplet whose firewall drifted lacks its group's member tag), in their region's
    VPC of the fleet, with a firewall per group selecting its members."""
    from engine.preview import declared
    from engine.providers import ResourceKind
    from engine.providers.digitalocean.naming import member_tag
    from engine.providers.naming import qualified_name
    from tests.fakes.digitalocean import FakeDigitalOcean

    fake = FakeDigitalOcean()
    network = fleet.networks[0].name
    pinned = {server.name: server.location for server in servers}
    for vpc in declared(fleet, load_catalog("digitalocean"), pinned, engine_sources=(),
                        ssh_public_keys=()):  # fmt: skip
        if vpc.kind is ResourceKind.NETWORK:
            fake.add_vpc(
                vpc.name,
                vpc.value("region"),
                ip_range=vpc.value("ip_range"),
                description=f"fleet-engine: network {network} of fleet {fleet.name}",
            )
    for group in fleet.groups:
        fake.add_firewall(
            qualified_name(fleet.name, fleet.firewalls[0].name, group.name),
            tags=(member_tag(fleet.name, group.name),),
            inbound=(("tcp", "443", ("0.0.0.0/0", "::/0")),),
        )
    for server in servers:
        assert server.image is not None
        labels = dict(server.labels)
        member = (member_tag(fleet.name, labels["fleet-group"]),) if server.firewalls else ()
        fake.add_droplet(
            server.name,
            tags=(*(f"{key}:{value}" for key, value in server.labels), *member),
            size=server.server_type,
            region=server.location,
            image=server.image.name,
            vpc=qualified_name(fleet.name, network, server.location),
            droplet_id=int(server.provider_id),
        )
    return fake


def run_with_inventory(
    folder: Path, servers: int, latency_s: float, provider: str
) -> dict[str, Any]:
    """Scenario 2: `engine preview` as a process against the fake API and a SQLite store."""
    from engine.state.store import open_store

    plain = folder / f"plain-{provider}-{servers}.yaml"
    plain.write_text(yaml.safe_dump(bench_spec(None, servers, provider), sort_keys=False))
    fleet = load_spec(plain)
    _, records, _ = drifted_inventory(fleet, load_catalog(provider))
    state = f"sqlite:///{folder / f'state-{provider}-{servers}.db'}"
    with open_store(state) as store:
        store.servers.save_all(records)
    fake = subprocess.Popen(
        [sys.executable, __file__, "--serve-fake", str(plain), str(latency_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert fake.stdout is not None
        url, _, token = fake.stdout.readline().strip().partition(" ")
        if not url:
            raise SystemExit(f"the fake {provider} API did not start")
        spec = folder / f"live-{provider}-{servers}.yaml"
        endpoint = f"{url}/v1" if provider == "hcloud" else url
        spec.write_text(yaml.safe_dump(bench_spec(endpoint, servers, provider), sort_keys=False))
        env = {**os.environ, TOKEN_ENV[provider]: token, "NO_COLOR": "1"}
        # The first run writes the engine's bytecode, as a user's first run does; where the
        # environment forbids writing it, every run would compile the changed modules again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        errors = folder / "preview.err"
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            with errors.open("wb") as err:
                preview = subprocess.Popen(
                    [sys.executable, "-m", "engine", "preview", str(spec), "--format", "json",
                     "--state", state],
                    stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT,
                )  # fmt: skip
                assert preview.stdout is not None
                out = preview.stdout.read()
                # wait4 gives this one child's peak RSS, apart from the fake's and the probe's.
                _, status, usage = os.wait4(preview.pid, 0)
            cpu = usage.ru_utime + usage.ru_stime
            runs.append((time.perf_counter() - start, usage.ru_maxrss / 1024, cpu))
            if os.waitstatus_to_exitcode(status) not in (0, 1):
                raise SystemExit(f"engine preview failed: {errors.read_text()}")
    finally:
        if fake.stdin:
            fake.stdin.close()
        fake.wait(timeout=30)
    document = json.loads(out)
    return {
        "wall": min(run[0] for run in runs),
        "rss_mb": max(run[1] for run in runs),
        "cpu": min(run[2] for run in runs),
        "document": document,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the fake API's round trip")
    parser.add_argument("--sizes", default="1000,10000", help="fleet sizes for scenario 2")
    parser.add_argument(
        "--providers", default=",".join(PROVIDERS), help="the fake APIs scenario 2 reads from"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    providers = args.providers.split(",")
    if not set(providers) <= set(PROVIDERS):
        parser.error(f"--providers: choose from {', '.join(PROVIDERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pure.yaml").write_text(yaml.safe_dump(bench_spec(), sort_keys=False))
        print(f"engine preview benchmarks, 1% drift (load average {os.getloadavg()[0]:.2f})")
        probe = subprocess.run(
            [sys.executable, __file__, "--pure", str(folder / "pure.yaml")],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        pure = json.loads(probe.stdout)
        print(
            f"  1. pure, {GROUPS * PER_GROUP:,} servers (in memory -> plan -> text, markdown, JSON)"
        )
        for step, seconds in pure["seconds"].items():
            print(f"       {step:<32} {seconds * 1000:7.0f} ms")
        print(
            f"       (best of 5) peak RSS {pure['rss_mb']:.0f} MB (targets: <= 1500 ms, <= 300 MB)"
        )
        print(f"       plan: {pure['changes']}, {pure['unchanged']:,} unchanged")
        print(
            f"  2. `engine preview --format json` as a process, the fake provider API over "
            f"loopback answering after {args.latency_ms:.0f} ms, records from SQLite (best of 3):"
        )
        print(f"       {'provider':<13} {'servers':>8} {'wall':>8} {'CPU':>8} {'peak RSS':>9} "
              f"{'calls':>6} {'pages':>6}  load")  # fmt: skip
        for provider in providers:
            page = 50 if provider == "hcloud" else 200
            for servers in sizes:
                live = run_with_inventory(folder, servers, args.latency_ms / 1000, provider)
                calls = live["document"]["api_calls"]
                print(
                    f"       {provider:<13} {servers:>8,} {live['wall'] * 1000:>6.0f}ms "
                    f"{live['cpu'] * 1000:>6.0f}ms {live['rss_mb']:>7.0f}MB {calls['read']:>6} "
                    f"{-(-servers // page):>6}  {os.getloadavg()[0]:.2f}"
                )
                summary = live["document"]["summary"]
                changes = {str(a): summary[a] for a in ACTIONS if summary[a]}
                print(
                    f"                read by path {calls['read_by_path']}, "
                    f"{calls['retries']} retried; plan {changes}, "
                    f"{summary['unchanged']:,} unchanged"
                )
        print("       (targets for 10,000 at 50 ms: <= 2500 ms wall, <= 1000 ms engine CPU,")
        print(
            "        calls <= the server pages + a few: a page holds 50 servers on Hetzner, 200 on"
            " DigitalOcean)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pure"]:
        print(json.dumps(run_pure(sys.argv[2])))
    elif sys.argv[1:2] == ["--serve-fake"]:
        serve_fake()
    else:
        main()
