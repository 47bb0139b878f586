"""Recent window: keep only the newest frames (the SimpleStream baseline).

Based on "SimpleStream" (arXiv 2604.02317): a streaming VLM that sees only its last few frames is a
strong baseline on real-time questions and blind to the past; memory policies must beat it there.
Knows nothing of video beyond the per-entry frame ids the cache holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from .cache import MemoryCache, TokenKind
from .policy import (
    AttentionProbe,
    CompressResult,
    ReindexingPolicy,
    require_rope,
)

if TYPE_CHECKING:
    from .rope import RopeSpec


@dataclass
class RecentWindow(ReindexingPolicy):
    """Keep the system prompt and the newest whole frames; positions re-indexed inside the cache.

    Attributes:
        budget: visual entries kept per layer, as whole frames (the newest frames that fit; if not even
            one frame fits, its newest ``budget`` entries). None: use ``frames``.
        frames: newest frames kept when ``budget`` is None (ref SimpleStream: 4). Frames are counted by
            the stream frame ids in the cache (Qwen2.5-VL: a frame pair carries its first frame's id).
        reindex: "eager" (default: the window always sits right after the system prompt, as a model
            that only ever saw these frames would have it) or "lazy" (only near the position limit).
        headroom: positions kept free under the model maximum (one chunk + a question and answer).
    """

    name: ClassVar[str] = "window"

    budget: int | None = None
    frames: int = 4
    reindex: str = "eager"
    headroom: int = 1024

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"window: budget must be >= 1 visual token, got {self.budget}")
        if self.frames < 1:
            raise ValueError(f"window: frames must be >= 1, got {self.frames}")
        self.check_reindex_options()

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        if self.budget is None:
            require_rope(rope, self.name)
        else:
            self.check_room(rope, num_system_tokens, self.budget)

    def _keep_visual(self, layer) -> torch.Tensor:
        """``(N,)`` bool: which visual entries stay (identical in every layer)."""
        visual = layer.kinds == int(TokenKind.VISUAL)
        fids = layer.frame_ids[visual]
        keep = torch.zeros_like(visual)
        if fids.numel() == 0:
            return keep
        if self.budget is None:
            newest = int(fids.max())
            keep[visual] = fids > newest - self.frames
            return keep
        frames, per_frame = torch.unique(fids, return_counts=True)
        newest_first = per_frame.flip(0).cumsum(0)
        fitting = int((newest_first <= self.budget).sum())
        if fitting:
            keep[visual] = fids >= frames[-fitting]
        else:  # one frame is larger than the budget: keep its newest entries
            idx = visual.nonzero().squeeze(1)[-self.budget:]
            keep[idx] = True
        return keep

    def wants_compress(self, cache: MemoryCache) -> bool:
        layer = cache.layers[0]
        visual = layer.kinds == int(TokenKind.VISUAL)
        return bool((visual & ~self._keep_visual(layer)).any())

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        layer0 = cache.layers[0]
        keep = (layer0.kinds != int(TokenKind.VISUAL)) | self._keep_visual(layer0)
        # every layer holds the same entries under this policy
        return self.select_everywhere(cache, keep, rope, next_position)
