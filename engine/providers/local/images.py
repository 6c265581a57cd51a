"""Images for the local provider, built on first use and rebuilt when their recipe changes.

    base    Debian 12: `debian:bookworm-slim` where a registry answers; otherwise a minimal
            root file system bootstrapped from the Debian mirror with debootstrap (no registry
            needed) and imported. The bootstrap is cached as a tarball in the user's cache.
    golden  FROM base: cloud-init, sshd, curl, python3, sudo, Docker (golden/ beside this file).
    machine golden with images (the agent's) already in the Docker engine inside it, which is
            what local machines start from (`ensure_machine_image`).

Every image is tagged with a hash of its recipe (the files of its build context and its
parent's tag), so a changed recipe gives a new tag and an unchanged one is never rebuilt.
Other images (the agent's) are built with the same `build_image`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import EngineError

Say = Callable[[str], None]

SUITE = "bookworm"
BASE_REPOSITORY = "fleet-engine/debian"
GOLDEN_REPOSITORY = "fleet-engine/golden"
GOLDEN_CONTEXT = Path(__file__).resolve().parent / "golden"
MACHINE_REPOSITORY = "fleet-engine/machine"
# A Docker engine's data root, and the parts of it that hold its images (it makes the rest,
# its networks, containers and volumes, when it starts).
DATA_ROOT = "/var/lib/docker"
IMAGE_STORE = ("image", "overlay2")
BUILDER_TIMEOUT_S = 120.0
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BOOTSTRAP_RECIPE = f"debootstrap --variant=minbase {SUITE} v1"

# Between two tries of a step that waits for the machine's Docker to answer: the first
# wait, doubled after each try up to the last.
RETRY_S = 0.1
RETRY_MAX_S = 2.0


def cache_dir() -> Path:
    """Where built artefacts are kept between runs: $XDG_CACHE_HOME/fleet-engine."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "fleet-engine"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise builders across processes (two test runs building the same tarball)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def debian_mirror() -> str:
    """The Debian mirror this machine uses ($ENGINE_DEBIAN_MIRROR overrides)."""
    configured = os.environ.get("ENGINE_DEBIAN_MIRROR")
    if configured:
        return configured
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if source.is_file():
            match = re.search(r"(?:URIs:|deb)\s+(\S+/debian)\b", source.read_text())
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def _sources_list(mirror: str) -> str:
    security = mirror.rsplit("/debian", 1)[0] + "/debian-security"
    return (
        f"deb {mirror} {SUITE} main\n"
        f"deb {mirror} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )


def bootstrap_tarball(say: Say) -> Path:
    """A tarball of a minimal Debian root file system, made once with debootstrap and cached."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{BOOTSTRAP_RECIPE} {mirror}".encode()).hexdigest()[:12]
    target = cache_dir() / f"rootfs-{SUITE}-minbase-{key}.tar"
    with file_lock(target.with_suffix(".lock")):
        if target.is_file():
            return target
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists():
            raise EngineError(
                "no registry answers and debootstrap is not installed, so the local provider "
                "cannot make its Debian base image; install it (apt-get install debootstrap) "
                "or make a registry reachable"
            )
        say(f"bootstrapping a Debian {SUITE} base from {mirror} (once; about 30 s)")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            result = subprocess.run(
                [debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                tail = (result.stdout + result.stderr)[-1500:]
                raise EngineError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
            (rootfs / "etc/apt/sources.list").write_text(_sources_list(mirror))
            for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
                leftover.unlink()
            partial = target.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
            partial.replace(target)
        return target


def _has_image(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base_image(client: Any, say: Say) -> str:
    """The tag of the Debian 12 base image in `client`'s engine, making it if needed."""
    import docker

    mirror = debian_mirror()
    key = hashlib.sha256(f"{BOOTSTRAP_RECIPE} {mirror}".encode()).hexdigest()[:12]
    tag = f"{BASE_REPOSITORY}:{SUITE}-{key}"
    if _has_image(client, tag):
        return tag
    try:
        image = client.images.pull("debian", f"{SUITE}-slim")
        image.tag(BASE_REPOSITORY, f"{SUITE}-{key}")
        say(f"using debian:{SUITE}-slim from the registry as the base image")
        return tag
    except docker.errors.APIError:
        pass  # no registry here: bootstrap from the Debian mirror instead
    tarball = bootstrap_tarball(say)
    say(f"importing the base image {tag}")
    client.api.import_image_from_file(
        str(tarball), repository=BASE_REPOSITORY, tag=f"{SUITE}-{key}"
    )
    return tag


def context_hash(context: Path, *extra: str) -> str:
    """A hash of every file in a build context (names, modes as built, contents) and `extra`
    strings."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode())
        digest.update(oct(built_mode(path.stat().st_mode, directory=False)).encode())
        digest.update(path.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:12]


def built_mode(mode: int, *, directory: bool) -> int:
    """The mode a file of a build context gets in the image: 0755 for a folder or a file
    anyone may run, else 0644. Git keeps only the execute bit, and the rest comes from the
    umask of whoever cloned: a group-writable daemon.json baked into the golden image made
    every install's check see a change and restart Docker."""
    return 0o755 if directory or mode & 0o111 else 0o644


def _as_built(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode = built_mode(info.mode, directory=info.isdir())
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def context_tar(context: Path) -> io.BytesIO:
    """A build context as the tar file `docker build` takes, with the modes `built_mode`
    gives and root as the owner."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(context, arcname=".", filter=_as_built)
    buffer.seek(0)
    return buffer


def build_image(
    client: Any, repository: str, context: Path, say: Say, *, buildargs: dict[str, str]
) -> str:
    """Build `context` as `repository:<recipe hash>` unless that tag exists; return the tag."""
    tag = f"{repository}:{context_hash(context, *sorted(f'{k}={v}' for k, v in buildargs.items()))}"
    if _has_image(client, tag):
        return tag
    say(f"building {tag} (once per recipe)")
    lines: list[str] = []
    for chunk in client.api.build(
        fileobj=context_tar(context),
        custom_context=True,
        tag=tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "stream" in chunk:
            text = chunk["stream"].rstrip()
            if text:
                lines.append(text)
                if text.startswith("Step "):
                    say(f"  {text}")
        if "error" in chunk:
            tail = "\n".join(lines[-15:])
            raise EngineError(f"building {repository} failed: {chunk['error'].strip()}\n{tail}")
    return tag


def ensure_golden_image(client: Any, say: Say) -> str:
    """The tag of the golden image for local servers, building base and golden as needed."""
    base = ensure_base_image(client, say)
    return build_image(client, GOLDEN_REPOSITORY, GOLDEN_CONTEXT, say, buildargs={"BASE": base})


def ensure_machine_image(client: Any, golden: str, preload: Sequence[str], say: Say) -> str:
    """The image local machines start from: `golden` with the images of `preload` (from
    `client`'s engine) already in the Docker engine inside it; `golden` itself when there is
    nothing to preload. Built once per golden image and set of image ids.

    A machine's Docker data volume starts as a copy of the image's data root (Docker copies
    an image's files into a new, empty volume), so an install finds the agent's image there
    instead of loading it: a file copy instead of a decompression and an unpacking per server.
    """
    if not preload:
        return golden
    ids = [client.images.get(golden).id, *(client.images.get(ref).id for ref in preload)]
    key = hashlib.sha256("\0".join(ids).encode()).hexdigest()[:12]
    tag = f"{MACHINE_REPOSITORY}:{key}"
    with file_lock(cache_dir() / f"machine-{key}.lock"):
        if _has_image(client, tag):
            return tag
        say(f"building {tag}: {golden} with {', '.join(preload)} in its Docker (once)")
        with tempfile.TemporaryDirectory(prefix="machine-image-") as tmp:
            store = _image_store(client, golden, preload, Path(tmp))
            container = client.api.create_container(golden)
            try:
                with store.open("rb") as data:
                    client.api.put_archive(container["Id"], str(Path(DATA_ROOT).parent), data)
                client.api.commit(container["Id"], repository=MACHINE_REPOSITORY, tag=key)
            finally:
                client.api.remove_container(container["Id"], force=True)
    return tag


def _image_store(client: Any, golden: str, preload: Sequence[str], folder: Path) -> Path:
    """A tar file of the image store (IMAGE_STORE under DATA_ROOT) of a Docker engine that ran
    in a machine from `golden`, had the images of `preload` loaded, and stopped."""
    from engine.providers.local.machines import MachineSpec, create_machine, write_seed

    seed = folder / "seed"
    write_seed(seed, instance_id="i-image-builder", hostname="image-builder", user_data="")
    name = f"fleet-engine-image-builder-{secrets.token_hex(4)}"
    spec = MachineSpec(name=name, hostname="image-builder", image=golden, seed_dir=seed)
    machine = create_machine(client, spec)
    try:
        _run_in(machine, "docker", "info", deadline=time.monotonic() + BUILDER_TIMEOUT_S)
        for reference in preload:
            _load_in(client, machine, reference, folder)
        _run_in(machine, "/etc/init.d/docker", "stop")
        kept = " ".join(f"! -name {part}" for part in IMAGE_STORE)
        _run_in(
            machine,
            "sh",
            "-c",
            f"find {DATA_ROOT} -mindepth 1 -maxdepth 1 {kept} -exec rm -rf {{}} +",
        )
        path = folder / "store.tar"
        stream, _ = machine.get_archive(DATA_ROOT)
        with path.open("wb") as out:
            for chunk in stream:
                out.write(chunk)
        return path
    finally:
        machine.remove(force=True, v=True)
        client.volumes.get(f"{name}-docker").remove(force=True)


def _load_in(client: Any, machine: Any, reference: str, folder: Path) -> None:
    """`docker save` `reference` here, `docker load` it in `machine`, and check its id."""
    inbox = "/root"  # root's own folder in the machine, which nothing else uses
    wrapped = folder / "image.tar"
    with tempfile.TemporaryFile(dir=folder) as saved, wrapped.open("wb") as out:
        for chunk in client.api.get_image(reference):
            saved.write(chunk)
        info = tarfile.TarInfo("image.tar")
        info.size = saved.tell()
        saved.seek(0)
        with tarfile.open(fileobj=out, mode="w") as tar:
            tar.addfile(info, saved)
    with wrapped.open("rb") as data:
        machine.put_archive(inbox, data)
    wrapped.unlink()
    _run_in(machine, "docker", "load", "--quiet", "--input", f"{inbox}/image.tar")
    _run_in(machine, "rm", f"{inbox}/image.tar")
    loaded = _run_in(machine, "docker", "image", "inspect", "--format", "{{.Id}}", reference)
    if loaded.strip() != client.images.get(reference).id:
        raise EngineError(f"building the local machine image: {reference} did not load intact")


def _run_in(machine: Any, *argv: str, deadline: float | None = None) -> str:
    """Run `argv` in `machine`; with a deadline, again (backing off) until it succeeds or the
    deadline."""
    wait = RETRY_S
    while True:
        result = machine.exec_run(list(argv))
        output = str(result.output.decode(errors="replace"))
        if result.exit_code == 0:
            return output
        if deadline is None or time.monotonic() > deadline:
            raise EngineError(
                f"building the local machine image: {' '.join(argv)} failed "
                f"(exit {result.exit_code}): {output.strip()[-800:]}"
            )
        time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        wait = min(wait * 2, RETRY_MAX_S)


ImageSource = tuple[str, Callable[[], Iterable[bytes]]]


@contextmanager
def image_sources(
    url: str | None, references: Sequence[str], *, missing_ok: bool = False
) -> Iterator[dict[str, ImageSource]]:
    """For each image of `references` in the engine's Docker (`url`, else the local one): its
    id, and a function that streams it as `docker save` does. The client stays open for the
    block; an EngineError names an image that is not there, unless `missing_ok` (then it is
    left out)."""
    import docker

    from engine.providers.local.dockerd import daemon_client, ensure_daemon

    url = url or ensure_daemon()
    client = daemon_client(url)
    try:
        sources: dict[str, ImageSource] = {}
        for reference in references:
            try:
                image_id = client.images.get(reference).id
            except docker.errors.ImageNotFound:
                if missing_ok:
                    continue
                raise EngineError(
                    f"the agent image {reference} is not in the engine's Docker ({url}); "
                    "build it first"
                ) from None
            sources[reference] = (image_id, functools.partial(client.api.get_image, reference))
        yield sources
    finally:
        client.close()
