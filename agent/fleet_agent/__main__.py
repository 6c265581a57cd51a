"""fleet-agent [--config PATH]: load the config, make TLS material if missing, serve HTTPS.

On SIGTERM (`docker stop`) it stops cleanly, logs "stopped cleanly" and ends by that signal,
as uvicorn does. It exits with 2 for a bad config or TLS material (the message says which file
and field) and with 1 when the port cannot be bound.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
from pathlib import Path

from fleet_agent import __version__
from fleet_agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from fleet_agent.tls import CIPHERS, TlsError, ensure_certificate

log = logging.getLogger("fleet_agent")


def _listen(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections
    # whose socket says TCP, and without it each response (headers and body written apart)
    # waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)  # from here on connections wait in the backlog until the server accepts
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-agent", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="PATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="fleet-agent: %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config)
        fingerprint = ensure_certificate(config.tls_cert, config.tls_key, common_name=config.server)
    except (ConfigError, TlsError) as exc:
        print(f"fleet-agent: {exc}", file=sys.stderr)
        return 2
    try:
        sock = _listen(config.listen, config.port)
    except OSError as exc:
        print(
            f"fleet-agent: cannot listen on {config.listen}:{config.port}: {exc}", file=sys.stderr
        )
        return 1

    # Imported here so that a bad config is reported before the heavy imports.
    import uvicorn

    from fleet_agent.app import create_app

    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, fingerprint=fingerprint, port=port),
            ssl_certfile=str(config.tls_cert),
            ssl_keyfile=str(config.tls_key),
            ssl_ciphers=CIPHERS,
            http="h11",
            ws="none",
            loop="asyncio",
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=64,
            timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=16 * 1024,
        )
    )
    log.info(
        "%s for %s/%s listening on https://%s:%d (certificate sha256 %s)",
        __version__,
        config.fleet,
        config.server,
        config.listen,
        port,
        fingerprint,
    )
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
