"""ShapesWorld splits and datasets: seed ranges per split, long-video splits, short clips, captions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ppllava_hermes.evaluation.records import QARecord

from .generator import World, WorldConfig, generate_world
from .questions import _short, _to_record, generate_questions
from .task_types import (
    _VIDEO_SPAN,
    CLIP_ATTEMPTS,
    SHORT_TYPES,
    SPLIT_SEED_BASE,
    SPLIT_SEED_SPAN,
    SPLITS,
    TaskConfig,
)

# ---------------------------------------------------------------------------------------------------
# splits and datasets


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not in {SPLITS}")


def video_seed(split: str, index: int) -> int:
    """Seed of long video ``index`` of ``split`` (first half of the split's seed range)."""
    _check_split(split)
    if not 0 <= index < _VIDEO_SPAN:
        raise ValueError(f"video index {index} outside [0, {_VIDEO_SPAN})")
    return SPLIT_SEED_BASE[split] + index


def clip_seed(split: str, index: int, attempt: int = 0) -> int:
    """Seed of short clip ``index`` of ``split`` (second half of the split's seed range).

    Each clip index owns a block of :data:`CLIP_ATTEMPTS` seeds: ``attempt`` picks one, so a clip
    whose first world cannot carry the wanted question (a direction question needs an object that
    does not bounce during the clip) tries the next world of its own block.
    """
    _check_split(split)
    if not 0 <= attempt < CLIP_ATTEMPTS:
        raise ValueError(f"attempt {attempt} outside [0, {CLIP_ATTEMPTS})")
    n_clips = (SPLIT_SEED_SPAN - _VIDEO_SPAN) // CLIP_ATTEMPTS
    if not 0 <= index < n_clips:
        raise ValueError(f"clip index {index} outside [0, {n_clips})")
    return SPLIT_SEED_BASE[split] + _VIDEO_SPAN + index * CLIP_ATTEMPTS + attempt


def split_of_seed(seed: int) -> str:
    """Which split a seed belongs to (inverse of :func:`video_seed` / :func:`clip_seed`)."""
    for s in SPLITS:
        if SPLIT_SEED_BASE[s] <= seed < SPLIT_SEED_BASE[s] + SPLIT_SEED_SPAN:
            return s
    raise ValueError(f"seed {seed} is in no split range")


@dataclass
class Split:
    """Videos and questions of one split. ``worlds[i]`` has seed ``seeds[i]``; video paths in the
    records are relative (``"<split>/<world.name>.mp4"``), written under ``out_dir`` when given."""

    name: str
    seeds: list[int]
    worlds: list[World]
    records: list[QARecord]


def make_split(
    split: str,
    n_videos: int,
    duration: float = 120.0,
    seed_base: int = 0,
    *,
    config: WorldConfig | None = None,
    task_config: TaskConfig | None = None,
    out_dir: str | Path | None = None,
) -> Split:
    """Generate ``n_videos`` worlds of ``duration`` seconds with seeds ``video_seed(split, seed_base + i)``
    and their questions. ``config`` gives everything but the duration (default :class:`WorldConfig`).
    Nothing is rendered unless ``out_dir`` is given, in which case each mp4 is written there.
    """
    _check_split(split)
    if n_videos < 0:
        raise ValueError(f"n_videos={n_videos} must be >= 0")
    cfg = replace(config or WorldConfig(), duration=duration)
    seeds = [video_seed(split, seed_base + i) for i in range(n_videos)]
    worlds, records = [], []
    for seed in seeds:
        w = generate_world(cfg, seed)
        video = f"{split}/{w.name}.mp4"
        if out_dir is not None:
            w.save_mp4(Path(out_dir) / video)
        worlds.append(w)
        records.extend(generate_questions(w, task_config, video=video))
    return Split(split, seeds, worlds, records)


_CLIP_OBJECTS = (1, 2, 3)
_CLIP_OBJECT_WEIGHTS = (0.45, 0.4, 0.15)  # "mostly 1-2 objects"


def clip_world_config(
    n_objects: int, frames_per_clip: int = 4, *, size: int = 112, fps: float = 1.0, **overrides: Any
) -> WorldConfig:
    """Config of a short-clip world: ``n_objects`` objects (fewer if they cannot be placed) bouncing for
    ``frames_per_clip`` frames; no appearing, leaving or colour changes, so "count" is always askable.

    Objects move 8-14 px per frame (at 1 fps), so an object's displacement over a
    4-frame clip that is 30-54 px, one to two merged tokens of a 14-px-patch ViT, so the direction of
    motion is visible between temporal groups rather than hidden inside one token.
    """
    kw: dict[str, Any] = dict(
        speed_range=(8.0 * fps, 14.0 * fps),
        height=size,
        width=size,
        fps=fps,
        duration=frames_per_clip / fps,
        max_objects=n_objects,
        min_objects=0,  # nothing may appear later: the clip's objects are those of frame 0
        initial_objects=n_objects,
        appear_rate=0.0,
        color_change_rate=0.0,
        mean_lifetime=1e9,
    )
    kw.update(overrides)
    return WorldConfig(**kw)


def iter_short_clips(
    split: str, n: int, frames_per_clip: int = 4, **kwargs: Any
) -> Iterator[tuple[np.ndarray, QARecord]]:
    """Yield ``n`` pairs ``(frames (frames_per_clip, size, size, 3) uint8, record)``; keyword arguments as
    :func:`iter_short_clip_worlds`; see :func:`short_clip_dataset`."""
    for _, frames, record in iter_short_clip_worlds(split, n, frames_per_clip, **kwargs):
        yield frames, record


def iter_short_clip_worlds(
    split: str,
    n: int,
    frames_per_clip: int = 4,
    *,
    seed_base: int = 0,
    size: int = 112,
    fps: float = 1.0,
    task_types: Sequence[str] = SHORT_TYPES,
    mc_fraction: float = 0.5,
    object_weights: Sequence[float] = _CLIP_OBJECT_WEIGHTS,
    **config_overrides: Any,
) -> Iterator[tuple[World, np.ndarray, QARecord]]:
    """As :func:`iter_short_clips`, with each clip's :class:`World` first (its object states give
    dense per-location labels for training). ``object_weights``: probabilities of 1, 2 and 3 objects
    per clip (a trainer asks for several objects when it teaches binding a colour to a shape)."""
    task_types = tuple(task_types)
    if not task_types or not set(task_types) <= set(SHORT_TYPES):
        raise ValueError(f"task_types {task_types} must be a non-empty subset of {SHORT_TYPES}")
    weights = np.asarray(object_weights, dtype=np.float64)
    if weights.shape != (len(_CLIP_OBJECTS),) or (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"object_weights {tuple(object_weights)} must be {len(_CLIP_OBJECTS)} probabilities "
                         f"(of {_CLIP_OBJECTS} objects) summing to 1")
    tc = TaskConfig(task_types=task_types, mc_fraction=mc_fraction, clip_frames=frames_per_clip)
    for i in range(n):
        wanted = task_types[(seed_base + i) % len(task_types)]  # rotation: types stay balanced
        # worlds of this clip's seed block in turn; the last one falls back to any askable type
        for attempt in range(CLIP_ATTEMPTS):
            seed = clip_seed(split, seed_base + i, attempt)
            rng = np.random.default_rng([seed, 0xC1])
            n_obj = int(rng.choice(_CLIP_OBJECTS, p=weights))
            cfg = clip_world_config(n_obj, frames_per_clip, size=size, fps=fps, **config_overrides)
            w = generate_world(cfg, seed)
            last = attempt == CLIP_ATTEMPTS - 1
            order = [wanted, *(t for t in task_types if t != wanted)] if last else [wanted]
            spec = next((sp for t in order if (sp := _short(t)(w, rng, tc, fixed_start=0)) is not None), None)
            if spec is not None:
                break
        if spec is None:  # only when "count" is excluded and nothing else is askable
            continue
        record = _to_record(w, spec, rng, tc, f"shapesworld-clip-{seed:010d}", f"{split}/clip_{seed:010d}")
        yield w, np.stack(list(w.frames(0, frames_per_clip))), record


def short_clip_dataset(
    split: str,
    n: int,
    frames_per_clip: int = 4,
    **kwargs: Any,
) -> list[tuple[np.ndarray, QARecord]]:
    """``n`` short-clip training pairs ``(frames (F, H, W, 3) uint8, QARecord)``, nothing written to disk.

    Each clip is its own world (seed ``clip_seed(split, seed_base + i, attempt)``, the first attempt
    whose world admits the clip's question type): 1-3 objects (mostly 1-2)
    of radius 18-24 px in a 112x112 frame, no appear/leave/colour events, one question of a short type
    (``color``, ``shape``, ``count``, ``direction`` in rotation), clip window ``[0, F-1]`` frames.
    Keyword arguments go to :func:`iter_short_clips`. Fewer than ``n`` pairs only if ``task_types``
    excludes "count" and some clip admits no question.
    """
    return list(iter_short_clips(split, n, frames_per_clip, **kwargs))


def region_captions(
    world: World, t_index: int, *, fully_visible_only: bool = True
) -> list[tuple[tuple[int, int, int, int], str]]:
    """``[((x0, y0, x1, y1), "a red circle"), ...]`` for the objects of frame ``t_index``, by id.

    Boxes are pixel boxes of the drawn shape (x1, y1 exclusive) clipped to the frame. By default
    objects partly outside the frame are skipped (their crop does not show the whole shape).
    """
    cfg = world.config
    out = []
    for s in world.states(t_index):
        if fully_visible_only and not s.fully_visible(cfg.width, cfg.height):
            continue
        box = s.bbox(cfg.width, cfg.height)
        if box[2] > box[0] and box[3] > box[1]:
            out.append((box, f"a {s.color} {s.shape}"))
    return out


def frame_caption(world: World, t_index: int) -> str:
    """One sentence naming every present object: "a red circle and a blue square" ("nothing")."""
    names = [f"a {s.color} {s.shape}" for s in world.states(t_index)]
    if not names:
        return "nothing"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
