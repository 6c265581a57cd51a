"""The engine's own SSH key per fleet: how the install step logs in to the fleet's servers.

    <state_dir>/keys/<fleet>-deploy       the private key (OpenSSH format, mode 0600)
    <state_dir>/keys/<fleet>-deploy.pub   its public line, added to every server's user_data

The user never hands the engine a private key of theirs: their keys (ssh.authorized_keys) let
them in, this one lets the engine in.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import EngineError
from engine.state.files import private_dir, private_file


def deploy_key_path(state_dir: Path, fleet: str) -> Path:
    """Where the fleet's deploy key (private part) is."""
    return state_dir / "keys" / f"{fleet}-deploy"


def ensure_deploy_key(state_dir: Path, fleet: str) -> str:
    """The deploy key's public line, making the key pair (ed25519) on first use (0600, in a
    0700 folder, as `engine.tokens.ensure_fleet_key` keeps the fleet key)."""
    return ensure_key_pair(deploy_key_path(state_dir, fleet), f"fleet-engine-deploy@{fleet}")


def ensure_key_pair(private: Path, comment: str) -> str:
    """The public line (ending in `comment`) of the ed25519 key pair at `private` and
    `private`.pub, made on first use: the private half mode 0600, in a 0700 folder."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = private.with_name(private.name + ".pub")
    private_dir(private.parent.parent, private.parent.name)
    if private.exists() and public.exists():
        private_file(private)
        return public.read_text(encoding="ascii").strip()
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
        + f" {comment}"
    )
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise EngineError(
            f"{private} exists without its public half {public.name}; restore it or delete both"
        ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public.write_text(line + "\n", encoding="ascii")
    return line
