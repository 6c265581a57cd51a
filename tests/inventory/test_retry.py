"""The retry and rate-limit rules, as pure functions of status, headers and time."""

from __future__ import annotations

import email.utils

import pytest

from engine.errors import ProviderError
from engine.providers.retry import (
    ApiCalls,
    RetryPolicy,
    TransientError,
    pace_s,
    retry_after_s,
    send,
)

NOW = 1_800_000_000.0


def test_retry_after_in_seconds_or_as_a_date_or_from_the_reset() -> None:
    assert retry_after_s({"Retry-After": "7"}, NOW) == 7
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert retry_after_s({"Retry-After": date}, NOW) == pytest.approx(30)
    assert retry_after_s({"RateLimit-Reset": str(int(NOW + 12))}, NOW) == 12
    assert retry_after_s({}, NOW) is None


def test_pacing_waits_for_one_request_only_when_the_budget_is_spent() -> None:
    spent = {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0"}
    # Hetzner: the bucket refills one request a second, long before the full reset.
    assert pace_s({**spent, "RateLimit-Reset": str(int(NOW + 3000))}, NOW) == 1.0
    # DigitalOcean: the reset is when the oldest counted request expires.
    assert pace_s({**spent, "RateLimit-Limit": "5000", "RateLimit-Reset": str(NOW)}, NOW) == 0
    assert pace_s({**spent, "RateLimit-Remaining": "3"}, NOW) == 0
    assert pace_s({}, NOW) == 0


class Script:
    """Answers (status, headers) in order, or raises TransientError for None."""

    def __init__(self, *answers: tuple[int, dict[str, str]] | None) -> None:
        self.answers = list(answers)

    def __call__(self) -> tuple[int, dict[str, str], str]:
        answer = self.answers.pop(0)
        if answer is None:
            raise TransientError(TimeoutError("read timed out"))
        status, headers = answer
        return status, headers, f"response {status}"


def _send(script: Script, sleeps: list[float], calls: ApiCalls, **policy: float) -> str:
    return send(
        script,
        path="GET /servers",
        policy=RetryPolicy(sleep=sleeps.append, clock=lambda: NOW, **policy),  # type: ignore[arg-type]
        calls=calls,
        provider="hcloud",
        correlation_header="X-Correlation-Id",
    )


def test_rate_limits_and_transient_failures_are_retried_with_the_right_waits() -> None:
    sleeps: list[float] = []
    calls = ApiCalls()
    script = Script((429, {"Retry-After": "7"}), (503, {}), None, (502, {}), (200, {}))
    assert _send(script, sleeps, calls) == "response 200"
    assert sleeps == [7.0, 2.0, 4.0, 8.0]  # Retry-After, then back-off 2**n after the n-th
    assert calls.requests["GET /servers"] == 5 and calls.retries == 4
    assert calls.waited_s == 21.0


def test_the_last_answer_goes_back_when_attempts_run_out() -> None:
    sleeps: list[float] = []
    script = Script((500, {}), (500, {}), (500, {}))
    assert _send(script, sleeps, ApiCalls(), attempts=3) == "response 500"
    assert sleeps == [1.0, 2.0]


def test_a_timeout_on_the_last_attempt_raises_the_transport_error() -> None:
    with pytest.raises(TimeoutError):
        _send(Script(None, None), [], ApiCalls(), attempts=2)


def test_client_errors_are_not_retried() -> None:
    sleeps: list[float] = []
    assert _send(Script((404, {})), sleeps, ApiCalls()) == "response 404"
    assert sleeps == []


def test_a_wait_longer_than_allowed_is_a_clear_error() -> None:
    script = Script((429, {"Retry-After": "3000", "X-Correlation-Id": "c-1"}))
    with pytest.raises(ProviderError) as info:
        _send(script, [], ApiCalls(), longest_wait_s=120)
    assert info.value.code == "rate_limit_exceeded" and info.value.correlation_id == "c-1"
    assert "asks to wait 3000 s" in str(info.value)


def test_a_spent_budget_delays_the_next_request_not_this_one() -> None:
    sleeps: list[float] = []
    calls = ApiCalls()
    spent = {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0"}
    assert _send(Script((200, spent)), sleeps, calls) == "response 200"
    assert sleeps == []
    _send(Script((200, {})), sleeps, calls)
    assert sleeps == [1.0]
    assert calls.rate_limit_remaining == 0
