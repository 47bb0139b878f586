"""Position re-indexing: close the gaps that eviction leaves, so positions stay bounded forever.

After a policy drops entries, the kept ones keep their old positions: gaps appear, and in an endless
stream positions grow past the model's ``max_position_embeddings``. Re-indexing gives the kept entries
new positions and moves their keys there with the delta rotation (:func:`rope.rerotate`).

The rule, per layer, entries in cache order, grouped by ``segments`` (one commit: the system prompt,
one visual chunk, one text run):

- 1-D RoPE: positions become contiguous, ``first, first+1, ...`` (there is no structure to keep).
- M-RoPE, segment-preserving (the normal case): every entry of a segment moves by the same delta on
  t, h and w, so the segment's internal t/h/w layout is untouched; segment ``k`` starts right after the
  h/w extent of segment ``k-1``. The extent is measured on h/w only, the Qwen rule
  (``get_rope_index`` resumes text at ``start + max(h, w)``): a segment's temporal positions may run
  past the next segment's start, as they do in the model's own layout. With nothing evicted this is
  the identity.
- M-RoPE, dense (fallback, only when the segment-preserving layout does not fit under the limit):
  within each segment every axis' values are replaced by their ranks, so a segment of ``n`` entries
  spans at most ``n`` positions and a layer of ``N`` entries spans at most ``N``.

The first segment (the system prompt) never moves. This module knows nothing of policies, video or
model families: positions, segment ids, keys and a RoPE spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .cache import MemoryCache
from .rope import rerotate

if TYPE_CHECKING:
    from .rope import RopeSpec

REINDEX_MODES = ("eager", "lazy")


@dataclass
class Compacted:
    """New positions of one layer.

    Attributes:
        positions: ``(pos_dims, N)`` long.
        next_position: where a segment appended after this layer's entries may start.
    """

    positions: torch.Tensor
    next_position: int


def _segment_index(segments: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(N,)`` segment ids in cache order -> dense index ``0..K-1`` of each entry's run, and K."""
    if segments.numel() == 0:
        return segments.clone(), 0
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[1:] = segments[1:] != segments[:-1]
    index = starts.long().cumsum(0) - 1
    return index, int(index[-1]) + 1


def compact_positions(positions: torch.Tensor, segments: torch.Tensor, *, dense: bool = False) -> Compacted:
    """Gap-free positions for one layer's entries (see the module docstring for the rule).

    Args:
        positions: ``(pos_dims, N)`` long, pos_dims 1 or 3.
        segments: ``(N,)`` long, non-decreasing runs in cache order.
        dense: M-RoPE only: rank every axis inside each segment (bounded span) instead of shifting.
    """
    n = positions.shape[1]
    if n == 0:
        return Compacted(positions.clone(), 0)
    first = int(positions[:, 0].min())
    if positions.shape[0] == 1:
        new = first + torch.arange(n, dtype=torch.long).unsqueeze(0)
        return Compacted(new, first + n)
    seg, k = _segment_index(segments)
    if dense:
        rel = torch.empty_like(positions)
        for axis in range(positions.shape[0]):
            # Rank of (segment, value) pairs, then relative to the segment's first distinct value.
            key = seg * (int(positions[axis].max()) + 1) + positions[axis]
            uniq, inverse = torch.unique(key, return_inverse=True)
            first_rank = torch.full((k,), n, dtype=torch.long).scatter_reduce(0, seg, inverse, "amin")
            rel[axis] = inverse - first_rank[seg]
        extent = torch.zeros(k, dtype=torch.long).scatter_reduce(0, seg, rel.max(dim=0).values, "amax") + 1
        base = first + extent.cumsum(0) - extent
        new = base[seg].unsqueeze(0) + rel
        return Compacted(new, int(base[-1] + extent[-1]))
    lo = torch.full((k,), positions.max() + 1, dtype=torch.long).scatter_reduce(
        0, seg, positions.min(dim=0).values, "amin")
    hi = torch.full((k,), positions.min() - 1, dtype=torch.long).scatter_reduce(
        0, seg, positions[1:].max(dim=0).values, "amax")
    hi = torch.maximum(hi, lo)
    extent = hi - lo + 1
    base = first + extent.cumsum(0) - extent
    delta = base - lo
    new = positions + delta[seg].unsqueeze(0)
    return Compacted(new, int(base[-1] + extent[-1]))


def reindex_cache(cache: MemoryCache, rope: RopeSpec, next_position: int, *, mode: str = "lazy",
                  headroom: int = 1024) -> int | None:
    """Re-index every layer of ``cache`` in place when ``mode`` says so; returns the new next position.

    ``eager``: every call. ``lazy`` (ref): only once the positions come within ``headroom`` of
    ``rope.max_position_embeddings``. ``headroom`` must cover what is appended before the next call:
    one chunk's positions plus a question and its answer. Falls back to the dense layout when the
    segment-preserving one would not leave ``headroom``. Returns None when nothing was re-indexed.
    """
    if mode not in REINDEX_MODES:
        raise ValueError(f"re-index mode must be one of {REINDEX_MODES}, got {mode!r}")
    limit = rope.max_position_embeddings
    high = max(next_position, cache.max_position() + 1)
    if mode == "lazy" and high + headroom < limit:
        return None
    layouts = [compact_positions(layer.positions, layer.segments) for layer in cache.layers]
    if _reach(layouts) + headroom >= limit and cache.pos_dims == 3:
        layouts = [compact_positions(layer.positions, layer.segments, dense=True) for layer in cache.layers]
    if _reach(layouts) + headroom >= limit:
        raise RuntimeError(
            f"the memory spans {_reach(layouts)} positions after re-indexing, which leaves less than the "
            f"headroom of {headroom} under the model's maximum of {limit}: lower the budget or the headroom"
        )
    for layer, layout in zip(cache.layers, layouts, strict=True):
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = rerotate(layer.keys, layer.positions, layout.positions, rope)
        layer.positions = layout.positions
    # Every layer's next segment must start after all of its entries: take the furthest.
    return max(layout.next_position for layout in layouts)


def _reach(layouts: list[Compacted]) -> int:
    """One past the largest position a layout uses or hands to the next segment."""
    return max(max(lay.next_position, int(lay.positions.max()) + 1 if lay.positions.numel() else 0)
               for lay in layouts)
