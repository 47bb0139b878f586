"""ShapesWorld as a plugin of the library: the entries it registers, and nothing else.

``register()`` is the ``ppllava_hermes.plugins`` entry point (``pyproject.toml``); the library calls it
the first time a registry misses a name (``plugins.load_plugins``). It registers:

* model ``shapesworld[:PATH]``: the shipped ShapesWorld VLM (or another ShapesWorld checkpoint folder),
  whose own relevance model is the ShapesWorld CLIP;
* relevance model ``shapesworld[:PATH]``: the ShapesWorld CLIP, which also claims any folder holding one;
* benchmark ``shapesworld``: generated (``--world-*`` settings) or read from a JSON list of records,
  answered in the "words" prompt style, with short training clips;
* prompt style ``words``: the question with its options' words (:func:`~.model.prompt_for`);
* frame source ``shapesworld``: a record's world, rendered on demand;
* command ``demo``: ``ppllava-hermes demo`` (:mod:`.demo`);
* data writer ``shapesworld``: the brief's three benchmarks written from generated worlds (:mod:`.brief_data`).

Imports of the heavy parts (torch, the models) wait until an entry is used, so registering is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..plugins import (
    BENCHMARKS,
    COMMANDS,
    DATA_WRITERS,
    FRAME_SOURCES,
    MODELS,
    PROMPT_STYLES,
    RELEVANCE,
    Benchmark,
    Command,
    FrameSource,
    ModelEntry,
    RelevanceEntry,
)
from ..specs import MissingCheckpointError
from .tasks import BENCHMARK

NAME = "shapesworld"


def _load_model(path: str | None, device: str | None, _dtype: Any):
    from .model import VLM_DIR, load_shapesworld_adapter

    folder = Path(path).expanduser() if path is not None else VLM_DIR
    if not (folder / "config.json").is_file():
        spec = NAME if path is None else f"{NAME}:{path}"
        raise MissingCheckpointError(f"model {spec!r}: no ShapesWorld checkpoint in {str(folder)!r} (train one with "
                        f"`ppllava-hermes train train_world`)")
    return load_shapesworld_adapter(folder, device=device)


def _load_clip(path: str | None, frames_per_token: int):
    from ..pooling.relevance import RelevanceConfig, RelevanceScorer
    from .clip import CLIP_DIR, has_world_clip, load_world_clip

    folder = Path(path).expanduser() if path is not None else CLIP_DIR
    if not has_world_clip(folder):
        spec = NAME if path is None else f"{NAME}:{path}"
        raise MissingCheckpointError(f"clip {spec!r}: no ShapesWorld CLIP in {str(folder)!r} (train one with "
                        f"`ppllava-hermes train train_clip`)")
    model, tokenizer = load_world_clip(folder)
    return RelevanceScorer(model, tokenizer, config=RelevanceConfig(frames_per_token=frames_per_token))


def _claims_clip(folder: Path) -> bool:
    from .clip import has_world_clip

    return has_world_clip(folder)


def _load_records(config: Any) -> tuple[list, list, list]:
    """``(records, skipped, worlds)`` of an ``EvalConfig``: its annotation file, else a generated split."""
    if config.annotations:
        from ..evaluation.runner import load_records_json

        return load_records_json(config.annotations), [], []
    from .tasks import make_split

    split = make_split(config.world_split, config.world_videos, config.world_duration, seed_base=config.world_seed)
    return split.records, [], split.worlds


def _short_clips(split: str, n: int, **kwargs: Any):
    from .tasks import iter_short_clips

    return iter_short_clips(split, n, **kwargs)


def _prompt_words(record) -> str:
    from .model import prompt_for

    return prompt_for(record)


def _renders(record) -> bool:
    return record.benchmark == BENCHMARK and "seed" in record.extra and "config" in record.extra


def _seed(record) -> int:
    return int(record.extra["seed"])


def _world(record):
    from .tasks import world_for_record

    return world_for_record(record)


def _demo_arguments(parser) -> None:
    from .demo import add_demo_arguments

    add_demo_arguments(parser)


def _run_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _write_brief_data(paths, config) -> dict[str, int]:
    from .brief_data import write_shapesworld

    return write_shapesworld(paths, config)


def register() -> None:
    """Add ShapesWorld's entries to the library's registries (idempotent)."""
    MODELS.register(NAME, ModelEntry(_load_model, "the shipped ShapesWorld model, or a ShapesWorld checkpoint folder",
                                     argument="PATH", relevance=NAME))
    RELEVANCE.register(NAME, RelevanceEntry(_load_clip, "the shipped ShapesWorld CLIP, or a folder of one",
                                            argument="PATH", claims=_claims_clip))
    BENCHMARKS.register(BENCHMARK, Benchmark(_load_records, prompt_style="words", short_clips=_short_clips))
    PROMPT_STYLES.register("words", _prompt_words)
    FRAME_SOURCES.register(BENCHMARK, FrameSource(claims=_renders, key=_seed, generate=_world))
    COMMANDS.register("demo", Command("stream a generated ShapesWorld video and answer timed questions",
                                      _demo_arguments, _run_demo))
    DATA_WRITERS.register(NAME, _write_brief_data)
