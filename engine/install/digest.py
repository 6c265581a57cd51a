"""The install digest: a stable fingerprint of everything the install puts on a server.

    install_digest(fleet, agent=..., control_plane_url=..., control_plane_sources=...)
    deploys_version()      the deploy code's part: every file of deploys/, read once per process

The orchestrator (engine up, engine preview) computes it and hands it to the diff and to the
installer; the install reports it per server and the state store keeps it. A server whose
digest differs from the one computed now is reinstalled: that is how new settings, a rotated
key, an engine upgrade (new deploys or a new agent) and a moved control plane reach servers
that exist, without replacing them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict
from functools import cache
from pathlib import Path

from engine.model import Fleet


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


def install_digest(
    fleet: Fleet, *, agent: str, control_plane_url: str, control_plane_sources: tuple[str, ...]
) -> str:
    """A stable digest of what the install puts on every server of `fleet` (`sha256:` + 16 hex
    digits): the spec's install settings, the admin user's authorized keys, the deploy code
    (deploys/), the agent image (`agent`: its reference or the digest of its recipe), and the
    control plane's address (where agents report, and the addresses let in to their port).

    Equal inputs give equal digests in every process.
    """
    document = {
        "install": asdict(fleet.install),
        "authorized_keys": sorted(set(fleet.ssh.authorized_keys)),
        "deploys": deploys_version(),
        "agent": agent,
        "control_plane": [control_plane_url, sorted(control_plane_sources)],
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
