"""Hetzner Cloud inventory through the official `hcloud` SDK.

Owned servers come from `GET /servers?label_selector=fleet=<name>,managed-by=fleet-engine`,
50 per page (the API's maximum): 1,000 servers cost 20 requests. Firewall and network names
cost one paged list each, and only when a listed server is attached to any.

Name collisions: server names are unique in a Hetzner project, so an unowned server called
`web-4` blocks creating ours. Such servers cannot be found by label, so `read_unowned` reads
the first unfiltered page (50 servers and the project's page count); if that does not settle
every name, it asks by name (`?name=`) when that takes fewer requests than reading the
remaining pages, and reads the remaining pages otherwise. It costs nothing when nothing is
to be created, and at most min(1 + names, project pages) requests.

Every request goes through engine.inventory.retry: the SDK's own retry (which sleeps for real
and ignores Retry-After) is switched off and its requests session replaced by one that
retries, so tests can inject the clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import requests
from hcloud import APIException, Client

from engine.errors import ProviderError
from engine.inventory import ActualServer, InventoryPage, engine_name
from engine.inventory.retry import ApiCalls, RetryPolicy, TransientError, send
from engine.model import (
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Fleet,
    Image,
    ImageKind,
    ProviderName,
)

DEFAULT_ENDPOINT = "https://api.hetzner.cloud/v1"
PAGE_SIZE = 50


class _RetryingSession(requests.Session):
    """A requests session whose every request goes through engine.inventory.retry.send."""

    def __init__(self, policy: RetryPolicy, calls: ApiCalls, base: str) -> None:
        super().__init__()
        self._policy = policy
        self._calls = calls
        self._base = base.rstrip("/")

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        plain = super().request

        def attempt() -> tuple[int, Any, requests.Response]:
            try:
                response = plain(method, url, *args, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as error:
                raise TransientError(error) from error
            return response.status_code, response.headers, response

        path = str(url).removeprefix(self._base).split("?")[0]
        return send(
            attempt,
            path=f"{method!s} {path}",
            policy=self._policy,
            calls=self._calls,
            provider="hcloud",
            correlation_header="X-Correlation-Id",
        )


def hcloud_client(token: str, endpoint: str | None, policy: RetryPolicy, calls: ApiCalls) -> Client:
    """An SDK client whose requests are retried, paced and counted by engine.inventory.retry."""
    base = endpoint or DEFAULT_ENDPOINT
    client = Client(
        token=token, api_endpoint=base, timeout=policy.timeout_s, application_name="fleet-engine"
    )
    # The SDK has no public hook for its transport or retry policy; both attributes are
    # stable since hcloud 2.0 and the inventory tests exercise them against a fake API.
    client._client._session = _RetryingSession(policy, calls, base)
    client._client._retry_max_retries = 0
    return client


@contextmanager
def provider_errors(token_env: str | None) -> Iterator[None]:
    """Turn SDK and transport exceptions into ProviderError (code, correlation id, hint)."""
    try:
        yield
    except APIException as error:
        message = str(error.message)
        if error.code == "unauthorized" and token_env:
            message += f"; check the API token in {token_env}"
        raise ProviderError(
            "hcloud", message, code=str(error.code), correlation_id=error.correlation_id or ""
        ) from None
    except requests.Timeout:
        raise ProviderError(
            "hcloud", "the API did not answer in time, even after retries", code="timeout"
        ) from None
    except requests.ConnectionError as error:
        reason = str(error).split(": ")[-1][:200]
        raise ProviderError(
            "hcloud", f"cannot reach the API ({reason})", code="unreachable"
        ) from None


def _image(raw: Any) -> Image | None:
    if raw is None:
        return None
    labels = tuple(sorted((raw.labels or {}).items()))
    if raw.type == "system" or raw.type == "app":
        return Image(kind=ImageKind.NAME, name=raw.name or str(raw.id), labels=labels)
    return Image(kind=ImageKind.SNAPSHOT, name=str(raw.id), labels=labels)


def _firewalls(server: Any) -> Any:
    return (server.public_net.firewalls if server.public_net else None) or ()


def _created(raw: Any) -> dt.datetime | None:
    if isinstance(raw, dt.datetime):
        return raw
    return dt.datetime.fromisoformat(raw) if raw else None


class HcloudReader:
    """Reads one fleet's servers from one Hetzner Cloud project."""

    provider = ProviderName.HCLOUD
    list_lag_s = 0.0

    def __init__(self, fleet: Fleet, client: Client, calls: ApiCalls) -> None:
        self.fleet = fleet
        self.client = client
        self.calls = calls

    @property
    def _selector(self) -> str:
        return f"{LABEL_FLEET}={self.fleet.name},{LABEL_MANAGED_BY}={MANAGED_BY}"

    def read_page(self, page: int) -> InventoryPage:
        with provider_errors(self.fleet.provider.token_env):
            servers, meta = self.client.servers.get_list(
                label_selector=self._selector, page=page, per_page=PAGE_SIZE
            )
        pagination = meta.pagination if meta else None
        following = pagination.next_page if pagination else None
        return InventoryPage(
            servers=tuple(self._actual(s, {}, {}) for s in servers), next_page=following
        )

    def read_servers(self) -> tuple[ActualServer, ...]:
        with provider_errors(self.fleet.provider.token_env):
            servers = self.client.servers.get_all(label_selector=self._selector)
            firewall_ids = {f.firewall.id for s in servers for f in _firewalls(s)}
            network_ids = {n.network.id for s in servers for n in s.private_net or ()}
            firewalls = self._names(self.client.firewalls.get_all) if firewall_ids else {}
            networks = self._names(self.client.networks.get_all) if network_ids else {}
        return tuple(self._actual(s, firewalls, networks) for s in servers)

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        wanted = set(names)
        if not wanted:
            return ()
        with provider_errors(self.fleet.provider.token_env):
            first, meta = self.client.servers.get_list(page=1, per_page=PAGE_SIZE)
            found = [s for s in first if s.name in wanted]
            pagination = meta.pagination if meta else None
            last = pagination.last_page if pagination and pagination.last_page else 1
            missing = wanted - {s.name for s in first}
            if last > 1 and missing:
                if len(missing) < last - 1:
                    for name in sorted(missing):
                        found += self.client.servers.get_list(name=name)[0]
                else:
                    for page in range(2, last + 1):
                        rest = self.client.servers.get_list(page=page, per_page=PAGE_SIZE)[0]
                        found += [s for s in rest if s.name in wanted]
        return tuple(self._actual(s, {}, {}) for s in found if not self._is_owned(s))

    def _is_owned(self, server: Any) -> bool:
        labels = server.labels or {}
        return bool(
            labels.get(LABEL_FLEET) == self.fleet.name
            and labels.get(LABEL_MANAGED_BY) == MANAGED_BY
        )

    @staticmethod
    def _names(get_all: Callable[[], list[Any]]) -> dict[int, str]:
        return {item.id: item.name for item in get_all()}

    def _actual(
        self, server: Any, firewalls: dict[int, str], networks: dict[int, str]
    ) -> ActualServer:
        labels = tuple(sorted((server.labels or {}).items()))
        public = server.public_net
        return ActualServer(
            name=engine_name(labels, server.name),
            provider_id=str(server.id),
            labels=labels,
            server_type=server.server_type.name,
            image=_image(server.image),
            location=server.location.name if server.location else "",
            status=server.status,
            ipv4=public.ipv4.ip if public and public.ipv4 else None,
            ipv6=public.ipv6.ip if public and public.ipv6 else None,
            private_ips=tuple(n.ip for n in server.private_net or ()),
            disk_gb=int(server.primary_disk_size or server.server_type.disk or 0),
            backups=server.backup_window is not None,
            firewalls=tuple(
                sorted(firewalls.get(f.firewall.id, str(f.firewall.id)) for f in _firewalls(server))
            ),
            networks=tuple(
                sorted(
                    networks.get(n.network.id, str(n.network.id)) for n in server.private_net or ()
                )
            ),
            placement_group=server.placement_group.name if server.placement_group else None,
            created=_created(server.created),
        )


def open_reader(fleet: Fleet, token: str, policy: RetryPolicy) -> HcloudReader:
    """The hcloud reader for `fleet` (endpoint from the spec's provider.endpoint, if set)."""
    calls = ApiCalls()
    return HcloudReader(fleet, hcloud_client(token, fleet.provider.endpoint, policy, calls), calls)
