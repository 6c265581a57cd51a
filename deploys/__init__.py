"""pyinfra deploys that prepare a server for the fleet: system baseline, Docker, the agent.

`install_server(request)` adds them, in that order, to the pyinfra state of one host; the
engine runs it in a child process per host (engine/install/worker.py). Every decision that
depends on the server (distribution, init system, firewall tool, container or VM) is made
from facts inside an operation, so each one is tested by feeding facts (tests/deploys/).

Every command waits for a round trip to the server, two when it sends text on stdin (the
engine opens each command's SSH channel while the one before runs: engine.install.worker):
0.05 s or 0.1 s to a cloud server 50 ms away, which is most of an install's time there. So each
deploy lists the facts its operations will ask for and reads them together, again only those
an operation that has changed something could have changed (deploys.support.read_ahead and
changes), and an operation sends what it changes as one command (deploys.support.Chain): a
fresh install of a local server sends 10 commands, a run that changes nothing 3. A copied agent
image goes beside them from the start, on a channel of its own (deploys.agent): one command
more to see whether the server has it, one more to copy it.

Supported servers: Debian 12 and Ubuntu 22.04/24.04, with systemd or a SysV init.
"""

from __future__ import annotations

from deploys.agent import agent, send_ahead
from deploys.docker import docker
from deploys.system import system
from engine.install.model import HostRequest, ImageDelivery, ImagePeer


def install_server(request: HostRequest) -> None:
    """Add every deploy for the host of `request` to the current pyinfra state."""
    settings = request.settings
    delivery = _delivery(request)
    # A copied image goes ahead from the start, beside the baseline's commands (the worker
    # runs what is added here at once; a dry run changes nothing).
    ahead = False
    if delivery is not None and request.host.agent is not None and not request.dry_run:
        send_ahead(delivery)
        ahead = True
    system(
        settings.install.system,
        hostname=request.host.name,
        admin=request.host.user,
        ssh_port=request.host.port,
        agent_port=settings.install.agent.port,
        control_plane=settings.control_plane,
        keys=settings.authorized_keys,
    )
    docker(settings.install.docker, admin=request.host.user)
    if request.host.agent is not None:
        agent(
            request.host.agent,
            pull=settings.install.agent.image is not None,
            delivery=delivery,
            ahead=ahead,
        )


def _delivery(request: HostRequest) -> ImageDelivery | None:
    """How the host gets the agent image copied, if it is copied."""
    if request.archive is None:
        return None
    host = request.host
    return ImageDelivery(
        archive=request.archive,
        me=ImagePeer(
            name=host.name, address=host.peer_address, port=host.port, host_keys=host.host_keys
        ),
        docker_url=request.settings.docker_url,
        sharing=request.sharing,
    )
