"""No import cycles in kyc: the graph of module-level imports (read from the source, not by
importing it) has no cycle. A cycle makes a module's behaviour depend on which module was
imported first, and was dodged by imports inside functions; now each layer imports only the
layers below it (what needs the runtime only for its type imports it under TYPE_CHECKING)."""

from __future__ import annotations

import ast
from pathlib import Path

KYC = Path(__file__).resolve().parent.parent / "kyc"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module and package under `root`."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `name` imports when it is imported: its top-level import
    statements (in `if` and `try` blocks too, but not under `if TYPE_CHECKING:`); imports inside
    functions run later and are not followed. `from a import b` names module a.b when there is
    one, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                if not _type_checking_only(node):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        found.add(f"{base}.{alias.name}")
                    elif base in modules:
                        found.add(base)

    visit(ast.parse(path.read_text(), str(path)).body)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_kyc_has_no_import_cycle():
    modules = module_names(KYC)
    graph = {name: module_imports(name, path, modules) for name, path in modules.items()}
    assert graph["kyc.scoring.pipeline"] >= {"kyc.graph", "kyc.rescore.requests"}       # the walk sees imports
    assert cycles(graph) == []


def test_a_cycle_is_found(tmp_path):
    """The check itself: a cycle through a `from` import, a relative import and a package's
    __init__ is found; an import under TYPE_CHECKING or inside a function is not an edge."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from .. import c\n")
    (package / "c.py").write_text("try:\n    import pkg.a\nexcept ImportError:\n    pass\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\n")
    (package / "e.py").write_text("import pkg.d\n\ndef later():\n    import pkg.a\n")
    modules = module_names(package)
    graph = {name: module_imports(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
