"""How a lost SSH connection is put in the install's error (test_install.py cuts a server off
the network; here a server closes the connection, which paramiko reports as a bare EOFError,
and the error said "()")."""

from __future__ import annotations

import socket
import threading

import paramiko
import pytest

from engine.install.worker import lost_cause


def test_a_connection_the_server_closes_says_so() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def close_after_the_banners() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                connection.recv(256)  # the client's banner (and perhaps its first packet)

        server = threading.Thread(target=close_after_the_banners)
        server.start()
        transport = paramiko.Transport(listener.getsockname())
        try:
            with pytest.raises(EOFError) as info:
                transport.start_client(timeout=10)
        finally:
            transport.close()
            server.join(timeout=10)
    assert lost_cause(info.value) == "the server closed the connection"


def test_another_cause_keeps_its_words_or_at_least_its_name() -> None:
    assert lost_cause(paramiko.SSHException("Keepalive timed out")) == "Keepalive timed out"
    assert lost_cause(ConnectionResetError()) == "ConnectionResetError"
