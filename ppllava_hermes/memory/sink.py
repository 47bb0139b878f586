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
    MemoryPolicy,
    check_budget,
    check_position_room,
    require_rope,
)
from .positions import REINDEX_MODES, reindex_cache

if TYPE_CHECKING:  # models/ imports memory/: a runtime import would be circular
    from ..models.base import RopeSpec


@dataclass
class StreamingLLM(MemoryPolicy):
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
        if self.reindex not in REINDEX_MODES:
            raise ValueError(f"sink: reindex must be one of {REINDEX_MODES}, got {self.reindex!r}")
        if self.headroom < 0:
            raise ValueError(f"sink: headroom must be >= 0, got {self.headroom}")

    def check_model(self, rope: RopeSpec | None, num_layers: int) -> None:
        require_rope(rope, self.name)

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        require_rope(rope, self.name)
        check_budget(self.budget, num_system_tokens, self.name)
        check_position_room(self.name, rope, num_system_tokens, self.budget, self.headroom)

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
        index = keep.nonzero().squeeze(1)
        evicted = len(layer0) - index.numel()
        for layer in cache.layers:  # the same entries in every layer
            layer.select(index)
        new_next = reindex_cache(cache, rope, next_position, mode=self.reindex, headroom=self.headroom)
        return CompressResult(evicted=evicted, next_position=new_next, seconds=time.perf_counter() - t0)
