"""The import rule of docs/guide/architecture.md: imports only point down the layers.

Every module of the package is parsed with ``ast`` (imports inside functions included) and
placed in a layer by ``LAYERS``; an import of a module from a higher layer fails, and so does any
import of ``pushforward.data`` other than ``pushforward.core``. A new module or package must be
given a layer here (the test fails until it is), so the picture in the docs stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pushforward"

# The layers, bottom up; a module may import from its own layer and the ones below.
LAYERS: dict[str, int] = {
    # 0 — core: the change-of-variables engine and what every layer shares
    "pushforward.core": 0,
    "pushforward._transform": 0,
    "pushforward._flow": 0,
    "pushforward._validation": 0,
    "pushforward._flow_distribution": 0,
    "pushforward.specs": 0,
    "pushforward.evaluation": 0,
    "pushforward.fused": 0,
    "pushforward.fused_affine": 0,
    # 1 — transforms, bases and the other building blocks; data (which imports only core)
    "pushforward.nn": 1,
    "pushforward.distributions": 1,
    "pushforward.discretized": 1,
    "pushforward.context": 1,
    "pushforward.transforms": 1,
    "pushforward.continuous": 1,
    "pushforward.manifolds": 1,
    "pushforward.audio": 1,
    "pushforward.data": 1,
    # 2 — presets: small functions that assemble a Flow, registered by name
    "pushforward._registry": 2,
    "pushforward.presets": 2,
    "pushforward.flows": 2,
    "pushforward.molecules": 2,
    "pushforward.video": 2,
    # 3 — training and the tools that use trained flows
    "pushforward.training": 3,
    "pushforward.diagnostics": 3,
    "pushforward.compression": 3,
    "pushforward.plotting": 3,
    "pushforward.integrations": 3,
    # 4 — the command line
    "pushforward.cli": 4,
    "pushforward.cli_base": 4,
    "pushforward.cli_runs": 4,
    "pushforward.cli_train": 4,
    "pushforward.cli_tools": 4,
    "pushforward.cli_config": 4,
    "pushforward.__main__": 4,
}
NAMES = {0: "core", 1: "transforms/bases", 2: "presets", 3: "training", 4: "CLI"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    """The layer of ``module``: the longest prefix in ``LAYERS``."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def _is_module(name: str) -> bool:
    """A module or package of the source tree (found on disk, nothing imported)."""
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports_of(text: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every pushforward module the source ``text`` of ``module``
    imports (relative imports resolved, ``from package import module`` as the module)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}"
                found.append((node.lineno, target if _is_module(target) else source))
    return [(line, name) for line, name in found
            if name == "pushforward" or name.startswith("pushforward.")]


def _imports(path: Path) -> list[tuple[int, str]]:
    return _imports_of(path.read_text(encoding="utf-8"), _module_name(path),
                       path.name == "__init__.py")


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in FILES
               if _module_name(p) != "pushforward" and _layer(_module_name(p)) is None]
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_down(path):
    module = _module_name(path)
    if module == "pushforward":
        return  # the package root re-exports the public names of every layer
    own = _layer(module)
    if own is None:
        pytest.skip("no layer yet: test_every_module_has_a_layer fails for it")
    upward = []
    for line, name in _imports(path):
        layer = 4 if name == "pushforward" else _layer(name)  # the root re-exports every layer
        if layer is not None and layer > own:
            upward.append(f"line {line}: {name} ({NAMES[layer]}) from {NAMES[own]}")
        if module.startswith("pushforward.data") and not (
                name == "pushforward.core" or name.startswith("pushforward.data")):
            upward.append(f"line {line}: {name} — pushforward.data imports only core")
    assert not upward, f"{module} imports upward:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import():
    """Relative imports and ``from package import module`` resolve to the module imported."""
    source = "from pushforward import flows\nfrom ..training import fit\nimport pushforward.cli\n"
    names = [name for _, name in _imports_of(source, "pushforward.data._probe", False)]
    assert names == ["pushforward.flows", "pushforward.training.fit", "pushforward.cli"]
    assert [_layer(n) for n in names] == [2, 3, 4]
    assert _layer("pushforward.data._probe") == 1
