"""The agent image, copied to a fleet once: from the engine to one server, then among servers.

When the agent image is copied rather than pulled (no `install.agent.image`), the first
server of a fleet that lacks it gets it from the engine, over SSH, as the archive `docker save`
made. Every server that has checked it keeps the archive and becomes a *peer*; the
servers after it fetch the archive from a peer over the fleet's private network instead (or
at the peer's public address, for a server on no private network). A fleet of fifty servers
costs the engine's uplink one image, not fifty.

    peers      <folder>/image-<id>/peers: one JSON line per peer (its name, the address the
               fleet reaches it at, its SSH port and pinned host keys), changed under a lock
    seeding    <folder>/image-<id>/seed.lock: held by the one install that streams the image
               from the engine while it does; the others wait for it, then fetch from that server
    image key  <state_dir>/keys/<fleet>-image: an SSH key pair of the fleet's. Every peer lets it
               in as the user fleet-image, whose only command sends the archive it keeps
               (`restrict,command=...`, deploys/agent.py); a server holds the private half only
               while it fetches. It opens nothing but a copy of the agent image, which is no secret.

Every server checks an archive before loading it, wherever it came from: its sha256 must be
that of the engine's own archive (saved once per image id, byte for byte what every server
keeps, so the digest names the image's exact bytes), and after the load the reference must name
the image id the engine expects. A peer that cannot be reached or sends anything else is
dropped from the list and the next is tried; with none left, the image comes from the engine.
The list lives with the engine's state, so installs run by one engine machine share it; another
machine running installs (`engine serve`) seeds its own first peer.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from engine.errors import EngineError
from engine.install.deploykey import ensure_key_pair
from engine.install.model import ImageArchive, ImagePeer, ImageSharing, from_json, to_json
from engine.state.files import private_dir


def image_archives(url: str | None, references: Sequence[str]) -> dict[str, ImageArchive]:
    """Each image of `references` in the engine's Docker (`url`, else the local one), as the
    archive it is copied as; nothing is saved yet (`saved_archive` does, when one is needed)."""
    from engine.providers.local.images import cache_dir, image_sources

    with image_sources(url, references) as sources:
        return {
            reference: ImageArchive(
                reference=reference,
                image_id=image_id,
                path=str(cache_dir() / "images" / f"{image_id.removeprefix('sha256:')}.tar.gz"),
            )
            for reference, (image_id, _) in sources.items()
        }


def saved_archive(url: str | None, archive: ImageArchive) -> str:
    """The sha256 of `archive`, saved (`docker save`, compressed) from the engine's Docker
    unless it is saved already: once per image id, kept for every later install."""
    from engine.providers.local.images import file_lock, image_sources

    path = Path(archive.path)
    digest = path.with_name(path.name + ".sha256")
    with file_lock(path.with_suffix(".lock")):
        if path.exists() and digest.exists():
            return digest.read_text(encoding="ascii").strip()
        with image_sources(url, [archive.reference]) as sources:
            image_id, tar = sources[archive.reference]
            if image_id != archive.image_id:
                raise EngineError(
                    f"{archive.reference} changed in the engine's Docker while servers were "
                    f"being installed (it is {image_id[:19]} now); run the install again"
                )
            partial = path.with_suffix(".partial")
            # Level 1: most of the gain for a fraction of the time. No time stamp in the
            # header: the same image saves to the same bytes.
            with gzip.GzipFile(partial, "wb", compresslevel=1, mtime=0) as out:
                for chunk in tar():
                    out.write(chunk)
            with partial.open("rb") as saved:
                sha256 = hashlib.file_digest(saved, "sha256").hexdigest()
            digest.write_text(sha256 + "\n", encoding="ascii")
            partial.replace(path)
            return sha256


def image_key_path(state_dir: Path, fleet: str) -> Path:
    """Where the fleet's image key (private half) is."""
    return state_dir / "keys" / f"{fleet}-image"


def fleet_sharing(state_dir: Path, fleet: str) -> ImageSharing:
    """How `fleet`'s servers share copied images, making the image key on first use."""
    key = image_key_path(state_dir, fleet)
    public = ensure_key_pair(key, f"fleet-engine-image@{fleet}")
    folder = private_dir(state_dir, "images", fleet)
    return ImageSharing(folder=str(folder), key=str(key), public_key=public)


def forget_sharing(state_dir: Path, fleet: str) -> None:
    """Remove what `fleet_sharing` made for `fleet` (its image key, its peer lists)."""
    key = image_key_path(state_dir, fleet)
    key.unlink(missing_ok=True)
    key.with_name(key.name + ".pub").unlink(missing_ok=True)
    shutil.rmtree(state_dir / "images" / fleet, ignore_errors=True)


def pinned_known_hosts(address: str, port: int, host_keys: tuple[str, ...]) -> str:
    """known_hosts lines pinning `host_keys` (`type base64` ...) for `address`:`port`."""
    pattern = address if port == 22 else f"[{address}]:{port}"
    return "".join(f"{pattern} {' '.join(key.split()[:2])}\n" for key in host_keys)


class PeerList:
    """The servers that keep a checked copy of one image, and who is seeding it."""

    def __init__(self, sharing: ImageSharing, image_id: str) -> None:
        self.folder = Path(sharing.folder) / f"image-{image_id.removeprefix('sha256:')[:32]}"
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._peers = self.folder / "peers"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.folder / "peers.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def peers(self) -> list[ImagePeer]:
        """Every peer listed."""
        with self._locked():
            return self._read()

    def add(self, peer: ImagePeer) -> None:
        with self._locked():
            kept = [p for p in self._read() if p.name != peer.name]
            self._write([*kept, peer])

    def drop(self, name: str) -> None:
        with self._locked():
            self._write([p for p in self._read() if p.name != name])

    def _read(self) -> list[ImagePeer]:
        try:
            lines = self._peers.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [from_json(ImagePeer, json.loads(line)) for line in lines]

    def _write(self, peers: list[ImagePeer]) -> None:
        partial = self._peers.with_suffix(".partial")
        partial.write_text("".join(json.dumps(to_json(p)) + "\n" for p in peers), encoding="utf-8")
        partial.replace(self._peers)

    @contextlib.contextmanager
    def seeding(self) -> Iterator[bool]:
        """Whether this install may seed the image (it holds the seed lock for the block);
        if another one is seeding, waits until it is done and yields False."""
        descriptor = os.open(self.folder / "seed.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # the seeder is done (or died)
                fcntl.flock(descriptor, fcntl.LOCK_UN)
                yield False
                return
            yield True
        finally:
            os.close(descriptor)


def ranked(peers: list[ImagePeer], me: str) -> list[ImagePeer]:
    """`peers` but `me`, in the order `me` tries them: each server its own order, so a fleet's
    fetches spread over the peers there are (rendezvous hashing)."""
    others = [p for p in peers if p.name != me]
    return sorted(others, key=lambda p: hashlib.sha256(f"{me}\0{p.name}".encode()).digest())


Fetch = Callable[[ImagePeer], str]
Stream = Callable[[], str]


def deliver(
    peers: PeerList,
    me: ImagePeer,
    *,
    from_peer: Fetch,
    from_engine: Stream,
    say: Callable[[str], None],
) -> str:
    """Put the image on server `me`: from a peer when one has it, otherwise from the engine,
    where one server at a time seeds it and the others wait to fetch it from that one.

    `from_peer` and `from_engine` do the copying (checked, and kept); each returns "" or what
    went wrong. Once the image is on `me`, `me` is a peer (when it has an address for the
    fleet). Returns where the image came from; raises RuntimeError when the engine's copy failed.
    """
    tried: set[str] = set()
    while True:
        for peer in ranked(peers.peers(), me.name):
            if peer.name in tried:
                continue
            tried.add(peer.name)
            error = from_peer(peer)
            if not error:
                _joined(peers, me)
                return f"from {peer.name}"
            say(f"could not fetch the image from {peer.name} ({error}); trying elsewhere")
            peers.drop(peer.name)
        with peers.seeding() as mine:
            if not mine:
                continue  # the seeder is done: fetch from it (or seed, if it failed)
            if any(p.name not in tried for p in ranked(peers.peers(), me.name)):
                continue
            error = from_engine()
            if error:
                raise RuntimeError(error)
            _joined(peers, me)
            return "from the engine"


def _joined(peers: PeerList, me: ImagePeer) -> None:
    if me.address:
        peers.add(me)
