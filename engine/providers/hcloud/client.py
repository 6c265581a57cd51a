"""The Hetzner Cloud client: the official `hcloud` SDK with engine.providers.retry as its
transport, and its errors as ProviderErrors.

The SDK's own retry (which sleeps for real and ignores Retry-After) is switched off and its
requests session replaced by one whose every request goes through engine.providers.retry.send,
so requests are retried, paced and counted in one place and tests can inject the clock. The
inventory reader, the server actions and the catalog refresh all use this client.

Without a proxy, the session sends each request itself over http.client, one kept-alive
connection per thread: requests and urllib3 cost about 1.5 ms of CPU for each 166 KB page of
50 servers (preparing, pooling, reading the body 10 KB at a time), more than decoding it; 10,000
servers are 200 pages. Behind a proxy, requests does it all as before.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from hcloud import APIException, Client
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from engine.errors import ProviderError
from engine.providers.retry import (
    ApiCalls,
    RateBudget,
    RetryPolicy,
    TransientError,
    send,
    shared_budget,
    timed_out,
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
        self._direct = None if self.proxies else _Direct(self._base, self.verify, self.cert)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        plain = super().request if self._direct is None or args else self._direct.request

        def attempt() -> tuple[int, Any, Any]:
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
            budget=self._budget,
            provider="hcloud",
            correlation_header="X-Correlation-Id",
        )


class _Answer:
    """An answer read by `_Direct`: what the SDK reads of a requests.Response."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code = status
        self.reason = reason
        self.headers = headers
        self.content = body
        self.ok = status < 400

    def json(self) -> Any:
        return json.loads(self.content)


class _Direct:
    """Requests to the API's one host over http.client, a kept-alive connection per thread
    (pages are read by several threads at once). Errors are requests' own, as the SDK and
    `provider_errors` expect: Timeout, or ConnectionError for any other failure to talk."""

    def __init__(self, base: str, verify: bool | str | None, cert: Any) -> None:
        parts = urlsplit(base)
        self._host = parts.hostname or ""
        self._port = parts.port
        self._context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            # requests' own choice: $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE, else certifi's.
            bundle = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
            self._context = ssl.create_default_context(cafile=bundle)
            if cert:
                chain = (cert,) if isinstance(cert, str) else tuple(cert)
                self._context.load_cert_chain(*chain)
        self._local = threading.local()

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        # A connection the API closed while idle reads as ready (end of file): make a new one
        # rather than lose a request on it.
        if connection is not None and connection.sock is not None:
            readable, _, _ = select.select([connection.sock], [], [], 0)
            if readable:
                connection.close()
        if connection is None:
            if self._context is None:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            else:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._context
                )
            self._local.connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> _Answer:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params, doseq=True)
        sent = {**headers, "Accept-Encoding": "gzip"}
        body = None
        if json is not None:
            body = _json_bytes(json)
            sent["Content-Type"] = "application/json"
        # One timeout for connecting and each read, the longer of the two if given apart.
        wait = max(timeout) if isinstance(timeout, tuple) else timeout
        connection = self._connection(wait)
        try:
            connection.request(method, target, body=body, headers=sent)
            answer = connection.getresponse()
            content = answer.read()
        except TimeoutError as error:
            self._drop(connection)
            raise requests.Timeout(str(error) or "timed out") from error
        except (OSError, http.client.HTTPException) as error:
            self._drop(connection)
            raise requests.ConnectionError(str(error) or type(error).__name__) from error
        if answer.getheader("Content-Encoding") == "gzip":
            content = zlib.decompress(content, wbits=16 + zlib.MAX_WBITS)
        return _Answer(
            answer.status, answer.reason, CaseInsensitiveDict(answer.getheaders()), content
        )

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


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
        raise timed_out("hcloud") from None
    except requests.ConnectionError as error:
        raise unreachable("hcloud", error) from None
