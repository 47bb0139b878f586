"""ShapesWorld question generation: questions with answers, times and options from a world's event log.

Each task type has a builder reading the world's event log and per-frame states (:mod:`.tasks` lists
the types and their wording). Checked by :mod:`.checker`, which imports nothing of this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppllava_hermes.evaluation.records import QARecord

from .generator import ObjectState, World
from .task_types import (
    BENCHMARK,
    FORWARD_ANSWER,
    REALTIME_TYPES,
    SHORT_TYPES,
    TASK_KIND_OF,
    TASK_TYPES,
    TaskConfig,
    answer_vocab,
)

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
