"""Novelty memory: keep what the stream had not shown before, drop what repeats it (event-aware importance).

A recent window forgets the past; attention-scored memories (SnapKV, HERMES) keep what a generic
pseudo-query attends to, which on a stream is mostly the same background seen again and again. This
policy scores every visual entry by how *new* its content was when it arrived: one minus its largest
cosine similarity to any entry of an older frame still in memory. A static background scores high once
(its first frame) and near zero afterwards; an object scores high when it appears, changes colour or is
seen in a new place, and low while it repeats itself. The memory therefore holds one copy of each
distinct thing the stream showed, which is what questions about the past ask for ("what colour was the
triangle?"), plus the newest frames whole for questions about now.

The idea is the temporal-redundancy criterion of InfiniPot-V (arXiv 2506.15745: drop tokens similar to
the same location in recent frames) widened from "the same location, recent frames" to "anywhere, any
older frame in memory", so a moving object is not kept once per position. Written here from that
description; nothing is taken from its code.

Specification.

* Content vector of an entry: its value vectors at layer ``layer`` (values carry no rotary position, so
  two views of the same content at different positions compare as equal), all KV heads concatenated and
  L2-normalised.
* Novelty of a visual entry ``i`` of frame ``f_i``: ``1 - max_j cos(v_i, v_j)`` over the visual entries ``j``
  in memory with ``f_j < f_i``; 1 for entries of the oldest frame in memory. Recomputed over the memory
  as it is at each compression, so an entry whose older twin was dropped becomes new again.
* Selection (identical in every layer; positions re-indexed afterwards): the visual entries of the
  newest ``recent`` frames are always kept (if they alone exceed the budget, their newest ``budget``
  entries); the rest of the budget goes to the highest novelty, ties towards newer entries. System and
  text entries are never dropped. After compressing, each layer holds at most ``budget`` visual entries.
* Scope: a memory for video, where what repeats is the same thing seen again. On text a repeated token is
  not a repeated fact (common words resemble each other at layer 0): on SmolLM2 it lost more perplexity than
  the recent window (``docs/results/real_lm_memory.md``).
* Cost: one ``N x N`` similarity per compression (``N``: visual entries in memory, about the budget
  plus a chunk), computed in blocks of :data:`BLOCK` rows; no probe forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from .cache import MemoryCache, TokenKind
from .policy import AttentionProbe, CompressResult, ReindexingPolicy

if TYPE_CHECKING:
    from .rope import RopeSpec

BLOCK = 1024  # rows of the similarity computed at once (bounds the scratch memory to BLOCK x N floats)


def novelty_scores(content: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
    """``content`` ``(N, D)`` unit rows, ``frame_ids`` ``(N,)`` -> ``(N,)`` CPU float novelty in ``[0, 2]``.

    Entry ``i``'s score is ``1 - max cos(content_i, content_j)`` over the entries ``j`` with
    ``frame_ids[j] < frame_ids[i]``, and 1 where there is none.
    """
    n = content.shape[0]
    frame_ids = frame_ids.to(content.device)  # the similarity runs where the keys and values live
    out = torch.ones(n, dtype=torch.float32, device=content.device)
    for s in range(0, n, BLOCK):
        sim = content[s:s + BLOCK] @ content.T  # (b, N)
        older = frame_ids[None, :] < frame_ids[s:s + BLOCK, None]
        best = sim.masked_fill(~older, float("-inf")).amax(dim=1)
        has = older.any(dim=1)
        out[s:s + BLOCK][has] = 1.0 - best[has].float()
    return out.cpu()


@dataclass
class NoveltyKV(ReindexingPolicy):
    """Keep the newest frames and, for the rest of the budget, the entries that were new when they came.

    Attributes:
        budget: visual entries kept per layer (ours: 4096, as HERMES).
        recent: newest frame ids always kept whole (ours: 2; a Qwen2.5-VL temporal group of two frames
            carries its first frame's id, so 2 ids are 4 frames, one chunk of the demo's stream).
        layer: the layer whose values are the content vectors (ours: 0, the nearest to the visual tokens).
        reindex: "lazy" or "eager" position re-indexing (ours: lazy, as HERMES).
        headroom: positions kept free under the model maximum (ours: 1024, one chunk + a question and answer).
    """

    name: ClassVar[str] = "novelty"

    budget: int = 4096
    recent: int = 2
    layer: int = 0
    reindex: str = "lazy"
    headroom: int = 1024

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"novelty: budget must be >= 1, got {self.budget}")
        if self.recent < 0:
            raise ValueError(f"novelty: recent must be >= 0 frames, got {self.recent}")
        if self.layer < 0:
            raise ValueError(f"novelty: layer must be >= 0, got {self.layer}")
        self.check_reindex_options()

    def check_model(self, rope: RopeSpec | None, num_layers: int) -> None:
        super().check_model(rope, num_layers)
        if self.layer >= num_layers:
            raise ValueError(f"novelty: layer {self.layer} does not exist in a model of {num_layers} layers")

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        self.check_room(rope, num_system_tokens, self.budget)

    def wants_compress(self, cache: MemoryCache) -> bool:
        return cache.count(TokenKind.VISUAL) > self.budget

    def keep_mask(self, cache: MemoryCache) -> torch.Tensor:
        """``(N,)`` bool over layer 0's entries (every layer holds the same): what stays."""
        layer0 = cache.layers[0]
        is_visual = layer0.kinds == int(TokenKind.VISUAL)
        keep = ~is_visual
        visual = is_visual.nonzero().squeeze(1)
        if visual.numel() <= self.budget:
            return keep | is_visual
        fids = layer0.frame_ids[visual]
        newest = torch.unique(fids)[-self.recent:] if self.recent else fids.new_empty(0)
        recent = torch.isin(fids, newest)
        if int(recent.sum()) >= self.budget:  # the newest frames alone fill the budget: their newest entries
            keep[visual[recent.nonzero().squeeze(1)[-self.budget:]]] = True
            return keep
        values = cache.layers[self.layer].values[0]  # (kv_heads, N, head_dim)
        content = F.normalize(values[:, visual].permute(1, 0, 2).flatten(1).float(), dim=-1)
        score = novelty_scores(content, fids)
        score = score + 1e-6 * torch.arange(score.numel()) / score.numel()  # ties: newer entries win
        score[recent] = float("inf")
        keep[visual[torch.topk(score, self.budget).indices]] = True
        return keep

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        return self.select_everywhere(cache, self.keep_mask(cache), rope, next_position)
