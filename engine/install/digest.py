"""The install digest: a stable fingerprint of what the install step puts on a server.

    install_hash(install)  the fleet's install settings and the deploy code that applies them
    deploys_version()      the deploy code's part: every file of deploys/, read once per process

The install reports the digest per server and the state store keeps it; the diff compares it
with the spec's to mark a server for reinstall.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict
from functools import cache
from pathlib import Path

from engine.model import Install


@cache
def deploys_version() -> str:
    """A fingerprint of the deploy code: every file of the `deploys` package beside the engine."""
    spec = importlib.util.find_spec("deploys")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the deploys package is not installed beside the engine")
    root = Path(next(iter(spec.submodule_search_locations)))
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def install_hash(install: Install) -> str:
    """A stable digest of what the install step puts on a server (`sha256:` + 16 hex digits):
    the fleet's install settings and the deploy code that applies them (deploys/).

    The install reports it per server and the state store keeps it; a different digest for
    the spec's current settings (or after an engine upgrade that changed the deploys) means
    the server needs a reinstall. Equal inputs give equal digests in every process.
    """
    canonical = json.dumps(asdict(install), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{canonical}\n{deploys_version()}".encode())
    return "sha256:" + digest.hexdigest()[:16]
