"""docs/architecture.md holds: imports run downward but for the ones it names, there is no
circle, and each SDK is imported only inside its provider's folder."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.support.cli import ROOT

# The layers of docs/architecture.md, bottom to top: the first pattern a module matches wins.
LAYERS = (
    (1, r"engine\.(errors|term|secrets|model|yamldoc)"),
    (2, r"engine\.(spec|catalog|placement|diff|plan|render|cost|quota|lifecycle|progress|health)"),
    (2, r"engine\.exposure"),
    (2, r"engine\.(cloudinit(\..+)?|addresses|state|providers)"),
    (2, r"engine\.apps\.(versions|diff|rollout)"),
    (3, r"engine\.state\..+"),
    (4, r"engine\.tokens|engine\.install\.deploykey"),
    (5, r"engine\.providers\.(seam|retry|naming)"),
    (6, r"engine\.apps\.(observe|servers)"),
    (6, r"engine\.(providers|install|agent)(\..+)?|stacks(\..+)?|deploys(\..+)?"),
    (7, r"engine\.controlplane(\..+)?"),
    (
        8,
        r"engine\.(up|signals|preview|converge|remote|reconcile|serve)|engine\.apps(\.(deploy|commands))?",
    ),
    (9, r"engine\.(cli(\..+)?|__main__)"),
)
# The upward imports docs/architecture.md names, with its reasons.
UPWARD = {("engine.state.schema", "engine.tokens")}
SDKS = {
    "hcloud": "engine/providers/hcloud/",
    "pydo": "engine/providers/digitalocean/",
    "docker": "engine/providers/local/",
}


def _layer(module: str) -> int:
    for number, pattern in LAYERS:
        if re.fullmatch(pattern, module):
            return number
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def _modules() -> dict[str, Path]:
    found = {}
    for pattern in ("engine/**/*.py", "stacks/*.py", "deploys/*.py"):
        for path in ROOT.glob(pattern):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at the top, inside functions or for type checking."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
        if name != "engine"
    }


def test_imports_run_downward_but_for_the_documented_few() -> None:
    upward = {
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    }
    assert upward == UPWARD
    documented = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for module, target in UPWARD:
        for name in (module, target):
            assert f"`{name.removeprefix('engine.').replace('.', '/')}.py`" in documented


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circle = [*path[path.index(target) :], target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_each_sdk_is_imported_only_in_its_providers_folder() -> None:
    for folder in ("engine", "stacks", "deploys", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            for imported in _imports(path):
                sdk = imported.split(".")[0]
                if sdk in SDKS:
                    assert relative.startswith(SDKS[sdk]), f"{relative} imports {imported}"
