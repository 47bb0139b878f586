"""Ask questions at given moments of a stream: each one as soon as the stream reaches its time.

The guarantee every caller relies on: a question at time ``t`` is answered with every frame up to
``t`` ingested and no frame after ``t`` in the memory (:func:`check_causal` verifies it before each
question, here and in the evaluator's streaming protocol: a violation is a :class:`CausalityError`).
Used by the CLI, the demo and the evaluator.

Truthful timing at the end: when the stream ends, frames still waiting for a full temporal group are
ingested (``session.flush``) before the questions left; a question whose time is past the last frame is
answered, reported and recorded at the last frame's time, with ``asked_for`` (the time it named) and a
``note`` saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..video.types import VideoClip
from .session import Answer, GenerationConfig, StreamingSession


class CausalityError(RuntimeError):
    """A question would see a frame from after its own time."""


def check_causal(session: StreamingSession, t: float, what: str = "a question") -> None:
    """Refuse to ask at ``t`` seconds when the session already holds a frame after ``t``."""
    last = session.last_frame_time
    if last is not None and last > t + 1e-9:
        raise CausalityError(f"{what} asked at {t:.3f}s but the frame at {last:.3f}s is already in the stream")


@dataclass
class TimedQuestion:
    """A question asked when the stream reaches ``time`` seconds; ``payload`` travels along (a record).

    ``asked_for`` and ``note`` are set by :func:`run_timed_questions` on a question past the end of the
    stream: ``time`` is then the last frame's, ``asked_for`` the time the question named.
    """

    time: float
    text: str
    payload: Any = None
    asked_for: float | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.time):
            raise ValueError(f"question {self.text!r}: time must be finite seconds, got {self.time}")
        if self.time < 0:
            raise ValueError(f"question {self.text!r}: negative time {self.time}")
        if not self.text.strip():
            raise ValueError(f"question at {self.time}s is empty")


def run_timed_questions(
    session: StreamingSession,
    clips: Iterable[VideoClip],
    questions: Iterable[TimedQuestion],
    generation: GenerationConfig | None = None,
    *,
    on_answer: Callable[[TimedQuestion, Answer], None] | None = None,
    on_frames: Callable[[int], None] | None = None,
) -> list[tuple[TimedQuestion, Answer]]:
    """Stream ``clips`` into ``session``, asking each question at its time; questions after the end of
    the stream are asked at the end, after the last partial temporal group is ingested, and come back
    (to ``on_answer`` and in the result) at the last frame's time with a note. Returns ``(question,
    answer)`` pairs in time order."""
    pending = sorted(questions, key=lambda q: q.time)
    done: list[tuple[TimedQuestion, Answer]] = []

    def ask(q: TimedQuestion) -> None:
        check_causal(session, q.time, f"question {q.text!r}")
        ans = session.ask(q.text, generation)
        done.append((q, ans))
        if on_answer is not None:
            on_answer(q, ans)

    last: float | None = None
    for clip in clips:
        if len(clip):
            last = float(clip.timestamps[-1])
        start = 0
        while pending and pending[0].time < clip.timestamps[-1]:
            q = pending.pop(0)
            stop = int((clip.timestamps <= q.time).sum())
            if stop > start:
                session.add_frames(clip.frames[start:stop], clip.timestamps[start:stop])
                if on_frames is not None:
                    on_frames(stop - start)
                start = stop
            ask(q)
        if start < len(clip):
            session.add_frames(clip.frames[start:], clip.timestamps[start:])
            if on_frames is not None:
                on_frames(len(clip) - start)
    session.flush()  # the stream's last frames, even an odd one short of a temporal group
    for q in pending:
        if last is None:
            q = replace(q, asked_for=q.time, note="the stream had no frames: answered without video")
        elif q.time > last + 1e-9:
            q = replace(q, time=last, asked_for=q.time,
                        note=f"asked for {q.time:g}s, past the end of the stream: answered at its last frame "
                             f"({last:g}s)")
        ask(q)
    return done
