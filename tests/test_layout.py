"""The layout of the ``jaxce`` package: no import cycles, no imports of jaxce
modules inside functions, no file of 400 lines or more.

The checks read the source with `ast` (nothing is imported), so they are
functions of a package directory; each is also run on small synthetic packages
in ``tmp_path`` to show that it finds what it is meant to find.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap
from dataclasses import dataclass

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxce"
MAX_LINES = 400  # every file is under this


@dataclass(frozen=True)
class Import:
    """One import statement of module ``source`` that names a module of the package."""

    source: str  # the importing module, e.g. "jaxce._losses._softmax"
    named: tuple[str, ...]  # what it names: `import a.b` -> a.b, `from m import x` -> m
    targets: tuple[str, ...]  # the package's modules it needs run (graph edges)
    line: int
    in_function: bool


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every ``.py`` file of the package ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.Module):
    """Every import statement, with whether it is inside a function body; the
    bodies of ``if TYPE_CHECKING:`` (never run) are left out."""

    def visit(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:
                    yield from visit_one(stmt, in_function)
                continue
            yield from visit_one(child, in_function)

    def visit_one(node: ast.AST, in_function: bool):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inner = in_function or isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        yield from visit(node, inner)

    yield from visit(tree, False)


def _ancestors(source: str, known: dict) -> set[str]:
    """The packages ``source`` is inside (itself too, for a package's __init__):
    they are already being imported when ``source`` runs."""
    parts = source.split(".")
    out = {".".join(parts[:i]) for i in range(1, len(parts))}
    if known[source].name == "__init__.py":
        out.add(source)
    return out


def _parents_run(module: str, ancestors: set[str], known: dict) -> list[str]:
    """The packages above ``module`` that importing it runs (not the ancestors)."""
    parts = module.split(".")
    above = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [m for m in above if m in known and m not in ancestors]


def _resolve_from(node: ast.ImportFrom, source: str, known: dict) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".")  # relative: from the package of `source`
    if known[source].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: pathlib.Path) -> list[Import]:
    """Every import statement of the package that names one of its modules.

    Its edges (``targets``): ``import a.b.c`` needs ``a.b.c`` and the packages
    above it that are not already being imported; ``from m import x`` needs the
    submodule ``m.x`` if there is one, and ``m`` itself when some ``x`` is a
    name defined by ``m`` (or when ``m`` is not already being imported).
    """
    known = modules(root)
    top = root.name
    out = []
    for source, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        ancestors = _ancestors(source, known)
        for node, in_function in _statements(tree):
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
                named = [m for m in named if m == top or m.startswith(top + ".")]
                targets = []
                for m in named:
                    targets += [*_parents_run(m, ancestors, known), m]
            else:
                module = _resolve_from(node, source, known)
                if module != top and not module.startswith(top + "."):
                    continue
                named = [module]
                subs = [f"{module}.{a.name}" for a in node.names]
                subs = [m for m in subs if m in known]
                targets = _parents_run(module, ancestors, known)
                if len(subs) < len(node.names) or module not in ancestors:
                    targets.append(module)
                targets += subs
            if not named:
                continue
            targets = [t for t in dict.fromkeys(targets) if t in known and t != source]
            out.append(
                Import(source, tuple(named), tuple(targets), node.lineno, in_function)
            )
    return out


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """module -> the package's modules its imports run (at module level or in
    functions)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for imp in imports(root):
        graph[imp.source].update(imp.targets)
    return graph


def import_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # recursion depth: the module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(components)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A shortest cycle ``[a, b, ..., a]`` through each module that is on one."""
    cycles: list[list[str]] = []
    seen: set[frozenset] = set()
    for component in import_components(graph):
        for start in component:
            cycle = _shortest_cycle(start, set(component), graph)
            key = frozenset(zip(cycle, cycle[1:]))  # the same cycle, rotated
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _shortest_cycle(start: str, members: set[str], graph) -> list[str]:
    """Breadth-first from ``start`` back to it, within its component."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def lazy_imports(root: pathlib.Path) -> list[Import]:
    """Imports of the package's modules inside function bodies."""
    return [imp for imp in imports(root) if imp.in_function]


def long_files(root: pathlib.Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Files of the package (any kind, caches aside) of ``limit`` lines or more."""
    out = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        try:
            n = len(path.read_text().splitlines())
        except UnicodeDecodeError:  # not text
            continue
        if n >= limit:
            out[str(path.relative_to(root.parent))] = n
    return out


# -- the checks on jaxce ------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    components = import_components(graph)
    assert not components, "import cycles among {}:\n{}".format(
        "; ".join(", ".join(c) for c in components),
        "\n".join(" -> ".join(c) for c in import_cycles(graph)),
    )


def test_no_lazy_imports():
    lazy = lazy_imports(PACKAGE)
    assert not lazy, "jaxce modules imported inside functions:\n" + "\n".join(
        f"{i.source}:{i.line} imports {', '.join(i.named)}" for i in lazy
    )


def test_every_file_is_under_400_lines():
    long = long_files(PACKAGE)
    assert not long, f"files of {MAX_LINES} lines or more: {long}"


# -- the checks on synthetic packages -----------------------------------------------


def make_package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """Write ``files`` (path -> source) under ``tmp_path/pkg``; return that root."""
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


ACYCLIC = {
    "__init__.py": """
        from . import sub
        from ._a import f
        from .sub._c import h
    """,
    "_a.py": """
        from ._b import g
        import pkg._b
        def f():
            return g()
    """,
    "_b.py": "def g():\n    return 1\n",
    "sub/__init__.py": "from ._c import h\n",
    "sub/_c.py": """
        from .._b import g
        from pkg import _b
        def h():
            return g()
    """,
}


def test_synthetic_acyclic_package_passes(tmp_path):
    root = make_package(tmp_path, ACYCLIC)
    graph = import_graph(root)
    assert graph["pkg"] == {"pkg.sub", "pkg._a", "pkg.sub._c"}
    assert graph["pkg._a"] == {"pkg._b"}
    assert graph["pkg.sub"] == {"pkg.sub._c"}
    # `from pkg import _b` runs the submodule, not pkg/__init__ (already running)
    assert graph["pkg.sub._c"] == {"pkg._b"}
    assert import_components(graph) == [] and import_cycles(graph) == []
    assert lazy_imports(root) == []


@pytest.mark.parametrize(
    "files, cycle",
    [
        # a relative import back to the start: _b -> _a
        (
            dict(ACYCLIC, **{"_b.py": "from ._a import f\n"}),
            ["pkg._a", "pkg._b", "pkg._a"],
        ),
        # `from . import x` of a submodule is an edge to it
        (
            dict(ACYCLIC, **{"_b.py": "from . import _a\n"}),
            ["pkg._a", "pkg._b", "pkg._a"],
        ),
        # an absolute import inside a function counts too
        (
            dict(ACYCLIC, **{"_b.py": "def g():\n    import pkg.sub._c\n"}),
            ["pkg._b", "pkg.sub._c", "pkg._b"],  # a shortest cycle
        ),
        # a name from the package's __init__ needs the __init__ run: a cycle
        (
            dict(ACYCLIC, **{"_b.py": "from . import f\n"}),
            ["pkg", "pkg._a", "pkg._b", "pkg"],
        ),
        # `import pkg` names the package: a cycle through its __init__
        (
            dict(ACYCLIC, **{"_b.py": "import pkg\n"}),
            ["pkg", "pkg._a", "pkg._b", "pkg"],
        ),
        # a module importing itself, or a module that does not exist: no edge
        (dict(ACYCLIC, **{"_b.py": "import pkg._b\nimport pkg._nope\n"}), None),
    ],
    ids=[
        "relative",
        "from-dot-submodule",
        "in-function",
        "package-name",
        "import-package",
        "none",
    ],  # fmt: skip
)
def test_synthetic_cycles_are_found(tmp_path, files, cycle):
    root = make_package(tmp_path, files)
    graph = import_graph(root)
    cycles = import_cycles(graph)
    if cycle is None:
        assert cycles == [] and import_components(graph) == []
    else:
        assert cycle in cycles, cycles
        assert [c for c in import_components(graph) if set(cycle) <= set(c)]


def test_synthetic_lazy_imports_are_found(tmp_path):
    files = dict(ACYCLIC)
    files["_b.py"] = """
        import numpy as np
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ._a import f  # never run: not an import
        def g():
            from .sub import _c  # lazy
            import numpy  # not the package's
            return np
        class K:
            def method(self):
                import pkg  # lazy, in a method
            lam = lambda: __import__("pkg")  # not an import statement
    """
    lazy = lazy_imports(make_package(tmp_path, files))
    assert [(i.source, i.line, i.named, i.targets) for i in lazy] == [
        ("pkg._b", 7, ("pkg.sub",), ("pkg.sub", "pkg.sub._c")),
        ("pkg._b", 12, ("pkg",), ("pkg",)),
    ]


def test_synthetic_long_files_are_found(tmp_path):
    root = make_package(
        tmp_path,
        {
            "__init__.py": "x = 1\n" * (MAX_LINES - 1),
            "big.py": "x = 1\n" * MAX_LINES,
            "data/table.txt": "row\n" * (MAX_LINES + 5),
        },
    )
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "big.cpython-311.pyc").write_bytes(b"\x00\xff" * 4000)
    assert long_files(root) == {"pkg/big.py": MAX_LINES, "pkg/data/table.txt": 405}


# The fused engine: a family module (``jaxce/_fused/*.py`` outside ``_engine``)
# writes only its statistic / row loss and its public function; the loops, the
# custom_vjp shapes and the shard_map live in the engine.
ENGINE_ONLY = {
    "custom_vjp",
    "custom_jvp",
    "shard_map",
    "scan",
    "fori_loop",
    "while_loop",
    "token_blocks",
    "vocab_blocks",
}


def engine_only_uses(root: pathlib.Path) -> dict[str, list[str]]:
    """For each family module of ``root/_fused`` (not ``_engine``): the
    names of `ENGINE_ONLY` it uses (``jax.lax.scan``, ``jax.shard_map``, ...)."""
    out = {}
    for path in sorted((root / "_fused").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        used = set()
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.alias):
                name = node.name.split(".")[-1]
            if name in ENGINE_ONLY:
                used.add(name)
        if used:
            out[path.name] = sorted(used)
    return out


def test_fused_families_write_no_loop_vjp_or_shard_map():
    assert (PACKAGE / "_fused" / "_engine").is_dir()
    assert not engine_only_uses(PACKAGE), engine_only_uses(PACKAGE)


def test_synthetic_family_loops_are_found(tmp_path):
    root = tmp_path / "pkg"
    (root / "_fused" / "_engine").mkdir(parents=True)
    (root / "_fused" / "good.py").write_text("import jax\nx = jax.numpy.sum\n")
    (root / "_fused" / "bad.py").write_text(
        "import jax\nfrom jax import lax\n"
        "f = jax.custom_vjp(lambda x: x)\n"
        "g = lambda: lax.scan(None, 0, None)\n"
        "from jax import shard_map\n"
    )
    (root / "_fused" / "_engine" / "_walk.py").write_text("from jax.lax import scan\n")
    assert engine_only_uses(root) == {"bad.py": ["custom_vjp", "scan", "shard_map"]}
