"""Token merging: fold a new visual KV entry into an older one instead of appending it (DMC-style).

Based on "Dynamic Memory Compression: Retrofitting LLMs for Accelerated Inference" (Nawrot et al.,
arXiv 2403.09636). DMC decides, per token, to *append* it to the cache or to *merge* it into the last
entry as a weighted running mean, ``acc = a * acc + w * x``, ``c = a * c + w``, ``kv = acc / c``. Here:

- Who merges with whom (``match``): "temporal" (ours, default): an entry merges into the newest older
  entry at the same spatial place of the grid (the same patch in the previous frame): a static
  region of a video collapses into one entry. "sequence" (DMC's rule): into the previous grid entry of
  the same frame (raster neighbours).
- When (the decider): :class:`SimilarityDecider` (training-free): cosine similarity of the two keys,
  after moving the older key to the newer one's position, at least ``threshold``.
  :class:`KeyDimDecider` (learned DMC): ``alpha = sigmoid(mean_heads k[..., dim] - offset)`` from one
  repurposed dimension of the key before rotation, as trained by ``train/train_dmc.py``; merge when
  ``alpha >= 0.5``.
- How: ``a = 1`` and ``w`` = the entries' ``counts`` (tokens they stand for), so a merged entry is the
  count-weighted mean of all its original members: keys re-rotated to the survivor's position first
  (``rope.rerotate``), values as they are. DMC's learned importance ``w`` is not used.
- Where the result lives (``survivor``): "newest" (DMC: the running accumulator is the newest slot):
  the older entry is removed and the newer one, at its own position, holds the mean; "oldest": the
  reverse. Either way the survivor keeps its own position, segment and uid, so merging leaves gaps
  exactly like eviction and ``positions.reindex_cache`` closes them with the same rule.
- Decisions are per entry and shared by a layer's heads: the cache is a dense ``(B, H, N, D)`` tensor
  per layer. With ``decide="layer"`` each layer scores its own candidates, and all layers merge the
  same number of them (the mean of what they want, rounded; each layer its best-scored), because
  attention masks need equal lengths. ``decide="shared"``: one decision from the mean score.
- Only entries new since the last call are candidates (each is decided once, when it arrives);
  SYSTEM, TEXT and ANCHOR entries never merge, nor do the chunk delimiters.

:class:`MergeThenEvict` composes a merge with an evicting policy (HERMES): merge first, then evict what
still exceeds the budget; the attention probe taken before merging is carried over to the merged
entries (a merged entry gets the sum of its members' attention).

Spatial places come from metadata only, assigned when an entry first arrives: for M-RoPE, ``(h, w)``
relative to the smallest position of its commit (the chunk's start), grid entries being those at their
frame group's modal ``t``; for 1-D RoPE, the entry's rank within its frame group.

Shapes: keys / values ``(batch, kv_heads, N, head_dim)``; positions ``(pos_dims, N)``; scores ``(n,)``.
Knows nothing of video, pooling or a model family: entries, metadata and a RoPE spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
import torch.nn.functional as F

from .cache import MemoryCache, MemoryLayer, TokenKind
from .hermes import Hermes
from .policy import AttentionProbe, CompressResult, MemoryPolicy, ReindexingPolicy, require_rope
from .positions import reindex_cache
from .rope import rerotate

if TYPE_CHECKING:
    from .rope import RopeSpec

MATCHES = ("temporal", "sequence")
SURVIVORS = ("newest", "oldest")
DECIDES = ("layer", "shared")
_NO_CODE = -1
_CODE_BASE = 1 << 20  # code = a * base + b for a spatial place (a, b)


class MergeDecider(Protocol):
    """Scores candidate merges; a candidate merges when its score is at least ``threshold``."""

    threshold: float

    def scores(self, new_keys: torch.Tensor, new_positions: torch.Tensor, old_keys: torch.Tensor | None,
               rope: RopeSpec) -> torch.Tensor:
        """``(n,)`` scores from the candidates' keys ``(B, H, n, D)`` at ``new_positions`` ``(pos_dims, n)``
        and their partners' keys ``(B, H, n, D)`` already moved to the same positions (None for a
        decider whose ``uses_partner`` is False)."""
        ...


@dataclass
class SimilarityDecider:
    """Training-free: cosine similarity of the two keys, mean over batch and heads.

    Attributes:
        threshold: merge at this similarity or above (ours: 0.9; above 1 never merges).
    """

    threshold: float = 0.9

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold:
            raise ValueError(f"merge: similarity threshold must be >= -1, got {self.threshold}")

    def scores(self, new_keys: torch.Tensor, new_positions: torch.Tensor, old_keys: torch.Tensor,
               rope: RopeSpec) -> torch.Tensor:
        sim = F.cosine_similarity(new_keys.float(), old_keys.float(), dim=-1)  # (B, H, n)
        return sim.mean(dim=(0, 1)).cpu()


@dataclass
class KeyDimDecider:
    """Learned DMC: ``alpha = sigmoid(mean_heads k_pre[..., dim] - offset)``, the key before rotation.

    The key dimension is read back from the cached (rotated) key by rotating it to position 0. A model
    retrofitted by ``train/train_dmc.py`` has the matching query dimensions zeroed, so this dimension
    carries only the decision.

    Attributes:
        dim: the repurposed key dimension (ref DMC: the last one).
        offset: subtracted from the logit so that a fresh neuron starts near "append" (ref: 5).
        threshold: merge when ``alpha`` is at least this (ref: 0.5, the hard decision).
    """

    dim: int = -1
    offset: float = 5.0
    threshold: float = 0.5
    uses_partner: ClassVar[bool] = False  # decides from the new key alone

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"merge: alpha threshold must be in (0, 1], got {self.threshold}")

    def alpha_logits(self, keys: torch.Tensor, positions: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
        """``(n,)`` decision logits of cached keys ``(B, H, n, D)`` at ``positions``."""
        raw = rerotate(keys, positions, torch.zeros_like(positions), rope) / rope.attention_scaling
        return raw[..., self.dim].float().mean(dim=(0, 1)).cpu() - self.offset

    def scores(self, new_keys: torch.Tensor, new_positions: torch.Tensor, old_keys: torch.Tensor | None,
               rope: RopeSpec) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logits(new_keys, new_positions, rope))


@dataclass
class MergeStep:
    """What one merge pass did.

    Attributes:
        owners: per layer, ``(N_before,)`` long: the index after merging of the entry each entry before
            merging went into (itself if it was kept as it was).
        merged: entries folded into others, per layer (equal in every layer).
    """

    owners: list[torch.Tensor]
    merged: int


def merge_pair(layer: MemoryLayer, survivors: torch.Tensor, removed: torch.Tensor, rope: RopeSpec) -> None:
    """Fold entries ``removed`` into ``survivors`` (both ``(m,)`` long indices, pairwise) and drop them.

    The survivor becomes the count-weighted mean of both: keys of ``removed`` are first moved to the
    survivor's position. Positions, frame ids, segments and uids stay the survivor's; counts add up.
    """
    if survivors.numel() == 0:
        return
    device = layer.keys.device
    s_dev, r_dev = survivors.to(device), removed.to(device)
    work = torch.promote_types(layer.keys.dtype, torch.float32)
    c_s = layer.counts[survivors].to(device, work)
    c_r = layer.counts[removed].to(device, work)
    total = c_s + c_r
    k_r = rerotate(layer.keys.index_select(-2, r_dev), layer.positions[:, removed], layer.positions[:, survivors], rope)
    k_new = (layer.keys.index_select(-2, s_dev).to(work) * c_s[:, None] + k_r.to(work) * c_r[:, None]) / total[:, None]
    v_new = (layer.values.index_select(-2, s_dev).to(work) * c_s[:, None]
             + layer.values.index_select(-2, r_dev).to(work) * c_r[:, None]) / total[:, None]
    layer.keys = layer.keys.index_copy(-2, s_dev, k_new.to(layer.keys.dtype))
    layer.values = layer.values.index_copy(-2, s_dev, v_new.to(layer.values.dtype))
    counts = layer.counts.clone()
    counts[survivors] = total.to(counts.device, counts.dtype)
    layer.counts = counts
    keep = torch.ones(len(layer), dtype=torch.bool)
    keep[removed] = False
    layer.select(keep.nonzero().squeeze(1))


@dataclass(eq=False)  # holds per-stream state (tensors): compare configurations field by field
class TokenMerge(ReindexingPolicy):
    """Append-or-merge of visual entries (see the module docstring). No budget of its own.

    Attributes:
        threshold: key cosine similarity at or above which an entry merges (the default decider's
            threshold; ours 0.9; above 1: never).
        decider: what decides instead (e.g. :class:`KeyDimDecider` for a learned DMC model).
        match: "temporal" (same spatial place, previous frame; ours) or "sequence" (previous grid entry
            of the same frame; ref DMC).
        survivor: "newest" (ref DMC: the accumulator is the newest slot) or "oldest".
        decide: "layer" (each layer scores its candidates; equal merge counts) or "shared".
        max_count: most original tokens one entry may stand for (None: no limit, as DMC).
        reindex: "lazy" (ref) or "eager" position re-indexing after merging.
        headroom: positions kept free under the model maximum (one chunk + a question and answer).
    """

    name: ClassVar[str] = "merge"

    threshold: float = 0.9
    decider: MergeDecider | None = None
    match: str = "temporal"
    survivor: str = "newest"
    decide: str = "layer"
    max_count: int | None = None
    reindex: str = "lazy"
    headroom: int = 1024
    _codes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long), init=False, repr=False)
    _seen: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.decider is None:
            self.decider = SimilarityDecider(self.threshold)
        if not hasattr(self.decider, "scores") or not hasattr(self.decider, "threshold"):
            raise ValueError("merge: decider must have scores() and a threshold")
        if self.match not in MATCHES:
            raise ValueError(f"merge: match must be one of {MATCHES}, got {self.match!r}")
        if self.survivor not in SURVIVORS:
            raise ValueError(f"merge: survivor must be one of {SURVIVORS}, got {self.survivor!r}")
        if self.decide not in DECIDES:
            raise ValueError(f"merge: decide must be one of {DECIDES}, got {self.decide!r}")
        if self.max_count is not None and self.max_count < 2:
            raise ValueError(f"merge: max_count must be >= 2 (or None), got {self.max_count}")
        self.check_reindex_options()

    # ---- policy interface ------------------------------------------------------------------------
    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        require_rope(rope, self.name)
        self._codes = torch.zeros(0, dtype=torch.long)  # a new stream: forget the old one's places
        self._seen = max((int(layer.uids.max()) if len(layer) else -1) for layer in cache.layers)

    def wants_compress(self, cache: MemoryCache) -> bool:
        layer = cache.layers[0]
        return bool(((layer.uids > self._seen) & (layer.kinds == int(TokenKind.VISUAL))).any())

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        step = self.merge(cache, rope)
        new_next = None
        if step.merged:  # no merge, no gap: positions stay as they are
            new_next = self.reindex_positions(cache, rope, next_position)
        self.mark_seen(cache)
        return CompressResult(merged=step.merged, next_position=new_next)

    def mark_seen(self, cache: MemoryCache) -> None:
        """Entries held now are decided: only later ones are candidates next time."""
        self._seen = max(self._seen, max((int(layer.uids.max()) if len(layer) else -1) for layer in cache.layers))

    # ---- merging ---------------------------------------------------------------------------------
    def merge(self, cache: MemoryCache, rope: RopeSpec) -> MergeStep:
        """Decide and apply the merges of every entry new since the last call (in place)."""
        uid_before = [layer.uids.clone() for layer in cache.layers]
        owner_uids = [u.clone() for u in uid_before]
        order = self._assign_codes(cache.layers[0])
        merged = 0
        for step in order:  # frame groups (temporal) or raster ranks (sequence), oldest first
            merged += self._merge_step(cache, rope, step, owner_uids)
        owners = [torch.searchsorted(layer.uids, own) for layer, own in zip(cache.layers, owner_uids, strict=True)]
        lengths = {len(layer) for layer in cache.layers}
        if len(lengths) != 1:  # a bug, not a configuration problem
            raise RuntimeError(f"merge: layers ended with different lengths {sorted(lengths)}")
        return MergeStep(owners=owners, merged=merged)

    def _assign_codes(self, layer: MemoryLayer) -> list[torch.Tensor]:
        """Record the spatial place of every new grid entry; return the uids of each merge step, in order."""
        fresh = (layer.uids > self._seen) & (layer.kinds == int(TokenKind.VISUAL))
        if not bool(fresh.any()):
            return []
        top = int(layer.uids.max()) + 1
        if self._codes.numel() < top:
            self._codes = torch.cat([self._codes, torch.full((top - self._codes.numel(),), _NO_CODE, dtype=torch.long)])
        idx = fresh.nonzero().squeeze(1)
        steps: dict[int, list[torch.Tensor]] = {}
        for seg in torch.unique(layer.segments[idx]).tolist():
            s_idx = idx[layer.segments[idx] == seg]
            places, rank = _places(layer.positions[:, s_idx], layer.frame_ids[s_idx])
            grid = places[:, 0] >= 0
            uids = layer.uids[s_idx]
            if self.match == "temporal":
                self._codes[uids] = torch.where(grid, places[:, 0] * _CODE_BASE + places[:, 1], _NO_CODE)
                for f in torch.unique(layer.frame_ids[s_idx][grid]).tolist():
                    steps.setdefault(f, []).append(uids[grid & (layer.frame_ids[s_idx] == f)])
            else:  # sequence: the partner is the previous grid entry of the same frame group
                self._codes[uids] = torch.where(grid, layer.frame_ids[s_idx], _NO_CODE)
                for r in torch.unique(rank[grid]).tolist():
                    if r > 0:
                        steps.setdefault(r, []).append(uids[grid & (rank == r)])
        return [torch.cat(steps[k]) for k in sorted(steps)]

    def _candidates(self, layer: MemoryLayer, step_uids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, p)`` indices in ``layer``: each step entry present and its partner (-1: none)."""
        x = torch.searchsorted(layer.uids, step_uids).clamp(max=max(len(layer) - 1, 0))
        present = layer.uids[x] == step_uids
        x = x[present]
        if self._codes.numel() <= int(layer.uids.max()):
            self._codes = torch.cat([self._codes, torch.full((int(layer.uids.max()) + 1 - self._codes.numel(),),
                                                             _NO_CODE, dtype=torch.long)])
        codes = self._codes[layer.uids]
        code_x = codes[x]
        n = len(layer)
        ar = torch.arange(n)
        older = (codes[None, :] == code_x[:, None]) & (ar[None, :] < x[:, None])
        older &= (layer.kinds == int(TokenKind.VISUAL))[None, :]
        p = torch.where(older.any(dim=1), (older * ar[None, :]).amax(dim=1), torch.full_like(x, -1))
        if self.max_count is not None:
            ok = p >= 0
            total = layer.counts[x] + torch.where(ok, layer.counts[p.clamp(min=0)], torch.zeros_like(layer.counts[x]))
            p = torch.where(total <= self.max_count, p, torch.full_like(p, -1))
        return x, p

    def _merge_step(self, cache: MemoryCache, rope: RopeSpec, step_uids: torch.Tensor,
                    owner_uids: list[torch.Tensor]) -> int:
        decider = self.decider
        per_layer = []
        for layer in cache.layers:
            x, p = self._candidates(layer, step_uids)
            ok = p >= 0
            x, p = x[ok], p[ok]
            scores = torch.zeros(0)
            if x.numel():
                dev = layer.keys.device
                new_k = layer.keys.index_select(-2, x.to(dev))
                old_k = None
                if getattr(decider, "uses_partner", True):
                    old_k = rerotate(layer.keys.index_select(-2, p.to(dev)), layer.positions[:, p],
                                     layer.positions[:, x], rope)
                scores = decider.scores(new_k, layer.positions[:, x], old_k, rope).float()
            per_layer.append((x, p, scores))
        threshold = float(decider.threshold)
        if self.decide == "shared":
            chosen_uids = self._shared_choice(cache, per_layer, threshold)
            picks = []
            for layer, (x, p, _) in zip(cache.layers, per_layer, strict=True):
                sel = torch.isin(layer.uids[x], chosen_uids)
                picks.append((x[sel], p[sel]))
        else:
            wants = [int((s >= threshold).sum()) for _, _, s in per_layer]
            m = min(math.floor(sum(wants) / len(wants) + 0.5), min(s.numel() for _, _, s in per_layer))
            picks = []
            for x, p, s in per_layer:
                best = torch.argsort(s, descending=True, stable=True)[:m]
                picks.append((x[best], p[best]))
        for layer, own, (x, p) in zip(cache.layers, owner_uids, picks, strict=True):
            if x.numel() == 0:
                continue
            survivors, removed = (x, p) if self.survivor == "newest" else (p, x)
            s_uid, r_uid = layer.uids[survivors], layer.uids[removed]
            # Everything the removed entry stood for now belongs to the survivor.
            sorted_r, perm = r_uid.sort()
            at = torch.searchsorted(sorted_r, own).clamp(max=sorted_r.numel() - 1)
            hit = sorted_r[at] == own
            own[hit] = s_uid[perm[at[hit]]]
            merge_pair(layer, survivors, removed, rope)
        return picks[0][0].numel() if picks else 0

    @staticmethod
    def _shared_choice(cache: MemoryCache, per_layer, threshold: float) -> torch.Tensor:
        """uids merged in every layer: candidates with a partner in every layer and a mean score >= threshold."""
        total: dict[int, list[float]] = {}
        for layer, (x, _, s) in zip(cache.layers, per_layer, strict=True):
            for u, v in zip(layer.uids[x].tolist(), s.tolist(), strict=True):
                total.setdefault(u, []).append(v)
        chosen = [u for u, v in total.items() if len(v) == cache.num_layers and sum(v) / len(v) >= threshold]
        return torch.tensor(sorted(chosen), dtype=torch.long)


def _places(positions: torch.Tensor, frame_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial places ``(n, 2)`` (-1: not a grid entry) and raster ranks ``(n,)`` of one commit's entries.

    M-RoPE ``(3, n)``: grid entries sit at their frame group's most common ``t``; the commit's first and
    last entries are delimiters when their three axes agree. Place = ``(h, w)`` minus the commit's
    smallest position (its start, which token gating never removes). 1-D ``(1, n)``: place = rank in
    the frame group.
    """
    n = positions.shape[1]
    grid = torch.ones(n, dtype=torch.bool)
    if positions.shape[0] == 3:
        for f in torch.unique(frame_ids).tolist():
            members = frame_ids == f
            t = positions[0, members]
            grid[members] = t == torch.mode(t).values
        for end in {0, n - 1}:
            if n > 1 and bool((positions[:, end] == positions[0, end]).all()):
                grid[end] = False
    rank = torch.full((n,), -1, dtype=torch.long)
    for f in torch.unique(frame_ids[grid]).tolist():
        members = (grid & (frame_ids == f)).nonzero().squeeze(1)
        rank[members] = torch.arange(members.numel())
    places = torch.full((n, 2), -1, dtype=torch.long)
    if positions.shape[0] == 3:
        places[grid] = (positions[1:, grid] - positions.min()).T
    else:
        places[grid, 0] = rank[grid]
        places[grid, 1] = 0
    return places, rank


@dataclass
class MergeThenEvict(MemoryPolicy):
    """Merge first, then let ``evict`` (e.g. :class:`~.hermes.Hermes`) cut what still exceeds its budget.

    Attributes:
        merge: the merge policy.
        evict: the evicting policy; its probe prompts are used (taken before merging, then summed over
            each merged entry's members).
    """

    name: ClassVar[str] = "merge"

    merge: TokenMerge = field(default_factory=TokenMerge)
    evict: MemoryPolicy = field(default_factory=Hermes)

    def __post_init__(self) -> None:
        if not isinstance(self.merge, TokenMerge):
            raise ValueError(f"merge-then-evict: merge must be a TokenMerge, got {type(self.merge).__name__}")
        from .uniform import UniformSampling

        if not isinstance(self.evict, MemoryPolicy) or isinstance(self.evict, UniformSampling):
            raise ValueError("merge-then-evict: evict must be a streaming MemoryPolicy")

    @property
    def probe_prompts(self) -> dict[str, str]:  # type: ignore[override]
        return self.evict.probe_prompts

    def probe_layers(self, num_layers: int) -> dict[str, list[int]]:
        """The evicting policy's: only the layers it reads are probed (the others carry None through)."""
        return self.evict.probe_layers(num_layers)

    @property
    def budget(self) -> int | None:
        return getattr(self.evict, "budget", None)

    def check_model(self, rope: RopeSpec | None, num_layers: int) -> None:
        self.merge.check_model(rope, num_layers)
        self.evict.check_model(rope, num_layers)

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        self.merge.setup(cache, rope, num_system_tokens)
        self.evict.setup(cache, rope, num_system_tokens)

    def wants_compress(self, cache: MemoryCache) -> bool:
        return self.merge.wants_compress(cache) or self.evict.wants_compress(cache)

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        step = self.merge.merge(cache, rope)
        result = CompressResult()
        if self.evict.wants_compress(cache):
            result = self.evict.compress(cache, rope, _carry_probe(probe, step), next_position)
        elif step.merged:
            result.next_position = reindex_cache(cache, rope, next_position, mode=self.merge.reindex,
                                                 headroom=self.merge.headroom)
        self.merge.mark_seen(cache)
        result.merged += step.merged
        return result


def _carry_probe(probe: AttentionProbe | None, step: MergeStep) -> AttentionProbe | None:
    """Attention of the entries before merging, summed onto the entries they went into."""
    if probe is None:
        return None
    out = AttentionProbe()
    for name, layers in probe.scores.items():
        moved = []
        for scores, owner in zip(layers, step.owners, strict=True):
            if scores is None:  # a layer the evicting policy does not read was not probed
                moved.append(None)
                continue
            n_new = int(owner.max()) + 1 if owner.numel() else 0
            s = scores.float()[: owner.numel()]
            moved.append(torch.zeros(n_new).index_add(0, owner[: s.numel()], s))
        out.scores[name] = moved
    return out


def merge_policy(budget: int | None = None, evict: str = "hermes", **kwargs) -> MemoryPolicy:
    """``make_policy("merge", ...)``: a :class:`TokenMerge`, followed by HERMES when a budget is given.

    Keyword arguments that are :class:`TokenMerge` fields go to the merge; the others to the evicting
    policy; ``reindex`` and ``headroom`` to both (only "hermes" is offered by name; compose
    :class:`MergeThenEvict` for others).
    """
    shared = {"reindex", "headroom"}
    names = {f for f in TokenMerge.__dataclass_fields__ if not f.startswith("_")}
    mine = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names or k in shared}
    merge = TokenMerge(**mine)
    if budget is None:
        if set(rest) - shared:
            raise ValueError(f"memory policy 'merge': options {sorted(rest)} need a budget (they go to {evict})")
        return merge
    if evict != "hermes":
        raise ValueError(f"memory policy 'merge': evict must be 'hermes', got {evict!r}")
    return MergeThenEvict(merge, Hermes(budget=budget, **rest))
