"""The package's import graph: no module imports a higher layer, and no two modules import each other in a circle.

Every `import` counts, also the ones inside functions: a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Top to bottom (docs/architecture.md draws the same picture); a module may import its own layer or lower ones.
LAYERS = [
    {"cli", "docgen", "__main__"},
    {"pipeline"},
    {"infer", "export"},
    {"track"},
    {"trainer"},
    {"model"},
    {"attn", "ffn", "norm", "pos", "embed", "optim"},
    {"data"},
    {"runs"},
    {"reference"},
    {"config", "command_config", "registry", "errors", "utils", "text", "presets"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "lmlab").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmlab"):
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("lmlab")]
        found |= {t for t in targets if t in modules}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None  # the root package re-exports lazily: exempt


def test_every_package_has_a_layer():
    top = {p.name.removesuffix(".py") for p in (SRC / "lmlab").iterdir() if p.name != "__init__.py"}
    top = {t for t in top if not t.startswith("__pycache__") and not t.endswith(".egg-info")}
    assert top - set(RANK) == set()


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{a} -> {b}"
        for a, targets in _graph().items()
        for b in targets
        if _layer(a) is not None and _layer(b) is not None and _layer(b) < _layer(a)
    ]
    assert upward == []


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # A package's __init__ that re-exports its own modules is not a circle in any useful sense.
    circles = [c for c in circles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert circles == []


@pytest.mark.parametrize("limit", [60])
def test_no_function_is_longer_than_the_limit(limit):
    allowed: set[str] = set()  # a function named here needs its reason in docs/architecture.md
    long = []
    for path in (SRC / "lmlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(SRC)}:{node.name}"
                if length > limit and name not in allowed:
                    long.append(f"{name} ({length} lines)")
    assert long == []
