"""Ask questions at given moments of a stream: each one as soon as the stream reaches its time.

The guarantee every caller relies on: a question at time ``t`` is answered with every frame up to
``t`` ingested and no frame after ``t`` in the memory. Used by the CLI, the demo and the evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..video.types import VideoClip
from .session import Answer, GenerationConfig, StreamingSession


@dataclass
class TimedQuestion:
    """A question asked when the stream reaches ``time`` seconds; ``payload`` travels along (a record)."""

    time: float
    text: str
    payload: Any = None

    def __post_init__(self) -> None:
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
    the stream are asked at the end. Returns ``(question, answer)`` pairs in time order."""
    pending = sorted(questions, key=lambda q: q.time)
    done: list[tuple[TimedQuestion, Answer]] = []

    def ask(q: TimedQuestion) -> None:
        ans = session.ask(q.text, generation)
        done.append((q, ans))
        if on_answer is not None:
            on_answer(q, ans)

    for clip in clips:
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
    for q in pending:
        ask(q)
    return done
