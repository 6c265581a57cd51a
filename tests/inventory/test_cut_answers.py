"""Both readers against a loopback API whose answers are cut off part-way, as a dropped
connection leaves them: asked for again, and a clear error when it persists."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from engine.errors import ProviderError
from engine.providers.registry import inventory_reader
from engine.providers.retry import RetryPolicy
from tests.support.fleets import example_fleet
from tests.support.http import cutting_api

# An empty first page as each API documents it: (example fleet, path prefix, body).
PROVIDERS = {
    "hetzner": ("/v1", b'{"servers": [], "meta": {"pagination": {"last_page": 1}}}'),
    "digitalocean": ("", b'{"droplets": [], "links": {}, "meta": {"total": 0}}'),
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_page_cut_off_part_way_is_asked_for_again(provider: str) -> None:
    prefix, page = PROVIDERS[provider]
    sleeps: list[float] = []
    with cutting_api(page, cuts=1) as api:
        reader = inventory_reader(
            example_fleet(provider, api.url + prefix),
            token="dop_v1_" + "0" * 20,
            policy=RetryPolicy(sleep=sleeps.append),
        )
        assert reader.read_servers() == ()
    assert api.answers == ["cut", "whole"]
    assert reader.calls.retries == 1 and sleeps == [1.0]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_pages_cut_off_every_time_end_in_a_clear_error(provider: str) -> None:
    prefix, page = PROVIDERS[provider]
    with cutting_api(page, cuts=2) as api:
        reader = inventory_reader(
            example_fleet(provider, api.url + prefix),
            token="dop_v1_" + "0" * 20,
            policy=RetryPolicy(sleep=lambda _: None, attempts=2),
        )
        with pytest.raises(ProviderError, match="cannot reach the API") as info:
            reader.read_servers()
    assert info.value.code == "unreachable"
    assert api.answers == ["cut", "cut"]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_an_api_that_refuses_connections_says_so_in_the_words_of_the_system(
    provider: str,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prefix, _ = PROVIDERS[provider]
    reader = inventory_reader(
        example_fleet(provider, f"http://127.0.0.1:{port}{prefix}"),
        token="dop_v1_" + "0" * 20,
        policy=RetryPolicy(sleep=lambda _: None, attempts=2),
    )
    with pytest.raises(ProviderError) as info:
        reader.read_servers()
    # Not the HTTP libraries' wrappers around it ("Max retries exceeded ... NewConnectionError(").
    name = {"hetzner": "hcloud"}.get(provider, provider)
    assert str(info.value) == (
        f"{name}: cannot reach the API ([Errno 111] Connection refused) [unreachable]"
    )


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    """What a wrong endpoint may be: a web server that knows no such path."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<h1>Not Found</h1>")

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_an_endpoint_that_is_not_the_api_is_named_as_what_to_check(provider: str) -> None:
    prefix, _ = PROVIDERS[provider]
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        reader = inventory_reader(
            example_fleet(provider, f"http://127.0.0.1:{server.server_port}{prefix}"),
            token="dop_v1_" + "0" * 20,
            policy=RetryPolicy(sleep=lambda _: None, attempts=2),
        )
        try:
            with pytest.raises(ProviderError) as info:
                reader.read_servers()
        finally:
            server.shutdown()
    name = {"hetzner": "hcloud"}.get(provider, provider)
    assert str(info.value) == (
        f"{name}: the endpoint answered 404 Not Found, an error the API does not send that "
        "way; check that provider.endpoint in the spec is the provider's API [404]"
    )
