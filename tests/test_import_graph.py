"""The package's import graph has no cycles (read from the source with ast).

Every ``import`` counts, also those inside functions: a lazy import that only
breaks a cycle at run time still ties the two modules together. Two levels
are checked: modules (``siammae_jax.data.prepare``) and the package's parts
(``siammae_jax.data``, ``siammae_jax.eval``, ..., each top-level module such
as ``siammae_jax.demo``, and ``siammae_jax`` itself for its ``__init__``).
An import names the module it loads (``from a import b``: ``a.b`` when that is
a module, else ``a``); the ``__init__`` of the packages above it, which Python
also runs, is not an edge (a package that imports its own modules would
otherwise sit in a cycle with each of them).
"""

from __future__ import annotations

import ast
import itertools
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "siammae_jax"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Module name -> file, for every module of the package."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    return {_module_name(p, root): p for p in files}


def _targets(node: ast.AST, module: str, path: pathlib.Path, modules) -> set[str]:
    """The package's modules an import statement loads (``from a import b``:
    the submodule ``a.b`` when there is one, else ``a``)."""
    if isinstance(node, ast.Import):
        found = {_resolve(alias.name, modules) for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            drop = node.level - (path.name == "__init__.py")
            anchor = anchor[: len(anchor) - drop]
            base = ".".join(anchor + ([base] if base else []))
        found = {
            f"{base}.{a.name}"
            if f"{base}.{a.name}" in modules
            else _resolve(base, modules)
            for a in node.names
        }
    else:
        return set()
    return found - {None, module}


def _resolve(name: str, modules: dict[str, pathlib.Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: pathlib.Path = ROOT) -> dict[str, dict[str, str]]:
    """module -> {imported module: "file:line" of the first such import}."""
    modules = _modules(root)
    graph: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target in sorted(_targets(node, module, path, modules)):
                edges.setdefault(target, f"{path.relative_to(root)}:{node.lineno}")
    return graph


def part(module: str) -> str:
    """``siammae_jax.data.tfds.jhmdb`` -> ``siammae_jax.data``."""
    return ".".join(module.split(".")[:2])


def part_graph(graph: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The module graph collapsed onto the package's parts."""
    parts: dict[str, dict[str, str]] = {}
    for module, edges in graph.items():
        mine = parts.setdefault(part(module), {})
        for target, where in edges.items():
            if part(target) != part(module):
                mine.setdefault(part(target), f"{module} -> {target} ({where})")
    return parts


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(target) == 1:
                return path[path.index(target) :] + [target]
            elif not state.get(target):
                state[target] = 1
                path.append(target)
                stack.append(iter(sorted(graph.get(target, {}))))
    return None


def describe_cycles(graph: dict[str, dict[str, str]]) -> str:
    """Every cycle found while cutting one edge of each until none is left."""
    graph = {module: dict(edges) for module, edges in graph.items()}
    lines = []
    while (cycle := find_cycle(graph)) is not None:
        lines += [" -> ".join(cycle)]
        lines += [
            f"    {a} -> {b}: {graph[a][b]}" for a, b in itertools.pairwise(cycle)
        ]
        del graph[cycle[-2]][cycle[-1]]
    return "\n".join(lines)


def test_a_lazy_relative_import_closes_a_cycle(tmp_path):
    # Independent of the package's own graph: a made-up package whose only
    # cycle runs through an import inside a function, written relatively.
    files = {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/one.py": "from siammae_jax.b import two\n",
        "b/__init__.py": "",
        "b/two.py": "import os\n\ndef f():\n    from ..a import one\n",
        "c.py": "from siammae_jax.a import one\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["siammae_jax.b.two"] == {"siammae_jax.a.one": "siammae_jax/b/two.py:4"}
    assert find_cycle(graph) == [
        "siammae_jax.a.one",
        "siammae_jax.b.two",
        "siammae_jax.a.one",
    ]
    parts = part_graph(graph)
    assert find_cycle(parts) == ["siammae_jax.a", "siammae_jax.b", "siammae_jax.a"]
    del graph["siammae_jax.b.two"]["siammae_jax.a.one"]
    assert find_cycle(graph) is None and find_cycle(part_graph(graph)) is None


def test_the_graph_sees_known_edges():
    graph = import_graph()
    # A from-import of a submodule points at the submodule, not the package.
    assert "siammae_jax.data.pairs" in graph["siammae_jax.data.pipeline"]
    # An import inside a function counts (main.py imports the loop lazily).
    assert "siammae_jax.train.loop" in graph["siammae_jax.main"]
    assert len(graph) > 40


def test_no_cycle_between_modules():
    graph = import_graph()
    cycles = describe_cycles(graph)
    assert not cycles, "import cycles:\n" + cycles


def test_no_cycle_between_subpackages():
    graph = part_graph(import_graph())
    cycles = describe_cycles(graph)
    assert not cycles, "import cycles:\n" + cycles


def test_the_package_imports_nothing_from_the_repository():
    # configs/, benchmarks/ and tests/ are not installed with the package.
    local = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != PACKAGE}
    local |= {p.stem for p in ROOT.glob("*.py")}
    found = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] in local:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not found, "the package imports repository folders:\n" + "\n".join(found)


def test_every_folder_of_the_package_is_shipped():
    # setup.py's find_packages only finds folders with an __init__.py.
    folders = {p.parent for p in (ROOT / PACKAGE).rglob("*.py")}
    missing = sorted(
        str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()
    )
    assert not missing, f"folders without __init__.py (not installed): {missing}"
