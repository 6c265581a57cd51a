"""Argparse `type=` functions for option values: a bad one is a usage error (exit 2) that names
the option, says what is wrong and what to write, before any command starts.

    --endpoint URL        url            an http(s) URL the engine can connect to
    --timeout SECONDS     seconds(...)   a finite number of seconds in a range
    --timeout DURATION    duration       900s, 15m, 1h: the spec's form, in seconds
    --limit N             count(...)     a whole number in a range
    --forwarded-allow-ips networks       addresses or networks, comma-separated, or *
    --engine-address      address        an IP address or a CIDR range
    SPEC                  spec_file      a path that is not empty
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable


def url(text: str) -> str:
    """An http:// or https:// URL the engine can connect to (the spec's check of its URLs)."""
    from engine.spec import url_problem

    problem = url_problem(text)
    if problem is not None:
        # Not echoed when it may hold a password (user:password@host).
        shown = "the value" if "@" in text else repr(text)
        raise argparse.ArgumentTypeError(
            f"{shown} is not a URL the engine can connect to: {problem}; write one such as "
            "https://api.example.com/v1"
        )
    return text


def seconds(*, at_most: float, zero: bool = False) -> Callable[[str], float]:
    """A number of seconds from 0 (with `zero`) or more than 0, to `at_most`; never NaN or
    infinite: a wait handed to sockets, threads or httpx must be one they can keep."""
    span = f"from 0 to {at_most:g}" if zero else f"more than 0 and at most {at_most:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 <= value <= at_most or (value == 0 and not zero):  # NaN fails every test
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds {span}; write one such as 10 or 2.5"
            )
        return value

    return parse


def duration(text: str) -> float:
    """Seconds in a duration written as the spec writes one: 900s, 15m or 1h."""
    from engine.spec import parse_duration

    if not re.fullmatch(r"[1-9][0-9]{0,5}[smh]", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration of 1s or more; write one such as 900s, 15m or 1h"
        )
    return float(parse_duration(text))


def count(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high`: what it is handed to (SQLite, threads, ports) has
    limits of its own, and a number past them was an OverflowError."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return value

    return parse


def networks(text: str) -> str:
    """Comma-separated IP addresses or networks (10.0.0.0/8), or "*" for any: the proxies
    whose forwarded headers are trusted. Anything else would trust no one, silently."""
    for item in (part.strip() for part in text.split(",")):
        if item != "*" and not _is_network(item, strict=False):
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an IP address or network; write addresses or networks "
                "separated by commas, e.g. 127.0.0.1,10.0.0.0/8, or * for any"
            )
    return text


def address(text: str) -> str:
    """An IP address or a CIDR range without host bits (203.0.113.0/28), as a firewall rule
    takes it."""
    if not _is_network(text.strip(), strict=True):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address or a CIDR range; write one such as 203.0.113.7 or "
            "203.0.113.0/28"
        )
    return text


def _is_network(text: str, *, strict: bool) -> bool:
    """Whether `text` is an IP address or network (`strict`: without host bits)."""
    import ipaddress

    try:
        ipaddress.ip_network(text, strict=strict)
    except ValueError:
        return False
    return True


def spec_file(text: str) -> str:
    """The path of a spec: an empty one would be read as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path names no file; give the path of the fleet spec, e.g. specs/demo.yaml"
        )
    return text
