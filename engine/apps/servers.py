"""One app on one server, through the server's agent only (never SSH): the steps a rollout
takes there.

    switch   image there (copied from the engine's Docker on the local provider, else
             pulled; a failed pull of an image the server has is no failure) -> the new
             version started -> healthy within update.health_timeout -> the old version
             stopped
    watch    the new version checked for update.monitor (while the rollout goes on)
    revert   everything of the app stopped but the version that ran before, which starts
             again (its kept container, or a new one from its stored definition) and must be
             healthy
    remove   every container of the app stopped and removed

Ports: a server port is held by one container at a time. When the version running holds the
app's ports, or an app leaving the server does (the plan's `replaces`), the new one is first
tried on the side, without published ports (the `-check` container): only once it is healthy
there do the holders stop, and the new one start with the ports and be checked again. The gap
is a stop and a start; a version that never gets healthy never takes a server out. An app
left behind is removed once the new one is healthy; putting back starts it again.

After a switch the version before is kept, stopped: putting it back is a start. Older ones
are removed. Each step checks what is there first, so doing one again (after a crash) is
safe. Health checks run in the agent against the container itself (engine.apps.versions
.probe_body); while a container starts it is checked every second at most, while it is
watched every `interval`; `retries` failures in a row make it unhealthy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from engine.agent.client import AgentClient, AgentError, ContainerSummary
from engine.apps.observe import app_containers
from engine.apps.versions import (
    CHECK_SUFFIX,
    AppDefinition,
    container_body,
    container_name,
    probe_body,
)
from engine.errors import EngineError
from engine.model import AppHealth, AppUpdate

STARTING_POLL_S = 1.0
STOP_TIMEOUT_S = 10


class StepFailed(EngineError):
    """A step on one server did not work out; the message says what and why."""


class ImageCopies(Protocol):
    """Images the engine can copy to servers itself (the local provider's Docker engine)."""

    def source(self, reference: str) -> tuple[str, Callable[[], Iterable[bytes]]] | None:
        """The image's id and a function streaming it as `docker save` does, or None."""
        ...


@dataclass
class AppOnServer:
    """The steps of one app on one server. `timings` collects how long each step took."""

    fleet: str
    server: str
    app: str
    client: AgentClient
    health: AppHealth | None
    update: AppUpdate
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    copies: ImageCopies | None = None
    auth: Mapping[str, str] | None = field(default=None, repr=False)
    clock: Callable[[], float] = time.monotonic
    # Set by the rollout when it puts the server back mid-watch: the watch ends there.
    stop: threading.Event = field(default_factory=threading.Event)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + self.clock() - started

    def containers(self) -> list[ContainerSummary]:
        return app_containers(self.client, self.fleet, self.app)

    # --- images ----------------------------------------------------------------------------

    def ensure_image(self, image: str) -> None:
        """Make `image` present on the server: copied from the engine's Docker where it is
        there (and the server lacks that very image), else pulled by the server."""
        with self.timed("image"):
            local = self.copies.source(image) if self.copies is not None else None
            if local is None:
                try:
                    self.client.pull_image(image, self.auth)
                except AgentError:
                    # A registry that does not answer must not stop a server from running
                    # (or going back to) an image it has.
                    if not any(image in found["tags"] for found in self.client.images()):
                        raise
                return
            image_id, archive = local
            if any(found["id"] == image_id for found in self.client.images()):
                return
            self.client.load_image(archive())

    # --- switching -------------------------------------------------------------------------

    def switch(self, definition: AppDefinition, *, replacing: Collection[str] = ()) -> None:
        """Run `definition` in place of whatever version of the app runs, and of the apps
        `replacing` names (apps leaving the server whose ports it takes: removed once it is
        healthy). StepFailed if it does not get healthy; what ran before is then left running
        or stopped, for `revert`."""
        body = self.body(definition)  # a missing secret stops it before anything happens
        final = container_name(self.app, definition.version)
        check = container_name(self.app, definition.version, check=True)
        mine = self.containers()
        # A try on the side that a dead run left is no holder: it publishes no port.
        holders = [
            c.name
            for c in mine
            if c.state == "running" and c.name != final and not c.name.endswith(CHECK_SUFFIX)
        ]
        leaving = [
            c.name
            for app in replacing
            for c in app_containers(self.client, self.fleet, app)
            if c.state == "running" and not c.name.endswith(CHECK_SUFFIX)
        ]
        if any(c.name == final and c.state == "running" for c in mine):
            self.wait_healthy(final)  # a switch done before (a resumed rollout)
        else:
            self.ensure_image(definition.image)
            for leftover in (c for c in mine if c.name in (final, check)):
                self.client.remove_container(leftover.name)
            if definition.ports and (holders or leaving):
                self.try_on_the_side(definition)
                with self.timed("start"):
                    self.client.run_container(body | {"start": False})
                    for name in [*holders, *leaving]:
                        self.client.stop_container(name, timeout_s=STOP_TIMEOUT_S)
                    self.client.start_container(final)
            else:
                with self.timed("start"):
                    self.client.run_container(body)
            self.wait_healthy(final)
        self.stop_others(keep=final)
        self.tidy(keep=final, previous=holders)
        for app in replacing:
            for container in app_containers(self.client, self.fleet, app):
                self.client.remove_container(container.name)

    def try_on_the_side(self, definition: AppDefinition) -> None:
        """Run the new version without ports next to the running one until it is healthy."""
        check = container_name(self.app, definition.version, check=True)
        with self.timed("start"):
            self.client.run_container(self.body(definition, check=True))
        try:
            self.wait_healthy(check)
        finally:
            self.client.remove_container(check)

    def stop_others(self, *, keep: str) -> None:
        for container in self.containers():
            if container.name != keep and container.state == "running":
                self.client.stop_container(container.name, timeout_s=STOP_TIMEOUT_S)

    def tidy(self, *, keep: str, previous: list[str]) -> None:
        """Remove the app's containers but `keep` and the version that ran before it (what a
        revert starts again): `previous`, or if unknown, the newest other one."""
        others = sorted(
            (c for c in self.containers() if c.name != keep),
            key=lambda c: c.created,
            reverse=True,
        )
        if not previous:
            previous = [c.name for c in others if not c.name.endswith(CHECK_SUFFIX)][:1]
        for container in others:
            if container.name not in previous:
                self.client.remove_container(container.name)

    def body(self, definition: AppDefinition, *, check: bool = False) -> dict[str, object]:
        missing = [name for name in definition.secret_env if name not in self.secrets]
        if missing:
            raise StepFailed(
                f"version {definition.version} needs {', '.join(missing)} from the engine's "
                "environment, which is not set"
            )
        return container_body(
            fleet=self.fleet,
            server=self.server,
            app=self.app,
            definition=definition,
            secrets=self.secrets,
            check=check,
        )

    # --- putting back and removing ---------------------------------------------------------

    def revert(self, definition: AppDefinition | None, version: str | None) -> None:
        """Put back `version` (None: the app did not run here), from its kept container or,
        if that is gone, from its `definition`."""
        if version is None:
            self.remove()
            return
        target = container_name(self.app, version)
        self.stop_others(keep=target)
        mine = self.containers()
        for leftover in (c for c in mine if c.name.endswith(CHECK_SUFFIX)):
            self.client.remove_container(leftover.name)
        kept = next((c for c in mine if c.name == target), None)
        with self.timed("revert"):
            if kept is None:
                if definition is None:
                    raise StepFailed(
                        f"version {version} has no container here and the state store no "
                        "definition of it"
                    )
                self.ensure_image(definition.image)
                self.client.run_container(self.body(definition))
            elif kept.state != "running":
                self.client.start_container(target)
            self.wait_healthy(target)

    def remove(self) -> None:
        """Stop and remove every container of the app (its named volumes stay)."""
        with self.timed("start"):
            for container in self.containers():
                self.client.remove_container(container.name)

    # --- health ----------------------------------------------------------------------------

    def check(self, name: str) -> tuple[bool, str]:
        """One health check: the probe, or without one, that the container runs."""
        if self.health is not None:
            answer = self.client.probe(name, probe_body(self.health))
            return bool(answer["healthy"]), str(answer["detail"])
        state = self.client.inspect_container(name)["state"]
        if state["running"]:
            return True, "running"
        return False, f"not running: {state['status']}, exit code {state['exit_code']}"

    def wait_healthy(self, name: str) -> None:
        """Until `name` passes a check; StepFailed after update.health_timeout, or at once
        when it stopped running."""
        with self.timed("health"):
            deadline = self.clock() + self.update.health_timeout_s
            interval = min(STARTING_POLL_S, self.health.interval_s if self.health else 1.0)
            while True:
                healthy, detail = self.check(name)
                if healthy:
                    return
                if detail.startswith("not running"):
                    raise StepFailed(f"{name} stopped before it was healthy ({detail})")
                if self.clock() >= deadline:
                    raise StepFailed(
                        f"{name} was not healthy within {self.update.health_timeout_s} s "
                        f"(last check: {detail})"
                    )
                if self.stop.wait(min(interval, max(0.0, deadline - self.clock()))):
                    raise StepFailed(f"{name}: stopped waiting for it to get healthy")

    def watch(self, name: str) -> None:
        """Keep checking `name` for update.monitor seconds: StepFailed on `retries` failed
        checks in a row, or when Docker restarted it. Ends early (no failure) when `stop` is
        set."""
        if self.update.monitor_s <= 0:
            return
        with self.timed("monitor"):
            restarts = self.restart_count(name)
            deadline = self.clock() + self.update.monitor_s
            interval = self.health.interval_s if self.health else 1.0
            allowed = self.health.retries if self.health else 1
            failures = 0
            while self.clock() < deadline:
                if self.stop.wait(min(interval, max(0.0, deadline - self.clock()))):
                    return
                healthy, detail = self.check(name)
                failures = 0 if healthy else failures + 1
                if failures >= allowed:
                    raise StepFailed(f"{name} turned unhealthy while watched ({detail})")
                now = self.restart_count(name)
                if now > restarts:
                    raise StepFailed(f"{name} was restarted {now - restarts} time(s) while watched")

    def wait_running_healthy(self) -> None:
        """Until the app's running container (whatever its version) passes a check;
        StepFailed when none runs."""
        running = [
            c.name
            for c in self.containers()
            if c.state == "running" and not c.name.endswith(CHECK_SUFFIX)
        ]
        if not running:
            raise StepFailed(f"{self.app} does not run on {self.server}")
        self.wait_healthy(running[0])

    def restart_count(self, name: str) -> int:
        try:
            return int(self.client.inspect_container(name)["state"]["restart_count"])
        except AgentError as error:
            raise StepFailed(f"{name} is gone ({error})") from None
