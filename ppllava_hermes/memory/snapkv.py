"""SnapKV for a stream: keep the entries an observation window attends to, pooled over neighbours.

Based on "SnapKV: LLM Knows What You are Looking for Before Generation" (Li et al., arXiv 2404.14469).
SnapKV scores the prefix by the attention of the prompt's last tokens (the observation window) and
keeps the top entries after a 1-D pooling that keeps neighbours of peaks. A stream has no question
yet, so the window is a fixed pseudo-query (the probe), and since a layer's entries are shared by its
KV heads here, scores are averaged over heads (the original selects per head). No tiers, no recency,
no anchors: the attention-only ablation of HERMES. The score is :meth:`SnapKV.score`; keeping the top
entries per layer and re-indexing are :class:`~.policy.ScoringPolicy`'s. Knows nothing of video: entries
and attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .cache import MemoryLayer, TokenKind
from .policy import AttentionProbe, ScoringPolicy


@dataclass
class SnapKV(ScoringPolicy):
    """Per layer, keep the ``budget`` visual entries with the highest pooled probe attention.

    The score (the probe's attention max-pooled over ``kernel`` neighbours) is :meth:`score`; the
    keep-top (ties towards newer entries) and the re-indexing are :class:`~.policy.ScoringPolicy`'s.

    Attributes:
        budget: visual entries kept per layer (ours: 4096, as HERMES).
        kernel: width of the max-pooling over neighbouring entries (ref: 7; odd).
        prompt: the observation window's text (ours: a pseudo-query; ref: the prompt's last tokens).
        reindex: "lazy" or "eager" position re-indexing (ours: lazy, as HERMES).
        headroom: positions kept free under the model maximum (ours: 1024, one chunk + a question and
            answer).
        compress_every: compress on every k-th chunk that finds the memory over budget (ours: 1, after
            every chunk, as HERMES; k > 1 trades an overshoot for fewer compressions). A layer then holds
            at most ``system + budget + k * chunk`` entries (``chunk``: the largest chunk's tokens) against
            ``system + budget + chunk`` for k = 1, and questions asked in between see the extra entries;
            the probe and the selection run once per k chunks. ``headroom`` must cover k chunks' positions
            plus a question and its answer.
    """

    name: ClassVar[str] = "snapkv"

    budget: int = 4096
    kernel: int = 7
    prompt: str = "Summarize everything that has happened in the video so far."
    reindex: str = "lazy"
    headroom: int = 1024
    compress_every: int = 1

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"snapkv: budget must be >= 1, got {self.budget}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"snapkv: kernel must be a positive odd width, got {self.kernel}")
        if not self.prompt.strip():
            raise ValueError("snapkv: the observation prompt must not be empty")
        if self.compress_every < 1:
            raise ValueError(f"snapkv: compress_every must be >= 1 chunk, got {self.compress_every}")
        self.check_reindex_options()

    @property
    def probe_prompts(self) -> dict[str, str]:  # type: ignore[override]
        return {"window": self.prompt}

    def score(self, index: int, layer: MemoryLayer, probe: AttentionProbe | None) -> torch.Tensor:
        """``(N_visual,)``: the "window" probe's attention on the layer's visual entries, max-pooled over
        ``kernel`` neighbouring visual entries; zeros without a probe (the newest entries then win)."""
        visual = (layer.kinds == int(TokenKind.VISUAL)).nonzero().squeeze(1)
        if probe is not None and "window" in probe.scores:
            attention = probe.scores["window"][index].float().cpu()[visual]
        else:
            attention = torch.zeros(visual.numel())
        return F.max_pool1d(attention[None, None], self.kernel, stride=1, padding=self.kernel // 2)[0, 0]
