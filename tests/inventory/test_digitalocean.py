"""The DigitalOcean reader against the stateful fake API on a real uvicorn."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from engine.errors import ProviderError
from engine.model import Image, ImageKind
from engine.providers.digitalocean.inventory import tags_to_labels
from engine.providers.registry import inventory_reader
from engine.providers.retry import RetryPolicy
from engine.providers.seam import InventoryReader
from tests.fakes.digitalocean import FakeDigitalOcean, Fault
from tests.support.fleets import example_fleet
from tests.support.http import serve


def _tags(name: str, *extra: str) -> tuple[str, ...]:
    group = name.rsplit("-", 1)[0]
    return (
        "fleet:api-prod",
        "managed-by:fleet-engine",
        f"fleet-group:{group}",
        f"fleet-server:{name}",
        *extra,
    )


@pytest.fixture
def fake() -> FakeDigitalOcean:
    return FakeDigitalOcean()


@pytest.fixture
def url(fake: FakeDigitalOcean) -> Iterator[str]:
    with serve(fake.app()) as base:
        yield base


def _reader(
    fake: FakeDigitalOcean, url: str, sleeps: list[float] | None = None, **policy: float
) -> InventoryReader:
    retry = RetryPolicy(sleep=(sleeps if sleeps is not None else []).append, **policy)  # type: ignore[arg-type]
    return inventory_reader(example_fleet("digitalocean", url), token=fake.token, policy=retry)


def test_a_thousand_droplets_cost_five_list_calls(fake: FakeDigitalOcean, url: str) -> None:
    for n in range(1, 1001):
        fake.add_droplet(f"api-{n}", tags=_tags(f"api-{n}"))
    for n in range(50):
        fake.add_droplet(f"other-{n}", tags=("fleet:other", "managed-by:fleet-engine"))
    fleet = example_fleet("digitalocean", url)
    bare = dataclasses.replace(fleet, firewalls=(), networks=())
    reader = inventory_reader(bare, token=fake.token, policy=RetryPolicy())
    servers = reader.read_servers()
    assert len(servers) == 1000
    assert len(fake.requests) == 5 and reader.calls.total == 5
    for request in fake.requests:
        assert request.path == "/v2/droplets"
        assert request.query["tag_name"] == "fleet:api-prod"
        assert request.query["per_page"] == "200"


def test_pages_are_read_in_parallel_in_page_order(fake: FakeDigitalOcean, url: str) -> None:
    for n in range(1, 1001):
        fake.add_droplet(f"api-{n}", tags=_tags(f"api-{n}"))
    fake.latency_s = 0.05
    servers = _reader(fake, url).read_servers()
    assert [s.name for s in servers] == [f"api-{n}" for n in range(1, 1001)]
    assert 1 < fake.most_in_flight <= 4  # the four other pages at once
    assert fake.count("/v2/droplets") == 5


def test_an_answer_without_a_total_is_followed_page_by_page(
    fake: FakeDigitalOcean, url: str
) -> None:
    for n in range(1, 451):
        fake.add_droplet(f"api-{n}", tags=_tags(f"api-{n}"))
    fake.with_total = False
    assert len(_reader(fake, url).read_servers()) == 450
    pages = [r.query["page"] for r in fake.requests if r.path == "/v2/droplets"]
    assert pages == ["1", "2", "3"]


def test_a_droplet_is_read_completely(fake: FakeDigitalOcean, url: str) -> None:
    fake.add_vpc("api-prod-vpc.fra1", "fra1")
    one = fake.add_droplet(
        "api-1",
        tags=_tags("api-1", "role:api", "fleet-member:api-prod:api"),
        size="s-2vcpu-4gb",
        vpc="api-prod-vpc.fra1",
        backups=True,
    )
    fake.add_droplet("api-2", tags=_tags("api-2", "edge"), region="ams3", ipv6=False)
    fake.add_droplet("api-9", tags=("fleet:api-prod",))  # not managed by the engine
    fake.add_firewall("api-prod-https.api", tags=("fleet-member:api-prod:api",))
    fake.add_firewall("api-prod.engine", tags=("fleet:api-prod",))  # the engine's own
    fake.add_firewall("api-prod-ssh", tags=("edge",))
    fake.add_firewall("unrelated")
    first, second = _reader(fake, url).read_servers()
    assert first.name == "api-1" and first.provider_id == str(one["id"])
    assert dict(first.labels)["role"] == "api" and "fleet-member" not in dict(first.labels)
    assert (first.server_type, first.location, first.disk_gb) == ("s-2vcpu-4gb", "fra1", 80)
    assert first.image == Image(kind=ImageKind.NAME, name="debian-12-x64")
    assert first.networks == ("api-prod-vpc",) and first.firewalls == ("api-prod-https",)
    assert first.backups and first.ipv4 and first.ipv6 and first.private_ips
    assert first.created is not None and first.created.tzinfo is not None
    assert second.location == "ams3" and second.networks == ()  # the default VPC
    assert second.firewalls == ("api-prod-ssh",) and second.ipv6 is None
    assert [r.path for r in fake.requests] == ["/v2/droplets", "/v2/firewalls", "/v2/vpcs"]


def test_tags_become_labels() -> None:
    tags = ["role:api", "fleet-server:api-1", "edge", "url:a:b", "fleet-member:api-prod:api"]
    assert tags_to_labels(tags) == (
        ("edge", ""),
        ("fleet-server", "api-1"),
        ("role", "api"),
        ("url", "a:b"),
    )


def test_a_fresh_droplet_can_be_missing_from_the_list(fake: FakeDigitalOcean, url: str) -> None:
    fake.add_droplet("api-1", tags=_tags("api-1"))
    fake.add_droplet("api-2", tags=_tags("api-2"), listed=False)
    reader = _reader(fake, url)
    assert [s.name for s in reader.read_servers()] == ["api-1"]
    assert reader.list_lag_s > 0  # the diff trusts the store's record of api-2 meanwhile
    assert reader.read_unowned(["api-2"]) == ()  # names are not unique on DigitalOcean


def test_rate_limits_server_errors_and_timeouts_are_survived(
    fake: FakeDigitalOcean, url: str
) -> None:
    for n in range(1, 301):
        fake.add_droplet(f"api-{n}", tags=_tags(f"api-{n}"))
    fake.faults += [Fault(status=429, retry_after=5), Fault(status=500), Fault(delay_s=1.0)]
    sleeps: list[float] = []
    reader = _reader(fake, url, sleeps, timeout_s=0.25)
    assert len(reader.read_servers()) == 300
    assert sleeps == [5.0, 2.0, 4.0]
    assert fake.count("/v2/droplets") == 2 + 3


def test_a_bad_token_is_a_clear_error_with_the_request_id(fake: FakeDigitalOcean, url: str) -> None:
    reader = inventory_reader(
        example_fleet("digitalocean", url), token="dop_v1_wrong00000000", policy=RetryPolicy()
    )
    with pytest.raises(ProviderError) as info:
        reader.read_servers()
    assert info.value.code == "unauthorized" and info.value.correlation_id == "req-1"
    assert "check the API token in DIGITALOCEAN_TOKEN" in str(info.value)
    assert "dop_v1_wrong" not in str(info.value)
    assert len(fake.requests) == 1


def test_persistent_server_errors_end_in_a_clear_error(fake: FakeDigitalOcean, url: str) -> None:
    fake.faults += [Fault(status=503)] * 2
    with pytest.raises(ProviderError) as info:
        _reader(fake, url, attempts=2).read_servers()
    assert info.value.code == "service_error" and info.value.correlation_id == "req-2"


def test_a_droplet_the_documentation_does_not_describe_is_a_clear_error(
    fake: FakeDigitalOcean, url: str
) -> None:
    fake.add_droplet("api-1", tags=_tags("api-1"))
    fake.droplets[0]["networks"] = {"v4": [{"type": "public"}]}  # no ip_address
    with pytest.raises(ProviderError) as info:
        _reader(fake, url).read_servers()
    assert info.value.code == "unexpected_answer"
    assert "missing required field `ip_address` - at `$.droplets[0].networks.v4[0]`" in str(
        info.value
    )
    assert fake.count("/v2/droplets") == 1


def test_the_project_and_the_domains_the_spec_names_are_checked(
    fake: FakeDigitalOcean, url: str
) -> None:
    assert _reader(fake, url).read_prerequisites() == ()
    assert [r.path for r in fake.requests] == ["/v2/projects", "/v2/domains"]
    fake.projects, fake.zones = ["first-project"], set()
    problems = _reader(fake, url).read_prerequisites()
    assert [(p.code, p.path) for p in problems] == [
        ("missing_at_provider", "provider.project"),
        ("missing_at_provider", "dns[0].zone"),
    ]
    assert "no project named api" in problems[0].message
    assert "first-project" in problems[0].hint
    assert "no domain example.com" in problems[1].message


def test_dns_records_are_ours_when_they_point_at_our_droplets(
    fake: FakeDigitalOcean, url: str
) -> None:
    ours = fake.add_droplet("api-1", tags=_tags("api-1"))
    address = ours["networks"]["v4"][0]["ip_address"]
    fake.add_domain_record("example.com", "api-1.api", data=address, ttl=300)
    fake.add_domain_record("example.com", "www", data="192.0.2.80")  # someone else's
    reader = _reader(fake, url)
    servers = reader.read_servers()
    (record,) = [r for r in reader.read_resources(servers) if r.kind == "dns_record"]
    assert record.name == "A api-1.api.example.com"
    assert dict(record.properties) == {"ttl": "300", "points_to": "api-1"}
    fake.zones = set()  # the domain is gone: nothing to read, the prerequisites say why
    assert [r for r in _reader(fake, url).read_resources(servers) if r.kind == "dns_record"] == []
