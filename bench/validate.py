"""Benchmark: validating big specs, and `engine validate` as a process.

Targets (issue #2): a generated 10,000-server spec validates in <= 1 s; the process
`engine validate specs/demo.yaml` takes <= 0.5 s wall and imports no pulumi, pydo, pyinfra
or docker.

    python bench/validate.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.catalog import load_catalog  # noqa: E402
from engine.placement import expand_fleet  # noqa: E402
from engine.spec import load_spec  # noqa: E402

HEAVY = ("pulumi", "pydo", "pyinfra", "docker", "hcloud", "sqlalchemy", "fastapi", "uvicorn")


def generated_spec(groups: int, per_group: int) -> dict[str, object]:
    return {
        "apiVersion": "fleet/v1",
        "kind": "Fleet",
        "name": "bench",
        "provider": {"name": "hcloud", "token_env": "HCLOUD_TOKEN"},
        "control_plane": {"url": "https://ops.example.com"},
        "defaults": {
            "server_type": "cpx21",
            "image": "debian-12",
            "locations": ["fsn1", "nbg1", "hel1", "ash", "hil"],
            "labels": {"team": "bench", "env": "prod"},
        },
        "firewalls": [
            {
                "name": "web",
                "inbound": [{"protocol": "tcp", "port": "443", "sources": ["0.0.0.0/0", "::/0"]}],
            }
        ],
        "networks": [{"name": "private", "ip_range": "10.0.0.0/8"}],
        "groups": [
            {
                "name": f"g{n}",
                "count": per_group,
                "firewalls": ["web"],
                "networks": ["private"],
                "labels": {"role": f"r{n % 7}", "tier": "app"},
            }
            for n in range(groups)
        ],
    }


def time_validation(groups: int, per_group: int, repeats: int = 5) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(yaml.safe_dump(generated_spec(groups, per_group), sort_keys=False))
        size = path.stat().st_size
        catalog = load_catalog("hcloud")
        best = float("inf")
        count = 0
        for _ in range(repeats):
            start = time.perf_counter()
            fleet = load_spec(path)
            count = len(expand_fleet(fleet, catalog))
            best = min(best, time.perf_counter() - start)
    return best, count, size


def time_process(repeats: int = 10) -> tuple[float, list[str]]:
    engine = [sys.executable, "-m", "engine", "validate", "specs/demo.yaml"]
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(engine, cwd=ROOT, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    probe = (
        "import json, sys; from engine.cli import main; main(['validate', 'specs/demo.yaml']); "
        "top = {m.split('.')[0] for m in sys.modules}; "
        f"print(json.dumps(sorted(top & set({HEAVY!r}))))"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return statistics.median(walls), json.loads(out)


def main() -> None:
    print("engine validate benchmarks")
    for groups, per_group in ((20, 500), (500, 20)):
        seconds, servers, size = time_validation(groups, per_group)
        print(
            f"  load + validate + expand: {servers:,} servers in {groups} groups "
            f"({size / 1024:.0f} KiB): {seconds * 1000:.0f} ms (target <= 1000 ms)"
        )
    wall, heavy = time_process()
    print(
        f"  `engine validate specs/demo.yaml` as a process: median {wall * 1000:.0f} ms wall "
        "(target <= 500 ms)"
    )
    print(f"  heavy modules imported on that path: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
