"""One layer per folder, imports pointing one way (docs/design.md §1, "Layers").

Every module of a layer folder falls under its folder's rule without being listed here:

    sparse_rl/    the torch-only core            imports only sparse_rl (commands excepted, below)
    envs/         gymnasium adapters             + sparse_rl
    agents/       SB3 adapters, population path  + sparse_rl, envs
    analysis/     reads run directories          + sparse_rl, experiment.layout (the one experiment module it reads)
    experiment/   plans, runs, records           + sparse_rl, envs, agents, analysis
    hydra_plugins launchers                      + experiment
    commands      python -m sparse_rl.run | analyze | evaluate | study | grid: thin, the only upward imports;
                  nothing imports them

Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are not counted.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("sparse_rl", "envs", "agents", "analysis", "experiment", "hydra_plugins")
COMMANDS = ("sparse_rl.run", "sparse_rl.analyze", "sparse_rl.evaluate", "sparse_rl.study", "sparse_rl.grid")
ALLOWED = {  # layer -> the layers (or single modules) it may import besides itself
    "sparse_rl": (),
    "envs": ("sparse_rl",),
    "agents": ("sparse_rl", "envs"),
    "analysis": ("sparse_rl", "experiment.layout"),
    "experiment": ("sparse_rl", "envs", "agents", "analysis"),
    "hydra_plugins": ("experiment",),
}
COMMAND_MAY_IMPORT = ("sparse_rl", "experiment", "analysis")
# third-party packages a layer must not import (directly); the core's list is also checked at run time below
FORBIDDEN = {
    "sparse_rl": ("hydra", "omegaconf", "stable_baselines3", "gymnasium", "pandas", "numpy", "rliable", "matplotlib"),
    "envs": ("hydra", "pandas", "rliable", "matplotlib"),
    "agents": ("hydra", "pandas", "rliable", "matplotlib"),
    "analysis": ("hydra", "stable_baselines3", "gymnasium", "torch"),
}
CORE_RUNTIME_FORBIDDEN = ("hydra", "omegaconf", "stable_baselines3", "gymnasium", "pandas")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    return skipped


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports (absolute names; function-level imports included, TYPE_CHECKING excluded)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


def _project(name: str) -> str | None:
    """The project module ``name`` refers to (``None``: third-party)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _layer(module: str) -> str:
    return module.split(".")[0]


def _allowed(importer: str, imported: str) -> bool:
    if imported in COMMANDS:
        return False
    if importer in COMMANDS:
        return _layer(imported) in COMMAND_MAY_IMPORT
    layer = _layer(importer)
    if _layer(imported) == layer:
        return True
    return any(imported == rule or imported.startswith(rule + ".") for rule in ALLOWED[layer])


def test_every_layer_folder_is_found():
    assert {_layer(m) for m in MODULES} == set(LAYERS)
    assert set(COMMANDS) <= set(MODULES)


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer):
    wrong = sorted(
        f"{module} imports {target}"
        for module in MODULES
        if _layer(module) == layer
        for target in {_project(name) for name in imports_of(module)} - {None, module}
        if not _allowed(module, target)
    )
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_forbidden_third_party_import(layer):
    wrong = sorted(
        f"{module} imports {name}"
        for module in MODULES
        if _layer(module) == layer and module not in COMMANDS
        for name in imports_of(module)
        if _project(name) is None and name.split(".")[0] in FORBIDDEN[layer]
    )
    assert wrong == [], "\n".join(wrong)


def test_no_import_circles():
    graph = {m: {t for t in map(_project, imports_of(m)) if t is not None and t != m} for m in MODULES}
    # a package's __init__ re-exporting its own modules is not a circle of behaviour: ignore edges into a package
    # from its own submodules
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "sparse_rl" and m not in COMMANDS))
def test_core_module_loads_no_forbidden_package(module):
    code = f"import sys, {module}; print(sorted(m for m in {CORE_RUNTIME_FORBIDDEN!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", f"{module} pulls in {result.stdout.strip()}"


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself: an upward import and a circle are found."""
    files = {
        "sparse_rl/bad.py": "import experiment.plan\n",  # the core importing a layer above it
        "envs/a.py": "import envs.b\n",  # a circle: a -> b -> a
        "envs/b.py": "from envs import a\n",
    }
    fake = {name: MODULES[name] for name in ("experiment.plan", "envs", "sparse_rl")}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
        fake[name.removesuffix(".py").replace("/", ".")] = tmp_path / name
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    assert not _allowed("sparse_rl.bad", _project("experiment.plan"))
    assert imports_of("envs.b") == {"envs", "envs.a"}
    with pytest.raises(AssertionError, match=re.escape("envs.a -> envs.b -> envs.a")):
        test_no_import_circles()
