"""The polling fallback's view of SSH: is a server answering, and what are its host keys.

`ssh-keyscan` trusts whatever answers at the address, so keys found this way are recorded as
such ("keyscan") and never as pinned from a phone-home.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

from engine.errors import EngineError
from engine.model import Labels

_KEY_TYPES = {
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
    "ssh-rsa": "rsa",
}


def has_ssh_banner(address: str, port: int, *, timeout_s: float = 2.0) -> bool:
    """Whether an SSH server answers at address:port (its banner starts with `SSH-`)."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            received = b""
            while b"\n" not in received and len(received) < 256:
                chunk = connection.recv(256)
                if not chunk:
                    break
                received += chunk
    except OSError:
        return False
    return received.startswith(b"SSH-")


def scan_host_keys(address: str, port: int, *, timeout_s: int = 5) -> Labels:
    """The server's host keys by type (`ed25519` -> `ssh-ed25519 AAAA...`), via ssh-keyscan."""
    tool = shutil.which("ssh-keyscan")
    if tool is None:
        raise EngineError("ssh-keyscan is not installed; install openssh-client")
    result = subprocess.run(
        [tool, "-T", str(timeout_s), "-p", str(port), "-t", "ed25519,ecdsa,rsa", address],
        capture_output=True,
        text=True,
        timeout=timeout_s * 3 + 5,
        check=False,
    )
    keys: dict[str, str] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and fields[1] in _KEY_TYPES:
            keys[_KEY_TYPES[fields[1]]] = f"{fields[1]} {fields[2]}"
    return tuple(sorted(keys.items()))
