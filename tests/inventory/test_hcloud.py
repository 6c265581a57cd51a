"""The Hetzner Cloud reader against the stateful fake API on a real uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from engine.errors import ProviderError
from engine.model import Image, ImageKind
from engine.providers.registry import inventory_reader
from engine.providers.retry import RetryPolicy
from engine.providers.seam import InventoryReader
from tests.fakes.hcloud import FakeHcloud, Fault
from tests.support.fleets import example_fleet
from tests.support.http import serve

OWNED = {"fleet": "web-prod", "managed-by": "fleet-engine"}


def _owned(name: str) -> dict[str, str]:
    return {**OWNED, "fleet-group": name.rsplit("-", 1)[0], "fleet-server": name}


@pytest.fixture
def fake() -> FakeHcloud:
    return FakeHcloud()


@pytest.fixture
def url(fake: FakeHcloud) -> Iterator[str]:
    with serve(fake.app()) as base:
        yield f"{base}/v1"


def _reader(
    fake: FakeHcloud, url: str, sleeps: list[float] | None = None, **policy: float
) -> InventoryReader:
    retry = RetryPolicy(sleep=(sleeps if sleeps is not None else []).append, **policy)  # type: ignore[arg-type]
    return inventory_reader(example_fleet("hetzner", url), token=fake.token, policy=retry)


def test_a_thousand_owned_servers_cost_exactly_twenty_list_calls(
    fake: FakeHcloud, url: str
) -> None:
    for n in range(1, 1001):
        fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"))
    for n in range(30):
        fake.add_server(f"legacy-{n}", labels={"team": "web"})
    for n in range(20):
        fake.add_server(f"other-{n}", labels={"fleet": "other", "managed-by": "fleet-engine"})
    fake.add_server("impostor", labels={"fleet": "web-prod"})  # not managed by the engine
    reader = _reader(fake, url)
    servers = reader.read_servers()
    assert len(servers) == 1000
    assert {s.name for s in servers} == {f"web-{n}" for n in range(1, 1001)}
    assert len(fake.requests) == 20
    assert reader.calls.total == 20
    for request in fake.requests:
        assert request.path == "/v1/servers"
        assert request.query["label_selector"] == "fleet=web-prod,managed-by=fleet-engine"
        assert request.query["per_page"] == "50"


def test_pages_are_read_in_parallel_in_page_order(fake: FakeHcloud, url: str) -> None:
    for n in range(1, 301):
        fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"))
    fake.latency_s = 0.05
    servers = _reader(fake, url).read_servers()
    assert [s.name for s in servers] == [f"web-{n}" for n in range(1, 301)]
    assert 1 < fake.most_in_flight <= RetryPolicy().workers  # the five other pages at once
    assert len(fake.requests) == 6


def test_without_a_page_count_the_pages_are_followed_one_by_one(fake: FakeHcloud, url: str) -> None:
    for n in range(1, 121):
        fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"))
    fake.unknown_totals = True  # `last_page` and `total_entries` may be null, as documented
    servers = _reader(fake, url).read_servers()
    assert [s.name for s in servers] == [f"web-{n}" for n in range(1, 121)]
    assert [r.query["page"] for r in fake.requests] == ["1", "2", "3"]


def test_a_server_is_read_completely(fake: FakeHcloud, url: str) -> None:
    fake.add_firewall("web-prod-web")
    fake.add_firewall("web-prod.engine")  # the engine's own: not the spec's business
    fake.add_firewall("legacy-office")  # someone else's: kept, so the diff sees it
    fake.add_network("web-prod-private")
    fake.add_server(
        "web-1",
        labels={**_owned("web-1"), "role": "web"},
        server_type="cx32",
        location="nbg1",
        firewalls=("web-prod-web", "web-prod.engine", "legacy-office"),
        networks=("web-prod-private",),
        placement_group="web-prod-web",
        backups=True,
        ipv4=False,
    )
    fake.add_server("web-2", labels=_owned("web-2"), snapshot_labels={"golden": "web"})
    fake.add_server("web-3", labels=_owned("web-3"), image=None)
    one, two, three = _reader(fake, url).read_servers()
    assert one.name == "web-1" and one.provider_id == str(fake.servers[0]["id"])
    assert dict(one.labels)["role"] == "web"
    assert (one.server_type, one.location, one.disk_gb) == ("cx32", "nbg1", 80)
    assert one.image == Image(kind=ImageKind.NAME, name="debian-12")
    assert one.firewalls == ("legacy-office", "web-prod-web")
    assert one.networks == ("web-prod-private",)
    assert one.private_ips and one.placement_group == "web-prod-web"
    assert one.backups and one.ipv4 is None and one.ipv6 and one.status == "running"
    assert one.created is not None and one.created.tzinfo is not None
    assert two.image is not None and two.image.kind is ImageKind.SNAPSHOT
    assert two.image.labels == (("golden", "web"),)
    assert not two.firewalls and not two.backups and two.placement_group is None
    assert three.image is None
    paths = [r.path for r in fake.requests]
    assert paths == ["/v1/servers", "/v1/firewalls", "/v1/networks"]


def test_rate_limits_server_errors_and_timeouts_are_survived(fake: FakeHcloud, url: str) -> None:
    for n in range(1, 121):
        fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"))
    fake.faults += [Fault(status=429), Fault(status=503), Fault(delay_s=1.0), Fault(status=502)]
    sleeps: list[float] = []
    reader = _reader(fake, url, sleeps, timeout_s=0.25)
    assert len(reader.read_servers()) == 120
    # A 429 waits for one request's refill (Hetzner sends no Retry-After), then back-off.
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    assert reader.calls.retries == 4
    assert fake.count("/v1/servers") == 3 + 4


def test_a_spent_bucket_paces_the_reads_instead_of_meeting_a_429(
    fake: FakeHcloud, url: str
) -> None:
    for n in range(1, 201):
        fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"))
    fake.rate_remaining = 3  # what is left of the project's hour; it refills one a second
    # Real waits (no injected sleep): the fake's bucket refills as time goes.
    reader = inventory_reader(example_fleet("hetzner", url), token=fake.token, policy=RetryPolicy())
    assert len(reader.read_servers()) == 200
    assert fake.count("/v1/servers") == 4  # no request was refused and sent again
    assert reader.calls.retries == 0
    assert 0.5 < reader.calls.waited_s < 2.0  # one request's refill, not the hour until "full"


def test_a_bad_token_is_a_clear_error_with_the_correlation_id(fake: FakeHcloud, url: str) -> None:
    reader = inventory_reader(
        example_fleet("hetzner", url), token="wrong-token-0123456789", policy=RetryPolicy()
    )
    with pytest.raises(ProviderError) as info:
        reader.read_servers()
    message = str(info.value)
    assert info.value.code == "unauthorized"
    assert info.value.correlation_id == "corr-1"
    assert "check the API token in HCLOUD_TOKEN" in message
    assert "wrong-token" not in message
    assert len(fake.requests) == 1  # a permanent error is not retried


def test_persistent_server_errors_end_after_the_allowed_attempts(
    fake: FakeHcloud, url: str
) -> None:
    fake.faults += [Fault(status=500)] * 3
    with pytest.raises(ProviderError) as info:
        _reader(fake, url, attempts=3).read_servers()
    assert info.value.code == "service_error"
    assert fake.count("/v1/servers") == 3


def test_timeouts_that_persist_end_in_a_clear_error(fake: FakeHcloud, url: str) -> None:
    fake.faults += [Fault(delay_s=1.0)] * 2
    with pytest.raises(ProviderError, match="did not answer in time") as info:
        _reader(fake, url, attempts=2, timeout_s=0.2).read_servers()
    assert info.value.code == "timeout"


def test_an_unreachable_api_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reader = inventory_reader(
        example_fleet("hetzner", f"http://127.0.0.1:{port}/v1"),
        token="t" * 20,
        policy=RetryPolicy(sleep=lambda _: None, attempts=2),
    )
    with pytest.raises(ProviderError, match="cannot reach the API") as info:
        reader.read_servers()
    assert info.value.code == "unreachable"


def test_a_server_the_documentation_does_not_describe_is_a_clear_error(
    fake: FakeHcloud, url: str
) -> None:
    fake.add_server("web-1", labels=_owned("web-1"))
    fake.add_server("web-2", labels=_owned("web-2"))
    fake.servers[1]["id"] = "two"  # the documented id is an integer
    with pytest.raises(ProviderError) as info:
        _reader(fake, url).read_servers()
    assert info.value.code == "unexpected_answer"
    assert "Expected `int`, got `str` - at `$.servers[1].id`" in str(info.value)
    assert fake.count("/v1/servers") == 1  # a wrong answer is not asked for again


def test_an_endpoint_that_is_not_the_api_is_a_clear_error() -> None:
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<html><body>Welcome to nginx!</body></html>")

    with serve(Starlette(routes=[Route("/v1/servers", page)])) as base:
        reader = inventory_reader(
            example_fleet("hetzner", f"{base}/v1"), token="t" * 20, policy=RetryPolicy()
        )
        with pytest.raises(ProviderError) as info:
            reader.read_servers()
    assert info.value.code == "unexpected_answer"
    assert "JSON is malformed" in str(info.value)
    assert "check that provider.endpoint in the spec is the provider's API" in str(info.value)


def _project(fake: FakeHcloud, unowned: int) -> None:
    for n in range(1, 101):
        fake.add_server(f"web-{n}", labels=_owned(f"web-{n}"))
    for n in range(unowned):
        fake.add_server(f"app-{n}", labels={"team": "app"})


def test_unowned_name_collisions_cost_nothing_when_nothing_is_created(
    fake: FakeHcloud, url: str
) -> None:
    assert _reader(fake, url).read_unowned([]) == ()
    assert fake.requests == []


def test_a_few_unowned_names_are_asked_for_by_name(fake: FakeHcloud, url: str) -> None:
    _project(fake, unowned=40)  # 140 servers: 3 pages; app-* are on the last pages
    fake.add_server("web-101", labels={"team": "someone-else"})
    found = _reader(fake, url).read_unowned(["web-101", "web-3"])
    assert [(s.name, s.labels) for s in found] == [("web-101", (("team", "someone-else"),))]
    # web-3 is ours and on the first page; web-101 is looked up by name.
    assert [r.query.get("name") for r in fake.requests] == [None, "web-101"]


def test_many_unowned_names_read_the_remaining_pages(fake: FakeHcloud, url: str) -> None:
    _project(fake, unowned=40)
    wanted = [f"app-{n}" for n in range(5)] + ["web-1"]
    found = _reader(fake, url).read_unowned(wanted)
    assert sorted(s.name for s in found) == sorted(wanted[:5])
    pages = [r.query.get("page") for r in fake.requests]
    assert pages[0] == "1" and sorted(pages[1:]) == ["2", "3"]
