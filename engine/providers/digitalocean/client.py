"""The DigitalOcean client: the official `pydo` SDK with engine.providers.retry as its
pipeline's retry policy, paged listing, and its errors as ProviderErrors.

azure-core (under pydo) has a slot for a retry policy: it is filled with
engine.providers.retry.send, so requests are retried, paced and counted in one place. The
inventory reader, the droplet actions and the catalog refresh all use this client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import HTTPPolicy
from pydo import Client

from engine.errors import ProviderError
from engine.providers.retry import (
    ApiCalls,
    RetryPolicy,
    TransientError,
    read_pages,
    send,
    timed_out,
    unreachable,
)

DEFAULT_ENDPOINT = "https://api.digitalocean.com"
PAGE_SIZE = 200


class _RetryPolicy(HTTPPolicy):  # type: ignore[type-arg]
    """azure-core's slot for a retry policy, filled with engine.providers.retry.send."""

    def __init__(self, policy: RetryPolicy, calls: ApiCalls) -> None:
        super().__init__()
        self._policy = policy
        self._calls = calls

    def send(self, request: PipelineRequest) -> PipelineResponse:  # type: ignore[type-arg]
        def attempt() -> tuple[int, Any, PipelineResponse]:  # type: ignore[type-arg]
            try:
                response = self.next.send(request)
            except (ServiceRequestError, ServiceResponseError) as error:
                raise TransientError(error) from error
            http = response.http_response
            return http.status_code, http.headers, response

        http_request = request.http_request
        return send(
            attempt,
            path=f"{http_request.method} {urlparse(http_request.url).path}",
            policy=self._policy,
            calls=self._calls,
            provider="digitalocean",
            correlation_header="x-request-id",
        )


class DigitalOceanApi:
    """A pydo client with retries and pacing, and paged listing."""

    def __init__(
        self, token: str, endpoint: str | None, policy: RetryPolicy, calls: ApiCalls
    ) -> None:
        self.client = Client(
            token,
            endpoint=endpoint or DEFAULT_ENDPOINT,
            retry_policy=_RetryPolicy(policy, calls),
            connection_timeout=policy.timeout_s,
            read_timeout=policy.timeout_s,
        )
        self._workers = policy.workers
        # azure-core refuses to send a bearer token over http; a plain-http endpoint is a
        # local API double, never the real API.
        self.insecure: dict[str, Any] = (
            {"enforce_https": False} if endpoint and endpoint.startswith("http:") else {}
        )

    def list_all(self, call: Callable[..., Any], key: str, **query: Any) -> list[dict[str, Any]]:
        """Every item of a paged list call, PAGE_SIZE per page, pages read in parallel.

        The page count comes from `meta.total`; an answer without it is followed page by
        page along `links.pages.next`.
        """

        def body(page: int) -> dict[str, Any]:
            answer: dict[str, Any] = call(per_page=PAGE_SIZE, page=page, **query, **self.insecure)
            return answer

        first = body(1)
        total = first.get("meta", {}).get("total")
        if total is None:
            items, answer, page = list(first.get(key, [])), first, 1
            while answer.get("links", {}).get("pages", {}).get("next"):
                page += 1
                answer = body(page)
                items.extend(answer.get(key, []))
            return items

        def fetch(page: int) -> tuple[list[dict[str, Any]], int]:
            answer = first if page == 1 else body(page)
            return answer.get(key, []), max(1, -(-int(total) // PAGE_SIZE))

        return read_pages(fetch, workers=self._workers)


def _error_body(error: HttpResponseError) -> dict[str, Any]:
    """DigitalOcean's error JSON ({"id", "message", "request_id"}), or {} if there is none."""
    try:
        body = json.loads(error.response.text()) if error.response is not None else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@contextmanager
def provider_errors(token_env: str | None) -> Iterator[None]:
    """Turn SDK and transport exceptions into ProviderError (code, request id, hint)."""
    try:
        yield
    except HttpResponseError as error:
        body = _error_body(error)
        code = str(body.get("id", error.status_code))
        message = str(body.get("message", error.reason))
        if error.status_code == 401 and token_env:
            message += f"; check the API token in {token_env}"
        raise ProviderError(
            "digitalocean", message, code=code, correlation_id=str(body.get("request_id", ""))
        ) from None
    except ServiceResponseError:
        raise timed_out("digitalocean") from None
    except ServiceRequestError as error:
        raise unreachable("digitalocean", error) from None
