"""Where a local fleet's control plane listens: the last run's port again whenever it can be
listened on, so servers still retrying their phone-home and agents sending heartbeats find it."""

from __future__ import annotations

import socket
from pathlib import Path

from engine.providers.local.backend import LocalBackend
from engine.spec import parse_spec

SPEC = b"""
apiVersion: fleet/v1
kind: Fleet
name: cp
provider: {name: local}
defaults: {server_type: small, image: debian-12, locations: [local]}
groups: [{name: web, count: 1}]
"""


def backend(tmp_path: Path) -> LocalBackend:
    made = LocalBackend(parse_spec(SPEC), tmp_path, print)
    made.gateway = "127.0.0.1"
    return made


def test_the_port_is_remembered_and_kept_while_the_last_runs_connections_linger(
    tmp_path: Path,
) -> None:
    first = backend(tmp_path).site()
    assert not first.moved and first.url == f"http://127.0.0.1:{first.port}"
    assert (tmp_path / "local" / "cp" / "control-plane-port").read_text() == f"{first.port}\n"
    # The last run's server closed a connection first: it lingers in TIME_WAIT on the port.
    with socket.create_server(("127.0.0.1", first.port)) as listener:
        client = socket.create_connection(("127.0.0.1", first.port))
        accepted, _ = listener.accept()
        accepted.close()
        client.recv(1)
        client.close()
    again = backend(tmp_path).site()
    assert (again.port, again.moved) == (first.port, False)


def test_a_port_someone_listens_on_is_given_up_and_the_move_is_said(tmp_path: Path) -> None:
    first = backend(tmp_path).site()
    with socket.create_server(("127.0.0.1", first.port)):
        moved = backend(tmp_path).site()
    assert moved.port != first.port and moved.moved
    assert (tmp_path / "local" / "cp" / "control-plane-port").read_text() == f"{moved.port}\n"
