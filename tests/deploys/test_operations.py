"""The project's own pyinfra operations, tested the way pyinfra tests its own: facts in,
commands out. Each file operations/<module>.<operation>/<case>.json is one behaviour:

    {"kwargs": {...},                    arguments (model values as JSON)
     "facts": {"server.Which": {"command=nft": null}, "deploys.facts.SwapFile": {...}},
     "commands": [...],                  what the operation yields, in order
     "noop": "...",                      optional: the reason it gives for doing nothing
     "skipped": [...],                   optional: what it leaves out on purpose, and why
     "exception": "...",                 optional: the message of the OperationError it raises
     "sent": {"source": ..., "loaded": ...} or {"error": "..."}}
                                         optional: the agent image's copy sent ahead
                                         (deploys.agent.send_ahead), done with this outcome

A fact with arguments is keyed by them (`path=/etc/x`, lists as JSON). A fact the operation
asks for and the case does not give fails the test: every input is written down. So does a fact
its deploy does not list to read ahead (deploys.support.read_ahead), which would cost the
install a command of its own. That is checked by the fact's kind, in every case, so on the
paths a local server never takes (Docker's own repository, a VM's swap file); the arguments
are checked on a real install (tests/install, test_every_fact_the_install_asks_for_...).

A command is a shell string, {"write": path, "mode": mode, "lines": [...]} (deploys.support's
FileWrite, whose text goes on stdin), {"chain": [...]} (deploys.support's Chain: the commands
it runs in one), {"upload": dest, "lines": [...]} or {"function": name, "args": [...]}.
"""

from __future__ import annotations

import importlib
import json
import typing
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, FileUploadCommand, FunctionCommand, OperationError, StringCommand
from pyinfra.context import ctx_host, ctx_state

from deploys.agent import Sending, Sent, agent_facts
from deploys.apt import packages_facts
from deploys.docker import docker_facts
from deploys.support import Chain, FileWrite, skipped_on
from deploys.system import system_facts
from engine.install.model import AgentFile, AgentRun, from_json, to_json
from engine.model import DockerInstall, DockerSource, SystemInstall

CASES = sorted((Path(__file__).parent / "operations").glob("*/*.json"))


class FakeState:
    def __init__(self) -> None:
        self.config = Config()
        self.cwd = None
        self.is_executing = False


class FakeHost:
    """A host whose facts come from the case file; it records its no-op reason."""

    def __init__(self, name: str, facts: dict[str, Any]) -> None:
        self.name = name
        self.print_prefix = f"[{name}] "
        self.facts = facts
        self.current_op_global_arguments = None
        self.current_op_hash = None
        self.noops: list[str] = []
        self.sent = False
        self.asked: set[str] = set()

    def get_fact(self, cls: Any, *args: Any, **kwargs: Any) -> Any:
        assert not args, "pass fact arguments by name"
        # The install reads facts ahead and trusts them until a command has run: an operation
        # asks for all of its facts before it sends its first command.
        assert not self.sent, f"{cls.name} asked for after a command was sent"
        self.asked.add(cls.name)
        if cls.name not in self.facts:
            raise AssertionError(f"the case gives no fact {cls.name}")
        value = self.facts[cls.name]
        if kwargs:
            key = ", ".join(f"{k}={_text(v)}" for k, v in sorted(kwargs.items()))
            if not isinstance(value, dict) or key not in value:
                raise AssertionError(f"the case gives no fact {cls.name} for {key}")
            value = value[key]
        return value

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def get_temp_filename(self, *args: Any, **kwargs: Any) -> str:
        return "/tmp/pyinfra-temp"


def _listed() -> dict[str, set[str]]:
    """The facts each deploy's list names, by the module of its operations, in the settings
    that reach every operation: a VM with unattended upgrades and keys to authorize, Docker
    from either source, an agent with files whose image is pulled."""
    run = AgentRun(
        image="registry.example/agent:1",
        argv=("docker", "run", "--name", "fleet-agent", "registry.example/agent:1"),
        health=("true",),
        directories=("/etc/fleet-agent",),
        files=(AgentFile(path="/etc/fleet-agent/token", content="t"),),
    )
    lists = {
        "system": system_facts(
            SystemInstall(unattended_upgrades=True), admin="fleet", keys=("ssh-ed25519 AAAA",)
        ),
        "docker": [
            *docker_facts(DockerInstall(source=DockerSource.DOCKER_CE), admin="fleet"),
            *docker_facts(DockerInstall(source=DockerSource.DISTRO), admin="fleet"),
        ],
        "agent": agent_facts(run, pull=True, delivery=None),
        "apt": packages_facts(),
    }
    return {module: {cls.name for cls, _ in asks} for module, asks in lists.items()}


LISTED = _listed()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def _command(command: Any) -> Any:
    if isinstance(command, Chain):
        return {"chain": [_command(c) for c in command.commands]}
    if isinstance(command, FileWrite):
        return {"write": command.path, "mode": command.mode, "lines": command.content.splitlines()}
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        src.seek(0)
        return {"upload": command.dest, "lines": src.read().splitlines()}
    if isinstance(command, FunctionCommand):
        return {"function": command.function.__name__, "args": to_json(command.args)}
    raise AssertionError(f"unexpected command {command!r}")


def _operation(folder: str) -> Any:
    module, name = folder.rsplit(".", 1)
    return getattr(importlib.import_module(f"deploys.{module}"), name)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.stem}" for c in CASES])
def test_operation(case: Path) -> None:
    spec = json.loads(case.read_text())
    operation = _operation(case.parent.name)
    hints = typing.get_type_hints(operation._inner)
    kwargs = {key: from_json(hints[key], value) for key, value in spec.get("kwargs", {}).items()}
    host = FakeHost(f"{case.parent.name}/{case.stem}", spec.get("facts", {}))
    if "sent" in spec:
        importlib.import_module("deploys.agent")._SENDING[host] = _sent(
            spec["sent"], kwargs["delivery"]
        )
    commands: list[Any] = []
    with ctx_state.use(FakeState()), ctx_host.use(host):
        if "exception" in spec:
            with pytest.raises(OperationError) as info:
                list(operation._inner(**kwargs))
            assert str(info.value) == spec["exception"]
            _assert_listed(case, host)
            return
        for command in operation._inner(**kwargs):
            host.sent = True
            commands.append(_command(command))
    assert commands == spec["commands"]
    _assert_listed(case, host)
    if "noop" in spec:
        assert spec["noop"] in host.noops
    else:
        assert commands, f"no commands and no noop expected; the operation said {host.noops}"
    assert list(skipped_on(host.name)) == spec.get("skipped", [])


def _sent(outcome: dict[str, Any], delivery: Any) -> Sending:
    """A copy sent ahead that is done with `outcome`."""
    done: Future[Sent] = Future()
    if "error" in outcome:
        done.set_exception(RuntimeError(outcome["error"]))
    else:
        done.set_result(Sent(**outcome))
    return Sending(delivery, done)


def _assert_listed(case: Path, host: FakeHost) -> None:
    module = case.parent.name.split(".")[0]
    unlisted = host.asked - LISTED[module]
    assert not unlisted, f"deploys.{module} does not list {sorted(unlisted)} to read ahead"


def test_every_operation_of_the_project_has_cases() -> None:
    tested = {c.parent.name for c in CASES}
    for module in ("apt", "system", "docker", "agent"):
        loaded = importlib.import_module(f"deploys.{module}")
        for name, value in vars(loaded).items():
            if hasattr(value, "_inner") and value.__module__ == loaded.__name__:
                is_deploy = not hasattr(value._inner, "is_idempotent")
                if not is_deploy:
                    assert f"{module}.{name}" in tested, f"deploys.{module}.{name} has no cases"
