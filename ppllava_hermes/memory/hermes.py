"""HERMES: the KV cache as a hierarchical memory with a fixed budget per layer.

Based on "HERMES: KV Cache as Hierarchical Memory for Efficient Streaming Video Understanding"
(Zhang et al., arXiv 2601.14724). Training-free; the stream runs forever within the budget and a
question is answered from the memory with no re-encoding.

What happens after each chunk (entries of kind VISUAL compete; SYSTEM and TEXT entries are always
kept; ANCHOR entries are kept and only merge):

1. Tiers by depth: shallow layers (``l < tiers[0] * L``, "sensory") rank by recency, deep layers
   (``l >= (tiers[0] + tiers[1]) * L``, "long-term") by attention, middle layers blend the two,
   moving from recency to attention with depth.
2. Importance: ``A_i`` is the attention a pseudo-query gives entry ``i`` (probe prompts: a "current
   scene" one for shallow, a "video so far" one for deep, the mean of both for middle);
   ``R_i = exp(-k dt_i)`` with ``dt`` the entry's frame distance to the newest frame, normalised to
   [0, 1]. Both min-max normalised, ``S_i = (1 - a) A_i + a R_i``.
3. Cross-layer smoothing from deep to shallow, ``S_l <- (1 - g) S_l + g S_{l+1}``. Layers hold
   different entries, so ``S_{l+1}`` is read at layer ``l``'s entries by their stream uid, linearly
   interpolated between the neighbours ``l+1`` still holds.
4. Selection: each layer keeps its top-scored visual entries, in their original order.
5. Anchors (deep layers): evicted entries are folded into one ANCHOR entry per frame, at the place
   and position of that frame's first evicted entry: keys re-rotated to that position and averaged,
   values averaged, weighted by ``counts`` (how many original tokens an entry stands for). An anchor
   that exists absorbs its frame's later evictions. Beyond ``anchors`` entries, adjacent anchors in
   the older half merge, the pair standing for the fewest tokens first (ours: old history coarsens
   gradually rather than collapsing into one entry).
6. Equal lengths (attention masks need them): every layer holds ``budget + a`` memory entries, ``a``
   the largest anchor count of any deep layer: non-deep layers keep ``budget + a`` visual entries and
   deep layers with fewer anchors keep extra next-best visual entries. So a layer never holds more
   than ``budget + anchors`` memory entries besides the system prompt (and, during a question, the
   question's text).
7. Position re-indexing (``positions.reindex_cache``), lazy (ref) or eager; queries start after the
   last kept position.

:meth:`Hermes.compress` runs these as named steps, in this order: :meth:`Hermes.scores` (1-3: each
layer's visual entries scored), :meth:`Hermes.plan_slots` (4, 6: how many of its best entries each layer
keeps), :meth:`Hermes.fold_anchors` (5: deep layers keep theirs and fold the rest into anchors),
:meth:`Hermes.select_kept` (4: the other layers keep theirs and drop the rest) and
:meth:`~.policy.ReindexingPolicy.reindex_positions` (7). Timing is the engine's.

Cost (ours): the probe runs only where its attention has any weight. A layer whose recency weight ``a``
is 1 (the reference's shallow tier and the top of the middle band) ranks by recency alone, so neither
prompt is computed there (:meth:`Hermes.probe_layers`); the engine runs both prompts in one forward with
the model's own attention implementation and stops after the deepest layer that needs one
(``models/probe.py``). ``compress_every`` trades a bounded overshoot of the budget for fewer compressions.

Shapes: keys / values ``(batch, kv_heads, N, head_dim)``, positions ``(pos_dims, N)``, scores ``(N_visual,)``.
Knows nothing of video, pooling or a model family: entries, metadata, attention and a RoPE spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from .cache import MemoryCache, MemoryLayer, TokenKind
from .policy import (
    AttentionProbe,
    CompressResult,
    ReindexingPolicy,
)
from .rope import rerotate

if TYPE_CHECKING:
    from .rope import RopeSpec

SHALLOW, MIDDLE, DEEP = 0, 1, 2

#: The probe prompts each tier's attention term averages.
TIER_PROMPTS = {SHALLOW: ("local",), MIDDLE: ("local", "global"), DEEP: ("global",)}

LOCAL_PROMPT = "Describe what is happening in the current scene, in detail."
GLOBAL_PROMPT = "Summarize everything that has happened in the video so far."


@dataclass
class SlotPlan:
    """What :meth:`Hermes.plan_slots` decided for one compression, per layer.

    Attributes:
        visual: ``(N_visual,)`` long indices of the layer's visual entries, in cache order.
        order: ``(N_visual,)`` long, the visual entries by descending score (stable).
        keep: how many of the best-ordered visual entries the layer keeps.
        anchored: the layers (the deep ones) whose other visual entries fold into anchors.
    """

    visual: list[torch.Tensor]
    order: list[torch.Tensor]
    keep: list[int]
    anchored: frozenset[int]

    def kept(self, layer: int) -> torch.Tensor:
        """Indices of the visual entries the layer keeps, best first."""
        return self.visual[layer][self.order[layer][: self.keep[layer]]]

    def dropped(self, layer: int) -> torch.Tensor:
        """Indices of the visual entries the layer lets go, best first."""
        return self.visual[layer][self.order[layer][self.keep[layer]:]]

    def folds(self, layer: int) -> bool:
        """Whether the layer folds what it lets go into anchors (a deep layer with something to let go)."""
        return layer in self.anchored and self.dropped(layer).numel() > 0


@dataclass
class Hermes(ReindexingPolicy):
    """The hierarchical KV memory (see the module docstring for the algorithm).

    Attributes:
        budget: visual entries kept per layer (ref: 4096).
        anchors: anchor entries allowed per deep layer (ours: 64).
        tiers: fractions of depth for (shallow, middle, deep); must add up to 1 (ref: 0.1, 0.6, 0.3).
        shallow_recency: ``(a, k)`` recency weight and decay for shallow layers (ref: 1, 20).
        middle_recency: ``(a, k)`` at the top and at the bottom of the middle band, linear in between
            (ref: a = 1 - 0.9p, k = 20 - 19.5p: (1, 20) -> (0.1, 0.5)).
        deep_recency: ``(a, k)`` for deep layers (ref: a = 0, attention only).
        smoothing: cross-layer gain g for (shallow, middle, deep) layers (ref: 0.1, 0.3, 0.4).
        reindex: "lazy" (ref: only near the position limit) or "eager" (after every compression).
        headroom: positions kept free under the model maximum: one chunk + a question and its answer
            (ref: 1024).
        local_prompt / global_prompt: the pseudo-queries of the attention probe.
        compress_every: compress on every k-th chunk that finds the memory over budget (ref: 1, after
            every chunk; k > 1 is ours). Between compressions up to k chunks pile up, so a
            layer holds at most ``system + budget + a + k * chunk`` entries (``a`` <= ``anchors``: the deep
            layers' anchors after the last compression; ``chunk``: the largest chunk's tokens), against
            ``system + budget + a + chunk`` for k = 1, and questions asked in between see those extra
            entries. The probe and the policy's work then run once per k chunks. ``headroom`` must cover
            the positions of k chunks plus a question and its answer.
    """

    name: ClassVar[str] = "hermes"

    budget: int = 4096
    anchors: int = 64
    tiers: tuple[float, float, float] = (0.1, 0.6, 0.3)
    shallow_recency: tuple[float, float] = (1.0, 20.0)
    middle_recency: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 20.0), (0.1, 0.5))
    deep_recency: tuple[float, float] = (0.0, 20.0)
    smoothing: tuple[float, float, float] = (0.1, 0.3, 0.4)
    reindex: str = "lazy"
    headroom: int = 1024
    local_prompt: str = LOCAL_PROMPT
    global_prompt: str = GLOBAL_PROMPT
    compress_every: int = 1

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"hermes: budget must be >= 1 visual token per layer, got {self.budget}")
        if self.anchors < 0:
            raise ValueError(f"hermes: anchors must be >= 0, got {self.anchors}")
        tiers = tuple(float(x) for x in self.tiers)
        if len(tiers) != 3 or any(not 0.0 <= x <= 1.0 for x in tiers):
            raise ValueError(f"hermes: tiers must be three fractions in [0, 1] (shallow, middle, deep), got {self.tiers}")
        if abs(sum(tiers) - 1.0) > 1e-6:
            raise ValueError(f"hermes: tier fractions (shallow, middle, deep) must add up to 1, got {self.tiers} "
                             f"(sum {sum(tiers):.4f})")
        self.tiers = tiers
        pairs = [self.shallow_recency, *self.middle_recency, self.deep_recency]
        for a, k in pairs:
            if not 0.0 <= a <= 1.0 or k < 0:
                raise ValueError(f"hermes: recency (a, k) needs a in [0, 1] and k >= 0, got {(a, k)}")
        if len(self.smoothing) != 3 or any(not 0.0 <= g <= 1.0 for g in self.smoothing):
            raise ValueError(f"hermes: smoothing gains must be three values in [0, 1], got {self.smoothing}")
        self.check_reindex_options()
        if not self.local_prompt.strip() or not self.global_prompt.strip():
            raise ValueError("hermes: probe prompts must not be empty")
        if self.compress_every < 1:
            raise ValueError(f"hermes: compress_every must be >= 1 chunk, got {self.compress_every}")

    @property
    def probe_prompts(self) -> dict[str, str]:  # type: ignore[override]
        return {"local": self.local_prompt, "global": self.global_prompt}

    def probe_layers(self, num_layers: int) -> dict[str, list[int]]:
        """The layers each prompt's attention is read at: its tier's layers whose recency weight ``a`` is
        below 1 (at ``a = 1`` the score is recency alone, ``(1 - a) * A = 0`` whatever ``A``)."""
        need: dict[str, list[int]] = {"local": [], "global": []}
        for i in range(num_layers):
            if self.recency_params(i, num_layers)[0] >= 1.0:
                continue
            for name in TIER_PROMPTS[self.tier(i, num_layers)[0]]:
                need[name].append(i)
        return {name: layers for name, layers in need.items() if layers}

    # ---- configuration checks --------------------------------------------------------------------
    def check_model(self, rope: RopeSpec | None, num_layers: int) -> None:
        super().check_model(rope, num_layers)
        if num_layers < 1:
            raise ValueError(f"hermes: the model has {num_layers} layers")

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        self.check_room(rope, num_system_tokens, self.budget, self.anchors)

    def tier(self, layer: int, num_layers: int) -> tuple[int, float]:
        """``(tier, p)``: the layer's tier and, in the middle band, its relative depth ``p`` in [0, 1]."""
        # Rounded so that 0.7 * 10 means layer 7 whatever the float error.
        shallow_end = round(self.tiers[0] * num_layers, 6)
        deep_start = round((self.tiers[0] + self.tiers[1]) * num_layers, 6)
        if layer < shallow_end:
            return SHALLOW, 0.0
        if layer >= deep_start:
            return DEEP, 1.0
        first = math.ceil(shallow_end)
        last = math.ceil(deep_start) - 1
        return MIDDLE, (layer - first) / max(1, last - first)

    def recency_params(self, layer: int, num_layers: int) -> tuple[float, float]:
        """``(a, k)`` of one layer."""
        tier, p = self.tier(layer, num_layers)
        if tier == SHALLOW:
            return self.shallow_recency
        if tier == DEEP:
            return self.deep_recency
        (a0, k0), (a1, k1) = self.middle_recency
        return a0 + (a1 - a0) * p, k0 + (k1 - k0) * p

    # ---- the policy ------------------------------------------------------------------------------
    def wants_compress(self, cache: MemoryCache) -> bool:
        deep = self._deep_layers(cache.num_layers)
        most_anchors = max((cache.count(TokenKind.ANCHOR, i) for i in deep), default=0)
        memory = cache.count(TokenKind.VISUAL, 0) + cache.count(TokenKind.ANCHOR, 0)
        return memory > self.budget + most_anchors

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        scores = self.scores(cache, probe)
        plan = self.plan_slots(cache, scores)
        before = [len(layer) for layer in cache.layers]
        merged = self.fold_anchors(cache, plan, rope)
        self.select_kept(cache, plan)
        evicted = max([0, *(n - len(layer) for n, layer in zip(before, cache.layers, strict=True))])
        new_next = self.reindex_positions(cache, rope, next_position)
        return CompressResult(evicted=evicted, merged=merged, next_position=new_next)

    # ---- slots, folding, selection -----------------------------------------------------------------
    def plan_slots(self, cache: MemoryCache, scores: list[torch.Tensor]) -> SlotPlan:
        """How many of its best-scored visual entries each layer keeps (module docstring, steps 4 and 6).

        The deep layers' anchor counts at the plain budget fix the common number of memory slots,
        ``budget + a``; non-deep layers keep that many visual entries, deep layers with fewer anchors keep
        next-best entries until their lengths match.
        """
        num_layers = cache.num_layers
        visual = [(layer.kinds == int(TokenKind.VISUAL)).nonzero().squeeze(1) for layer in cache.layers]
        order = [torch.argsort(s, descending=True, stable=True) for s in scores]
        deep = self._deep_layers(num_layers)

        # Anchor counts at the plain budget decide the common number of memory slots.
        first = {i: self._anchor_count(cache.layers[i], visual[i], order[i], min(self.budget, len(order[i])))
                 for i in deep}
        slots = self.budget + max(first.values(), default=0)
        keep_counts = []
        for i in range(num_layers):
            n_visual = len(order[i])
            if i not in first:
                keep_counts.append(min(slots, n_visual))
                continue
            k, a = min(self.budget, n_visual), first[i]
            # Fewer anchors than the deepest layer: keep next-best entries until the lengths match.
            while k + a < slots and k < n_visual:
                k = min(n_visual, slots - a)
                a = self._anchor_count(cache.layers[i], visual[i], order[i], k)
            keep_counts.append(k)
        return SlotPlan(visual=visual, order=order, keep=keep_counts, anchored=frozenset(first))

    def fold_anchors(self, cache: MemoryCache, plan: SlotPlan, rope: RopeSpec) -> int:
        """Deep layers with entries to drop keep their planned entries and fold the others into per-frame
        anchors (:meth:`_fold`); returns the most entries folded in one layer."""
        merged = 0
        for i, layer in enumerate(cache.layers):
            if plan.folds(i):
                dropped = plan.dropped(i)
                merged = max(merged, int(dropped.numel()))
                self._fold(layer, plan.kept(i), dropped, rope)
        return merged

    def select_kept(self, cache: MemoryCache, plan: SlotPlan) -> None:
        """Every layer :meth:`fold_anchors` left alone keeps its non-visual entries and its planned visual
        ones, in cache order; then all layers must hold the same number of entries."""
        for i, layer in enumerate(cache.layers):
            if plan.folds(i):
                continue
            others = (layer.kinds != int(TokenKind.VISUAL)).nonzero().squeeze(1)
            layer.select(torch.sort(torch.cat([others, plan.kept(i)])).values)
        lengths = {len(layer) for layer in cache.layers}
        if len(lengths) != 1:  # a bug, not a configuration problem: fail loudly
            raise RuntimeError(f"hermes: layers ended with different lengths {sorted(lengths)}")

    # ---- scoring ---------------------------------------------------------------------------------
    def scores(self, cache: MemoryCache, probe: AttentionProbe | None) -> list[torch.Tensor]:
        """Per layer, ``(N_visual,)`` float scores of its visual entries in cache order (higher: keep)."""
        num_layers = cache.num_layers
        out: list[torch.Tensor] = []
        for i, layer in enumerate(cache.layers):
            idx = (layer.kinds == int(TokenKind.VISUAL)).nonzero().squeeze(1)
            if idx.numel() == 0:
                out.append(torch.zeros(0))
                continue
            a, k = self.recency_params(i, num_layers)
            attention = _minmax(self._attention(probe, i, num_layers, len(layer))[idx])
            frames = layer.frame_ids[idx].double()
            span = max(float(frames.max() - frames.min()), 1.0)
            recency = _minmax(torch.exp(-k * (frames.max() - frames) / span).float())
            out.append((1 - a) * attention + a * recency)
        for i in range(num_layers - 2, -1, -1):  # deep to shallow, using the already smoothed layer below
            g = self.smoothing[self.tier(i, num_layers)[0]]
            if g == 0 or out[i].numel() == 0 or out[i + 1].numel() == 0:
                continue
            here = _visual_uids(cache.layers[i])
            below = _visual_uids(cache.layers[i + 1])
            out[i] = (1 - g) * out[i] + g * _interp(here, below, out[i + 1])
        # Ties (a frame's entries under pure recency): prefer the later entry, deterministically.
        return [s + 1e-6 * torch.arange(s.numel()) / max(1, s.numel()) for s in out]

    def _attention(self, probe: AttentionProbe | None, layer: int, num_layers: int, length: int) -> torch.Tensor:
        """``(length,)`` attention of the layer's tier prompt(s); zeros without a probe."""
        if probe is None:
            return torch.zeros(length)
        names = TIER_PROMPTS[self.tier(layer, num_layers)[0]]
        # None: a layer the probe skipped (probe_layers: recency only there, so any value gives the same score).
        rows = [probe.scores[n][layer] for n in names if n in probe.scores]
        found = [r.float().cpu()[:length] for r in rows if r is not None]
        if not found:
            return torch.zeros(length)
        return torch.stack(found).mean(dim=0)

    def _deep_layers(self, num_layers: int) -> list[int]:
        return [i for i in range(num_layers) if self.tier(i, num_layers)[0] == DEEP]

    # ---- anchors ---------------------------------------------------------------------------------
    def _anchor_count(self, layer: MemoryLayer, visual: torch.Tensor, order: torch.Tensor, keep: int) -> int:
        """Anchors the layer would hold after keeping its top-``keep`` visual entries."""
        dropped = visual[order[keep:]]
        anchor_frames = layer.frame_ids[layer.kinds == int(TokenKind.ANCHOR)]
        frames = torch.unique(torch.cat([anchor_frames, layer.frame_ids[dropped]]))
        return min(self.anchors, int(frames.numel()))

    def _fold(self, layer: MemoryLayer, kept: torch.Tensor, dropped: torch.Tensor, rope: RopeSpec) -> None:
        """Keep ``kept`` visual entries, fold ``dropped`` into per-frame anchors, merge overflowing anchors."""
        kinds, fids, counts = layer.kinds, layer.frame_ids, layer.counts
        is_anchor = kinds == int(TokenKind.ANCHOR)
        old_anchor_idx = is_anchor.nonzero().squeeze(1)
        others = ((kinds != int(TokenKind.VISUAL)) & ~is_anchor).nonzero().squeeze(1)
        if self.anchors == 0:  # no allowance: plain eviction
            layer.select(torch.sort(torch.cat([others, kept])).values)
            return
        dropped = torch.sort(dropped).values
        drop_f = fids[dropped]
        # Each dropped entry's anchor: its frame's existing anchor, else the frame's first dropped entry.
        location = {int(f): int(i) for f, i in zip(fids[old_anchor_idx].tolist(), old_anchor_idx.tolist(), strict=True)}
        for f, i in zip(drop_f.tolist(), dropped.tolist(), strict=True):
            location.setdefault(f, i)
        slots = torch.tensor(sorted(location.values()), dtype=torch.long)
        target = torch.tensor([location[f] for f in drop_f.tolist()], dtype=torch.long)
        slot_of = torch.searchsorted(slots, target)

        device = layer.keys.device
        keys, values = layer.keys, layer.values
        w_drop = counts[dropped].to(device)
        moved = rerotate(keys.index_select(-2, dropped.to(device)), layer.positions[:, dropped],
                         layer.positions[:, target], rope)
        is_old = is_anchor[slots]
        w_slot = torch.where(is_old, counts[slots], torch.zeros_like(counts[slots])).to(device)
        work = torch.promote_types(keys.dtype, torch.float32)
        k_sum = keys.index_select(-2, slots.to(device)).to(work) * w_slot[:, None]
        v_sum = values.index_select(-2, slots.to(device)).to(work) * w_slot[:, None]
        slot_dev = slot_of.to(device)
        k_sum = k_sum.index_add(-2, slot_dev, moved.to(work) * w_drop[:, None])
        v_sum = v_sum.index_add(-2, slot_dev, values.index_select(-2, dropped.to(device)).to(work) * w_drop[:, None])
        c_sum = w_slot.index_add(0, slot_dev, w_drop)

        # Overflow: merge adjacent anchors in the older half, the pair standing for the fewest tokens first.
        alive = list(range(len(slots)))
        while len(alive) > self.anchors:
            candidates = range(max(1, len(alive) // 2))
            j = min(candidates, key=lambda c: float(c_sum[alive[c]] + c_sum[alive[c + 1]]))
            a, b = alive[j], alive[j + 1]
            k_b = rerotate(k_sum[..., b : b + 1, :], layer.positions[:, slots[b : b + 1]],
                           layer.positions[:, slots[a : a + 1]], rope)
            k_sum[..., a, :] += k_b[..., 0, :]
            v_sum[..., a, :] += v_sum[..., b, :]
            c_sum[a] += c_sum[b]
            del alive[j + 1]
        live = torch.tensor(alive, dtype=torch.long)
        slots, k_sum, v_sum, c_sum = slots[live], k_sum[..., live.to(device), :], v_sum[..., live.to(device), :], c_sum[live]

        index = torch.sort(torch.cat([others, kept, slots])).values
        layer.select(index)
        at = torch.searchsorted(index, slots)
        at_dev = at.to(device)
        layer.keys[..., at_dev, :] = (k_sum / c_sum[:, None]).to(layer.keys.dtype)
        layer.values[..., at_dev, :] = (v_sum / c_sum[:, None]).to(layer.values.dtype)
        layer.kinds[at] = int(TokenKind.ANCHOR)
        layer.counts[at] = c_sum.to(layer.counts.device, layer.counts.dtype)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]; a constant vector becomes zeros."""
    if x.numel() == 0:
        return x
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= 0:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def _visual_uids(layer: MemoryLayer) -> torch.Tensor:
    return layer.uids[layer.kinds == int(TokenKind.VISUAL)]


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``fp(xp)`` read at ``x`` (``xp`` increasing), constant beyond the ends."""
    if xp.numel() == 1:
        return fp.expand(x.shape).clone()
    xf, xpf = x.double(), xp.double()
    right = torch.searchsorted(xpf, xf).clamp(1, xp.numel() - 1)
    left = right - 1
    span = (xpf[right] - xpf[left]).clamp_min(1e-12)
    t = ((xf - xpf[left]) / span).clamp(0, 1).float()
    return fp[left] * (1 - t) + fp[right] * t
