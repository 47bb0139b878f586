"""The arrows that must never exist (docs: LAYOUT.md), checked on the source of every module.

Counted as an import: every ``import X`` and ``from X import Y`` statement anywhere in a module: at
module level, inside functions and classes, under ``if TYPE_CHECKING:``, in ``try`` blocks; relative
imports are resolved against the module's package, and ``from PKG import NAME`` counts as importing
``PKG.NAME`` too (NAME may be a submodule). Also counted: ``importlib.import_module("...")`` and
``__import__("...")`` with a literal string. Not counted: imports built from variables at run time
(``plugins.load_plugins`` reading entry points, ``recipes.run`` importing a recipe by name): those are
the plugin and dispatch mechanisms the rules below are about.

Layers: ``cli.py`` and ``recipes/`` are the entry points (the command and the packaged train / bench
scripts); ``world/`` is a plugin; everything else in ``ppllava_hermes`` is the library.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "ppllava_hermes"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# (importer prefix, forbidden prefix, why). A prefix is a dotted module name: it matches itself and below.
RULES: list[tuple[str, str, str]] = [
    (f"{PACKAGE}.memory", f"{PACKAGE}.models", "memory knows nothing of a model family"),
    (f"{PACKAGE}.memory", f"{PACKAGE}.video", "memory knows nothing of video"),
    (f"{PACKAGE}.memory", f"{PACKAGE}.pooling", "memory knows nothing of pooling"),
    (f"{PACKAGE}.memory", f"{PACKAGE}.streaming", "memory knows nothing of the session"),
    (f"{PACKAGE}.pooling", f"{PACKAGE}.memory", "pooling knows nothing of the memory"),
    (f"{PACKAGE}.pooling", f"{PACKAGE}.models", "pooling knows nothing of the LLM"),
    (f"{PACKAGE}.models", f"{PACKAGE}.streaming", "the session drives the adapter, not the reverse"),
    (f"{PACKAGE}.world.checker", f"{PACKAGE}.world.questions",
     "the checker recomputes answers on its own: it must not reuse the question generator"),
    (f"{PACKAGE}.world.checker", f"{PACKAGE}.world.tasks", "the checker must not reach the generator through the overview"),
]
# Forbidden to every module of the package, except the listed importers (prefixes).
GLOBAL_RULES: list[tuple[str, tuple[str, ...], str]] = [
    (f"{PACKAGE}.world", (f"{PACKAGE}.world", f"{PACKAGE}.recipes"),
     "world/ is a plugin that registers itself (world/plugin.py): ask a registry (ppllava_hermes.plugins)"),
    (f"{PACKAGE}.cli", (f"{PACKAGE}.cli",), "the command line is the top: move what is needed into the library"),
    (f"{PACKAGE}.recipes", (f"{PACKAGE}.cli", f"{PACKAGE}.recipes"), "only the CLI dispatches to recipes"),
    (f"{PACKAGE}.serving", (f"{PACKAGE}.cli", f"{PACKAGE}.serving", f"{PACKAGE}.recipes"),
     "the server uses the session API like any user; nothing below it imports it"),
    ("train", (), "nothing in the package imports the top-level scripts"),
    ("evaluate", (), "nothing in the package imports the top-level scripts"),
    ("scripts", (), "nothing in the package imports the top-level scripts"),
]
# Exemptions: (importer module, imported module). None today: memory/ has its own RopeSpec (memory/rope.py).
EXEMPT: set[tuple[str, str]] = set()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import of a module (see the module docstring)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def violations(path: Path, root: Path = ROOT) -> list[str]:
    """One line per forbidden import of a module: ``module:line imports target (why)``."""
    importer = module_name(path, root)
    found = []
    for line, target in imports_of(path, root):
        if (importer, target) in EXEMPT:
            continue
        reasons = [why for src, dst, why in RULES if _under(importer, src) and _under(target, dst)]
        reasons += [why for dst, allowed, why in GLOBAL_RULES
                    if _under(target, dst) and not any(_under(importer, a) for a in allowed)]
        found += [f"{importer}:{line} imports {target} ({why})" for why in reasons]
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_is_checked():
    names = {module_name(p) for p in MODULES}
    assert {f"{PACKAGE}.memory.cache", f"{PACKAGE}.cli", f"{PACKAGE}.world.plugin", f"{PACKAGE}.specs"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_forbidden_import(path):
    bad = violations(path)
    assert not bad, "\n".join(bad)


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """A module that breaks each rule in a different way is caught, with its name and the import."""
    pkg = tmp_path / PACKAGE
    (pkg / "memory").mkdir(parents=True)
    (pkg / "memory" / "__init__.py").write_text("")
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..models import RopeSpec\n"
        "def f():\n    from ..world import tasks\n    import ppllava_hermes.cli\n"
        "    import importlib\n    importlib.import_module('ppllava_hermes.recipes.train')\n"
        "from .. import streaming\n"
    )
    (pkg / "memory" / "bad.py").write_text(source)
    text = "\n".join(violations(pkg / "memory" / "bad.py", root=pkg))
    for target in ("ppllava_hermes.models", "ppllava_hermes.world", "ppllava_hermes.cli",
                   "ppllava_hermes.recipes.train", "ppllava_hermes.streaming"):
        assert f"imports {target}" in text, (target, text)
    assert all(line.startswith("ppllava_hermes.memory.bad:") for line in text.splitlines())
