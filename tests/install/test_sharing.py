"""Who gets a copied image from whom (engine/install/sharing.py), on real files and locks."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from engine.install.model import ImagePeer, ImageSharing
from engine.install.sharing import (
    PeerList,
    deliver,
    fleet_sharing,
    forget_sharing,
    pinned_known_hosts,
    ranked,
)

IMAGE = "sha256:" + "ab" * 32


def peer(name: str, address: str = "") -> ImagePeer:
    return ImagePeer(
        name=name,
        address=address or f"10.0.0.{len(name)}",
        port=22,
        host_keys=("ssh-ed25519 AAAA",),
    )


@pytest.fixture
def sharing(tmp_path: Path) -> ImageSharing:
    return fleet_sharing(tmp_path / "state", "web")


def test_the_fleet_key_is_private_and_made_once(sharing: ImageSharing, tmp_path: Path) -> None:
    key = Path(sharing.key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert sharing.public_key.startswith("ssh-ed25519 ")
    assert sharing.public_key.endswith(" fleet-engine-image@web")
    assert fleet_sharing(tmp_path / "state", "web") == sharing


def test_forgetting_a_fleet_removes_its_key_and_peer_lists(
    sharing: ImageSharing, tmp_path: Path
) -> None:
    PeerList(sharing, IMAGE).add(peer("web-1"))
    other = fleet_sharing(tmp_path / "state", "db")
    forget_sharing(tmp_path / "state", "web")
    assert not Path(sharing.key).exists()
    assert not Path(sharing.key + ".pub").exists()
    assert not Path(sharing.folder).exists()
    assert Path(other.key).exists()


def test_the_peer_list_adds_replaces_and_drops_by_name(sharing: ImageSharing) -> None:
    peers = PeerList(sharing, IMAGE)
    peers.add(peer("web-1"))
    peers.add(peer("web-2"))
    peers.add(peer("web-1", address="10.9.9.9"))
    assert [(p.name, p.address) for p in peers.peers()] == [
        ("web-2", "10.0.0.5"),
        ("web-1", "10.9.9.9"),
    ]
    peers.drop("web-2")
    assert [p.name for p in PeerList(sharing, IMAGE).peers()] == ["web-1"]
    assert PeerList(sharing, "sha256:" + "cd" * 32).peers() == []


def test_ranking_leaves_out_the_server_itself_and_spreads_first_choices() -> None:
    peers = [peer(f"web-{n}") for n in range(1, 6)]
    assert [p.name for p in ranked(peers, "web-3")].count("web-3") == 0
    assert ranked(peers, "web-9") == ranked(list(reversed(peers)), "web-9")
    first_choices = {ranked(peers, f"web-{n}")[0].name for n in range(6, 40)}
    assert len(first_choices) > 2


def test_known_hosts_pin_each_key_for_the_address_and_port() -> None:
    keys = ("ssh-ed25519 AAAA comment", "ecdsa-sha2-nistp256 BBBB")
    assert pinned_known_hosts("10.0.0.2", 22, keys) == (
        "10.0.0.2 ssh-ed25519 AAAA\n10.0.0.2 ecdsa-sha2-nistp256 BBBB\n"
    )
    assert pinned_known_hosts("10.0.0.2", 2222, keys[:1]) == "[10.0.0.2]:2222 ssh-ed25519 AAAA\n"


class Copies:
    """Records the copies `deliver` asks for; peers named in `bad` fail."""

    def __init__(self, bad: tuple[str, ...] = (), engine_error: str = "") -> None:
        self.bad = bad
        self.engine_error = engine_error
        self.fetched: list[str] = []
        self.from_engine = 0
        self.said: list[str] = []

    def from_peer(self, source: ImagePeer) -> str:
        self.fetched.append(source.name)
        return (
            "its sha256 is not that of the archive of the engine" if source.name in self.bad else ""
        )

    def engine(self) -> str:
        self.from_engine += 1
        return self.engine_error


def test_the_first_server_gets_the_image_from_the_engine_and_becomes_a_peer(
    sharing: ImageSharing,
) -> None:
    peers = PeerList(sharing, IMAGE)
    copies = Copies()
    source = deliver(
        peers, peer("web-1"), from_peer=copies.from_peer, from_engine=copies.engine, say=print
    )
    assert source == "from the engine"
    assert copies.from_engine == 1
    assert [p.name for p in peers.peers()] == ["web-1"]


def test_a_later_server_fetches_from_a_peer_and_joins(sharing: ImageSharing) -> None:
    peers = PeerList(sharing, IMAGE)
    peers.add(peer("web-1"))
    copies = Copies()
    source = deliver(
        peers, peer("web-2"), from_peer=copies.from_peer, from_engine=copies.engine, say=print
    )
    assert (source, copies.fetched, copies.from_engine) == ("from web-1", ["web-1"], 0)
    assert {p.name for p in peers.peers()} == {"web-1", "web-2"}


def test_a_peer_that_sends_a_wrong_image_is_dropped_and_the_next_one_used(
    sharing: ImageSharing,
) -> None:
    peers = PeerList(sharing, IMAGE)
    for name in ("web-1", "web-2", "web-3"):
        peers.add(peer(name))
    me = peer("web-4")
    bad = ranked(peers.peers(), me.name)[0].name
    copies = Copies(bad=(bad,))
    source = deliver(
        peers, me, from_peer=copies.from_peer, from_engine=copies.engine, say=copies.said.append
    )
    assert copies.fetched[0] == bad
    assert source == f"from {copies.fetched[1]}"
    assert copies.from_engine == 0
    assert bad not in {p.name for p in peers.peers()}
    assert copies.said == [
        f"could not fetch the image from {bad} (its sha256 is not that of the archive of the "
        "engine); trying elsewhere"
    ]


def test_with_every_peer_bad_the_image_comes_from_the_engine(sharing: ImageSharing) -> None:
    peers = PeerList(sharing, IMAGE)
    peers.add(peer("web-1"))
    peers.add(peer("web-2"))
    copies = Copies(bad=("web-1", "web-2"))
    source = deliver(
        peers, peer("web-3"), from_peer=copies.from_peer, from_engine=copies.engine, say=print
    )
    assert source == "from the engine"
    assert sorted(copies.fetched) == ["web-1", "web-2"]
    assert [p.name for p in peers.peers()] == ["web-3"]


def test_a_server_without_a_fleet_address_is_served_but_never_listed(
    sharing: ImageSharing,
) -> None:
    peers = PeerList(sharing, IMAGE)
    copies = Copies()
    alone = ImagePeer(name="web-1", address="", port=22, host_keys=())
    deliver(peers, alone, from_peer=copies.from_peer, from_engine=copies.engine, say=print)
    assert peers.peers() == []


def test_a_failed_copy_from_the_engine_is_an_error(sharing: ImageSharing) -> None:
    copies = Copies(engine_error="docker load failed")
    with pytest.raises(RuntimeError, match="docker load failed"):
        deliver(
            PeerList(sharing, IMAGE),
            peer("web-1"),
            from_peer=copies.from_peer,
            from_engine=copies.engine,
            say=print,
        )


def test_servers_waiting_for_the_seed_fetch_it_from_the_seeder(sharing: ImageSharing) -> None:
    """Ten installs at once: one copies from the engine, the other nine from servers."""
    copies = Copies()
    seeding = threading.Event()
    release = threading.Event()
    lock = threading.Lock()

    def engine() -> str:
        seeding.set()
        assert release.wait(10)
        with lock:
            copies.from_engine += 1
        return ""

    def from_peer(source: ImagePeer) -> str:
        with lock:
            copies.fetched.append(source.name)
        return ""

    sources: dict[str, str] = {}

    def install(name: str) -> None:
        sources[name] = deliver(
            PeerList(sharing, IMAGE),
            peer(name),
            from_peer=from_peer,
            from_engine=engine,
            say=print,
        )

    first = threading.Thread(target=install, args=("web-0",))
    first.start()
    assert seeding.wait(10)
    rest = [threading.Thread(target=install, args=(f"web-{n}",)) for n in range(1, 10)]
    for thread in rest:
        thread.start()
    release.set()
    for thread in [first, *rest]:
        thread.join(20)
    assert sources["web-0"] == "from the engine"
    assert copies.from_engine == 1
    assert len(copies.fetched) == 9
    assert all(sources[f"web-{n}"].startswith("from web-") for n in range(1, 10))
    assert len(PeerList(sharing, IMAGE).peers()) == 10
