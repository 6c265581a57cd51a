"""Headless Chromium driven over the W3C WebDriver protocol, for the dashboard's browser test.

Debian's `chromium` and `chromium-driver` (installed by .ci/setup) do the work; this is the
few WebDriver commands the test needs, spoken over HTTP with httpx, so no browser-automation
package joins the lock.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.sshd import free_port
from tests.support.wait import wait_until

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class Browser:
    """One WebDriver session; `shots` is where `screenshot` writes its PNG files."""

    def __init__(self, client: httpx.Client, session: str, shots: Path) -> None:
        self.client = client
        self.session = session
        self.shots = shots

    def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = self.client.request(method, f"/session/{self.session}{path}", json=body)
        value = answer.json()["value"]
        if answer.status_code != 200:
            raise AssertionError(f"WebDriver {method} {path}: {value}")
        return value

    def open(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self.command("GET", "/url"))

    def find(self, css: str) -> str:
        """The first element `css` selects (its WebDriver id), waiting for it to appear."""

        def found() -> str | None:
            answer = self.client.post(
                f"/session/{self.session}/elements", json={"using": "css selector", "value": css}
            )
            elements = answer.json()["value"]
            return elements[0][ELEMENT] if answer.status_code == 200 and elements else None

        return str(wait_until(found, timeout_s=15, what=f"an element {css!r}"))

    def type(self, css: str, text: str) -> None:
        self.command("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.command("POST", f"/element/{self.find(css)}/click", {})

    def text(self, css: str) -> str:
        return str(self.command("GET", f"/element/{self.find(css)}/text"))

    def run(self, script: str, *args: Any) -> Any:
        """The value of `script` (a function body) run in the page."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def accept_alert(self) -> str:
        """Accept the page's confirm() dialog, once it is up; its text."""

        def dialog() -> str | None:
            answer = self.client.get(f"/session/{self.session}/alert/text")
            return str(answer.json()["value"]) if answer.status_code == 200 else None

        text = str(wait_until(dialog, timeout_s=10, what="a confirmation dialog"))
        self.command("POST", "/alert/accept", {})
        return text

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))
        return path


@contextmanager
def chromium(shots: Path, *, width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """A headless Chromium (as root it needs --no-sandbox) through chromedriver on loopback.
    Its temporary files (its profile, and the folder of the socket it leaves behind when it
    ends) go to a folder of its own, removed after it."""
    driver, binary = shutil.which("chromedriver"), shutil.which("chromium")
    assert driver and binary, "chromium and chromium-driver are installed by .ci/setup"
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temporary = tempfile.TemporaryDirectory(prefix="chromium-")
    process = subprocess.Popen(
        [driver, f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": temporary.name},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

            def ready() -> bool:
                try:
                    return bool(client.get("/status").json()["value"]["ready"])
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout_s=20, what="chromedriver")
            options = {
                "binary": binary,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    f"--window-size={width},{height}",
                ],
            }
            capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
            made = client.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
            assert made.status_code == 200, made.text
            browser = Browser(client, made.json()["value"]["sessionId"], shots)
            try:
                yield browser
            finally:
                client.delete(f"/session/{browser.session}")
    finally:
        process.terminate()
        process.wait(timeout=10)
        temporary.cleanup()
