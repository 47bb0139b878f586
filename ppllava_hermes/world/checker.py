"""The independent checker of ShapesWorld questions: answers recomputed from per-frame states.

It parses each question's text with its own patterns and recomputes the answer from the world's
per-frame object states and collision log; it imports nothing of the generator of questions
(:mod:`.questions`), so a bug there cannot be repeated here (``tests/test_world.py`` checks the
imports).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ppllava_hermes.evaluation.records import QARecord

from .generator import World, WorldConfig, generate_world
from .task_types import BENCHMARK, FORWARD_ANSWER, MEMORY_TYPES, TASK_KIND_OF, answer_vocab

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
