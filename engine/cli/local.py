"""engine local image: build or show the local provider's images."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "local",
        help="the local provider's Docker images and engine",
        description="The local provider runs servers as Docker containers from a golden image "
        "(Debian 12 with cloud-init, sshd and Docker), built on first use and rebuilt when its "
        "recipe changes.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    image = actions.add_parser(
        "image", parents=[common], help="build the golden image if needed and show it"
    )
    image.set_defaults(run=run_image)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_image(args: argparse.Namespace) -> int:
    from engine.providers.local.dockerd import daemon_client, ensure_daemon
    from engine.providers.local.images import ensure_golden_image

    client = daemon_client(ensure_daemon(say=_say))
    tag = ensure_golden_image(client, _say)
    image = client.images.get(tag)
    size_mb = image.attrs["Size"] / 1e6
    created = image.attrs["Created"][:19]
    print(f"{tag}  {image.short_id.removeprefix('sha256:')}  {size_mb:.0f} MB  built {created}")
    return 0
