"""The pooling stage between the vision encoder and the LLM, for streaming and offline questions.

Streaming with a standing query: each incoming chunk's visual tokens are pooled against the query
given at session start. Streaming with no query: plain 3-D average pooling (the no-query mode of
``PromptGuidedPooling``) or relevance to a generic prompt. Offline (question known): see
``OfflineVideoQA``, which re-pools cached features per question.

Positions after pooling are the adapter's business: the pooled grid is handed back as
``VisualTokens`` with a coarser grid (temporal groups merged by the temporal stride, so
``seconds_per_group`` grows by it), and the adapter gives pooled tokens positions from that grid
exactly as it does for unpooled ones (M-RoPE t/h/w for Qwen2.5-VL, contiguous for LLaVA-OneVision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import VisualTokens, VLMAdapter
from ..pooling import PoolingConfig, PromptGuidedPooling

GENERIC_PROMPT = "What is happening in the video?"


def pool_visual(visual: VisualTokens, pooling: PromptGuidedPooling, weights: torch.Tensor | None) -> VisualTokens:
    """Pool one chunk's grid ``(t, h, w, D)`` with relevance ``weights`` ``(1, t, h, w)`` (None: average)."""
    out = pooling(visual.features.unsqueeze(0), weights)
    t_out = out.grid[0]
    st = out.stride[0]
    # A pooled temporal group starts where its first source group starts and spans `st` groups.
    starts = torch.arange(t_out) * st
    return visual.with_features(
        features=out.features[0],
        group_times=visual.group_times[starts],
        group_frame_ids=visual.group_frame_ids[starts],
        seconds_per_group=visual.seconds_per_group * st,
    )


@dataclass
class PoolingStage:
    """Callable ``(visual, frames) -> pooled visual`` for :class:`StreamingSession`.

    Attributes:
        pooling: the pooling module (kernel, stride, tau, padding).
        scorer: a ``RelevanceScorer`` or None (then pooling is plain averaging).
        query: the standing query; None with a scorer uses :data:`GENERIC_PROMPT`.
    """

    pooling: PromptGuidedPooling
    scorer: object | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if self.query is not None and not self.query.strip():
            raise ValueError("standing query is empty: give a question, or None for no query")
        if self.query is not None and self.scorer is None:
            raise ValueError("a standing query needs a relevance scorer (a CLIP-family model)")

    def __call__(self, visual: VisualTokens, frames: np.ndarray) -> VisualTokens:
        weights = None
        if self.scorer is not None:
            with torch.no_grad():
                weights = self.scorer.score(self.query or GENERIC_PROMPT, frames, grid=visual.grid)
        return pool_visual(visual, self.pooling, weights)


def make_pooling_stage(adapter: VLMAdapter, *, mode: str, kernel: tuple[int, int, int] = (2, 3, 3),
                       standing_query: str | None = None, scorer: object | None = None,
                       padding: str = "replicate") -> PoolingStage:
    """Build the stage for the CLI's ``--pool`` mode ("avg" or "prompt").

    Args:
        adapter: the VLM (its token grid is what is pooled).
        mode: "avg" (3-D average pooling, no query) or "prompt" (weights from ``scorer``).
        kernel: pooling kernel (T, H, W); reference (2, 3, 3).
        standing_query: the query chunks are pooled against (prompt only; None: a generic prompt).
        scorer: the ``RelevanceScorer`` of prompt pooling (``specs.load_relevance``); required by "prompt".
        padding: how incomplete windows are handled (``PoolingConfig.padding``).
    """
    pooling = PromptGuidedPooling(PoolingConfig(kernel=kernel, padding=padding))
    if mode == "avg":
        if standing_query:
            raise ValueError("--standing-query needs --pool prompt (avg pooling ignores queries)")
        return PoolingStage(pooling)
    if mode != "prompt":
        raise ValueError(f"unknown pooling mode {mode!r}: expected 'avg' or 'prompt'")
    if scorer is None:
        raise ValueError("--pool prompt needs a relevance scorer (--clip)")
    return PoolingStage(pooling, scorer, standing_query)


def load_scorer(clip: str | None, frames_per_token: int = 1):
    """A RelevanceScorer from a relevance spec (``specs.load_relevance``: a folder or hub id of an HF CLIP /
    SigLIP, or a registered name); None is the ShapesWorld CLIP (``"shapesworld"``), the shorthand of the
    ShapesWorld recipes. New code calls ``specs.load_relevance`` with an explicit spec."""
    from ..specs import load_relevance

    return load_relevance(clip if clip is not None else "shapesworld", frames_per_token=frames_per_token)
