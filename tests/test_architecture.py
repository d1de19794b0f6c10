"""The layout's rules (ARCHITECTURE.md), read from the imports of every module in features/ and pipeline/.

Each rule is checked on the source, not on a running interpreter, so a lazy import inside a
function counts as much as one at the top of a file. Each checker is also run on a few lines of
made-up source that break its rule (the ``test_*_catches_*`` tests), so a rule cannot pass by
checking nothing.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("features", "pipeline")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"))


def _is_pkg(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.Module | None = None, *, is_pkg: bool | None = None, known=MODULES):
    """(imported module, imported name or None, line) for every import of bneck code in ``module``.

    ``tree``, ``is_pkg`` and ``known`` (the module names that exist) default to the real module's.
    """
    tree = _tree(module) if tree is None else tree
    is_pkg = _is_pkg(module) if is_pkg is None else is_pkg
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_pkg)
            if target.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` a name.
                yield (sub, None, node.lineno) if sub in known else (target, a.name, node.lineno)


def _edges(sources=None) -> dict[str, set[str]]:
    """Module -> the modules it imports; ``sources`` ({name: (tree, is_pkg)}) replaces the real modules."""
    if sources is None:
        sources = {m: (None, None) for m in MODULES}
    graph = {m: set() for m in sources}
    for m, (tree, is_pkg) in sources.items():
        for target, _name, _line in _imports(m, tree, is_pkg=is_pkg, known=sources):
            if target in sources and target != m:
                graph[m].add(target)
    return graph


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk meets. No edge is skipped, not even one into or out of a package's
    __init__: a submodule that imports from its own package's __init__, which imports it back, is a loop."""
    loops, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                loops.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return loops


def _inside(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_is_seen():
    assert "features.runner" in MODULES and "pipeline.cli.main" in MODULES and len(MODULES) > 60


def test_no_import_loops():
    loops = _loops(_edges())
    assert not loops, "import loops: " + "; ".join(" -> ".join(c) for c in loops)


def test_the_loop_check_catches_a_loop_through_a_package_init():
    # pipeline/x/__init__.py re-exports f from pipeline/x/a.py, which imports g from the package.
    sources = {"pipeline.x": (ast.parse("from pipeline.x.a import f\ng = 1\n"), True),
               "pipeline.x.a": (ast.parse("from pipeline.x import g\ndef f(): return g\n"), False)}
    assert _loops(_edges(sources)) == [["pipeline.x", "pipeline.x.a", "pipeline.x"]]


RULES = [
    # (who, must not import, why)
    ("features", "pipeline", "stages meet only through files"),
    ("pipeline.serve", "pipeline.finetune", "finetune is a client of serve"),
    ("pipeline.serve", "pipeline.train", "serving needs no training code"),
]


@pytest.mark.parametrize("who, forbidden, why", RULES)
def test_layer_rule(who, forbidden, why):
    bad = [f"{m}:{line} imports {t}" for m in MODULES if _inside(m, who)
           for t, _n, line in _imports(m) if _inside(t, forbidden)]
    assert not bad, f"{who} must not import {forbidden} ({why}): " + "; ".join(bad)


#: Packages that may import only the bneck code listed with them: an allow-list, so a new package cannot slip past.
ONLY_IMPORTS = [("pipeline.heads", ("pipeline.heads",), "heads are plain estimators")]


def _outside_allowed(module: str, allowed, tree=None, is_pkg=None) -> list[str]:
    return [f"{module}:{line} imports {t}" for t, _n, line in _imports(module, tree, is_pkg=is_pkg)
            if not any(_inside(t, a) for a in allowed)]


@pytest.mark.parametrize("who, allowed, why", ONLY_IMPORTS, ids=[who for who, _a, _w in ONLY_IMPORTS])
def test_allow_listed_imports(who, allowed, why):
    bad = [b for m in MODULES if _inside(m, who) for b in _outside_allowed(m, allowed)]
    assert not bad, f"{who} may import only {', '.join(allowed)} of bneck ({why}): " + "; ".join(bad)


def test_the_heads_check_catches_any_import_from_outside_heads():
    tree = ast.parse("from pipeline.heads.base import Head\nimport pipeline.curves\n"
                     "def f():\n    from features import attrs\n")
    assert _outside_allowed("pipeline.heads.x", ("pipeline.heads",), tree, False) == [
        "pipeline.heads.x:2 imports pipeline.curves", "pipeline.heads.x:4 imports features.attrs"]


LEAVES = [("pipeline.cli", ("pipeline.__main__",)), ("pipeline.tools", ("pipeline.cli",))]


@pytest.mark.parametrize("leaf, users", LEAVES)
def test_nothing_imports_the_leaves(leaf, users):
    """The command line is the top floor and the side tools hang off it: no library code depends on either."""
    bad = [f"{m}:{line} imports {t}" for m in MODULES if not _inside(m, leaf) and not any(_inside(m, u) for u in users)
           for t, _n, line in _imports(m) if _inside(t, leaf)]
    assert not bad, f"only {', '.join(users)} may import {leaf}: " + "; ".join(bad)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_imported_across_files():
    bad = [f"{m}:{line} imports {t}.{n}" for m in MODULES for t, n, line in _imports(m)
           if n and _private(n) and t != m]
    assert not bad, "private names used across files: " + "; ".join(bad)


def _module_bindings(module: str, tree: ast.Module, is_pkg: bool, known) -> dict[str, str]:
    """Local name -> bneck module, for each name an import anywhere in the file binds to a module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    # `import a.b.c as d` binds d to a.b.c; `import a.b.c` binds a (a.b.c is reached through it).
                    local, mod = (a.asname, a.name) if a.asname else (a.name.split(".")[0], a.name.split(".")[0])
                    out[local] = mod
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_pkg)
            for a in node.names:
                if f"{target}.{a.name}" in known:
                    out[a.asname or a.name] = f"{target}.{a.name}"
    return out


def _module_of(expr: ast.AST, bindings: dict[str, str], known) -> str | None:
    """The bneck module ``expr`` names (``fsutil``, ``features.fsutil``, ``writer.target``), or None."""
    if isinstance(expr, ast.Name):
        return bindings.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _module_of(expr.value, bindings, known)
        if base and f"{base}.{expr.attr}" in known:
            return f"{base}.{expr.attr}"
    return None


def _private_attributes(module: str, tree=None, is_pkg=None, known=MODULES) -> list[str]:
    """``other_module._name`` in ``module``, where other_module is a bneck module it imported."""
    tree = _tree(module) if tree is None else tree
    bindings = _module_bindings(module, tree, _is_pkg(module) if is_pkg is None else is_pkg, known)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = _module_of(node.value, bindings, known)
            if owner and owner != module:
                bad.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
    return bad


def test_no_private_attribute_of_another_module_is_used():
    """``module._name`` on an imported bneck module breaks the same rule as ``from module import _name``."""
    bad = [b for m in MODULES for b in _private_attributes(m)]
    assert not bad, "private names used across files: " + "; ".join(bad)


def test_the_private_check_catches_attribute_access():
    tree = ast.parse("import features.faults\nimport features.writer.target as t\nfrom features import fsutil\n"
                     "from features import writer\n"
                     "def f(x):\n    fsutil._fdatasync(3)\n    fsutil.datasync(3)\n    x._private\n"
                     "    return t._layout, features.faults._RAISE, writer.target._layout, fsutil.__name__\n")
    known = {"features", "features.faults", "features.fsutil", "features.writer", "features.writer.target"}
    assert _private_attributes("features.x", tree, False, known) == [
        "features.x:6 uses features.fsutil._fdatasync", "features.x:9 uses features.writer.target._layout",
        "features.x:9 uses features.faults._RAISE", "features.x:9 uses features.writer.target._layout"]


def _defined_names(body) -> set[str]:
    """Names a module body binds itself (def, class, assignment), inside if/try/with too, not in functions."""
    out = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        for field in ("body", "orelse", "finalbody", "handlers"):
            out |= _defined_names(getattr(node, field, None) or [])
    return out


def _re_exports(module: str, tree=None) -> list[str]:
    """Names the module's ``__all__`` lists that it does not define (it imported them, or they do not exist)."""
    tree = _tree(module) if tree is None else tree
    defined, bad = _defined_names(tree.body), []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            bad += [f"{module}:{node.lineno} __all__ lists {e.value}, which it does not define"
                    for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant) and e.value not in defined]
    return bad


def test_only_package_inits_re_export():
    """One import path per name: outside an __init__, no ``noqa: F401`` import and no imported name in __all__."""
    bad = []
    for m, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        for lineno, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if text.lstrip().startswith(("from features", "from pipeline", "from .")) and "noqa: F401" in text:
                bad.append(f"{m}:{lineno}")
        bad += _re_exports(m)
    assert not bad, "re-export shims outside __init__.py: " + "; ".join(bad)


def test_the_re_export_check_catches_an_imported_name_in_all():
    tree = ast.parse("from pipeline.data.views import FeatureView\nimport numpy as np\n"
                     "__all__ = ['FeatureView', 'np', 'load', 'LIMIT', 'Kind']\n"
                     "def load(): pass\nif True:\n    LIMIT = 3\nclass Kind: pass\n")
    assert _re_exports("pipeline.x", tree) == ["pipeline.x:3 __all__ lists FeatureView, which it does not define",
                                               "pipeline.x:3 __all__ lists np, which it does not define"]


def test_one_atomic_write_helper():
    """Temp-then-rename writes and directory swaps go through features.fsutil; only it calls os.replace, and
    the few modules whose protocol is their own (each says why beside its os.replace)."""
    own_protocol = {
        "features.writer.assemble",  # renames the run's target, written in place, not a fresh temp file
        "features.mapper.ov_runtime",  # a cache entry: never replaced (first writer wins), never fsynced
        "pipeline.tools.demo",  # deletes its worthless old tree first: no half-done swap left in the folder
    }
    users = {m for m, p in MODULES.items() if "os.replace(" in p.read_text(encoding="utf-8")}
    assert users - {"features.fsutil"} == own_protocol, (
        f"os.replace outside features.fsutil: {sorted(users - own_protocol - {'features.fsutil'})} "
        f"(use atomic_path or replace_dir); no longer using it: {sorted(own_protocol - users)} (drop from the list)")


def test_one_decode_pool_and_one_walker():
    pools = sorted(m for m, p in MODULES.items() if "ThreadPoolExecutor(" in p.read_text(encoding="utf-8"))
    assert pools == ["features.images"], f"decode pools outside features.images: {pools}"
    walkers = sorted(m for m, p in MODULES.items() if "os.walk(" in p.read_text(encoding="utf-8"))
    assert walkers == ["features.fsutil"], f"directory walkers outside features.fsutil: {walkers}"
