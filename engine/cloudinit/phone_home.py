#!/usr/bin/python3
"""fleet-phone-home: tell the fleet's control plane that this server has booted.

Shipped to every server by the user_data that engine/cloudinit renders (the engine never runs
it itself). Python 3.7+ standard library only: cloud-init is Python, so wherever the user_data
runs, python3 is there; curl, jq or a shell's JSON quoting are not needed.

cloud-init starts it with --background on every boot (a per-boot script) for as long as the
token file exists, so a reboot before the control plane answered resumes it. It detaches
(cloud-final.service has KillMode=process, so it outlives that unit), waits until this boot's
cloud-init has finished, then POSTs the phone-home body (schemas/phone-home.v1.schema.json)
with the one-time token in an `Authorization: Bearer` header, retrying with capped exponential
backoff until the control plane answers 2xx. A 4xx other than 429 is final. The token file is
deleted when done. Progress goes to /var/log/fleet-phone-home.log, which never holds the token.

Exit codes: 0 accepted (or nothing to do), 1 refused by the control plane, 2 gave up
(deadline), 3 bad setup.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CONFIG = "/etc/fleet/phone-home.json"
TOKEN = "/etc/fleet/phone-home.token"  # noqa: S105 (a path, not a secret)
LOG = "/var/log/fleet-phone-home.log"
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
RESULT = "/run/cloud-init/result.json"
INSTANCE_DATA = "/run/cloud-init/instance-data.json"
HOST_KEY = "/etc/ssh/ssh_host_{}_key.pub"
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
METADATA_INSTANCE_ID = {
    "hcloud": "http://169.254.169.254/hetzner/v1/metadata/instance-id",
    "digitalocean": "http://169.254.169.254/metadata/v1/id",
}
VIRTUAL_INTERFACES = ("lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali")
FIRST_DELAY_S = 2.0
# The program starts during cloud-init's last stage, which ends moments later: a short poll
# sends the phone-home within a tenth of a second of it, and costs only a stat.
BOOT_POLL_S = 0.1
MAX_DELAY_S = 60.0
REQUEST_TIMEOUT_S = 15.0


def utc(epoch: float) -> str:
    # datetime.UTC is Python 3.11+; servers may run older Pythons.
    stamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)  # noqa: UP017
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


class Log:
    """Appends lines to the log file (created 0600), masking the token in every line."""

    def __init__(self, path: str, secret: str = "") -> None:
        self.path = path
        self.secret = secret

    def __call__(self, message: str) -> None:
        if self.secret:
            message = message.replace(self.secret, "***")
        line = f"{utc(time.time())} {message}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(line)


def classify_addresses(ip_json: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Sort the global addresses of `ip -j addr` output into public IPv4/IPv6 and private.

    Container bridges and virtual links (docker0, veth...) are left out: they are not how
    anyone reaches this server.
    """
    out: dict[str, list[str]] = {"public_ipv4": [], "public_ipv6": [], "private": []}
    for link in ip_json:
        if str(link.get("ifname", "")).startswith(VIRTUAL_INTERFACES):
            continue
        for info in link.get("addr_info", []):
            if info.get("scope") != "global" or "local" not in info:
                continue
            try:
                address = ipaddress.ip_address(info["local"])
            except ValueError:
                continue
            if not address.is_global:
                kind = "private"
            else:
                kind = "public_ipv4" if address.version == 4 else "public_ipv6"
            if str(address) not in out[kind]:
                out[kind].append(str(address))
    return out


def read_host_keys(pattern: str = HOST_KEY) -> dict[str, str]:
    """The SSH host public keys, `type base64` without the comment, by key type."""
    keys = {}
    for kind in HOST_KEY_TYPES:
        try:
            fields = Path(pattern.format(kind)).read_text().split()
        except OSError:
            continue
        if len(fields) >= 2:
            keys[kind] = f"{fields[0]} {fields[1]}"
    return keys


def cloud_init_result(path: str = RESULT) -> dict[str, Any]:
    """cloud-init's own verdict on this boot: done, or error with its messages."""
    try:
        found = json.loads(Path(path).read_text()).get("v1", {}).get("errors", [])
        errors = [str(e)[:500] for e in found]
    except (OSError, ValueError, AttributeError):
        return {"status": "error", "errors": ["cannot read " + path]}
    return {"status": "error" if errors else "done", "errors": errors[:20]}


def kernel_boot_time(path: str = "/proc/stat") -> float:
    for line in Path(path).read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in " + path)


def run(command: list[str]) -> str:
    try:
        result = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.decode("utf-8", "replace").strip() if result.returncode == 0 else ""


def instance_id(provider: str, path: str = INSTANCE_DATA) -> str:
    """The provider's id of this server: cloud-init's view first (the instance data it
    wrote, else `cloud-init query`, which starts all of cloud-init to read that file), the
    metadata service next."""
    try:
        found = str(json.loads(Path(path).read_text())["v1"]["instance_id"] or "")
    except (OSError, ValueError, KeyError, TypeError):
        found = run(["cloud-init", "query", "v1.instance_id"])
    if found:
        return found
    url = METADATA_INSTANCE_ID.get(provider)
    if url:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (fixed URL)
                return str(response.read().decode().strip())
        except (OSError, ValueError):
            return ""
    return ""


def addresses() -> dict[str, list[str]]:
    try:
        links = json.loads(run(["ip", "-j", "addr", "show"]) or "[]")
    except ValueError:
        links = []
    return classify_addresses(links)


def payload(config: dict[str, Any], attempt: int, found_id: str) -> dict[str, Any]:
    """The phone-home body (schemas/phone-home.v1.schema.json)."""
    try:
        finished: str | None = utc(Path(BOOT_FINISHED).stat().st_mtime)
    except OSError:
        finished = None
    return {
        "version": 1,
        "fleet": config["fleet"],
        "server": config["server"],
        "hostname": socket.gethostname(),
        "provider": config["provider"],
        "instance_id": found_id,
        "addresses": addresses(),
        "host_keys": read_host_keys(),
        "boot": {
            "kernel_booted_at": utc(kernel_boot_time()),
            "cloud_init_finished_at": finished,
            "sent_at": utc(time.time()),
        },
        "cloud_init": cloud_init_result(),
        "attempt": attempt,
    }


def post(url: str, token: str, body: dict[str, Any]) -> tuple[int, str, float | None]:
    """POST `body`; the HTTP status (0 when there was no answer), a snippet, Retry-After."""
    request = urllib.request.Request(  # noqa: S310 (the URL is https, or http on a local bridge)
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer " + token,
            "User-Agent": "fleet-phone-home/1",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310
            return response.status, "", None
    except urllib.error.HTTPError as error:
        text = error.read(300).decode("utf-8", "replace")
        retry_after = error.headers.get("Retry-After", "")
        delay = float(retry_after) if retry_after.strip().isdigit() else None
        return error.code, text, delay
    except (OSError, ValueError) as error:
        return 0, str(error), None


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential, capped, with jitter so a whole fleet does not retry in step."""
    if retry_after is not None:
        return min(retry_after, MAX_DELAY_S)
    delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


def is_boot_finished() -> bool:
    """Whether cloud-init has finished this boot (boot-finished newer than the kernel's boot)."""
    try:
        return Path(BOOT_FINISHED).stat().st_mtime >= kernel_boot_time()
    except (OSError, ValueError):
        return False


def wait_for_cloud_init(deadline: float, log: Log) -> None:
    while not is_boot_finished() and time.monotonic() < deadline:
        time.sleep(BOOT_POLL_S)
    if not is_boot_finished():
        log("cloud-init has not finished; phoning home anyway")


def phone_home(log: Log, config: dict[str, Any], token: str) -> int:
    deadline = time.monotonic() + float(config["give_up_after_s"])
    wait_for_cloud_init(deadline, log)
    attempt = 0
    while True:
        attempt += 1
        found_id = instance_id(config["provider"])
        retry_after = None
        if not found_id:
            log(f"attempt {attempt}: the instance id is not known yet")
        else:
            body = payload(config, attempt, found_id)
            status, text, retry_after = post(config["url"], token, body)
            where = f"POST {config['url']} (attempt {attempt})"
            if 200 <= status < 300:
                log(f"{where}: accepted with HTTP {status}")
                return 0
            if 400 <= status < 500 and status != 429:
                log(f"{where}: refused with HTTP {status}: {text}; not retrying")
                return 1
            log(f"{where}: HTTP {status}" if status else f"{where}: {text}")
        delay = backoff(attempt, retry_after)
        if time.monotonic() + delay > deadline:
            log(f"giving up after {attempt} attempts")
            return 2
        time.sleep(delay)


def detach() -> None:
    """Double fork into a session of our own, so cloud-init's final stage is not held up."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def main(argv: list[str]) -> int:
    log = Log(LOG)
    if not Path(TOKEN).exists():
        log("no token: this server has phoned home already (or was refused); nothing to do")
        return 0
    if "--background" in argv:
        detach()
    try:
        config = json.loads(Path(CONFIG).read_text())
        token = Path(TOKEN).read_text().strip()
    except (OSError, ValueError) as error:
        log(f"cannot read the phone-home settings: {error}")
        return 3
    log.secret = token
    log(f"phoning home to {config['url']} as {config['fleet']}/{config['server']}")
    code = phone_home(log, config, token)
    # Used, refused for good or expired: either way it must not linger on disk.
    Path(TOKEN).unlink()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
