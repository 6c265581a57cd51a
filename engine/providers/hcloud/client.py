"""The Hetzner Cloud client: the official `hcloud` SDK with engine.providers.retry as its
transport, and its errors as ProviderErrors.

The SDK's own retry (which sleeps for real and ignores Retry-After) is switched off and its
requests session replaced by one whose every request goes through engine.providers.retry.send,
so requests are retried, paced and counted in one place and tests can inject the clock. The
inventory reader, the server actions and the catalog refresh all use this client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import requests
from hcloud import APIException, Client
from requests.exceptions import ChunkedEncodingError

from engine.errors import ProviderError
from engine.providers.retry import (
    ApiCalls,
    RateBudget,
    RetryPolicy,
    TransientError,
    foreign_error,
    is_foreign_refusal,
    send,
    shared_budget,
    timed_out,
    unexpected_answer,
    unreachable,
)

DEFAULT_ENDPOINT = "https://api.hetzner.cloud/v1"


class _RetryingSession(requests.Session):
    """A requests session whose every request goes through engine.providers.retry.send."""

    def __init__(self, policy: RetryPolicy, calls: ApiCalls, budget: RateBudget, base: str) -> None:
        super().__init__()
        self._policy = policy
        self._calls = calls
        self._budget = budget
        self._base = base.rstrip("/")
        # Proxies and CA bundle from the environment, looked up once for the API's one host:
        # requests would look them up again for every request (0.3 ms of CPU each).
        found = self.merge_environment_settings(self._base, {}, None, None, None)
        self.proxies, self.verify, self.cert = found["proxies"], found["verify"], found["cert"]
        self.trust_env = False

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        plain = super().request

        def attempt() -> tuple[int, Any, requests.Response]:
            try:
                response = plain(method, url, *args, **kwargs)
            except (requests.Timeout, requests.ConnectionError, ChunkedEncodingError) as error:
                # ChunkedEncodingError: an answer cut off part-way.
                raise TransientError(error) from error
            return response.status_code, response.headers, response

        path = str(url).removeprefix(self._base).split("?")[0]
        return send(
            attempt,
            path=f"{method!s} {path}",
            policy=self._policy,
            calls=self._calls,
            budget=self._budget,
            provider="hcloud",
            correlation_header="X-Correlation-Id",
        )


def hcloud_client(
    token: str,
    endpoint: str | None,
    policy: RetryPolicy,
    calls: ApiCalls,
    budget: RateBudget | None = None,
) -> Client:
    """An SDK client whose requests are retried, paced and counted by engine.providers.retry,
    within `budget` (by default the one budget of `token`'s project in this process)."""
    base = endpoint or DEFAULT_ENDPOINT
    client = Client(
        token=token, api_endpoint=base, timeout=policy.timeout_s, application_name="fleet-engine"
    )
    # The SDK has no public hook for its transport or retry policy; both attributes are
    # stable since hcloud 2.0 and the inventory tests exercise them against a fake API.
    budget = budget or shared_budget("hcloud", base, token)
    client._client._session = _RetryingSession(policy, calls, budget, base)
    client._client._retry_max_retries = 0
    return client


def get_bytes(client: Client, path: str, params: dict[str, Any]) -> bytes:
    """The body of `GET path` as the API sent it, for a caller that decodes it itself, sent
    as `Client.request` sends it (headers, timeout, this module's session); an error answer
    raises the SDK's APIException as `Client.request` does."""
    base = client._client
    response = base._session.request(
        "GET", base._endpoint + path, headers=base._headers, params=params, timeout=base._timeout
    )
    if not response.ok:
        base._read_response(response)  # raises APIException with the API's code and message
    return bytes(response.content)


@contextmanager
def provider_errors(token_env: str | None) -> Iterator[None]:
    """Turn SDK and transport exceptions into ProviderError (code, correlation id, hint)."""
    try:
        yield
    except APIException as error:
        # The SDK's code is the HTTP status when the answer held no error document.
        if isinstance(error.code, int) and is_foreign_refusal(error.code):
            raise foreign_error("hcloud", error.code, str(error.message)) from None
        message = str(error.message)
        if error.code == "unauthorized" and token_env:
            message += f"; check the API token in {token_env}"
        raise ProviderError(
            "hcloud", message, code=str(error.code), correlation_id=error.correlation_id or ""
        ) from None
    except msgspec.DecodeError as error:
        raise unexpected_answer("hcloud", error) from None
    except requests.Timeout:
        raise timed_out("hcloud") from None
    except (requests.ConnectionError, ChunkedEncodingError) as error:
        raise unreachable("hcloud", error) from None
