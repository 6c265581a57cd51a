"""A real OpenSSH server on loopback for one test: its own host keys and config in a folder,
an unprivileged port, stopped by its process id."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"  # sshd refuses to start from a relative path
# sshd checks for its privilege separation folder even when it never uses it; Debian's
# service makes it at start, and nothing here starts that service.
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True, slots=True)
class Sshd:
    port: int
    host_keys: dict[str, str]  # "ed25519" -> "ssh-ed25519 AAAA..." (no comment)


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _host_key(directory: Path, kind: str) -> str:
    path = directory / f"ssh_host_{kind}_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True
    )
    key_type, key = path.with_suffix(".pub").read_text().split()[:2]
    return f"{key_type} {key}"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            return connection.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextmanager
def running_sshd(directory: Path, port: int | None = None) -> Iterator[Sshd]:
    """sshd on 127.0.0.1:`port` (a free one if None) with fresh ed25519 and ECDSA host keys
    made in `directory`, until the block ends. Nobody can log in: it only has to answer."""
    directory.mkdir(parents=True, exist_ok=True)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    keys = {kind: _host_key(directory, kind) for kind in ("ed25519", "ecdsa")}
    chosen = port or free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {chosen}\n"
        "ListenAddress 127.0.0.1\n"
        + "".join(f"HostKey {directory / f'ssh_host_{kind}_key'}\n" for kind in keys)
        + "PidFile none\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "AuthorizedKeysFile none\n"
    )
    log = (directory / "sshd.log").open("wb")
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers(chosen):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"sshd did not start: {(directory / 'sshd.log').read_text()[-500:]}"
                )
            time.sleep(0.05)
        yield Sshd(port=chosen, host_keys=keys)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
