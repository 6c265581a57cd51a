"""The retry and rate-limit rules, as pure functions of status, headers and time."""

from __future__ import annotations

import email.utils

import pytest

from engine.errors import ProviderError
from engine.providers.retry import (
    ApiCalls,
    Paging,
    RateBudget,
    RetryPolicy,
    SlidingWindows,
    TokenBucket,
    TransientError,
    read_pages,
    retry_after_s,
    send,
)

NOW = 1_800_000_000.0


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_s({"Retry-After": "7"}, NOW) == 7
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert retry_after_s({"Retry-After": date}, NOW) == pytest.approx(30)
    assert retry_after_s({"RateLimit-Reset": str(int(NOW + 12))}, NOW) is None
    assert retry_after_s({}, NOW) is None


def test_hetzner_refills_one_request_a_second_and_never_waits_for_the_full_reset() -> None:
    bucket = TokenBucket()
    assert bucket.reserve(NOW) == 0
    # The API says two are left; RateLimit-Reset (an hour away) is when the bucket is FULL.
    bucket.observe({"RateLimit-Limit": "3600", "RateLimit-Remaining": "2",
                    "RateLimit-Reset": str(int(NOW + 3598))}, NOW)  # fmt: skip
    assert [bucket.reserve(NOW) for _ in range(4)] == [0, 0, 1.0, 2.0]
    assert bucket.reserve(NOW + 10) == 0  # ten seconds refilled ten requests
    # A 429 (Hetzner sends no Retry-After): wait for one request's refill, not the reset.
    assert bucket.after_refusal({"RateLimit-Reset": str(int(NOW + 3600))}, NOW + 10) == 1.0


def test_digitalocean_keeps_to_250_a_minute_and_to_what_is_left_of_the_hour() -> None:
    windows = SlidingWindows(per_minute=3)
    assert [windows.reserve(NOW) for _ in range(4)] == [0, 0, 0, 60.0]
    assert windows.reserve(NOW + 61) == 0
    # The hour spent: wait until the oldest counted request expires (ratelimit-reset).
    windows.observe({"ratelimit-remaining": "0", "ratelimit-reset": str(int(NOW + 500))}, NOW + 61)
    assert windows.reserve(NOW + 200) == pytest.approx(300)
    assert windows.after_refusal({"Retry-After": "12"}, NOW) == 12
    assert windows.after_refusal({}, NOW) == 60


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


def _send(
    script: Script,
    sleeps: list[float],
    calls: ApiCalls,
    budget: RateBudget | None = None,
    **policy: float,
) -> str:
    return send(
        script,
        path="GET /servers",
        policy=RetryPolicy(sleep=sleeps.append, clock=lambda: NOW, **policy),  # type: ignore[arg-type]
        calls=calls,
        budget=budget or SlidingWindows(),
        provider="hcloud",
        correlation_header="X-Correlation-Id",
    )


def test_rate_limits_and_transient_failures_are_retried_with_the_right_waits() -> None:
    sleeps: list[float] = []
    calls = ApiCalls()
    script = Script((429, {"Retry-After": "7"}), (503, {}), None, (502, {}), (200, {}))
    assert _send(script, sleeps, calls, SlidingWindows()) == "response 200"
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
    assert "may go in 3000 s" in str(info.value)


def test_a_spent_budget_delays_the_next_request_not_this_one() -> None:
    sleeps: list[float] = []
    calls, bucket = ApiCalls(), TokenBucket()
    spent = {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0"}
    assert _send(Script((200, spent)), sleeps, calls, bucket) == "response 200"
    assert sleeps == []
    _send(Script((200, {})), sleeps, calls, bucket)
    assert sleeps == [1.0]
    assert calls.waited_s == 1.0


def test_a_budget_spent_for_longer_than_allowed_is_a_clear_error_before_sending() -> None:
    windows = SlidingWindows()
    windows.observe({"ratelimit-remaining": "0", "ratelimit-reset": str(int(NOW + 1800))}, NOW)
    script = Script((200, {}))
    with pytest.raises(ProviderError, match="may go in 1800 s") as info:
        _send(script, [], ApiCalls(), windows, longest_wait_s=120)
    assert info.value.code == "rate_limit_exceeded"
    assert script.answers  # nothing was sent


def test_pages_are_read_in_parallel_when_the_count_is_known_else_along_next() -> None:
    def fetch(known: bool):  # type: ignore[no-untyped-def]
        def page(n: int) -> tuple[list[int], Paging]:
            return [n * 10, n * 10 + 1], Paging(
                last=4 if known else None, next=n + 1 if n < 4 else None
            )

        return page

    assert read_pages(fetch(True), workers=8) == [10, 11, 20, 21, 30, 31, 40, 41]
    assert read_pages(fetch(False), workers=8) == [10, 11, 20, 21, 30, 31, 40, 41]
