"""StreamingLLM: a few "attention sink" entries plus a recent window, positions inside the cache.

Based on "Efficient Streaming Language Models with Attention Sinks" (Xiao et al., arXiv 2309.17453):
models dump attention on the first tokens, so keeping them (the sinks) and a window of recent tokens
keeps a stream stable; positions are assigned within the cache, not the original text. Here the
system prompt is always kept and the sinks are the first ``sink_tokens`` visual entries after it.
Knows nothing of video: entries, kinds and positions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .cache import MemoryCache, TokenKind
from .policy import (
    AttentionProbe,
    CompressResult,
    ReindexingPolicy,
)

if TYPE_CHECKING:
    from .rope import RopeSpec


@dataclass
class StreamingLLM(ReindexingPolicy):
    """Keep the system prompt, the first ``sink_tokens`` visual entries and the newest ones.

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

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        self.check_room(rope, num_system_tokens, self.budget)

    def wants_compress(self, cache: MemoryCache) -> bool:
        return cache.count(TokenKind.VISUAL) > self.budget

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        t0 = time.perf_counter()
        layer0 = cache.layers[0]
        visual = layer0.kinds == int(TokenKind.VISUAL)
        vis_idx = visual.nonzero().squeeze(1)
        recent = self.budget - self.sink_tokens
        keep = ~visual
        keep[vis_idx[: self.sink_tokens]] = True
        keep[vis_idx[-recent:]] = True
        return self.select_everywhere(cache, keep, rope, next_position, t0)  # the same entries in every layer
