"""Benchmark: the size budget and speed of rendered user_data.

Hetzner accepts at most 32 KiB of user_data. The renderer's own part (admin user, settings,
the phone-home program) is fixed; what grows is the list of authorized keys. This prints the
fixed part, the worst case the spec allows, how many keys of each common kind still fit, and
how long rendering and linting take per server.

    python bench/cloudinit.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.cloudinit import (  # noqa: E402
    USER_DATA_LIMIT,
    UserDataError,
    lint_user_data,
    phone_home_script,
    render_user_data,
)
from engine.model import ProviderName  # noqa: E402

SPEC_MAX_KEYS = 100  # schemas/fleet.v1.schema.json: ssh.authorized_keys maxItems


def make_key(kind: str, bits: int | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "key"
        command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "someone@example-laptop"]
        command += ["-b", str(bits)] if bits else []
        subprocess.run([*command, "-f", str(path)], check=True)
        return (path.with_suffix(".pub")).read_text().strip()


def render(keys: tuple[str, ...], packages: tuple[str, ...] = ()) -> str:
    return render_user_data(
        fleet="a-fleet-name-of-forty-characters-maximum",
        server="a-group-name-that-is-long-enough-1000",
        hostname="a-group-name-that-is-long-enough-1000",
        phone_home_url="https://control-plane.operations.example.com/v1/phone-home",
        token="t" * 128,
        admin_user="fleet",
        authorized_keys=keys,
        provider=ProviderName.DIGITALOCEAN,
        packages=packages,
        ssh_port=2222,
    )


def fitting(deploy: str, key: str) -> int:
    count = 0
    while True:
        try:
            lint_user_data(render((deploy,) + (key,) * (count + 1)))
        except UserDataError:
            return count
        count += 1


def main() -> None:
    deploy = make_key("ed25519")
    ed25519, rsa4096 = make_key("ed25519"), make_key("rsa", 4096)
    base = len(render((deploy,)).encode())
    script = len(phone_home_script().encode())
    print("cloud-init user_data benchmarks (limit: 32 KiB = 32,768 bytes)")
    print(f"  fixed part with the deploy key only: {base:,} bytes (phone-home program {script:,})")
    print(f"  per extra key: ed25519 {len(ed25519) + 4} bytes, RSA 4096 {len(rsa4096) + 4} bytes")
    print(
        f"  keys that fit besides the deploy key: {fitting(deploy, ed25519)} ed25519, "
        f"{fitting(deploy, rsa4096)} RSA 4096"
    )
    worst = len(render((deploy,) + (rsa4096,) * (SPEC_MAX_KEYS - 1), ("jq",) * 20).encode())
    print(
        f"  worst case the spec allows ({SPEC_MAX_KEYS} RSA 4096 keys): {worst:,} bytes, "
        f"refused by the linter (over {USER_DATA_LIMIT:,})"
    )
    keys = (deploy, ed25519, rsa4096)
    rounds = 2000
    start = time.perf_counter()
    for n in range(rounds):
        text = render_user_data(
            fleet="web-prod",
            server=f"web-{n}",
            hostname=f"web-{n}",
            phone_home_url="https://ops.example.com/v1/phone-home",
            token=f"token-{n:08d}",
            admin_user="fleet",
            authorized_keys=keys,
            provider=ProviderName.HCLOUD,
        )
    rendered = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(rounds):
        lint_user_data(text)
    linted = time.perf_counter() - start
    print(
        f"  render: {rendered / rounds * 1e6:.0f} us per server, "
        f"lint: {linted / rounds * 1e6:.0f} us ({rounds} rounds)"
    )


if __name__ == "__main__":
    main()
