"""The package's layering, read from every module's imports with `ast`.

Layers, lowest first: the error base class (errors) and the atomic file writer (atomic_file); train/
and data/; envs/; models/; rl/ and the artifact loader; stages/; the pipeline runner and config
checks; the entry points (main, cli, serve, tools). A module may import its own layer or a lower one,
at module level only (optional heavy dependencies, which are not project modules, may be imported
inside functions), and the module graph has no cycle.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vlambpo_jax"

# top-level name under vlambpo_jax -> layer (lower numbers are lower layers)
LAYERS = {
    "errors": -1, "atomic_file": -1,
    "train": 0, "data": 0,
    "envs": 1,
    "models": 2,
    "rl": 3, "loading": 3,
    "stages": 4,
    "pipeline": 5, "config_checks": 5,
    "main": 6, "cli": 6, "serve": 6, "tools": 6,
}


def module_names() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("vlambpo_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def resolve(name: str, modules: dict) -> str | None:
    """'vlambpo_jax.models.policy.Policy' -> 'vlambpo_jax.models.policy' (the longest module prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def project_imports(path: pathlib.Path, modules: dict) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a project module in the file."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [f"{child.module}.{a.name}" for a in child.names]
            for name in names:
                if name == "vlambpo_jax" or name.startswith("vlambpo_jax."):
                    target = resolve(name, modules)
                    if target:
                        found.append((target, child.lineno, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package itself: imports nothing
    return LAYERS[parts[1]]


@pytest.fixture(scope="module")
def graph():
    modules = module_names()
    return modules, {m: project_imports(p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    unknown = sorted({m.split(".")[1] for m in modules if "." in m} - set(LAYERS))
    assert not unknown, f"give these a layer in tests/test_layers.py: {unknown}"


def test_no_import_points_up(graph):
    _, edges = graph
    upward = [f"{src}:{line} imports {dst}" for src, imports in edges.items() for dst, line, _ in imports
              if layer_of(dst) > layer_of(src)]
    assert not upward, "\n".join(upward)


def test_project_imports_are_at_module_level(graph):
    _, edges = graph
    hidden = [f"{src}:{line} imports {dst} inside a function" for src, imports in edges.items()
              for dst, line, in_function in imports if in_function]
    assert not hidden, "\n".join(hidden)


def test_no_import_cycle(graph):
    _, edges = graph
    succ = {m: sorted({d for d, _, _ in imports if d != m}) for m, imports in edges.items()}
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    cycles = []

    def dfs(node, path):
        state[node] = 1
        for nxt in succ.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                dfs(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(succ):
        if m not in state:
            dfs(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_checks_can_fail(tmp_path):
    """The reader sees an in-function import and resolves names to modules."""
    modules = {"vlambpo_jax.models.policy": None, "vlambpo_jax.stages.sft": None}
    src = tmp_path / "m.py"
    src.write_text("from vlambpo_jax.models.policy import Policy\n"
                   "def f():\n    from vlambpo_jax.stages import sft\n")
    assert project_imports(src, modules) == [("vlambpo_jax.models.policy", 1, False),
                                             ("vlambpo_jax.stages.sft", 3, True)]
    assert layer_of("vlambpo_jax.stages.sft") > layer_of("vlambpo_jax.models.policy")
