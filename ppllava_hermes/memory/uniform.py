"""Offline uniform sampling: no streaming memory; each question re-encodes frames sampled over the stream.

The classic offline video-LLM recipe (sample N frames uniformly over the whole video, encode, answer),
used as the baseline a streaming memory is measured against: it sees the whole past evenly but pays
the encoding and prefill of N frames at every question, so its time to first token is large.

Not a streaming memory: a session given this policy is a ``streaming.uniform.UniformSession``, which
keeps the decoded frames instead of prefilling them: ``T x H x W x 3`` bytes of uint8 for a stream of
T frames (602 KB per 448x448 frame: 616 MB for 1024 frames), far more than a KV budget for long
streams; the KV cache between questions holds only the system prompt. This class is the sampling rule
(which frames a question gets) and the budget check; it knows nothing of video beyond frame indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .cache import MemoryCache
from .policy import MemoryPolicy, check_budget

if TYPE_CHECKING:
    from .rope import RopeSpec


@dataclass
class UniformSampling(MemoryPolicy):
    """Re-encode frames sampled uniformly over everything seen so far, at each question.

    Attributes:
        frames: frames sampled per question when ``budget`` is None (32, the usual offline setting).
        budget: visual tokens per question: ``budget // tokens_per_frame`` frames (at least one).
    """

    name: ClassVar[str] = "uniform"

    frames: int = 32
    budget: int | None = None

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"uniform: frames must be >= 1, got {self.frames}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"uniform: budget must be >= 1 visual token, got {self.budget}")

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        if self.budget is not None:
            check_budget(self.budget, num_system_tokens, self.name)

    def frames_for(self, tokens_per_frame: int) -> int:
        """How many frames a question gets."""
        if self.budget is None:
            return self.frames
        return max(1, self.budget // max(1, tokens_per_frame))

    def question_frames(self, num_frames: int, tokens_per_frame: int) -> list[int]:
        """Indices ``0 <= i < num_frames``, evenly spread, first and last included."""
        if num_frames == 0:
            return []
        n = min(self.frames_for(tokens_per_frame), num_frames)
        return sorted({int(i) for i in np.linspace(0, num_frames - 1, n).round()})
