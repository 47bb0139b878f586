"""One internal record type for every benchmark (and ShapesWorld tasks).

A record is a question about a video, asked at a moment of the video (streaming protocols) or about
the whole video (offline protocols). Loaders in this package turn each benchmark's own JSON into
:class:`QARecord`; scoring and protocols only ever see this type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASK_KINDS = ("short", "backward", "realtime", "forward", "open", "other")


@dataclass
class QARecord:
    """One question about one video.

    Attributes:
        benchmark: name of the benchmark ("streamingbench", "ovo_bench", "shapesworld", ...).
        qid: identifier unique inside the benchmark file.
        video: path (or relative path, resolved against a video folder) of the video.
        question: the question text, without the options.
        options: option texts without their letters ("red", not "A. red"); empty for open answers.
        answer: for multiple choice the index of the right option (0-based); for open answers the
            reference text (str).
        task_type: the benchmark's own task name ("Object Recognition", "EPM", "color", ...).
        task_kind: one of TASK_KINDS: how the question relates to time in a stream.
        timestamp: seconds into the video at which the question is asked (None: after the whole video).
        start / end: optional segment of the video the question is about (seconds).
        duration_class: "short" / "medium" / "long" where a benchmark gives it (Video-MME).
        extra: anything else the benchmark carries (forward items' multi-round probes, ...).
    """

    benchmark: str
    qid: str
    video: str
    question: str
    options: list[str] = field(default_factory=list)
    answer: int | str = 0
    task_type: str = ""
    task_kind: str = "other"
    timestamp: float | None = None
    start: float | None = None
    end: float | None = None
    duration_class: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task_kind not in TASK_KINDS:
            raise ValueError(f"record {self.qid!r}: task_kind {self.task_kind!r} not in {TASK_KINDS}")
        if self.options:
            if not isinstance(self.answer, int) or not 0 <= self.answer < len(self.options):
                raise ValueError(
                    f"record {self.qid!r}: answer {self.answer!r} is not an index into {len(self.options)} options"
                )
        elif not isinstance(self.answer, str):
            raise ValueError(f"record {self.qid!r}: an open question needs a text answer, got {self.answer!r}")
        if self.timestamp is not None and self.timestamp < 0:
            raise ValueError(f"record {self.qid!r}: negative timestamp {self.timestamp}")

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def answer_letter(self) -> str:
        """The right option's letter ("A" for index 0); only for multiple choice."""
        if not self.is_multiple_choice:
            raise ValueError(f"record {self.qid!r} is an open question: it has no answer letter")
        return chr(ord("A") + int(self.answer))
