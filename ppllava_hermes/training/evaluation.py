"""Held-out evaluation for the training scripts: answer accuracy through the streaming session, and loss.

Accuracy is measured the way the library answers: the video's chunks are encoded, scored against the
question (question-only text into CLIP) and pooled by the model being trained, prefilled into a
:class:`~ppllava_hermes.streaming.StreamingSession` with ``add_visual_tokens`` (exactly as
``OfflineVideoQA`` does), and the session generates the answer greedily. Multiple choice is scored by
matching the answer to an option (``parse_choice``), open answers with ``score_open``.

It knows nothing of optimisers or of TRL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..evaluation.scoring import parse_choice, score_open
from ..streaming import GenerationConfig, StreamConfig, StreamingSession
from .data import VideoQAExample
from .model import PooledVideoLM


@dataclass
class AccuracyResult:
    """Accuracy over a set of examples.

    Attributes:
        accuracy: fraction answered right.
        n: examples scored.
        per_task: accuracy per ``task_type`` (examples without one under "").
        visual_tokens: mean visual tokens per video the LLM received (the token budget).
    """

    accuracy: float
    n: int
    per_task: dict[str, float] = field(default_factory=dict)
    visual_tokens: float = 0.0

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "n": self.n, "per_task": self.per_task,
                "visual_tokens": self.visual_tokens}


def is_correct(text: str, example: VideoQAExample) -> bool:
    """Whether a generated answer is right for ``example`` (option match, else open-answer match)."""
    if example.options and example.answer_index is not None:
        return parse_choice(text, example.options) == example.answer_index
    return score_open(text, example.answer)


@torch.no_grad()
def generate_answer(model: PooledVideoLM, example: VideoQAExample, max_new_tokens: int = 8) -> tuple[str, int]:
    """The session's greedy answer to ``example`` with ``model``'s pooling; returns (text, visual tokens)."""
    video = example.video_input()
    chunks = model.pooled_chunks(video, example.clip_query)
    session = StreamingSession(model.adapter, config=StreamConfig(chunk_frames=model.chunk_frames))
    for chunk in chunks:
        session.add_visual_tokens(chunk.visual, np.asarray(chunk.frame_times))
    answer = session.ask(example.question, GenerationConfig(max_new_tokens=max_new_tokens))
    return answer.text, sum(c.visual.num_tokens for c in chunks)


def evaluate_accuracy(model: PooledVideoLM, examples: Iterable[VideoQAExample | None],
                      max_new_tokens: int = 8) -> AccuracyResult:
    """Accuracy of ``model`` on ``examples`` (Nones, i.e. unreadable videos already reported, are skipped)."""
    was_training = model.training
    model.eval()
    per_task: dict[str, list[bool]] = defaultdict(list)
    tokens = []
    try:
        for ex in examples:
            if ex is None:
                continue
            text, n_tokens = generate_answer(model, ex, max_new_tokens)
            per_task[ex.task_type].append(is_correct(text, ex))
            tokens.append(n_tokens)
    finally:
        model.train(was_training)
    flat = [x for v in per_task.values() for x in v]
    if not flat:
        raise ValueError("no example to evaluate")
    return AccuracyResult(
        accuracy=float(np.mean(flat)), n=len(flat),
        per_task={k: float(np.mean(v)) for k, v in sorted(per_task.items())},
        visual_tokens=float(np.mean(tokens)),
    )


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Sequence[dict] | Iterable[dict]) -> float:
    """Mean answer-token cross-entropy of ``model`` (a :class:`PooledVideoLM`, possibly wrapped) over batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            if batch is None:
                continue
            out = model(**batch)
            tokens = int(batch["completion_mask"][:, 1:].sum())
            total += float(out.loss) * tokens
            count += tokens
    finally:
        model.train(was_training)
    return total / max(count, 1)
