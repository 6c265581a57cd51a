"""Installing servers over SSH: Docker, the system baseline and the agent (deploys/).

    install_hosts(hosts, settings, dry_run=False) -> tuple[HostResult, ...]
        the entry point the install job calls; runs pyinfra in one child process per host

Each result carries engine.model.install_hash(install), the digest the diff compares to
mark a server for reinstall.

The models (InstallHost, InstallSettings, AgentRun, AgentFile, HostResult, ...) are in
engine/install/model.py; importing this package loads neither pyinfra nor Docker's SDK.
"""

from engine.install.model import (
    AgentFile,
    AgentRun,
    HostResult,
    InstallHost,
    InstallSettings,
    OperationResult,
)
from engine.install.runner import install_hosts

__all__ = [
    "AgentFile",
    "AgentRun",
    "HostResult",
    "InstallHost",
    "InstallSettings",
    "OperationResult",
    "install_hosts",
]
