"""Dynamic frame sparsity: gates that decide which visual tokens of a chunk enter the language model.

Based on the conditional computation of sparsely-gated mixture-of-experts (Shazeer et al., arXiv
1701.06538): only what is new, or what a standing query asks about, is computed.

- :class:`NoveltyGate`: skip a frame (a temporal group) or the tokens of a region whose features (or
  pixels) barely changed since the last kept one: cosine distance of the visual features, or mean
  absolute pixel difference, under ``threshold``. Long static stretches then cost almost nothing.
- :class:`RelevanceGate`: keep the top-``k`` groups of each chunk (or the top-``k`` tokens of each
  group) by relevance to a standing query (a CLIP-family ``RelevanceScorer``), as top-k gating does.

A gate is a callable ``gate(visual, frames) -> keep`` with ``keep`` a ``(t, h, w)`` bool mask over the
chunk's token grid, plus ``reset()`` for a new stream; the session applies it after pooling
(``StreamingSession(..., gate=...)``) with :func:`gate_segment`.

Skipped frames still count in time. The session logs every frame (``frame_log``) whether or not its
tokens went in, and :func:`gate_segment` builds the chunk's segment exactly as without a gate and then
drops the gated-out grid tokens: every kept token keeps the position it would have had (for M-RoPE the
temporal index of its group, so a gap in the kept groups is a gap in ``t``), delimiters stay, and the
next chunk starts where it would have started. A chunk with nothing kept is not run at all and only
advances the position. Knows nothing of the memory; the gates know nothing of the language model.

Shapes: features ``(t, h, w, D)``; frames ``(T, H, W, 3)`` uint8 with ``T = t * frames_per_group``;
keep ``(t, h, w)`` bool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.cache import TokenMeta
from ..models.base import Segment, VisualTokens

UNITS = ("frame", "token")
SPACES = ("features", "pixels")
REDUCES = ("max", "mean")


class FrameGate(Protocol):
    """What the session calls for each chunk, after pooling."""

    def __call__(self, visual: VisualTokens, frames: np.ndarray) -> torch.Tensor:
        """``(t, h, w)`` bool: which grid tokens of the chunk enter the model."""
        ...

    def reset(self) -> None:
        """Forget the stream (a new one starts)."""
        ...


@dataclass(eq=False)  # holds per-stream state (the reference frame)
class NoveltyGate:
    """Keep only what changed since the last kept frame (``unit="frame"``) or region (``"token"``).

    Attributes:
        threshold: distance at or above which a frame / token is new (ours: 0.02, calibrated on the
            ShapesWorld features, where static groups sit under 1e-3 and moving ones above 8e-3;
            calibrate per model; 0 keeps everything).
            features: ``1 - cos`` of a token's feature and its reference; pixels: mean absolute
            difference over the token's region, in [0, 1].
        space: "features" (the chunk's visual tokens after pooling) or "pixels" (the frames).
        unit: "frame": a group is kept or skipped whole; "token": each grid token on its own.
        reduce: frame unit: a group's distance from its tokens' ("max": any region changed; "mean").
        max_skip: with the frame unit, keep a group after this many skipped in a row (ours: 5; None:
            never forced). Kept tokens keep their true positions, so a long skipped stretch leaves a
            gap between the newest kept frame and a question; a model trained on contiguous chunks
            reads it as "nothing recent" (ShapesWorld: -3.9 points on real-time questions without
            the refresh, -0.6 with it; ``docs/results/dmc_sparsity.md``). The refresh bounds the gap.
    """

    threshold: float = 0.02
    space: str = "features"
    unit: str = "frame"
    reduce: str = "max"
    max_skip: int | None = 5
    _reference: torch.Tensor | None = field(default=None, init=False, repr=False)
    _run: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"novelty gate: threshold must be >= 0, got {self.threshold}")
        if self.space not in SPACES:
            raise ValueError(f"novelty gate: space must be one of {SPACES}, got {self.space!r}")
        if self.unit not in UNITS:
            raise ValueError(f"novelty gate: unit must be one of {UNITS}, got {self.unit!r}")
        if self.reduce not in REDUCES:
            raise ValueError(f"novelty gate: reduce must be one of {REDUCES}, got {self.reduce!r}")
        if self.max_skip is not None and self.max_skip < 1:
            raise ValueError(f"novelty gate: max_skip must be >= 1 (or None), got {self.max_skip}")

    def reset(self) -> None:
        self._reference, self._run = None, 0

    def __call__(self, visual: VisualTokens, frames: np.ndarray) -> torch.Tensor:
        t, h, w = visual.grid
        current = self._signals(visual, frames)  # (t, h, w, C)
        keep = torch.zeros(t, h, w, dtype=torch.bool)
        for g in range(t):
            cur = current[g]
            if self._reference is None or self._reference.shape != cur.shape:
                keep[g] = True
                self._reference = cur.clone()
                self._run = 0
                continue
            dist = self._distance(cur, self._reference, (h, w))  # (h, w)
            if self.unit == "token":
                keep[g] = dist >= self.threshold
                region = keep[g]
                if self.space == "pixels":  # the kept tokens' regions of the full-resolution reference
                    region = F.interpolate(region[None, None].float(), size=cur.shape[:2], mode="nearest")[0, 0] > 0
                self._reference[region] = cur[region]
                continue
            score = dist.max() if self.reduce == "max" else dist.mean()
            forced = self.max_skip is not None and self._run >= self.max_skip
            if bool(score >= self.threshold) or forced:
                keep[g] = True
                self._reference = cur.clone()
                self._run = 0
            else:
                self._run += 1
        return keep

    def _signals(self, visual: VisualTokens, frames: np.ndarray) -> torch.Tensor:
        """``(t, h, w, C)``: features, or the group-mean frame at full resolution ``(t, H, W, 3)``."""
        if self.space == "features":
            return visual.features.detach().float().cpu()
        t = visual.grid[0]
        per = max(1, len(frames) // t)
        px = torch.as_tensor(np.asarray(frames[: per * t]), dtype=torch.float32) / 255.0
        return px.view(t, per, *px.shape[1:]).mean(dim=1)

    def _distance(self, cur: torch.Tensor, ref: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(h, w)`` distance of each token (features) or token region (pixels) to the reference."""
        if self.space == "features":
            return 1.0 - F.cosine_similarity(cur, ref, dim=-1, eps=1e-8)
        diff = (cur - ref).abs().mean(dim=-1)  # (H, W) at full resolution, then averaged per region
        return F.adaptive_avg_pool2d(diff[None, None], grid)[0, 0]


@dataclass
class RelevanceGate:
    """Top-``k`` gating by relevance to a standing query.

    Attributes:
        scorer: a ``pooling.relevance.RelevanceScorer`` (CLIP-family), ``score(query, frames, grid)``.
        query: the standing query, known before the stream.
        k: groups kept per chunk (``unit="frame"``) or tokens kept per group (``"token"``).
        unit: "frame" or "token".
        keep_newest: always keep the chunk's newest group (questions about "now" look there; ours: True).
    """

    scorer: object
    query: str
    k: int = 1
    unit: str = "frame"
    keep_newest: bool = True

    def __post_init__(self) -> None:
        if not self.query or not self.query.strip():
            raise ValueError("relevance gate: the standing query is empty")
        if self.k < 1:
            raise ValueError(f"relevance gate: k must be >= 1, got {self.k}")
        if self.unit not in UNITS:
            raise ValueError(f"relevance gate: unit must be one of {UNITS}, got {self.unit!r}")
        if not hasattr(self.scorer, "score"):
            raise ValueError("relevance gate: scorer must have score(query, frames, grid=...)")

    def reset(self) -> None:
        """Stateless across chunks."""

    def __call__(self, visual: VisualTokens, frames: np.ndarray) -> torch.Tensor:
        t, h, w = visual.grid
        with torch.no_grad():
            rel = self.scorer.score(self.query, frames, grid=visual.grid)[0].float().cpu()  # (t, h, w)
        keep = torch.zeros(t, h, w, dtype=torch.bool)
        if self.unit == "frame":
            top = torch.topk(rel.flatten(1).sum(dim=1), min(self.k, t)).indices
            keep[top] = True
        else:
            flat = rel.flatten(1)
            top = torch.topk(flat, min(self.k, h * w), dim=1).indices
            keep.view(t, -1).scatter_(1, top, True)
        if self.keep_newest:  # whole, in both units
            keep[-1] = True
        return keep


@dataclass
class Gated:
    """A chunk's segment after gating.

    Attributes:
        segment: the kept tokens (None: nothing kept, the chunk is not run).
        next_position: where the next chunk starts (as without the gate).
        tokens_kept: visual tokens that enter the model.
        frames_skipped: frames of the chunk none of whose tokens enter.
    """

    segment: Segment | None
    next_position: int
    tokens_kept: int
    frames_skipped: int


def grid_offset(segment: Segment, visual: VisualTokens) -> int:
    """Where the chunk's ``t*h*w`` grid tokens sit in ``segment`` (both adapters embed them as one run,
    in grid order, between their delimiters / before their suffix)."""
    t, h, w = visual.grid
    n = t * h * w
    grid = visual.features.reshape(n, -1).to(segment.embeds.dtype)
    for offset in range(len(segment) - n + 1):
        if torch.equal(segment.embeds[offset : offset + n], grid.to(segment.embeds.device)):
            return offset
    raise ValueError("gate: the chunk's grid tokens are not one run of the segment; this adapter is not supported")


def gate_segment(segment: Segment, visual: VisualTokens, keep: torch.Tensor, num_frames: int) -> Gated:
    """Drop the gated-out grid tokens from the un-gated ``segment``; everything else stays as it was.

    Args:
        segment: the chunk's segment as the adapter builds it without a gate.
        visual: the chunk's visual tokens (the grid the mask refers to).
        keep: ``(t, h, w)`` bool.
        num_frames: real frames in the chunk (padding excluded), for the skipped-frame count.
    """
    t, h, w = visual.grid
    keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
    if keep.shape != (t, h, w):
        raise ValueError(f"gate: keep mask {tuple(keep.shape)} does not match the chunk's grid {(t, h, w)}")
    n = t * h * w
    offset = grid_offset(segment, visual)
    mask = torch.ones(len(segment), dtype=torch.bool)
    mask[offset : offset + n] = keep.flatten()
    ids = visual.group_frame_ids.cpu()
    ends = torch.cat([ids[1:], ids[:1] + num_frames])
    frames_per_group = (ends - ids).clamp(min=0)
    dropped = ~keep.flatten(1).any(dim=1)
    frames_skipped = int(frames_per_group[dropped].sum())
    tokens_kept = visual.num_tokens - int((~keep).sum())
    if not bool(keep.any()):
        return Gated(None, segment.next_position, 0, frames_skipped)
    index = mask.nonzero().squeeze(1)
    meta = segment.meta
    kept = Segment(
        embeds=segment.embeds[index.to(segment.embeds.device)],
        meta=TokenMeta(meta.positions[:, index], meta.frame_ids[index], meta.kinds[index]),
        next_position=segment.next_position,
    )
    return Gated(kept, segment.next_position, tokens_kept, frames_skipped)
