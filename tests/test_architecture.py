"""The layout's rules (ARCHITECTURE.md), read from the imports of every module in features/ and pipeline/.

Each rule is checked on the source, not on a running interpreter, so a lazy import inside a
function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
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


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(imported module, imported name or None, line) for every import of bneck code in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` a name.
                yield (sub, None, node.lineno) if sub in MODULES else (target, a.name, node.lineno)


def _edges() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _name, _line in _imports(m):
            if target in MODULES and target != m:
                graph[m].add(target)
    return graph


def _inside(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_is_seen():
    assert "features.runner" in MODULES and "pipeline.cli.main" in MODULES and len(MODULES) > 60


def test_no_import_loops():
    graph, loops = _edges(), []
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # A package's __init__ importing its own submodules is how a package is built, not a loop.
            if _inside(n, m) or _inside(m, n) and MODULES[n].name == "__init__.py":
                continue
            if state.get(n) == 1:
                loops.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not loops, "import loops: " + "; ".join(" -> ".join(c) for c in loops)


RULES = [
    # (who, must not import, why)
    ("features", "pipeline", "stages meet only through files"),
    ("pipeline.heads", "features", "heads are plain estimators"),
    ("pipeline.heads", "pipeline.data", "heads are plain estimators"),
    ("pipeline.heads", "pipeline.serve", "heads are plain estimators"),
    ("pipeline.heads", "pipeline.train", "heads are plain estimators"),
    ("pipeline.heads", "pipeline.modeldir", "heads are plain estimators"),
    ("pipeline.heads", "pipeline.evaluate", "heads are plain estimators"),
    ("pipeline.serve", "pipeline.finetune", "finetune is a client of serve"),
    ("pipeline.serve", "pipeline.train", "serving needs no training code"),
]


@pytest.mark.parametrize("who, forbidden, why", RULES)
def test_layer_rule(who, forbidden, why):
    bad = [f"{m}:{line} imports {t}" for m in MODULES if _inside(m, who)
           for t, _n, line in _imports(m) if _inside(t, forbidden)]
    assert not bad, f"{who} must not import {forbidden} ({why}): " + "; ".join(bad)


LEAVES = [("pipeline.cli", ("pipeline.__main__",)), ("pipeline.tools", ("pipeline.cli",))]


@pytest.mark.parametrize("leaf, users", LEAVES)
def test_nothing_imports_the_leaves(leaf, users):
    """The command line is the top floor and the side tools hang off it: no library code depends on either."""
    bad = [f"{m}:{line} imports {t}" for m in MODULES if not _inside(m, leaf) and not any(_inside(m, u) for u in users)
           for t, _n, line in _imports(m) if _inside(t, leaf)]
    assert not bad, f"only {', '.join(users)} may import {leaf}: " + "; ".join(bad)


def test_no_private_name_is_imported_across_files():
    bad = [f"{m}:{line} imports {t}.{n}" for m in MODULES for t, n, line in _imports(m)
           if n and n.startswith("_") and not n.startswith("__") and t != m]
    assert not bad, "private names used across files: " + "; ".join(bad)


def test_only_package_inits_re_export():
    bad = []
    for m, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        for lineno, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if text.lstrip().startswith(("from features", "from pipeline", "from .")) and "noqa: F401" in text:
                bad.append(f"{m}:{lineno}")
    assert not bad, "re-export shims outside __init__.py: " + "; ".join(bad)


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
