"""user_data is stored once per server (the replacement guard's storage), and destroying a
fleet forgets every row of it."""

from __future__ import annotations

import hashlib

from engine.cloudinit import pin_user_data
from engine.model import Stage
from engine.state import ServerRecord
from engine.state.store import Store

DOC = "#cloud-config\nhostname: web-1\n"


def test_user_data_is_rendered_once_and_its_hash_recorded(store: Store) -> None:
    store.save_server(ServerRecord(fleet="f", name="web-1", group="web", provider="local"))
    renders: list[str] = []

    def render() -> str:
        renders.append("x")
        return DOC

    assert pin_user_data(store, fleet="f", server="web-1", render=render) == DOC
    assert pin_user_data(store, fleet="f", server="web-1", render=render) == DOC
    assert renders == ["x"]
    record = store.server("f", "web-1")
    assert record is not None
    assert record.user_data_hash == "sha256:" + hashlib.sha256(DOC.encode()).hexdigest()
    fresh = DOC + "# again\n"
    assert pin_user_data(store, fleet="f", server="web-1", render=lambda: fresh, fresh=True)
    assert store.get_user_data("f", "web-1") == fresh
    assert store.get_user_data("f", "web-2") is None


def test_forget_fleet_leaves_no_row_of_it(store: Store) -> None:
    for fleet in ("gone", "kept"):
        store.save_server(ServerRecord(fleet=fleet, name="web-1", group="web", provider="local"))
        store.set_stage(fleet, "web-1", Stage.CREATING)
        store.put_user_data(fleet, "web-1", DOC)
        store.record_event(fleet, "test.event", "something happened", server="web-1")
    store.forget_fleet("gone")
    assert store.servers("gone") == () and store.transitions("gone") == ()
    assert store.events("gone") == () and store.get_user_data("gone", "web-1") is None
    assert len(store.servers("kept")) == 1 and store.get_user_data("kept", "web-1") == DOC
