"""A webhook receiver for tests: keeps what it got and checks each signature as a real
receiver would (HMAC-SHA256 over the timestamp and the exact body bytes)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = "whsec-test-0123456789abcdef"


class Receiver:
    """A webhook endpoint that keeps what it got, refusing the first `refuse` requests."""

    def __init__(self, refuse: int = 0) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.refuse = refuse

    async def hook(self, request: Request) -> Response:
        self.got.append((dict(request.headers), await request.body()))
        if len(self.got) <= self.refuse:
            return Response(status_code=503)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    def bodies(self) -> list[dict[str, Any]]:
        """The bodies whose signature verifies (timestamp and HMAC over the exact bytes)."""
        verified = []
        for headers, raw in self.got:
            stamp = headers["x-engine-timestamp"]
            mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256)
            if hmac.compare_digest(headers["x-engine-signature"], f"sha256={mac.hexdigest()}"):
                verified.append(json.loads(raw))
        return verified
