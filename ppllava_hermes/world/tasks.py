"""ShapesWorld questions as :class:`~ppllava_hermes.evaluation.records.QARecord` (benchmark "shapesworld").

What this module knows: how to ask questions about a generated :class:`~.generator.World` whose
answers follow from its object states and event log, how to check such a question independently
(:func:`verify_record`), the train/val/test seed ranges (:func:`make_split`), a fast in-memory
short-clip dataset for training (:func:`short_clip_dataset`) and region captions for a tiny CLIP
(:func:`region_captions`). It knows nothing about models or scoring.

Task types (``task_kind`` / ``task_type``; "colour" in question text, "color" in names):

* short (a clip of ``clip_frames`` frames, ``start``/``end`` in seconds, ``timestamp = end``):
  ``color`` "What colour is the triangle in this clip?", ``shape`` "What shape is the red object in
  this clip?", ``count`` "How many shapes are in this clip?", ``direction`` "Which direction is the
  circle moving in this clip?".
* backward (asked at least ``backward_min_gap`` s after the event): ``first_appear`` "What colour was
  the first shape to appear after the video started?" (or "What shape was ..."), ``first_leave``
  "Which shape left the scene first?" (or "What colour was the first shape to leave the scene?"),
  ``color_change`` "What colour did the square change to?" (or "... the red square ..."),
  ``collision`` "Which shape did the cross bump into?"; memory recall of an object that has left
  (:data:`MEMORY_TYPES`): ``past_color`` "What colour was the circle in the video?" and ``past_shape``
  "What shape was the red object in the video?", asked only when exactly one object of that shape
  (of that colour) has been seen up to the question, it kept its colour all its life and it left at
  least ``backward_min_gap`` s before (``extra["event_time"]``: the first frame without it), so the
  answer is in the past frames and in no present one.
* realtime (``timestamp`` = the moment asked about): ``color_now`` "What colour is the circle now?",
  ``shape_now`` "What shape is the blue object now?", ``count_now`` "How many shapes are visible now?".
* forward (open answer ``"now"``): ``when_leave`` "Tell me when the blue circle leaves the scene.",
  ``when_color_change`` "Tell me when the square changes colour.", ``when_appear`` "Tell me when a new
  shape appears.".

Forward protocol: the question is posed at ``timestamp``; the model then sees the stream frame by
frame and may answer at any later frame time. The first response containing "now" counts as correct
iff its time ``t`` satisfies ``event_time <= t <= event_time + extra["tolerance"]``; a "now" before
``event_time`` is a false alarm (wrong), none by the tolerance is a miss (wrong).
``extra["event_time"]`` is the time of the first frame that shows the event (the object is gone, the
new colour or the new object is drawn); ``extra["event"]`` describes it.

Answers: multiple choice has up to 4 options drawn from the answer's vocabulary (colours of the
world, its shapes, the 4 directions, counts ``0..max(max_objects, 3)``), the right one at a
seeded-uniform position; open answers are the word or the number as text. Ambiguity guards: a shape
or colour names exactly one object; realtime and short questions only use frames where every present
object is fully inside the frame; short-clip attributes are constant over the clip.

Every record carries ``extra["seed"]`` and ``extra["config"]``, so :func:`world_for_record` rebuilds
its world; ``extra["t_index"]`` is the frame at which it is asked.

Seed ranges (disjoint by construction): split ``s`` owns ``[base_s, base_s + 10**9)`` with
``base_train = 0``, ``base_val = 10**9``, ``base_test = 2 * 10**9``; long videos from
:func:`make_split` use the first half of the range (``video_seed``), clips from
:func:`short_clip_dataset` the second, in blocks of :data:`CLIP_ATTEMPTS` seeds per clip (``clip_seed``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ppllava_hermes.evaluation.records import QARecord

from .generator import DIRECTIONS, ObjectState, World, WorldConfig, generate_world

BENCHMARK = "shapesworld"
SHORT_TYPES: tuple[str, ...] = ("color", "shape", "count", "direction")
BACKWARD_TYPES: tuple[str, ...] = ("first_appear", "first_leave", "color_change", "collision")
REALTIME_TYPES: tuple[str, ...] = ("color_now", "shape_now", "count_now")
FORWARD_TYPES: tuple[str, ...] = ("when_leave", "when_color_change", "when_appear")
#: backward questions about an object that has left (pure recall: nothing present shows the answer)
MEMORY_TYPES: tuple[str, ...] = ("past_color", "past_shape")
ALL_BACKWARD_TYPES: tuple[str, ...] = BACKWARD_TYPES + MEMORY_TYPES
# new types go at the end: a type's index seeds its questions, so older types keep theirs
TASK_TYPES: tuple[str, ...] = SHORT_TYPES + BACKWARD_TYPES + REALTIME_TYPES + FORWARD_TYPES + MEMORY_TYPES
TASK_KIND_OF: dict[str, str] = {
    **dict.fromkeys(SHORT_TYPES, "short"),
    **dict.fromkeys(ALL_BACKWARD_TYPES, "backward"),
    **dict.fromkeys(REALTIME_TYPES, "realtime"),
    **dict.fromkeys(FORWARD_TYPES, "forward"),
}
FORWARD_ANSWER = "now"

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SEED_BASE: dict[str, int] = {"train": 0, "val": 10**9, "test": 2 * 10**9}
SPLIT_SEED_SPAN = 10**9
_VIDEO_SPAN = SPLIT_SEED_SPAN // 2  # first half of a split's range: long videos; second half: clips
CLIP_ATTEMPTS = 8  # seeds per short-clip index (see clip_seed)


@dataclass
class TaskConfig:
    """How questions are drawn from a world.

    Attributes:
        questions_per_type: questions tried per task type per video (fewer when not askable).
        task_types: which of :data:`TASK_TYPES` to ask.
        mc_fraction: probability that a (non-forward) question is multiple choice.
        n_options: options per multiple-choice question (fewer when the vocabulary is smaller).
        clip_frames: frames in a short clip.
        backward_min_gap: seconds between a backward question's event and the question.
        forward_min_lead: seconds between a forward question and its event.
        forward_tolerance: seconds after the event in which "now" still counts.
        max_tries: candidate moments examined per question before giving up.
    """

    questions_per_type: int = 1
    task_types: tuple[str, ...] = TASK_TYPES
    mc_fraction: float = 0.5
    n_options: int = 4
    clip_frames: int = 4
    backward_min_gap: float = 10.0
    forward_min_lead: float = 3.0
    forward_tolerance: float = 2.0
    max_tries: int = 200

    def __post_init__(self) -> None:
        self.task_types = tuple(self.task_types)
        unknown = set(self.task_types) - set(TASK_TYPES)
        if unknown:
            raise ValueError(f"unknown task types {sorted(unknown)}; known: {TASK_TYPES}")
        if self.questions_per_type < 0:
            raise ValueError(f"questions_per_type={self.questions_per_type} must be >= 0")
        if not 0.0 <= self.mc_fraction <= 1.0:
            raise ValueError(f"mc_fraction={self.mc_fraction} must be in [0, 1]")
        if self.n_options < 2:
            raise ValueError(f"n_options={self.n_options} must be >= 2")
        if self.clip_frames < 2:
            raise ValueError(f"clip_frames={self.clip_frames} must be >= 2 (direction needs motion)")
        if self.backward_min_gap < 0 or self.forward_min_lead < 0 or self.forward_tolerance < 0:
            raise ValueError("backward_min_gap, forward_min_lead and forward_tolerance must be >= 0")
        if self.max_tries < 1:
            raise ValueError(f"max_tries={self.max_tries} must be >= 1")


def count_vocab(config: WorldConfig) -> tuple[str, ...]:
    """Possible count answers: "0" .. str(max(max_objects, 3)) (at least 4 values, for 4 options)."""
    return tuple(str(i) for i in range(max(config.max_objects, 3) + 1))


def answer_vocab(config: WorldConfig, answer_type: str) -> tuple[str, ...]:
    """Vocabulary of an answer type: "color", "shape", "direction" or "count"."""
    if answer_type == "color":
        return config.colors
    if answer_type == "shape":
        return config.shapes
    if answer_type == "direction":
        return DIRECTIONS
    if answer_type == "count":
        return count_vocab(config)
    raise ValueError(f"unknown answer type {answer_type!r}")


# ---------------------------------------------------------------------------------------------------
# question generation


@dataclass
class _Spec:
    """A question before it is formatted: its frame(s), text, true answer and answer vocabulary."""

    task_type: str
    question: str
    truth: str
    answer_type: str | None  # None: forward (open "now")
    t_index: int
    start: int | None = None
    end: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _inside(s: ObjectState, w: World) -> bool:
    return s.fully_visible(w.config.width, w.config.height)


def _unique(states: Sequence[ObjectState], key: str, value: str) -> bool:
    return sum(getattr(s, key) == value for s in states) == 1


def _candidates(rng: np.random.Generator, lo: int, hi: int, tc: TaskConfig) -> Iterator[int]:
    """Up to ``max_tries`` distinct integers of ``[lo, hi]`` in seeded random order."""
    if hi < lo:
        return
    n = hi - lo + 1
    if n <= tc.max_tries:
        yield from (lo + int(i) for i in rng.permutation(n))
    else:
        yield from (lo + int(i) for i in rng.choice(n, size=tc.max_tries, replace=False))


def _clip_states(w: World, s: int, f: int) -> list[list[ObjectState]] | None:
    """States of frames ``s .. s+f-1`` if the same objects are present, all fully visible; else None."""
    frames = [w.states(t) for t in range(s, s + f)]
    ids = [tuple(o.id for o in st) for st in frames]
    if len(set(ids)) != 1 or not all(_inside(o, w) for st in frames for o in st):
        return None
    return frames


def _short(task_type: str):
    def build(w: World, rng: np.random.Generator, tc: TaskConfig, fixed_start: int | None = None):
        f = tc.clip_frames
        starts = [fixed_start] if fixed_start is not None else _candidates(rng, 0, w.n_frames - f, tc)
        for s in starts:
            if s + f > w.n_frames:
                continue
            frames = _clip_states(w, s, f)
            if frames is None:
                continue
            spec = _short_spec(task_type, w, rng, frames)
            if spec is not None:
                spec.t_index, spec.start, spec.end = s + f - 1, s, s + f - 1
                return spec
        return None

    return build


def _short_spec(task_type: str, w: World, rng, frames: list[list[ObjectState]]) -> _Spec | None:
    first = frames[0]
    if task_type == "count":
        return _Spec("count", "How many shapes are in this clip?", str(len(first)), "count", 0)
    order = [int(i) for i in rng.permutation(len(first))]
    for i in order:
        o = first[i]
        track = [st[i] for st in frames]  # same ids in the same order in every frame
        if task_type in ("color", "direction"):
            if not _unique(first, "shape", o.shape):
                continue
            if task_type == "color":
                if len({x.color for x in track}) != 1:
                    continue
                q = f"What colour is the {o.shape} in this clip?"
                return _Spec("color", q, o.color, "color", 0, extra={"object_id": o.id})
            d = _motion_direction([(x.x, x.y) for x in track])
            if d is None:
                continue
            q = f"Which direction is the {o.shape} moving in this clip?"
            return _Spec("direction", q, d, "direction", 0, extra={"object_id": o.id})
        if task_type == "shape":
            if len({x.color for x in track}) != 1:
                continue
            if any(sum(x.color == o.color for x in st) != 1 for st in frames):
                continue
            q = f"What shape is the {o.color} object in this clip?"
            return _Spec("shape", q, o.shape, "shape", 0, extra={"object_id": o.id})
    return None


def _motion_direction(points: Sequence[tuple[float, float]], min_total: float = 4.0) -> str | None:
    """Direction of a motion that is the same axis and sign at every step; None if it is not."""
    steps = np.diff(np.asarray(points, dtype=np.float64), axis=0)
    names = set()
    for dx, dy in steps:
        if abs(dx) > 1e-9 and abs(dy) < 1e-9:
            names.add("right" if dx > 0 else "left")
        elif abs(dy) > 1e-9 and abs(dx) < 1e-9:
            names.add("down" if dy > 0 else "up")
        else:
            return None  # a still step (collision, static stretch) or diagonal
    total = float(np.abs(steps).sum())
    return names.pop() if len(names) == 1 and total >= min_total else None


def _realtime(task_type: str):
    def build(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
        for k in _candidates(rng, 0, w.n_frames - 1, tc):
            st = w.states(k)
            if not all(_inside(o, w) for o in st):
                continue
            if task_type == "count_now":
                return _Spec(task_type, "How many shapes are visible now?", str(len(st)), "count", k)
            for i in rng.permutation(len(st)):
                o = st[int(i)]
                if task_type == "color_now" and _unique(st, "shape", o.shape):
                    q = f"What colour is the {o.shape} now?"
                    return _Spec(task_type, q, o.color, "color", k, extra={"object_id": o.id})
                if task_type == "shape_now" and _unique(st, "color", o.color):
                    q = f"What shape is the {o.color} object now?"
                    return _Spec(task_type, q, o.shape, "shape", k, extra={"object_id": o.id})
        return None

    return build


def _gap_frames(w: World, seconds: float) -> int:
    return max(1, math.ceil(seconds * w.fps - 1e-9))


def _backward_first(kind: str):
    def build(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
        evs = [e for e in w.events_of(kind) if kind == "leave" or e.t_index > 0]
        if not evs:
            return None
        first = evs[0]
        if sum(e.t_index == first.t_index for e in evs) != 1:
            return None  # two shapes left in the same frame: "first" is ambiguous
        lo = first.t_index + _gap_frames(w, tc.backward_min_gap)
        if lo > w.n_frames - 1:
            return None
        k = int(rng.integers(lo, w.n_frames))
        ask_color = bool(rng.random() < 0.5)
        if kind == "appear":
            if ask_color:
                q, truth, at = (
                    "What colour was the first shape to appear after the video started?",
                    first.colors[0],
                    "color",
                )
            else:
                q, truth, at = (
                    "What shape was the first shape to appear after the video started?",
                    first.shapes[0],
                    "shape",
                )
            tt = "first_appear"
        else:
            if ask_color:
                q, truth, at = "What colour was the first shape to leave the scene?", first.colors[0], "color"
            else:
                q, truth, at = "Which shape left the scene first?", first.shapes[0], "shape"
            tt = "first_leave"
        extra = {"object_id": first.object_ids[0], "event_time": first.time}
        return _Spec(tt, q, truth, at, k, extra=extra)

    return build


def _backward_color_change(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
    evs = w.events_of("color_change")
    gap = _gap_frames(w, tc.backward_min_gap)
    for i in _candidates(rng, 0, len(evs) - 1, tc):
        e = evs[i]
        if e.t_index + gap > w.n_frames - 1:
            continue
        k = int(rng.integers(e.t_index + gap, w.n_frames))
        before = [x for x in evs if x.t_index < k]
        shape, old = e.shapes[0], e.old_colors[0]
        extra = {"object_id": e.object_ids[0], "event_time": e.time}
        if sum(x.shapes[0] == shape for x in before) == 1:
            q = f"What colour did the {shape} change to?"
        elif sum(x.shapes[0] == shape and x.old_colors[0] == old for x in before) == 1:
            q = f"What colour did the {old} {shape} change to?"
        else:
            continue
        return _Spec("color_change", q, e.colors[0], "color", k, extra=extra)
    return None


def _backward_collision(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
    evs = w.events_of("collide")
    gap = _gap_frames(w, tc.backward_min_gap)
    for i in _candidates(rng, 0, len(evs) - 1, tc):
        e = evs[i]
        if e.t_index + gap > w.n_frames - 1 or e.shapes[0] == e.shapes[1]:
            continue
        k = int(rng.integers(e.t_index + gap, w.n_frames))
        j = int(rng.integers(2))
        subject, shape, partner_shape = e.object_ids[j], e.shapes[j], e.shapes[1 - j]
        subjects, partners = set(), set()
        for x in evs:
            if x.t_index < k:
                for a in range(2):
                    if x.shapes[a] == shape:
                        subjects.add(x.object_ids[a])
                        partners.add(x.object_ids[1 - a])
        if subjects != {subject} or len(partners) != 1:
            continue
        q = f"Which shape did the {shape} bump into?"
        extra = {"object_id": subject, "event_time": e.time}
        return _Spec("collision", q, partner_shape, "shape", k, extra=extra)
    return None


def _first_with_color(tr, ci: int) -> int | None:
    """First frame in which track ``tr`` has colour index ``ci`` (None: never)."""
    hits = np.flatnonzero(tr.colors == ci)
    return tr.start + int(hits[0]) if len(hits) else None


def _backward_past(attr: str):
    """``past_color`` (attr "shape": the question names the shape) or ``past_shape`` (attr "color")."""

    def build(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
        evs = w.events_of("leave")
        gap = _gap_frames(w, tc.backward_min_gap)
        for i in _candidates(rng, 0, len(evs) - 1, tc):
            e = evs[i]
            tr = w.tracks[e.object_ids[0]]
            if len(set(tr.colors.tolist())) != 1:
                continue  # a colour change would make "what colour was it" ambiguous
            ci = int(tr.colors[0])
            # the name must fit nobody else seen up to the question: the question comes before the
            # first frame another object of that shape (colour) is shown, and after the object left
            firsts = []
            for other in w.tracks:
                if other.id == tr.id:
                    continue
                if attr == "shape" and other.shape == tr.shape:
                    firsts.append(other.start)
                elif attr == "color":
                    f = _first_with_color(other, ci)
                    if f is not None:
                        firsts.append(f)
            lo, hi = e.t_index + gap, min([w.n_frames - 1, *(f - 1 for f in firsts)])
            if any(f <= e.t_index for f in firsts) or lo > hi:
                continue
            k = int(rng.integers(lo, hi + 1))
            extra = {"object_id": tr.id, "event_time": e.time}
            if attr == "shape":
                q = f"What colour was the {tr.shape} in the video?"
                return _Spec("past_color", q, w.config.colors[ci], "color", k, extra=extra)
            q = f"What shape was the {w.config.colors[ci]} object in the video?"
            return _Spec("past_shape", q, tr.shape, "shape", k, extra=extra)
        return None

    return build


def _forward_extra(w: World, tc: TaskConfig, e, description: str) -> dict[str, Any]:
    return {
        "event_time": e.time,
        "event_t_index": e.t_index,
        "tolerance": tc.forward_tolerance,
        "event": description,
        "protocol": "answer 'now' in [event_time, event_time + tolerance]",
    }


def _last_namesake(w: World, oid: int, lo: int, hi: int, color: str | None) -> int:
    """Last frame in ``[lo, hi]`` where another object of ``oid``'s shape (and ``color``, if given) is
    present; ``lo - 1`` if there is none. Works on track arrays: no per-frame state objects."""
    me = w.tracks[oid]
    last = lo - 1
    ci = None if color is None else w.config.colors.index(color)
    for tr in w.tracks:
        if tr.id == oid or tr.shape != me.shape:
            continue
        a, b = max(lo, tr.start), min(hi, tr.stop - 1)
        if a > b:
            continue
        if ci is None:
            last = max(last, b)
        else:
            hits = np.flatnonzero(tr.colors[a - tr.start : b - tr.start + 1] == ci)
            if len(hits):
                last = max(last, a + int(hits[-1]))
    return last


def _fully_inside_track(w: World, oid: int, k: int) -> bool:
    tr = w.tracks[oid]
    x, y, r = tr.xs[k - tr.start], tr.ys[k - tr.start], tr.radius
    return r <= x <= w.config.width - r and r <= y <= w.config.height - r


def _forward_leave(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
    evs = w.events_of("leave")
    lead = _gap_frames(w, tc.forward_min_lead)
    for i in _candidates(rng, 0, len(evs) - 1, tc):
        e = evs[i]
        oid = e.object_ids[0]
        tr = w.tracks[oid]
        # "the blue circle" must stay true from the question until it leaves: start after its last
        # colour change and after any other blue circle was last seen (up to the leave frame)
        other = np.flatnonzero(tr.colors != tr.colors[-1])
        lo = tr.start + (int(other[-1]) + 1 if len(other) else 0)
        lo = max(lo, _last_namesake(w, oid, lo, e.t_index, e.colors[0]) + 1)
        for k in _candidates(rng, lo, e.t_index - lead, tc):
            if not _fully_inside_track(w, oid, k):
                continue
            q = f"Tell me when the {e.colors[0]} {e.shapes[0]} leaves the scene."
            extra = {"object_id": oid, **_forward_extra(w, tc, e, e.describe())}
            return _Spec("when_leave", q, FORWARD_ANSWER, None, k, extra=extra)
    return None


def _forward_color_change(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
    evs = w.events_of("color_change")
    lead = _gap_frames(w, tc.forward_min_lead)
    for i in _candidates(rng, 0, len(evs) - 1, tc):
        e = evs[i]
        oid = e.object_ids[0]
        prev = [x.t_index for x in evs if x.object_ids[0] == oid and x.t_index < e.t_index]
        lo = max([w.tracks[oid].start, *prev])  # the question comes after any earlier change
        # "the square" must name one object from the question to the change
        lo = max(lo, _last_namesake(w, oid, lo, e.t_index, None) + 1)
        for k in _candidates(rng, lo, e.t_index - lead, tc):
            if not _fully_inside_track(w, oid, k):
                continue
            q = f"Tell me when the {e.shapes[0]} changes colour."
            extra = {"object_id": oid, "new_color": e.colors[0], **_forward_extra(w, tc, e, e.describe())}
            return _Spec("when_color_change", q, FORWARD_ANSWER, None, k, extra=extra)
    return None


def _forward_appear(w: World, rng: np.random.Generator, tc: TaskConfig) -> _Spec | None:
    evs = w.events_of("appear")
    lead = _gap_frames(w, tc.forward_min_lead)
    for i in _candidates(rng, 0, len(evs) - 1, tc):
        e = evs[i]
        if e.t_index == 0:
            continue
        prev = max((x.t_index for x in evs if x.t_index < e.t_index), default=0)
        if e.t_index - lead < prev:
            continue
        k = int(rng.integers(prev, e.t_index - lead + 1))
        q = "Tell me when a new shape appears."
        extra = {"object_id": e.object_ids[0], **_forward_extra(w, tc, e, e.describe())}
        return _Spec("when_appear", q, FORWARD_ANSWER, None, k, extra=extra)
    return None


_BUILDERS = {
    **{t: _short(t) for t in SHORT_TYPES},
    "first_appear": _backward_first("appear"),
    "first_leave": _backward_first("leave"),
    "color_change": _backward_color_change,
    "collision": _backward_collision,
    **{t: _realtime(t) for t in REALTIME_TYPES},
    "when_leave": _forward_leave,
    "when_color_change": _forward_color_change,
    "when_appear": _forward_appear,
    "past_color": _backward_past("shape"),
    "past_shape": _backward_past("color"),
}


def _to_record(
    w: World, spec: _Spec, rng: np.random.Generator, tc: TaskConfig, qid: str, video: str
) -> QARecord:
    fps = w.fps
    options: list[str] = []
    answer: int | str = spec.truth
    mc = spec.answer_type is not None and bool(rng.random() < tc.mc_fraction)
    if mc:
        vocab = answer_vocab(w.config, spec.answer_type)
        others = [v for v in vocab if v != spec.truth]
        m = min(tc.n_options, len(vocab)) - 1
        distract = [others[int(i)] for i in rng.choice(len(others), size=m, replace=False)]
        pos = int(rng.integers(m + 1))
        options = distract[:pos] + [spec.truth] + distract[pos:]
        answer = pos
    extra = {"seed": w.seed, "config": w.config.to_dict(), "t_index": spec.t_index, **spec.extra}
    extra["format"] = "mc" if mc else "open"
    return QARecord(
        benchmark=BENCHMARK,
        qid=qid,
        video=video,
        question=spec.question,
        options=options,
        answer=answer,
        task_type=spec.task_type,
        task_kind=TASK_KIND_OF[spec.task_type],
        timestamp=spec.t_index / fps,
        start=None if spec.start is None else spec.start / fps,
        end=None if spec.end is None else spec.end / fps,
        extra=extra,
    )


def generate_questions(
    world: World, task_config: TaskConfig | None = None, *, video: str | None = None, salt: int = 0
) -> list[QARecord]:
    """Questions about ``world``: up to ``questions_per_type`` of each task type (fewer where a type
    cannot be asked unambiguously, e.g. no colour change happened). Deterministic in
    ``(world.seed, task_config, salt)``; duplicates (same question at the same frame) are dropped.
    """
    tc = task_config or TaskConfig()
    video = video if video is not None else f"{world.name}.mp4"
    records: list[QARecord] = []
    seen: set[tuple[str, int]] = set()
    for task_type in tc.task_types:
        # one stream per task type: adding a type never changes the questions of the others
        rng = np.random.default_rng([world.seed, 0xA5, salt, TASK_TYPES.index(task_type)])
        for j in range(tc.questions_per_type):
            spec = _BUILDERS[task_type](world, rng, tc)
            if spec is None:
                break
            if (spec.question, spec.t_index) in seen:
                continue
            seen.add((spec.question, spec.t_index))
            qid = f"{world.name}-{task_type}-{j}"
            records.append(_to_record(world, spec, rng, tc, qid, video))
    return records


# ---------------------------------------------------------------------------------------------------
# verification: recomputes answers from per-frame states (and the collide log) with its own parsing


class _Invalid(Exception):
    pass


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise _Invalid(why)


class _Truth:
    """Per-frame ``{id: (shape, color, x, y, r)}`` tables of a world, built once per verification."""

    def __init__(self, w: World):
        self.w = w
        self.cfg = w.config
        self.frames = [
            {s.id: (s.shape, s.color, s.x, s.y, s.radius) for s in w.states(t)} for t in range(w.n_frames)
        ]

    def full(self, t: int, oid: int) -> bool:
        _, _, x, y, r = self.frames[t][oid]
        return r <= x <= self.cfg.width - r and r <= y <= self.cfg.height - r

    def clean(self, t: int) -> bool:
        return all(self.full(t, i) for i in self.frames[t])

    def with_attr(self, t: int, shape: str | None = None, color: str | None = None) -> list[int]:
        return [
            i
            for i, (s, c, *_) in self.frames[t].items()
            if (shape is None or s == shape) and (color is None or c == color)
        ]

    def frame_of(self, seconds: float) -> int:
        k = int(round(seconds * self.w.fps))
        _need(abs(k / self.w.fps - seconds) < 1e-6 and 0 <= k < self.w.n_frames, f"{seconds}s is not a frame")
        return k

    def appearances(self) -> list[tuple[int, int]]:
        """(frame, id) of every object that is present in a frame but not in the previous one."""
        return [
            (t, i) for t in range(1, len(self.frames)) for i in self.frames[t] if i not in self.frames[t - 1]
        ]

    def departures(self) -> list[tuple[int, int]]:
        """(frame, id): present in the previous frame, absent in this one."""
        return [
            (t, i) for t in range(1, len(self.frames)) for i in self.frames[t - 1] if i not in self.frames[t]
        ]

    def recolorings(self) -> list[tuple[int, int, str, str]]:
        """(frame, id, old colour, new colour) for every colour difference between consecutive frames."""
        out = []
        for t in range(1, len(self.frames)):
            for i, (_, c, *_) in self.frames[t].items():
                if i in self.frames[t - 1] and self.frames[t - 1][i][1] != c:
                    out.append((t, i, self.frames[t - 1][i][1], c))
        return out


_W = r"(\w+)"
_PATTERNS: dict[str, re.Pattern] = {
    k: re.compile("^" + v + "$")
    for k, v in {
        "color": rf"What colour is the {_W} in this clip\?",
        "shape": rf"What shape is the {_W} object in this clip\?",
        "count": r"How many shapes are in this clip\?",
        "direction": rf"Which direction is the {_W} moving in this clip\?",
        "first_appear": r"What (colour|shape) was the first shape to appear after the video started\?",
        "first_leave": r"(What colour was the first shape to leave the scene|Which shape left the scene first)\?",
        "color_change": rf"What colour did the (?:{_W} )?{_W} change to\?",
        "collision": rf"Which shape did the {_W} bump into\?",
        "color_now": rf"What colour is the {_W} now\?",
        "shape_now": rf"What shape is the {_W} object now\?",
        "count_now": r"How many shapes are visible now\?",
        "when_leave": rf"Tell me when the {_W} {_W} leaves the scene\.",
        "when_color_change": rf"Tell me when the {_W} changes colour\.",
        "when_appear": r"Tell me when a new shape appears\.",
        "past_color": rf"What colour was the {_W} in the video\?",
        "past_shape": rf"What shape was the {_W} object in the video\?",
    }.items()
}


def _truth_short(tt: str, m: re.Match, T: _Truth, r: QARecord) -> tuple[str, str]:
    _need(r.start is not None and r.end is not None, "short question without start/end")
    s, e = T.frame_of(r.start), T.frame_of(r.end)
    _need(e > s and r.timestamp is not None and T.frame_of(r.timestamp) == e, "bad clip window")
    idx = range(s, e + 1)
    ids = set(T.frames[s])
    _need(all(set(T.frames[t]) == ids for t in idx), "objects enter or leave during the clip")
    _need(all(T.clean(t) for t in idx), "an object is partly outside the frame during the clip")
    if tt == "count":
        return str(len(ids)), "count"
    if tt == "shape":
        holders = {i for t in idx for i in T.with_attr(t, color=m[1])}
        _need(len(holders) == 1, f"{len(holders)} objects are {m[1]} during the clip")
        (oid,) = holders
        _need(all(T.frames[t][oid][1] == m[1] for t in idx), "the object is not that colour all along")
        return T.frames[s][oid][0], "shape"
    matches = T.with_attr(s, shape=m[1])
    _need(len(matches) == 1, f"{len(matches)} objects are a {m[1]}")
    oid = matches[0]
    if tt == "color":
        colors = {T.frames[t][oid][1] for t in idx}
        _need(len(colors) == 1, "the colour changes during the clip")
        return colors.pop(), "color"
    # direction, recomputed from positions: every step along one axis with one sign
    steps = [
        (T.frames[t + 1][oid][2] - T.frames[t][oid][2], T.frames[t + 1][oid][3] - T.frames[t][oid][3])
        for t in range(s, e)
    ]
    names = []
    for dx, dy in steps:
        _need((abs(dx) > 1e-9) != (abs(dy) > 1e-9), "a step is still or diagonal")
        names.append(("left", "right")[dx > 0] if abs(dx) > 1e-9 else ("up", "down")[dy > 0])
    _need(len(set(names)) == 1, "the direction changes during the clip")
    return names[0], "direction"


def _truth_realtime(tt: str, m: re.Match, T: _Truth, r: QARecord) -> tuple[str, str]:
    k = T.frame_of(r.timestamp)
    _need(T.clean(k), "an object is partly outside the frame")
    if tt == "count_now":
        return str(len(T.frames[k])), "count"
    if tt == "color_now":
        ids = T.with_attr(k, shape=m[1])
        _need(len(ids) == 1, f"{len(ids)} objects are a {m[1]}")
        return T.frames[k][ids[0]][1], "color"
    ids = T.with_attr(k, color=m[1])
    _need(len(ids) == 1, f"{len(ids)} objects are {m[1]}")
    return T.frames[k][ids[0]][0], "shape"


def _truth_past(tt: str, m: re.Match, T: _Truth, r: QARecord) -> tuple[str, str]:
    """past_color / past_shape from the per-frame tables: the one object ever named so, gone by now."""
    k = T.frame_of(r.timestamp)
    name = m[1]
    by_shape = tt == "past_color"
    seen = {i for t in range(k + 1) for i in (T.with_attr(t, shape=name) if by_shape else T.with_attr(t, color=name))}
    _need(len(seen) == 1, f"{len(seen)} objects were {'a ' if by_shape else ''}{name} up to the question")
    (oid,) = seen
    shown = [t for t in range(k + 1) if oid in T.frames[t]]
    _need(oid not in T.frames[k], "the object is still in the scene")
    _need(all(T.frames[t][oid][1] == T.frames[shown[0]][oid][1] for t in shown), "its colour changed")
    gone = shown[-1] + 1
    _need(abs(float(r.extra.get("event_time", -1.0)) - gone / T.w.fps) < 1e-6, "extra['event_time'] is wrong")
    shape, color = T.frames[shown[0]][oid][:2]
    return (color, "color") if by_shape else (shape, "shape")


def _truth_backward(tt: str, m: re.Match, T: _Truth, r: QARecord) -> tuple[str, str]:
    k = T.frame_of(r.timestamp)
    if tt in MEMORY_TYPES:
        return _truth_past(tt, m, T, r)
    if tt in ("first_appear", "first_leave"):
        evs = T.appearances() if tt == "first_appear" else T.departures()
        _need(bool(evs) and evs[0][0] < k, "no such event before the question")
        t0 = evs[0][0]
        _need(sum(t == t0 for t, _ in evs) == 1, "two objects tie for first")
        oid = evs[0][1]
        shape, color = (T.frames[t0] if tt == "first_appear" else T.frames[t0 - 1])[oid][:2]
        want_color = m[1] in ("colour", "What colour was the first shape to leave the scene")
        return (color, "color") if want_color else (shape, "shape")
    if tt == "color_change":
        old, shape = m[1], m[2]
        found = [
            x
            for x in T.recolorings()
            if x[0] < k and T.frames[x[0]][x[1]][0] == shape and old in (None, x[2])
        ]
        _need(len(found) == 1, f"{len(found)} matching colour changes before the question")
        return found[0][3], "color"
    # collision: from the log, each logged collision checked against positions
    shape = m[1]
    subjects, partners = set(), set()
    vmax = T.cfg.speed_range[1] / T.w.fps
    for e in T.w.events:
        if e.kind != "collide" or e.t_index >= k:
            continue
        (a, b), t = e.object_ids, e.t_index
        sa, _, xa, ya, ra = T.frames[t][a]
        sb, _, xb, yb, rb = T.frames[t][b]
        _need(
            math.hypot(xa - xb, ya - yb) <= ra + rb + 2 * vmax + 1e-6, "a logged collision of distant objects"
        )
        for x, y, sx in ((a, b, sa), (b, a, sb)):
            if sx == shape:
                subjects.add(x)
                partners.add(y)
    _need(len(subjects) == 1 and len(partners) == 1, "the collision is not unique")
    (p,) = partners
    pshape = next(f[p][0] for f in T.frames if p in f)
    _need(pshape != shape, "bumped into the same shape")
    return pshape, "shape"


def _truth_forward(tt: str, m: re.Match, T: _Truth, r: QARecord) -> tuple[str, str | None]:
    k = T.frame_of(r.timestamp)
    n = len(T.frames)
    if tt == "when_appear":
        ev = next((t for t in range(k + 1, n) if any(i not in T.frames[t - 1] for i in T.frames[t])), None)
    elif tt == "when_leave":
        color, shape = m[1], m[2]
        ids = T.with_attr(k, shape=shape, color=color)
        _need(len(ids) == 1 and T.full(k, ids[0]), "the object is not unique or not fully visible")
        oid = ids[0]
        ev = next((t for t in range(k + 1, n) if oid not in T.frames[t]), None)
        _need(ev is not None, "the object never leaves")
        _need(all(T.frames[t][oid][1] == color for t in range(k, ev)), "its colour changes before it leaves")
        _need(
            all(T.with_attr(t, shape=shape, color=color) in ([oid], []) for t in range(k, ev + 1)),
            "a namesake",
        )
    else:  # when_color_change
        shape = m[1]
        ids = T.with_attr(k, shape=shape)
        _need(len(ids) == 1 and T.full(k, ids[0]), "the object is not unique or not fully visible")
        oid = ids[0]
        ev = next(
            (
                t
                for t in range(k + 1, n)
                if oid not in T.frames[t] or T.frames[t][oid][1] != T.frames[t - 1][oid][1]
            ),
            None,
        )
        _need(ev is not None and oid in T.frames[ev], "the object never changes colour")
        _need(
            all(T.with_attr(t, shape=shape) == [oid] for t in range(k, ev + 1)),
            "another object of that shape",
        )
    _need(ev is not None, "the event never happens")
    _need(abs(float(r.extra.get("event_time", -1.0)) - ev / T.w.fps) < 1e-6, "extra['event_time'] is wrong")
    return FORWARD_ANSWER, None


def check_record(world: World, record: QARecord, _truth: _Truth | None = None) -> list[str]:
    """Problems with ``record`` as a question about ``world``; empty when its answer is right and unique.

    Recomputes the answer from per-frame object states (collisions: from the log, checked against
    positions), parsing the question text with its own patterns, then checks the options.
    """
    problems = []
    r = record
    tt = r.task_type
    if r.benchmark != BENCHMARK:
        problems.append(f"benchmark {r.benchmark!r}")
    if tt not in _PATTERNS:
        return [*problems, f"unknown task type {tt!r}"]
    if r.task_kind != TASK_KIND_OF[tt]:
        problems.append(f"task_kind {r.task_kind!r} for {tt}")
    if r.extra.get("seed", world.seed) != world.seed:
        problems.append("record is about another world")
    if r.timestamp is None:
        return [*problems, "no timestamp"]
    m = _PATTERNS[tt].match(r.question)
    if m is None:
        return [*problems, f"question does not match the {tt} pattern: {r.question!r}"]
    T = _truth or _Truth(world)
    try:
        fn = {"short": _truth_short, "realtime": _truth_realtime, "backward": _truth_backward}.get(
            TASK_KIND_OF[tt], _truth_forward
        )
        truth, answer_type = fn(tt, m, T, r)
    except _Invalid as exc:
        return [*problems, str(exc)]
    if answer_type is None:
        if r.options or r.answer != truth:
            problems.append(f"forward answer must be open {truth!r}")
    elif r.options:
        vocab = answer_vocab(world.config, answer_type)
        if len(set(r.options)) != len(r.options) or not set(r.options) <= set(vocab):
            problems.append(f"options {r.options} are not distinct {answer_type} words")
        elif truth not in r.options:
            problems.append(f"the right answer {truth!r} is not an option")
        elif r.options[int(r.answer)] != truth:
            problems.append(f"answer {r.options[int(r.answer)]!r} but the truth is {truth!r}")
    elif r.answer != truth:
        problems.append(f"answer {r.answer!r} but the truth is {truth!r}")
    return problems


def verify_record(world: World, record: QARecord) -> bool:
    """True iff the record's answer is recomputed from the world and the question is unambiguous."""
    return not check_record(world, record)


def verify_records(world: World, records: Sequence[QARecord]) -> list[list[str]]:
    """:func:`check_record` for many records of one world, sharing the per-frame tables."""
    truth = _Truth(world)
    return [check_record(world, r, truth) for r in records]


def world_for_record(record: QARecord) -> World:
    """Rebuild the world a record was generated from (``extra["seed"]``, ``extra["config"]``)."""
    return generate_world(WorldConfig.from_dict(record.extra["config"]), int(record.extra["seed"]))


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
    **config_overrides: Any,
) -> Iterator[tuple[World, np.ndarray, QARecord]]:
    """As :func:`iter_short_clips`, with each clip's :class:`World` first (its object states give
    dense per-location labels for training)."""
    task_types = tuple(task_types)
    if not task_types or not set(task_types) <= set(SHORT_TYPES):
        raise ValueError(f"task_types {task_types} must be a non-empty subset of {SHORT_TYPES}")
    tc = TaskConfig(task_types=task_types, mc_fraction=mc_fraction, clip_frames=frames_per_clip)
    for i in range(n):
        wanted = task_types[(seed_base + i) % len(task_types)]  # rotation: types stay balanced
        # worlds of this clip's seed block in turn; the last one falls back to any askable type
        for attempt in range(CLIP_ATTEMPTS):
            seed = clip_seed(split, seed_base + i, attempt)
            rng = np.random.default_rng([seed, 0xC1])
            n_obj = int(rng.choice(_CLIP_OBJECTS, p=_CLIP_OBJECT_WEIGHTS))
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
