"""requirements.lock pins what the ranges in the pyproject files allow, and is what is installed."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not pinned to one version with =="
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    wanted = []
    for file in (ROOT / "pyproject.toml", ROOT / "agent" / "pyproject.toml"):
        project = tomllib.loads(file.read_text())["project"]
        groups = [project["dependencies"], *project.get("optional-dependencies", {}).values()]
        wanted += [Requirement(line) for group in groups for line in group]
    return [r for r in wanted if canonicalize_name(r.name) != "fleet-engine"]


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    pins = _locked()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: bash .ci/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside {requirement}"
        )


def test_the_environment_holds_exactly_the_locked_versions() -> None:
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name, version in _locked().items():
        assert installed.get(name) == version, (
            f"{name}: locked {version}, installed {installed.get(name)}"
        )
