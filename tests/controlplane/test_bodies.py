"""Bodies nested too deep are refused with a 400 before any parser or validator recurses;
numbers JSON has not (NaN, Infinity, 1e400) with a 422 naming where they are."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from engine.controlplane.bodies import MAX_JSON_DEPTH, is_nested_deeper, parse_json
from engine.controlplane.errors import ApiError
from tests.controlplane.conftest import Plane

ENDPOINTS = ("/v1/phone-home", "/v1/heartbeat", "/v1/agent-events")
# 60 kB each: under every endpoint's size limit, far over the depth limit.
DEEP = {"arrays": b"[" * 60_000, "objects": b'{"a":' * 12_000}


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """What the control plane logs: uvicorn's loggers do not propagate to the root logger,
    so the recorder listens on both."""
    recorder = _Recorder()
    loggers = (logging.getLogger("uvicorn"), logging.getLogger())
    for logger in loggers:
        logger.addHandler(recorder)
    yield recorder.records
    for logger in loggers:
        logger.removeHandler(recorder)


def test_deep_bodies_get_400_body_too_deep_and_no_traceback(
    plane: Plane, server_log: list[logging.LogRecord]
) -> None:
    headers = {
        "Authorization": f"Bearer {plane.token('web-1')}",
        "Content-Type": "application/json",
    }
    before = plane.snapshot()
    for path in ENDPOINTS:
        for shape, content in DEEP.items():
            response = plane.client.post(f"{plane.url}{path}", content=content, headers=headers)
            error = response.json()["error"]
            assert (response.status_code, error["code"]) == (400, "body_too_deep"), (path, shape)
            assert str(MAX_JSON_DEPTH) in error["message"]
    assert [r.getMessage() for r in server_log if r.exc_info or r.levelno >= logging.ERROR] == []
    assert plane.snapshot() == before
    assert plane.phone_home_as(1).status_code == 200  # the same process still serves


@pytest.mark.parametrize(
    ("text", "limit", "deeper"),
    [
        ("[[1]]", 2, False),
        ("[[1]]", 1, True),
        ('{"a": {"b": [1, {"c": 2}]}}', 4, False),
        ('{"a": {"b": [1, {"c": 2}]}}', 3, True),
        ('["[[[[", "{{{{", "]]]"]', 1, False),  # brackets in strings do not count
        ('["\\"[[[[", "x"]', 1, False),  # an escaped quote ends no string
        ('["\\\\", [[1]]]', 2, True),  # an escaped backslash does not escape the quote
        ("[[], [], [1], []]", 2, False),  # closed levels are left
        ('"[[[[[[', 2, False),  # an unterminated string swallows the rest, as in json
    ],
)
def test_the_depth_is_measured_outside_strings(text: str, limit: int, deeper: bool) -> None:
    assert is_nested_deeper(text, limit) is deeper


def test_a_deep_body_in_utf_16_is_measured_as_json_would_read_it() -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(("[" * 5000).encode("utf-16-le"))
    assert (refused.value.status, refused.value.code) == (400, "body_too_deep")
    assert parse_json('{"a": ["[["]}'.encode("utf-16")) == {"a": ["[["]}


@pytest.mark.parametrize(
    ("text", "paths"),
    [
        ("NaN", ["(body)"]),
        ('{"a": [1, Infinity, {"b": -Infinity}], "c": 1e400}', ["a[1]", "a[2].b", "c"]),
        ('{"a": -1e309, "b": 1.7e308, "c": 1' + "0" * 400 + "}", ["a"]),
    ],
)
def test_numbers_json_has_not_are_refused_at_their_fields(text: str, paths: list[str]) -> None:
    with pytest.raises(ApiError) as refused:
        parse_json(text.encode())
    assert (refused.value.status, refused.value.code) == (422, "invalid_body")
    assert [f.path for f in refused.value.fields] == paths
