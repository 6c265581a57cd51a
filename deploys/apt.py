"""Debian packages, installed the way a fresh cloud server needs.

A server that has just booted often has stale package lists and an apt run of its own
(cloud-init, unattended-upgrades) holding the dpkg lock. So lists are refreshed right before
anything is installed, never otherwise (a re-run with nothing to install changes nothing),
apt waits for its locks instead of failing, and downloads are retried.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.facts.deb import DebPackages

from deploys.facts import FactAsk
from deploys.support import Commands, chained, fact

APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q"
    " -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3"
    " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)
# `apt-get update` takes the lists' lock without waiting (DPkg::Lock::Timeout is for dpkg's),
# so an apt run of the server's own, or one left running by an install whose engine died (a
# remote command outlives its SSH session), would fail it. Wait for that lock first, at most
# as long: python3 is on every server cloud-init runs on, and apt's locks are fcntl locks.
WAIT_FOR_LISTS = (
    'python3 -c "import fcntl, signal; signal.alarm(600); '
    "fcntl.lockf(open('/var/lib/apt/lists/lock', 'a'), fcntl.LOCK_EX)\" &&"
)


def packages_facts() -> list[FactAsk]:
    """The facts `packages` asks for (see deploys.support.read_ahead)."""
    return [(DebPackages, {})]


@operation()
def packages(
    present: tuple[str, ...] = (), absent: tuple[str, ...] = (), recommends: bool = False
) -> Commands:
    """Install the `present` packages that are missing and remove the `absent` ones found.

    `recommends` installs recommended packages too (Docker's own instructions do).
    """
    installed = fact(DebPackages)
    remove = [name for name in absent if name in installed]
    missing = [name for name in present if name not in installed]
    if not remove and not missing:
        host.noop(f"packages are as wanted: {', '.join(present + absent)}")
        return
    # Lists first: if the mirror cannot be reached, nothing has been removed yet.
    commands = []
    if missing:
        commands.append(StringCommand(WAIT_FOR_LISTS, APT_GET, "update"))
    if remove:
        commands.append(StringCommand(APT_GET, "remove", *remove))
    if missing:
        options = () if recommends else ("--no-install-recommends",)
        commands.append(StringCommand(APT_GET, "install", *options, *missing))
    yield from chained(commands)
