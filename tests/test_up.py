"""How long `engine up` waits, what it hands each new server before anything is made, and
where it reaches a server that came back on another address."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import yaml

from engine.catalog import load_catalog
from engine.cli import build_parser
from engine.cli.up import run_options
from engine.cloudinit import CONFIG_PATH
from engine.controlplane.fleets import register_fleet
from engine.placement import expand_fleet
from engine.progress import StageBoard
from engine.providers import ActualServer
from engine.spec import parse_spec
from engine.state import ServerRecord
from engine.state.store import open_store, state_url
from engine.up import FleetRun, Site

SPEC = b"""
apiVersion: fleet/v1
kind: Fleet
name: ttl
provider: {name: hcloud, token_env: HCLOUD_TOKEN}
control_plane: {url: "https://ops.example.com", token_ttl: 20m}
defaults: {server_type: cx22, image: debian-12, locations: [fsn1]}
groups: [{name: web, count: 1}]
"""


def test_a_server_phones_home_for_as_long_as_its_token_lives(tmp_path: Path) -> None:
    fleet = parse_spec(SPEC, state_dir=tmp_path)
    (server,) = expand_fleet(fleet, load_catalog(fleet.provider.name, tmp_path))
    site = Site(host="0.0.0.0", port=443, url="https://ops.example.com", sources=())
    with open_store(state_url(tmp_path)) as store:
        run = FleetRun(
            fleet, store, tmp_path, StageBoard(io.StringIO()), register_fleet(store, fleet), site,
            provisions=False,
        )  # fmt: skip
        document = yaml.safe_load(run.user_data(server))
    (settings,) = [f for f in document["write_files"] if f["path"] == CONFIG_PATH]
    assert json.loads(settings["content"])["give_up_after_s"] == 20 * 60


def test_up_and_a_signal_wait_fifteen_minutes_unless_told() -> None:
    parser = build_parser()
    for args in (["up", "web.yaml"], ["server", "reboot", "web.yaml", "web-1"]):
        assert run_options(parser.parse_args(args), yes=False).timeout_s == 15 * 60
        told = parser.parse_args([*args, "--timeout", "90s"])
        assert run_options(told, yes=False).timeout_s == 90


def test_a_server_back_on_another_address_is_reached_there_and_only_the_same_server(
    tmp_path: Path,
) -> None:
    fleet = parse_spec(SPEC, state_dir=tmp_path)
    site = Site(host="0.0.0.0", port=443, url="https://ops.example.com", sources=())
    with open_store(state_url(tmp_path)) as store:
        for name, provider_id in (("web-1", "11"), ("web-2", "12"), ("web-3", "13")):
            record = ServerRecord(fleet="ttl", name=name, group="web", provider="hcloud")
            store.servers.save(
                dataclasses.replace(record, provider_id=provider_id, ipv4="10.0.0.1")
            )
        run = FleetRun(
            fleet, store, tmp_path, StageBoard(io.StringIO()), register_fleet(store, fleet), site,
            provisions=False,
        )  # fmt: skip
        listed = [
            ActualServer(name="web-1", provider_id="11", labels=(), server_type="cx22",
                         image=None, location="fsn1", status="running", ipv4="10.0.0.9"),
            ActualServer(name="web-2", provider_id="99", labels=(), server_type="cx22",
                         image=None, location="fsn1", status="running", ipv4="10.0.0.8"),
            ActualServer(name="web-3", provider_id="13", labels=(), server_type="cx22",
                         image=None, location="fsn1", status="off", ipv4=None),
        ]  # fmt: skip
        run.keep_addresses(listed)
        addresses = {r.name: r.ipv4 for r in store.servers.all("ttl")}
    # web-2's listing is another server under its name; web-3 is off and has none now.
    assert addresses == {"web-1": "10.0.0.9", "web-2": "10.0.0.1", "web-3": "10.0.0.1"}
