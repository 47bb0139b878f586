"""StreamingLLM: a few "attention sink" entries plus a recent window, positions inside the cache.

Based on "Efficient Streaming Language Models with Attention Sinks" (Xiao et al., arXiv 2309.17453):
models dump attention on the first tokens, so keeping them (the sinks) and a window of recent tokens
keeps a stream stable; positions are assigned within the cache, not the original text. Here the
system prompt is always kept and the sinks are the first ``sink_tokens`` visual entries after it.
The rule is a score (:meth:`StreamingLLM.score`: sinks first, then recency); keeping the top ``budget``
entries and re-indexing are :class:`~.policy.ScoringPolicy`'s. Knows nothing of video: entries, kinds
and positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .cache import MemoryLayer, TokenKind
from .policy import AttentionProbe, ScoringPolicy


@dataclass
class StreamingLLM(ScoringPolicy):
    """Keep the system prompt, the first ``sink_tokens`` visual entries and the newest ones.

    Expressed as a score (:meth:`score`) under :class:`~.policy.ScoringPolicy`'s keep-top: the sinks
    outrank every other visual entry, which rank by recency, so the top ``budget`` are the sinks plus the
    newest ``budget - sink_tokens``.

    Attributes:
        budget: visual entries kept per layer, sinks included.
        sink_tokens: first visual entries kept forever (ref: 4).
        reindex: "eager" (ref: positions are the entries' places in the cache) or "lazy".
        headroom: positions kept free under the model maximum (one chunk + a question and answer).
    """

    name: ClassVar[str] = "sink"

    budget: int = 4096
    sink_tokens: int = 4
    reindex: str = "eager"
    headroom: int = 1024

    def __post_init__(self) -> None:
        if self.sink_tokens < 0:
            raise ValueError(f"sink: sink_tokens must be >= 0, got {self.sink_tokens}")
        if self.budget <= self.sink_tokens:
            raise ValueError(
                f"sink: budget ({self.budget}) must exceed sink_tokens ({self.sink_tokens}) to leave a recent window"
            )
        self.check_reindex_options()

    def score(self, index: int, layer: MemoryLayer, probe: AttentionProbe | None) -> torch.Tensor:
        """``(N_visual,)``: the visual entry's rank in cache order (newer: higher), plus ``N_visual`` for the
        first ``sink_tokens`` (the sinks outrank everything). Integers, exact in float64; no ties."""
        n = int((layer.kinds == int(TokenKind.VISUAL)).sum())
        score = torch.arange(n, dtype=torch.float64)
        score[: self.sink_tokens] += n
        return score
