"""The agent's Docker image, built from agent/ and cached by recipe.

The build context is assembled in a temporary folder: agent/Dockerfile, the fleet_agent
sources, and a wheelhouse (agent/requirements.lock plus pip itself) downloaded on the host with
`pip download` for the image's Python (Debian 12: CPython 3.11) and the Docker engine's CPU
architecture. The wheelhouse is cached per lock file and architecture, so an unchanged agent
gives the same context hash and is never rebuilt (engine.providers.local.images.build_image).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.providers.local.images import Say, build_image, cache_dir, ensure_base_image, file_lock

AGENT_REPOSITORY = "fleet-engine/agent"
AGENT_SOURCE = Path(__file__).resolve().parents[2] / "agent"
LOCK_FILE = AGENT_SOURCE / "requirements.lock"
IMAGE_PYTHON = "3.11"  # python3 in Debian 12, the base image
PIP_REQUIREMENT = "pip==26.3"
# manylinux tags a Debian 12 system (glibc 2.36) can run, newest first.
_MANYLINUX = (
    "manylinux_2_28",
    "manylinux_2_17",
    "manylinux2014",
    "manylinux_2_12",
    "manylinux2010",
)
_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def wheel_arch(client: Any) -> str:
    """The wheel architecture of the Docker engine's machine (x86_64 or aarch64)."""
    reported = str(client.info().get("Architecture", ""))
    try:
        return _ARCHITECTURES[reported]
    except KeyError:
        raise EngineError(
            f"the Docker engine runs on {reported or 'an unknown architecture'}; the agent's "
            f"image can be built for {', '.join(sorted(set(_ARCHITECTURES.values())))}"
        ) from None


def ensure_wheelhouse(arch: str, say: Say) -> Path:
    """A folder with every wheel the image installs (and pip), downloaded once per lock."""
    lock = LOCK_FILE.read_bytes()
    recipe = b"\0".join([lock, PIP_REQUIREMENT.encode(), arch.encode(), IMAGE_PYTHON.encode()])
    target = cache_dir() / f"agent-wheels-{hashlib.sha256(recipe).hexdigest()[:12]}"
    with file_lock(target.with_suffix(".lock")):
        if target.is_dir():
            return target
        say(f"downloading the agent's Python packages for {arch} (once)")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        platforms = [arg for tag in _MANYLINUX for arg in ("--platform", f"{tag}_{arch}")]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                IMAGE_PYTHON,
                "--abi",
                f"cp{IMAGE_PYTHON.replace('.', '')}",
                "--abi",
                "abi3",
                "--abi",
                "none",
                *platforms,
                "--dest",
                str(partial),
                "--requirement",
                str(LOCK_FILE),
                PIP_REQUIREMENT,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            problems = [line for line in result.stderr.splitlines() if "ERROR" in line]
            raise EngineError(
                "could not download the agent's Python packages from the package index: "
                + ("; ".join(problems) or result.stderr.strip()[-800:])
            )
        shutil.copy2(LOCK_FILE, partial / LOCK_FILE.name)
        partial.rename(target)
    return target


@functools.cache
def agent_recipe() -> str:
    """A digest of what the agent's image is built from (its Dockerfile, sources and lock):
    the same recipe builds the same agent, so this stands for the image in the install
    digest, known without building or asking Docker."""
    digest = hashlib.sha256()
    sources = sorted((AGENT_SOURCE / "fleet_agent").glob("*.py"))
    for path in (AGENT_SOURCE / "Dockerfile", LOCK_FILE, *sources):
        digest.update(str(path.relative_to(AGENT_SOURCE)).encode())
        digest.update(path.read_bytes())
    return f"recipe:{digest.hexdigest()[:16]}"


def _assemble_context(folder: Path, wheels: Path) -> None:
    for name in ("Dockerfile", "rootfs.sh"):
        shutil.copy2(AGENT_SOURCE / name, folder / name)
    package = folder / "fleet_agent"
    package.mkdir()
    for source in sorted((AGENT_SOURCE / "fleet_agent").glob("*.py")):
        shutil.copy2(source, package / source.name)
    shutil.copytree(wheels, folder / "wheels")


def ensure_agent_image(client: Any, say: Say) -> str:
    """The tag of the agent's image in `client`'s engine, building base and agent as needed."""
    base = ensure_base_image(client, say)
    wheels = ensure_wheelhouse(wheel_arch(client), say)
    with tempfile.TemporaryDirectory(prefix="agent-context-") as tmp:
        context = Path(tmp)
        _assemble_context(context, wheels)
        return build_image(client, AGENT_REPOSITORY, context, say, buildargs={"BASE": base})
