"""Runnable recipes: training scripts (``train/``) and benchmarks (``bench/``), shipped in the wheel.

``ppllava-hermes train NAME ARGS`` and ``ppllava-hermes bench NAME ARGS`` run ``main(ARGS)`` of the module
``ppllava_hermes.recipes.<kind>.<NAME>``; in a checkout, ``python train/NAME.py`` and
``python evaluate/NAME.py`` do the same. The recipes sit inside the package (not as top-level ``train`` /
``evaluate`` packages) so that an installed wheel has them and nothing shadows Hugging Face's ``evaluate``
library. No library module imports a recipe; only the CLI dispatches to them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

KINDS = {"train": "training scripts", "bench": "benchmarks and checks (results under docs/results/)"}


def available(kind: str) -> list[str]:
    """Names of the recipes of one kind (``train`` or ``bench``)."""
    package = importlib.import_module(f"{__name__}.{kind}")
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def run(kind: str, name: str, argv: list[str] | None = None):
    """Run one recipe's ``main(argv)``; a one-line ``ValueError`` for an unknown kind or name."""
    if kind not in KINDS:
        raise ValueError(f"unknown recipe kind {kind!r}: expected one of {sorted(KINDS)}")
    names = available(kind)
    if name not in names:
        raise ValueError(f"unknown {kind} recipe {name!r}: expected one of {', '.join(names)}")
    return importlib.import_module(f"{__name__}.{kind}.{name}").main(argv)


def run_script(path: str) -> None:
    """Entry of the checkout's thin scripts (``train/NAME.py``, ``evaluate/NAME.py``): run that recipe."""
    script = Path(path)
    kind = {"train": "train", "evaluate": "bench"}[script.parent.name]
    result = run(kind, script.stem)
    raise SystemExit(result if isinstance(result, int) else 0)
