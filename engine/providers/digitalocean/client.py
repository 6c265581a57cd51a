"""The DigitalOcean client: the official `pydo` SDK with engine.providers.retry as its
pipeline's retry policy, paged listing, and its errors as ProviderErrors.

azure-core (under pydo) has a slot for a retry policy: it is filled with
engine.providers.retry.send, so requests are retried, paced and counted in one place. The
inventory reader, the droplet actions and the catalog refresh all use this client.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import msgspec
from azure.core.exceptions import (
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import HTTPPolicy
from azure.core.rest import HttpRequest
from pydo import Client

from engine.errors import ProviderError
from engine.providers.retry import (
    ApiCalls,
    Paging,
    RateBudget,
    RetryPolicy,
    TransientError,
    foreign_error,
    is_foreign_refusal,
    read_pages,
    send,
    shared_budget,
    timed_out,
    unexpected_answer,
    unreachable,
)

DEFAULT_ENDPOINT = "https://api.digitalocean.com"
PAGE_SIZE = 200


class _RetryPolicy(HTTPPolicy):  # type: ignore[type-arg]
    """azure-core's slot for a retry policy, filled with engine.providers.retry.send."""

    def __init__(self, policy: RetryPolicy, calls: ApiCalls, budget: RateBudget) -> None:
        super().__init__()
        self._policy = policy
        self._calls = calls
        self._budget = budget

    def send(self, request: PipelineRequest) -> PipelineResponse:  # type: ignore[type-arg]
        def attempt() -> tuple[int, Any, PipelineResponse]:  # type: ignore[type-arg]
            try:
                response = self.next.send(request)
                if request.context.options.get("stream"):
                    # A body asked as a stream (DigitalOceanApi.get_bytes) is read here, so
                    # that one cut off part-way is asked for again like a failed request.
                    response.http_response.read()
            except (ServiceRequestError, ServiceResponseError, IncompleteReadError) as error:
                raise TransientError(error) from error
            http = response.http_response
            return http.status_code, http.headers, response

        http_request = request.http_request
        return send(
            attempt,
            path=f"{http_request.method} {urlparse(http_request.url).path}",
            policy=self._policy,
            calls=self._calls,
            budget=self._budget,
            provider="digitalocean",
            correlation_header="x-request-id",
        )


class DigitalOceanApi:
    """A pydo client with retries and pacing, and paged listing."""

    def __init__(
        self,
        token: str,
        endpoint: str | None,
        policy: RetryPolicy,
        calls: ApiCalls,
        budget: RateBudget | None = None,
    ) -> None:
        endpoint = endpoint or DEFAULT_ENDPOINT
        budget = budget or shared_budget("digitalocean", endpoint, token)
        self.client = Client(
            token,
            endpoint=endpoint,
            retry_policy=_RetryPolicy(policy, calls, budget),
            connection_timeout=policy.timeout_s,
            read_timeout=policy.timeout_s,
        )
        self.workers = policy.workers
        # azure-core refuses to send a bearer token over http; a plain-http endpoint is a
        # local API double, never the real API.
        self.insecure: dict[str, Any] = (
            {"enforce_https": False} if endpoint and endpoint.startswith("http:") else {}
        )

    def list_all(self, call: Callable[..., Any], key: str, **query: Any) -> list[dict[str, Any]]:
        """Every item of a paged list call, PAGE_SIZE per page: the pages read in parallel
        when the first tells `meta.total`, else one by one along `links.pages.next`."""

        def fetch(page: int) -> tuple[list[dict[str, Any]], Paging]:
            return page_of(call(per_page=PAGE_SIZE, page=page, **query, **self.insecure), key, page)

        return read_pages(fetch, workers=self.workers)

    def get_bytes(self, path: str, **query: Any) -> bytes:
        """The body of `GET path` as the API sent it, for a caller that decodes it itself,
        sent through the SDK's pipeline as its calls are; an error answer raises the SDK's
        HttpResponseError as they do. Asked as a stream, so that the pipeline does not also
        decode the JSON (its ContentDecodePolicy would, 2 ms for a page of 200 droplets); the
        retry policy reads it."""
        response = self.client.send_request(
            HttpRequest("GET", path, params=query), stream=True, **self.insecure
        )
        response.raise_for_status()
        return bytes(response.read())


def page_of(answer: Mapping[str, Any], key: str, page: int) -> tuple[list[dict[str, Any]], Paging]:
    """The items of one answer of a list call and what it says of the other pages."""
    total = (answer.get("meta") or {}).get("total")
    following = ((answer.get("links") or {}).get("pages") or {}).get("next")
    return answer.get(key, []), paging(page, total, bool(following))


def paging(page: int, total: int | None, following: bool) -> Paging:
    """What an answer of a list call says of the other pages: `meta.total` items in all (if
    it says), and whether `links.pages.next` is there."""
    return Paging(
        last=None if total is None else max(1, -(-int(total) // PAGE_SIZE)),
        next=page + 1 if following else None,
    )


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
    except IncompleteReadError as error:  # answers cut off part-way, even after retries
        raise unreachable("digitalocean", error) from None
    except HttpResponseError as error:
        body = _error_body(error)
        status = error.status_code or 0
        if "id" not in body and is_foreign_refusal(status):  # the API's documents have an id
            raise foreign_error("digitalocean", status, str(error.reason or "")) from None
        code = str(body["id"])
        message = str(body.get("message", error.reason))
        if error.status_code == 401 and token_env:
            message += f"; check the API token in {token_env}"
        raise ProviderError(
            "digitalocean", message, code=code, correlation_id=str(body.get("request_id", ""))
        ) from None
    except msgspec.DecodeError as error:
        raise unexpected_answer("digitalocean", error) from None
    except ServiceResponseError:
        raise timed_out("digitalocean") from None
    except ServiceRequestError as error:
        raise unreachable("digitalocean", error) from None
