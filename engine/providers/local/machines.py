"""Local servers: Docker containers that behave like cloud VMs.

A machine is a container from the golden image with the NoCloud seed (meta-data and the very
user_data a cloud provider would get) mounted where cloud-init looks for it, its own hostname
and address on a bridge network, CPU and memory limits from the local catalog, and a volume
for the Docker engine that runs inside it. It gets every capability except CAP_SYS_RESOURCE
(which this sandbox lacks, so --privileged fails) and no seccomp/AppArmor/masked paths, which is
what a nested dockerd needs (checked in ENVIRONMENT.md). It also gets /dev/kmsg, the kernel's
log, as a cloud server has it: the agent reads OOM kills there (the kernel is the host's, so
the log holds the host's records too). `docker restart` is a reboot: cloud-init sees the same
instance id and skips its once-per-instance modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_MOUNT = "/var/lib/cloud/seed/nocloud"
# CPU limits as quota per period (not NanoCpus), because `docker update` can change these.
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineSpec:
    name: str
    hostname: str
    image: str
    seed_dir: Path
    labels: dict[str, str] = field(default_factory=dict)
    network: str | None = None
    ipv4: str | None = None
    cpus: float | None = None
    memory_mb: int | None = None


def write_seed(seed_dir: Path, *, instance_id: str, hostname: str, user_data: str) -> None:
    """The NoCloud seed: cloud-init reads meta-data and user-data from this directory."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "meta-data").write_text(
        f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n", encoding="utf-8"
    )
    (seed_dir / "user-data").write_text(user_data, encoding="utf-8")


def create_machine(client: Any, spec: MachineSpec) -> Any:
    """Create and start the container for `spec`; returns the docker-py Container."""
    api = client.api
    host_config = api.create_host_config(
        binds={
            str(spec.seed_dir): {"bind": SEED_MOUNT, "mode": "ro"},
            f"{spec.name}-docker": {"bind": "/var/lib/docker", "mode": "rw"},
        },
        cap_add=["ALL"],
        cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        devices=["/dev/kmsg:/dev/kmsg:rwm"],
        cpu_period=CPU_PERIOD_US if spec.cpus else None,
        cpu_quota=int(spec.cpus * CPU_PERIOD_US) if spec.cpus else None,
        mem_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
        memswap_limit=f"{spec.memory_mb}m" if spec.memory_mb else None,
        network_mode=spec.network,
    )
    # What `docker run --security-opt systempaths=unconfined` sets; docker-py has no argument.
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    networking = None
    if spec.network:
        endpoint = api.create_endpoint_config(ipv4_address=spec.ipv4)
        networking = api.create_networking_config({spec.network: endpoint})
    created = api.create_container(
        spec.image,
        name=spec.name,
        hostname=spec.hostname,
        labels=spec.labels,
        host_config=host_config,
        networking_config=networking,
    )
    api.start(created["Id"])
    return client.containers.get(created["Id"])
