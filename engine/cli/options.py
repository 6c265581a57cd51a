"""Argparse `type=` functions for option values: a bad one is a usage error (exit 2) that names
the option, says what is wrong and what to write, before any command starts.

    --endpoint URL        url            an http(s) URL the engine can connect to
"""

from __future__ import annotations

import argparse


def url(text: str) -> str:
    """An http:// or https:// URL the engine can connect to (the spec's check of its URLs)."""
    from engine.spec import url_problem

    problem = url_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a URL the engine can connect to: {problem}; write one such as "
            "https://api.example.com/v1"
        )
    return text
