"""The install package loads its SDKs only where they run: pyinfra in the child, Docker's SDK
when an agent image is saved. The control plane and `engine preview` import the rest."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import engine.install
from tests.support.cli import ROOT

CHILD = {"engine.install.worker", "engine.install.__main__"}


def test_importing_the_install_modules_loads_neither_pyinfra_nor_docker() -> None:
    names = sorted(
        module.name
        for module in pkgutil.iter_modules(engine.install.__path__, "engine.install.")
        if module.name not in CHILD
    )
    assert "engine.install.runner" in names and "engine.install.installer" in names
    probe = (
        f"import sys\nimport {', '.join(names)}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyinfra', 'docker', 'gevent'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
