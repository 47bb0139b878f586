"""Registries the library looks names up in, and the plugins that fill them.

The library knows no test world, no generated benchmark and no shipped toy model by import: it asks
a registry. A plugin is a callable ``register()`` that adds entries; it is found through the Python
entry-point group :data:`ENTRY_POINT_GROUP` (``[project.entry-points."ppllava_hermes.plugins"]`` in a
package's ``pyproject.toml``) and run once, the first time any registry misses a name. A checkout run
without ``pip install`` has no package metadata, so the in-tree plugins (:data:`IN_TREE_PLUGINS`,
ShapesWorld) are imported by name as a fallback when the metadata does not list them.

Registries (each maps a name to an entry):

* :data:`MODELS`: ``--model`` names (:class:`ModelEntry`), resolved by ``specs.load_model``;
* :data:`RELEVANCE`: ``--clip`` names (:class:`RelevanceEntry`), resolved by ``specs.load_relevance``;
* :data:`BENCHMARKS`: generated or plugin-owned benchmarks (:class:`Benchmark`: record loader, prompt
  style, training clips); the file-based loaders of ``evaluation.loaders`` are not entries;
* :data:`PROMPT_STYLES`: ``record -> prompt text`` beyond the evaluator's own "letters" and "plain";
* :data:`FRAME_SOURCES`: records whose frames are rendered, not read from a file (:class:`FrameSource`);
* :data:`COMMANDS`: extra ``ppllava-hermes`` subcommands (:class:`Command`, e.g. ``demo``);
* :data:`DATA_WRITERS`: writers of generated benchmark data in released formats, ``(BriefPaths,
  BriefDataConfig) -> {name: count}`` (``eval --suite brief --data NAME``; ``evaluation.brief_data``).

What this module does not know: any entry's content (it imports nothing of the library at import time).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import argparse

    import numpy as np

    from .evaluation.records import QARecord

ENTRY_POINT_GROUP = "ppllava_hermes.plugins"
#: ``module:function`` of the plugins that ship in this repository, imported when the metadata lacks them.
IN_TREE_PLUGINS = ("ppllava_hermes.world.plugin:register",)

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind, with aliases; a miss loads the plugins once and looks again.

    Args:
        kind: what the entries are, for messages ("model", "relevance model", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, entry: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Add ``entry`` under ``name`` (and ``aliases``); ``ValueError`` if a name is taken by another entry."""
        for key in (name, *aliases):
            taken = self._aliases.get(key, key if key in self._entries else None)
            if taken is not None and (taken != name or self._entries.get(name) != entry):
                raise ValueError(f"{self.kind} {key!r} is already registered (as {taken!r})")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str | None:
        """The registered name ``name`` stands for (itself or an alias's target); None if unknown."""
        for _ in range(2):
            if name in self._entries:
                return name
            if name in self._aliases:
                return self._aliases[name]
            if not load_plugins():
                return None
        return None

    def get(self, name: str) -> T | None:
        """The entry of a name or alias (None if no plugin registers it)."""
        key = self.canonical(name)
        return None if key is None else self._entries[key]

    def names(self) -> list[str]:
        """Every registered name (plugins loaded), in registration order."""
        load_plugins()
        return list(self._entries)

    def spellings(self) -> list[str]:
        """Every name and alias (plugins loaded): what a close-match suggestion is chosen from."""
        load_plugins()
        return [*self._entries, *self._aliases]

    def items(self) -> Iterator[tuple[str, T]]:
        load_plugins()
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None


# ----------------------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class ModelEntry:
    """A named ``--model``: how to build its adapter and what it brings along.

    Attributes:
        load: ``(argument, device, dtype) -> VLMAdapter``; ``argument`` is the text after ``NAME:``
            (None when the spec is the bare name).
        summary: one line for help texts.
        argument: what ``NAME:ARG`` takes (e.g. "PATH"), None when the name takes no argument.
        note: printed by the CLI when the model is loaded (e.g. "random weights").
        relevance: the relevance spec of the model's own CLIP (used by ``--pool prompt`` without
            ``--clip``); None: the model has none.
    """

    load: Callable[[str | None, str | None, Any], Any]
    summary: str
    argument: str | None = None
    note: str | None = None
    relevance: str | None = None


@dataclass(frozen=True)
class RelevanceEntry:
    """A named ``--clip``: a relevance model for prompt-guided pooling.

    Attributes:
        load: ``(argument, frames_per_token) -> RelevanceScorer | None`` (None: no scorer, average pooling).
        summary: one line for help texts.
        argument: what ``NAME:ARG`` takes (e.g. "PATH"), None when the name takes no argument.
        claims: ``folder -> bool``: whether a folder given as ``--clip`` is one of this entry's models
            (then ``load(str(folder), ...)`` loads it instead of the Hugging Face loader).
    """

    load: Callable[[str | None, int], Any]
    summary: str
    argument: str | None = None
    claims: Callable[[Path], bool] | None = None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark a plugin owns (its records are generated or in the plugin's own format).

    Attributes:
        load: ``EvalConfig -> (records, skipped, videos)``; ``videos`` are rendered videos already made
            (handed to the frame source so they are not made again).
        prompt_style: the ``--prompt-style`` that "auto" means for its records.
        short_clips: ``(split, n, *, seed_base, mc_fraction, fps, **kw) -> iterator of (frames, record)``:
            short training clips with their questions (None: the benchmark has no training clips).
    """

    load: Callable[[Any], tuple[list[QARecord], list[dict[str, Any]], list[Any]]]
    prompt_style: str = "letters"
    short_clips: Callable[..., Iterator[tuple[np.ndarray, QARecord]]] | None = None


@dataclass(frozen=True)
class FrameSource:
    """Records whose frames are rendered by a plugin rather than read from a video file.

    A rendered video has ``name``, ``duration``, ``fps``, ``seed``, ``timestamps() -> (N,)``,
    ``render(index) -> (H, W, 3) uint8`` and ``save_mp4(path) -> Path``.

    Attributes:
        claims: ``record -> bool``: whether this source renders the record's video.
        key: ``record -> int``: the seed of the record's video (rendered videos are cached by it).
        generate: ``record -> rendered video``.
    """

    claims: Callable[[QARecord], bool]
    key: Callable[[QARecord], int]
    generate: Callable[[QARecord], Any]


@dataclass(frozen=True)
class Command:
    """An extra ``ppllava-hermes NAME`` subcommand.

    Attributes:
        help: one line for ``ppllava-hermes --help``.
        add_arguments: adds the command's flags to its parser.
        run: ``args -> exit status``.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


MODELS: Registry[ModelEntry] = Registry("model")
RELEVANCE: Registry[RelevanceEntry] = Registry("relevance model")
BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
PROMPT_STYLES: Registry[Callable[[QARecord], str]] = Registry("prompt style")
FRAME_SOURCES: Registry[FrameSource] = Registry("frame source")
COMMANDS: Registry[Command] = Registry("command")
DATA_WRITERS: Registry[Callable[..., dict[str, int]]] = Registry("data writer")

# ------------------------------------------------------------------------------------------ loading

_loaded = False


def _call(value: str) -> None:
    module, _, attr = value.partition(":")
    register = getattr(importlib.import_module(module), attr or "register")
    register()


def load_plugins() -> bool:
    """Run every plugin's ``register()`` once; True the first time (when a registry may have grown).

    Plugins listed in the entry-point group come first; then each of :data:`IN_TREE_PLUGINS` the
    metadata did not list (a checkout run without installing). An error inside a plugin propagates.
    """
    global _loaded
    if _loaded:
        return False
    _loaded = True
    from . import specs  # noqa: F401  (the library's own entries: tiny models, "none" / "tiny" relevance)

    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.add(ep.value.replace(" ", ""))
        ep.load()()
    for value in IN_TREE_PLUGINS:
        if value not in seen:
            _call(value)
    return True
