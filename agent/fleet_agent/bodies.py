"""Request bodies and path parameters, validated before anything reaches Docker.

Every model refuses unknown fields and wrong types (strict mode: "80" is not a port). Commands
are argument lists, never shell strings. Names, references and paths are checked against the
grammar Docker itself accepts, so a bad value is a 422 here rather than a surprise later.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# Docker's own grammar for container and network names; ids (hex) fit it too.
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
# registry[:port]/path[:tag] or ...@sha256:digest, lowercase path components (distribution's
# reference grammar, simplified but never looser).
IMAGE_PATTERN = (
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
TASK_ID_PATTERN = r"^[0-9a-f]{16}$"
_ENV_KEY = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"
_LABEL_KEY = r"^[a-zA-Z0-9]([a-zA-Z0-9._/-]{0,254}[a-zA-Z0-9])?$"
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ImageRef = Annotated[str, StringConstraints(pattern=IMAGE_PATTERN, max_length=512)]
Arg = Annotated[str, StringConstraints(max_length=8192)]
EnvKey = Annotated[str, StringConstraints(pattern=_ENV_KEY)]
LabelKey = Annotated[str, StringConstraints(pattern=_LABEL_KEY)]
Text = Annotated[str, StringConstraints(max_length=8192)]
AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/[^\x00]{0,4095}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    # Python's re, not pydantic's Rust engine: the compiled Rust patterns cost the agent 8 MB
    # of memory, Python's a few kB, and these patterns are checked once per request.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, regex_engine="python-re")


# Literals rather than enums: strict mode takes a JSON string for a Literal, not for an Enum.
Protocol = Literal["tcp", "udp"]
RestartName = Literal["no", "always", "unless-stopped", "on-failure"]


class PortMapping(Strict):
    container_port: Port
    protocol: Protocol = "tcp"
    host_port: Port | None = None  # None: Docker picks a free port
    host_ip: str | None = None

    @model_validator(mode="after")
    def _ip(self) -> PortMapping:
        if self.host_ip is not None:
            ipaddress.ip_address(self.host_ip)
        return self


class VolumeMount(Strict):
    """A named volume (`data`) or an absolute host path (`/srv/data`), mounted at `target`."""

    source: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    target: AbsolutePath
    read_only: bool = False

    @model_validator(mode="after")
    def _source(self) -> VolumeMount:
        if self.source.startswith("/"):
            if "\x00" in self.source or "/../" in f"{self.source}/":
                raise ValueError("a host path must be absolute and contain no '..'")
        elif not _VOLUME_NAME.match(self.source):
            raise ValueError("source must be an absolute host path or a volume name")
        if "/../" in f"{self.target}/":
            raise ValueError("target must not contain '..'")
        return self

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")


class RestartPolicy(Strict):
    name: RestartName = "no"
    maximum_retry_count: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _retries(self) -> RestartPolicy:
        if self.maximum_retry_count and self.name != "on-failure":
            raise ValueError("maximum_retry_count applies only to the on-failure policy")
        return self


class ContainerSpec(Strict):
    """What to run: the body of POST /v1/containers."""

    image: ImageRef
    name: Name | None = None
    command: Annotated[list[Arg], Field(max_length=1024)] | None = None
    entrypoint: Annotated[list[Arg], Field(max_length=64)] | None = None
    env: Annotated[dict[EnvKey, Text], Field(max_length=512)] = Field(default_factory=dict)
    ports: Annotated[list[PortMapping], Field(max_length=256)] = Field(default_factory=list)
    volumes: Annotated[list[VolumeMount], Field(max_length=128)] = Field(default_factory=list)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    labels: Annotated[dict[LabelKey, Text], Field(max_length=256)] = Field(default_factory=dict)
    network: Name | None = None
    memory_mb: Annotated[int, Field(ge=6, le=16 * 1024 * 1024)] | None = None
    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    start: bool = True


class RegistryAuth(Strict):
    """Credentials for the registry the image names; used for this pull only, never kept."""

    username: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=8192)] = Field(repr=False)


class PullSpec(Strict):
    """The body of POST /v1/images/pull: `name`, `name:tag` or `name@sha256:...`."""

    image: ImageRef
    auth: RegistryAuth | None = None


class HttpProbe(Strict):
    path: Annotated[str, StringConstraints(pattern=r"^/[\x21-\x7e]{0,1023}$")] = "/"
    port: Port


class TcpProbe(Strict):
    port: Port


class ProbeSpec(Strict):
    """The body of POST /v1/containers/{ref}/probe: one check of a container, exactly one of
    an HTTP GET (healthy on 2xx and 3xx) or a TCP connection to a port of the container's own
    address, or a command run in it (healthy when it exits 0)."""

    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    command: Annotated[list[Arg], Field(min_length=1, max_length=64)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 2.0

    @model_validator(mode="after")
    def _one_check(self) -> ProbeSpec:
        given = [name for name in ("http", "tcp", "command") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of http, tcp or command")
        return self


class PruneSpec(Strict):
    dangling_only: bool = True


class NetworkSpec(Strict):
    """The body of POST /v1/networks: a bridge network, with its own subnet if given."""

    name: Name
    subnet: str | None = None
    gateway: str | None = None
    internal: bool = False
    labels: Annotated[dict[LabelKey, Text], Field(max_length=256)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _addresses(self) -> NetworkSpec:
        if self.gateway is not None and self.subnet is None:
            raise ValueError("a gateway needs a subnet")
        if self.subnet is not None:
            subnet = ipaddress.ip_network(self.subnet)
            if self.gateway is not None and ipaddress.ip_address(self.gateway) not in subnet:
                raise ValueError(f"gateway {self.gateway} is not inside subnet {self.subnet}")
        return self
