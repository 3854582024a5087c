"""The import graph of platform/aftershock, read with ast (nothing is imported), and the rules it
must keep: layers imported only downwards, services that never import each other, no loops, no
`_private` name taken from another module.

Every import counts, including those inside functions and under `if TYPE_CHECKING:`: a loop that
only the type checker sees is still a loop a reader has to untangle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "aftershock"

# Lowest first. A module may import its own layer and any layer below it, never one above. Each
# entry is a module or a package (all of its submodules); the longest matching entry wins.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "contract and basics",
        frozenset(
            {"aftershock", "aftershock.v1", "aftershock.errors", "aftershock.clock", "aftershock.context"}
        )
        | frozenset(
            {"aftershock.ports", "aftershock.proc", "aftershock.topology", "aftershock.grpc_experiments"}
        ),
    ),
    (
        "telemetry",
        frozenset({"aftershock.metrics", "aftershock.metrics_http", "aftershock.tracing", "aftershock.logs"})
        | frozenset({"aftershock.sentry", "aftershock.span_encoding"}),
    ),
    (
        "shared plumbing",
        frozenset({"aftershock.rpc", "aftershock.breaker", "aftershock.redis_guard", "aftershock.runtime"})
        | frozenset({"aftershock.workers", "aftershock.heap"}),
    ),
    (
        "services",
        frozenset({"aftershock.inference", "aftershock.backend", "aftershock.edge", "aftershock.faultproxy"}),
    ),
    ("stack", frozenset({"aftershock.stack"})),
    (
        "front doors",
        frozenset({"aftershock.chaos", "aftershock.up", "aftershock.cli", "aftershock.__main__"}),
    ),
)
# Separate processes that talk over gRPC or TCP only: none imports another.
SERVICES = frozenset(
    {"aftershock.inference", "aftershock.backend", "aftershock.edge", "aftershock.faultproxy"}
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # a module of the package (a package's __init__ is the package's name)
    names: tuple[str, ...]  # the names taken with `from ... import`, else ()
    line: int


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `root` (the package directory)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(root: Path) -> Iterator[Import]:
    """Every import of a package module by a package module."""
    known = modules(root)
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known:
                        yield Import(module, alias.name, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, is_package, node)
                if target not in known:
                    continue
                names = tuple(a.name for a in node.names)
                # `from package import submodule` imports the submodule itself.
                subs = [n for n in names if f"{target}.{n}" in known]
                for sub in subs:
                    yield Import(module, f"{target}.{sub}", (), node.lineno)
                rest = tuple(n for n in names if n not in subs)
                if rest:
                    yield Import(module, target, rest, node.lineno)


def _entry(module: str) -> str | None:
    # The package itself (its __init__) is an entry of its own, not a prefix of every module.
    matches = [
        e
        for _, entries in LAYERS
        for e in entries
        if module == e or (e != PACKAGE and module.startswith(e + "."))
    ]
    return max(matches, key=len) if matches else None


def layer_of(module: str) -> int | None:
    entry = _entry(module)
    return next((i for i, (_, entries) in enumerate(LAYERS) if entry in entries), None)


def _service(module: str) -> str | None:
    return next((s for s in SERVICES if module == s or module.startswith(s + ".")), None)


def unplaced(root: Path) -> list[str]:
    """Modules no layer names: each new module is placed in LAYERS on purpose."""
    return [m for m in modules(root) if layer_of(m) is None]


def upward_imports(root: Path) -> list[str]:
    found = []
    for imp in imports(root):
        low, high = layer_of(imp.importer), layer_of(imp.imported)
        if low is not None and high is not None and high > low:
            found.append(
                f"{imp.importer}:{imp.line} ({LAYERS[low][0]}) imports {imp.imported} ({LAYERS[high][0]})"
            )
    return found


def cross_service_imports(root: Path) -> list[str]:
    found = []
    for imp in imports(root):
        a, b = _service(imp.importer), _service(imp.imported)
        if a and b and a != b:
            found.append(f"{imp.importer}:{imp.line} imports {imp.imported}")
    return found


def private_imports(root: Path) -> list[str]:
    """`from other import _name`, or `other._name` on an imported module (dunders aside)."""
    found = []
    for imp in imports(root):
        if imp.importer == imp.imported:
            continue
        for name in imp.names:
            if name.startswith("_") and not name.startswith("__"):
                found.append(f"{imp.importer}:{imp.line} imports {imp.imported}.{name}")
    known = modules(root)
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        bound: dict[str, str] = {}  # local name -> imported package module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known and alias.asname:
                        bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in known:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and bound[node.value.id] != module
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return sorted(set(found))


def _private_members(tree: ast.AST) -> set[str]:
    """`_names` a module's classes define: methods, class attributes and `self._x = ...`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_member_access(root: Path) -> list[str]:
    """`obj._name` (obj not self or cls) in one module where only another package module defines
    `_name`: reaching into another module's object. By name, so a private name both modules define
    goes unseen; attributes of third-party objects are not the package's and are not judged."""
    trees = {m: ast.parse(p.read_text(), str(p)) for m, p in modules(root).items()}
    defined = {m: _private_members(t) for m, t in trees.items()}
    found = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in defined[module] or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            owners = sorted(m for m, names in defined.items() if node.attr in names)
            if owners:
                where = ", ".join(owners)
                found.append(f"{module}:{node.lineno} reaches into {ast.unparse(node)} (defined in {where})")
    return sorted(set(found))


def loops(root: Path) -> list[list[str]]:
    """Each set of modules that import one another in a circle (Tarjan's strongly connected
    components of more than one module, or a module importing itself)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for imp in imports(root):
        graph[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)
