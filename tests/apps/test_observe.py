"""What apps run where, as a plan sees it: from the servers its own read of the state store
found ready, each agent asked, the store's record standing in for one that cannot be."""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.apps.diff import RunningApp
from engine.apps.observe import observe_apps
from engine.apps.versions import container_name
from engine.model import Stage
from engine.spec import parse_spec
from engine.state import ServerRecord
from engine.state.store import open_store

SPEC = {
    "apiVersion": "fleet/v1",
    "kind": "Fleet",
    "name": "shop",
    "provider": {"name": "local"},
    "groups": [{"name": "web", "count": 2}],
    "apps": [{"name": "web", "image": "registry.example.com/shop/web:1.0", "on": ["web"]}],
}


def record(name: str, stage: Stage) -> ServerRecord:
    return ServerRecord(fleet="shop", name=name, group="web", provider="local", stage=stage)


def test_the_servers_asked_are_the_ready_ones_of_the_records_the_plan_read(
    tmp_path: Path,
) -> None:
    fleet = parse_spec(yaml.safe_dump(SPEC).encode(), file="shop.yaml")
    with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.apps.set_deployed("shop", "web", "web-1", "v1")
        store.apps.set_deployed("shop", "web", "web-2", "v1")
        # Since the plan read the store, web-1 went back to booting and web-2 became ready:
        # the apps are observed as of the plan's read, so plan and apps agree.
        store.servers.save_all([record("web-1", Stage.BOOTING), record("web-2", Stage.READY)])
        read = (record("web-1", Stage.READY), record("web-2", Stage.BOOTING))
        observed = observe_apps(fleet, store, tmp_path / "state", read)
    # No fleet key in the state directory: no agent can be asked, the record stands in.
    assert observed.unreachable == ("web-1",)
    assert dict(observed.running) == {
        "web-1": (RunningApp(app="web", version="v1", container=container_name("web", "v1")),)
    }
