"""Question-time retrieval from an offloaded store: a recent window that forgets nothing.

Based on the idea of ReKV ("Streaming Video Question-Answering with In-context Video KV-Cache
Retrieval", Di et al., ICLR 2025): KV that leaves a sliding window is offloaded to host memory, and at
question time the question itself picks the stored blocks that are loaded back for the answer.
Written for this project (storage and re-indexing are ours: ``cache.py``, ``rope.py``, ``positions.py``).

While streaming (per chunk), the resident cache is exactly the window policy's
(:class:`~ppllava_hermes.memory.window.RecentWindow`): the system prompt plus the newest whole frames
up to ``budget`` visual entries per layer, positions re-indexed. What the window evicts is not
dropped but moved to a host store (CPU tensors, optionally pinned) as *blocks*: one block per run of
evicted entries sharing a frame id (a frame, or a Qwen2.5-VL frame pair with its chunk delimiter),
with keys and values of every layer and the entries' metadata: positions the keys are rotated at,
positions as first committed (before any re-indexing), frame ids, kinds, counts, segments, uids.

At question time (:meth:`Retrieval.question_cache`):

1. Scoring. Each block has one summary entry per layer and KV head, made when it is offloaded: its
   keys moved to position 0 (exact delta rotation) and averaged, its values averaged. A scoring cache
   holds the system prompt, the summaries of up to ``probe_batch`` blocks (all at one position, right
   after the system prompt, so RoPE favours no block over another) and the resident entries; the question (the tokens ``ask`` prefills) runs once
   over it as an eager-attention probe (:data:`policy.QuestionProbe`: attention averaged over heads
   and question tokens). Block score, per layer: attention on its summary divided by the attention on
   the system and resident entries (the part every batch shares, so that batches compare); then the
   mean over layers. This ranks by attention per summary, not per block mass: a block costs its
   length in budget and each of its entries is represented by the summary, so it is the relevance
   per token of budget.
2. Selection. Blocks in descending score fill ``retrieve_budget`` visual entries greedily (a block
   that does not fit is skipped and smaller ones still may). So the accelerator holds at most
   ``budget + retrieve_budget`` visual entries per layer for an answer (default: ``2 * budget``),
   besides the system prompt and the question's text; during scoring at most ``budget +
   probe_batch`` entries besides the system prompt and the question.
3. The answer cache: a NEW :class:`MemoryCache` with the system prompt, the retrieved blocks and the
   resident entries in stream order (by uid). Positions are re-derived from the positions as committed
   (:func:`positions.compact_positions`: segment-preserving, the dense M-RoPE layout if that does not
   leave ``headroom`` under the model maximum) and each key is moved from the position it is rotated
   at to its new one (:func:`rope.rerotate`). When every block is retrieved this is the full cache's
   layout exactly, so the answer's logits equal the full cache's wherever the stored KV is the full
   cache's: always in a one-layer model, and when the only eviction followed the last chunk. In general
   it is not: in a deeper model, a chunk prefilled after an eviction attended only to the window (as
   under ReKV's sliding-window encoding), so its deeper-layer KV differ from the full cache's.

:class:`TokenRetrieval` ("retrieval-tokens", ours) scores blocks by their entries instead of one summary:
every stored key, moved to the shared scoring position, is an entry of the scoring cache (``probe_batch``
entries per probe), and a block's score is the largest per-layer-mean relative attention any of its
entries received. A mean key blurs a frame's few informative tokens (the one object a question names)
into its background; the maximum keeps them. The price: scoring attends over every stored entry, so its
cost grows with the stream (host-to-device copies and one probe per ``probe_batch`` entries), while
the accelerator still holds at most ``system + budget + probe_batch`` entries during scoring and
``budget + retrieve_budget`` for the answer.

The stream's cache and the store are not modified by a question. One policy instance serves one
stream at a time (:meth:`setup` empties the store).

Shapes: keys / values ``(batch, kv_heads, N, head_dim)``; positions ``(pos_dims, N)``; per-entry
metadata ``(N,)``; summaries ``(batch, kv_heads, 1, head_dim)`` float32 per layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from .cache import MemoryCache, MemoryLayer, TokenKind
from .policy import AttentionProbe, CompressResult, QuestionProbe
from .positions import Compacted, compact_positions
from .rope import rerotate
from .window import RecentWindow

if TYPE_CHECKING:
    from .rope import RopeSpec


@dataclass
class HostBlock:
    """Evicted entries of one frame, kept in host memory.

    Attributes:
        keys: per layer ``(batch, kv_heads, n, head_dim)`` CPU, rotated at ``positions``.
        values: per layer ``(batch, kv_heads, n, head_dim)`` CPU.
        summaries: per layer ``(batch, kv_heads, 1, head_dim)`` float32 CPU: the keys moved to position 0
            (every axis) and averaged over the block.
        summary_values: per layer ``(batch, kv_heads, 1, head_dim)`` float32 CPU: the values averaged.
        positions: ``(pos_dims, n)`` long, the positions the stored keys are rotated at.
        committed: ``(pos_dims, n)`` long, the positions the entries were committed with (before any
            re-indexing moved them). A segment is committed whole, so its internal layout is intact here;
            segments committed after a re-indexing start where the re-indexed stream had got to, so
            across segments only the order and the layout within each segment are meaningful.
        frame_ids, kinds, segments, uids: ``(n,)`` long; counts: ``(n,)`` float32.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    summaries: list[torch.Tensor]
    summary_values: list[torch.Tensor]
    positions: torch.Tensor
    committed: torch.Tensor
    frame_ids: torch.Tensor
    kinds: torch.Tensor
    counts: torch.Tensor
    segments: torch.Tensor
    uids: torch.Tensor

    def __len__(self) -> int:
        return self.uids.shape[0]

    @property
    def frame_id(self) -> int:
        return int(self.frame_ids[0])

    @property
    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def summary_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.summaries, *self.summary_values))


@dataclass
class QuestionReport:
    """What the last :meth:`Retrieval.question_cache` did.

    Attributes:
        blocks_scored: blocks in the store when the question came.
        frames_retrieved: frame id of each retrieved block, in stream order.
        tokens_retrieved: entries per layer brought back from the host store.
        scores: ``(blocks_scored,)`` float32, each block's score (store order: oldest first).
        score_s: seconds spent scoring (building the scoring caches and the question probes).
        build_s: seconds spent building the answer cache (host-to-device copies and re-rotation).
        host_bytes: keys and values held in the host store.
    """

    blocks_scored: int = 0
    frames_retrieved: list[int] = field(default_factory=list)
    tokens_retrieved: int = 0
    scores: torch.Tensor | None = None
    score_s: float = 0.0
    build_s: float = 0.0
    host_bytes: int = 0


@dataclass
class Retrieval(RecentWindow):
    """A recent window on the accelerator, everything older in host memory, retrieved per question.

    Attributes (the window's, plus retrieval's):
        budget: resident visual entries per layer, as whole frames, exactly as ``window`` (ours: the
            resident set is the SimpleStream baseline's). None: use ``frames``.
        frames: newest frames kept resident when ``budget`` is None (ref SimpleStream: 4).
        reindex: "eager" (default) or "lazy" re-indexing of the resident cache (as ``window``).
        headroom: positions kept free under the model maximum (one chunk + a question and its answer);
            the answer cache also keeps it.
        retrieve_budget: visual entries per layer brought back for a question (ours; None: ``budget``,
            or, when ``budget`` is None, as many as are resident at that moment; 0: never retrieve,
            the plain window with a host store). ReKV likewise retrieves a fixed amount per question.
        probe_batch: block summaries scored per question probe (ours: 1024): bounds the scoring
            cache at ``system + budget + probe_batch`` entries per layer.
        pin_memory: keep the host store in pinned (page-locked) memory when CUDA is available, for
            faster copies back (ours: False; ignored without CUDA).
    """

    name: ClassVar[str] = "retrieval"

    retrieve_budget: int | None = None
    probe_batch: int = 1024
    pin_memory: bool = False

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"{self.name}: budget must be >= 1 visual token, got {self.budget}")
        if self.frames < 1:
            raise ValueError(f"{self.name}: frames must be >= 1, got {self.frames}")
        if self.retrieve_budget is not None and self.retrieve_budget < 0:
            raise ValueError(f"{self.name}: retrieve_budget must be >= 0, got {self.retrieve_budget}")
        if self.probe_batch < 1:
            raise ValueError(f"{self.name}: probe_batch must be >= 1, got {self.probe_batch}")
        super().__post_init__()
        self._clear()

    # ---- state ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        self.store: list[HostBlock] = []
        # Positions as committed of the resident entries, by uid (sorted): re-indexing moves the cache's
        # positions, and the answer cache's layout is derived from these.
        self._ref_uids = torch.zeros(0, dtype=torch.long)
        self._ref_positions: torch.Tensor | None = None
        self._next_uid = 0
        self.last_question: QuestionReport | None = None

    @property
    def host_bytes(self) -> int:
        """Bytes of keys and values in the host store (summaries and metadata excluded)."""
        return sum(block.kv_bytes for block in self.store)

    @property
    def summary_bytes(self) -> int:
        """Bytes of the blocks' float32 summary keys and values in the host store."""
        return sum(block.summary_bytes for block in self.store)

    @property
    def stored_tokens(self) -> int:
        """Entries per layer in the host store."""
        return sum(len(block) for block in self.store)

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        super().setup(cache, rope, num_system_tokens)
        if self.budget is not None:
            need = num_system_tokens + self.budget + self._retrieve_limit(self.budget) + self.headroom
            if need >= rope.max_position_embeddings:
                raise ValueError(
                    f"{self.name}: system ({num_system_tokens}) + budget ({self.budget}) + retrieve_budget "
                    f"({self._retrieve_limit(self.budget)}) + headroom ({self.headroom}) = {need} positions do "
                    f"not fit under the model's {rope.max_position_embeddings}"
                )
        self._clear()

    def _retrieve_limit(self, resident_visual: int) -> int:
        if self.retrieve_budget is not None:
            return self.retrieve_budget
        return self.budget if self.budget is not None else resident_visual

    def _register(self, layer: MemoryLayer) -> None:
        """Record the committed positions of entries that arrived since the last call.

        Only this policy re-indexes the cache, and only inside :meth:`compress`, after registering: an
        entry not yet registered still has the positions it was committed with.
        """
        new = layer.uids >= self._next_uid
        if not bool(new.any()):
            return
        if self._ref_positions is None:
            self._ref_positions = torch.zeros(layer.positions.shape[0], 0, dtype=torch.long)
        self._ref_uids = torch.cat([self._ref_uids, layer.uids[new]])
        self._ref_positions = torch.cat([self._ref_positions, layer.positions[:, new]], dim=1)
        self._next_uid = int(layer.uids.max()) + 1

    def _committed(self, uids: torch.Tensor) -> torch.Tensor:
        """``(pos_dims, N)`` committed positions of resident entries ``uids`` ``(N,)``."""
        at = torch.searchsorted(self._ref_uids, uids)
        if bool((at >= self._ref_uids.numel()).any()) or not torch.equal(self._ref_uids[at], uids):
            raise RuntimeError("retrieval: a resident entry has no recorded committed position")
        return self._ref_positions[:, at]

    # ---- ingest: the window, offloading what it evicts ------------------------------------------
    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        layer0 = cache.layers[0]
        self._register(layer0)
        keep = (layer0.kinds != int(TokenKind.VISUAL)) | self._keep_visual(layer0)
        self._offload(cache, (~keep).nonzero().squeeze(1), rope)
        result = self.select_everywhere(cache, keep, rope, next_position)
        held = torch.isin(self._ref_uids, cache.layers[0].uids)
        self._ref_uids, self._ref_positions = self._ref_uids[held], self._ref_positions[:, held]
        return result

    def _offload(self, cache: MemoryCache, index: torch.Tensor, rope: RopeSpec) -> None:
        """Move the entries at ``index`` (``(E,)`` long, cache order; the same in every layer) to the store,
        one block per run of equal frame ids."""
        if index.numel() == 0:
            return
        layer0 = cache.layers[0]
        fids = layer0.frame_ids[index]
        breaks = torch.ones_like(fids, dtype=torch.bool)
        breaks[1:] = (fids[1:] != fids[:-1]) | (index[1:] != index[:-1] + 1)
        starts = breaks.nonzero().squeeze(1).tolist() + [index.numel()]
        pin = self.pin_memory and torch.cuda.is_available()
        committed = self._committed(layer0.uids[index])
        positions = layer0.positions[:, index]
        runs = list(zip(starts[:-1], starts[1:], strict=True))
        keys: list[list[torch.Tensor]] = [[] for _ in runs]
        values: list[list[torch.Tensor]] = [[] for _ in runs]
        summaries: list[list[torch.Tensor]] = [[] for _ in runs]
        summary_values: list[list[torch.Tensor]] = [[] for _ in runs]
        for layer in cache.layers:
            dev = index.to(layer.keys.device)
            k_all, v_all = layer.keys.index_select(-2, dev), layer.values.index_select(-2, dev)
            # Summaries: the keys moved to position 0 (position-free content) and averaged per block.
            k_free = rerotate(k_all.float(), positions, torch.zeros_like(positions), rope)
            for r, (a, b) in enumerate(runs):
                summaries[r].append(k_free[..., a:b, :].mean(-2, keepdim=True).cpu())
                summary_values[r].append(v_all[..., a:b, :].float().mean(-2, keepdim=True).cpu())
                k, v = k_all[..., a:b, :].contiguous().cpu(), v_all[..., a:b, :].contiguous().cpu()
                if pin:
                    k, v = k.pin_memory(), v.pin_memory()
                keys[r].append(k)
                values[r].append(v)
        for r, (a, b) in enumerate(runs):
            idx = index[a:b]
            self.store.append(HostBlock(
                keys=keys[r], values=values[r], summaries=summaries[r], summary_values=summary_values[r],
                positions=positions[:, a:b].clone(), committed=committed[:, a:b].clone(),
                frame_ids=layer0.frame_ids[idx].clone(), kinds=layer0.kinds[idx].clone(),
                counts=layer0.counts[idx].clone(), segments=layer0.segments[idx].clone(),
                uids=layer0.uids[idx].clone(),
            ))

    # ---- question time --------------------------------------------------------------------------
    def question_cache(self, cache: MemoryCache, rope: RopeSpec, probe: QuestionProbe,
                       next_position: int) -> tuple[MemoryCache, int] | None:
        """A new cache for the question: system prompt + retrieved blocks + resident entries (module docstring).

        ``cache`` is not modified. Returns None (answer from ``cache`` as is) when the store is empty or
        nothing is retrieved.
        """
        # Entries prefilled for this question only (a padded pending group) are registered for its answer
        # cache and forgotten afterwards: their uids are reused by the stream once the question rolls back.
        saved = (self._ref_uids, self._ref_positions, self._next_uid)
        try:
            return self._question_cache(cache, rope, probe, next_position)
        finally:
            self._ref_uids, self._ref_positions, self._next_uid = saved

    def _question_cache(self, cache: MemoryCache, rope: RopeSpec, probe: QuestionProbe,
                        next_position: int) -> tuple[MemoryCache, int] | None:
        layer0 = cache.layers[0]
        self._register(layer0)
        report = QuestionReport(blocks_scored=len(self.store), host_bytes=self.host_bytes)
        self.last_question = report
        resident_visual = int((layer0.kinds == int(TokenKind.VISUAL)).sum())
        limit = self._retrieve_limit(resident_visual)
        if not self.store or limit == 0:
            return None
        t0 = time.perf_counter()
        scores = self.score_blocks(cache, rope, probe, next_position)
        report.scores, report.score_s = scores, time.perf_counter() - t0
        chosen, used = [], 0
        for b in torch.argsort(scores, descending=True, stable=True).tolist():
            if used + len(self.store[b]) <= limit:
                chosen.append(b)
                used += len(self.store[b])
        if not chosen:
            return None
        chosen.sort()
        t1 = time.perf_counter()
        built = self.build_answer_cache(cache, rope, chosen)
        report.build_s = time.perf_counter() - t1
        report.frames_retrieved = [self.store[b].frame_id for b in chosen]
        report.tokens_retrieved = used
        return built

    def score_blocks(self, cache: MemoryCache, rope: RopeSpec, probe: QuestionProbe, next_position: int) -> torch.Tensor:
        """``(len(store),)`` float32: each block's score for the question ``probe`` runs (module docstring)."""
        def summary(block: HostBlock, li: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            origin = torch.zeros(cache.pos_dims, 1, dtype=torch.long)
            return block.summaries[li], block.summary_values[li], origin

        return self._score(cache, rope, probe, next_position, summary, lambda block: 1, reduce="mean")

    def _score(self, cache: MemoryCache, rope: RopeSpec, probe: QuestionProbe, next_position: int,
               candidates, count, reduce: str) -> torch.Tensor:
        """Score blocks by the question's attention on their candidate entries.

        ``candidates(block, layer)`` gives ``(keys, values, positions)``: ``(batch, kv_heads, n, head_dim)``
        keys rotated at ``positions`` ``(pos_dims, n)``; ``count(block)`` is that ``n``. Candidates are
        moved to one shared position right after the system prompt, scored in probes of at most
        ``probe_batch`` entries, each entry by its attention over the attention on the system and resident
        entries (the part every probe shares), averaged over layers; a block's score is the
        ``reduce`` ("mean" or "max") of its entries'.
        """
        layer0 = cache.layers[0]
        system = layer0.kinds == int(TokenKind.SYSTEM)
        n_sys = int(system.sum())
        if not bool(system[:n_sys].all()):
            raise RuntimeError("retrieval: the system prompt must lead the cache")
        # One position for every candidate: right after the system prompt (where the past began).
        at = int(layer0.positions[:, :n_sys].max()) + 1 if n_sys else 0
        sizes = [count(block) for block in self.store]
        entry_scores: list[torch.Tensor] = []
        first = 0
        while first < len(self.store):  # whole blocks per probe, at most probe_batch entries (or one block)
            last, total = first + 1, sizes[first]
            while last < len(self.store) and total + sizes[last] <= self.probe_batch:
                total += sizes[last]
                last += 1
            batch = self.store[first:last]
            scoring = MemoryCache(cache.num_layers, cache.pos_dims)
            for li, (src, dst) in enumerate(zip(cache.layers, scoring.layers, strict=True)):
                parts = [candidates(blk, li) for blk in batch]
                keys = torch.cat([rerotate(k.float(), p, torch.full_like(p, at), rope) for k, _, p in parts], dim=-2)
                keys = keys.to(device=src.keys.device, dtype=src.keys.dtype)
                values = torch.cat([v for _, v, _ in parts], dim=-2).to(device=src.values.device, dtype=src.values.dtype)
                _fill(dst, torch.cat([src.keys[..., :n_sys, :], keys, src.keys[..., n_sys:, :]], dim=-2),
                      torch.cat([src.values[..., :n_sys, :], values, src.values[..., n_sys:, :]], dim=-2),
                      torch.cat([src.positions[:, :n_sys], torch.full((cache.pos_dims, total), at),
                                 src.positions[:, n_sys:]], dim=1),
                      _concat_meta(src, n_sys, total))
            attention = probe(scoring, next_position)
            is_candidate = torch.zeros(len(layer0) + total, dtype=torch.bool)
            is_candidate[n_sys : n_sys + total] = True
            per_layer = []
            for a in attention:
                shared = a[~is_candidate].sum().clamp_min(torch.finfo(torch.float32).tiny)
                per_layer.append(a[is_candidate] / shared)
            entry_scores.append(torch.stack(per_layer).mean(0))
            first = last
        flat = torch.cat(entry_scores)
        owner = torch.repeat_interleave(torch.arange(len(self.store)), torch.tensor(sizes))
        scores = torch.zeros(len(self.store), dtype=torch.float32)
        if reduce == "max":
            return scores.fill_(-torch.inf).scatter_reduce_(0, owner, flat.float(), "amax")
        return scores.scatter_reduce_(0, owner, flat.float(), "mean", include_self=False)

    def build_answer_cache(self, cache: MemoryCache, rope: RopeSpec, chosen: list[int]) -> tuple[MemoryCache, int]:
        """The answer cache from the resident entries plus store blocks ``chosen`` (indices, stream order).

        Returns the new cache and the position the question starts at.
        """
        blocks = [self.store[b] for b in chosen]
        layer0 = cache.layers[0]
        uids = torch.cat([layer0.uids, *[blk.uids for blk in blocks]])
        order = torch.argsort(uids, stable=True)

        def gather(resident: torch.Tensor, stored: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([resident, *stored], dim=-1).index_select(-1, order)

        committed = gather(self._committed(layer0.uids), [blk.committed for blk in blocks])
        stored_positions = [blk.positions for blk in blocks]
        segments = gather(layer0.segments, [blk.segments for blk in blocks])
        meta = {
            "frame_ids": gather(layer0.frame_ids, [blk.frame_ids for blk in blocks]),
            "kinds": gather(layer0.kinds, [blk.kinds for blk in blocks]),
            "counts": gather(layer0.counts, [blk.counts for blk in blocks]),
            "segments": segments,
            "uids": uids.index_select(0, order),
        }
        layout = self._layout(committed, segments, rope)
        answer = MemoryCache(cache.num_layers, cache.pos_dims)
        for li, (src, dst) in enumerate(zip(cache.layers, answer.layers, strict=True)):
            device = src.keys.device
            dev_order = order.to(device)
            keys = torch.cat([src.keys, *[blk.keys[li].to(device, non_blocking=True) for blk in blocks]], dim=-2)
            vals = torch.cat([src.values, *[blk.values[li].to(device, non_blocking=True) for blk in blocks]], dim=-2)
            current = gather(src.positions, stored_positions)  # what each key is rotated at now
            keys = rerotate(keys.index_select(-2, dev_order), current, layout.positions, rope)
            _fill(dst, keys, vals.index_select(-2, dev_order), layout.positions.clone(),
                  {k: v.clone() for k, v in meta.items()})
        return answer, layout.next_position

    def _layout(self, committed: torch.Tensor, segments: torch.Tensor, rope: RopeSpec) -> Compacted:
        """Gap-free positions for the answer cache; the dense M-RoPE layout when the other leaves no headroom."""
        limit = rope.max_position_embeddings

        def reach(lay: Compacted) -> int:
            return max(lay.next_position, int(lay.positions.max()) + 1)

        layout = compact_positions(committed, segments)
        if reach(layout) + self.headroom >= limit and committed.shape[0] == 3:
            layout = compact_positions(committed, segments, dense=True)
        if reach(layout) + self.headroom >= limit:
            raise RuntimeError(
                f"retrieval: the answer cache spans {reach(layout)} positions, which leaves less than the headroom "
                f"of {self.headroom} under the model's maximum of {limit}: lower budget or retrieve_budget"
            )
        return layout


def _concat_meta(src: MemoryLayer, n_sys: int, nb: int) -> dict[str, torch.Tensor]:
    """Metadata of a scoring cache: ``src``'s with ``nb`` summary entries after the system prompt."""
    def ins(t: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.cat([t[:n_sys], torch.full((nb,), fill, dtype=t.dtype), t[n_sys:]])

    return {"frame_ids": ins(src.frame_ids, -1), "kinds": ins(src.kinds, int(TokenKind.ANCHOR)),
            "counts": ins(src.counts, 1.0), "segments": ins(src.segments, -1), "uids": ins(src.uids, -1)}


def _fill(layer: MemoryLayer, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
          meta: dict[str, torch.Tensor]) -> None:
    """Give an empty layer its whole content through the public cache API."""
    layer.update(keys, values)
    layer.replace(layer.keys, layer.values, positions, meta["frame_ids"], meta["kinds"], meta["counts"],
                  segments=meta["segments"], uids=meta["uids"])


@dataclass
class TokenRetrieval(Retrieval):
    """Retrieval that scores each stored entry and ranks a block by its best entry (module docstring).

    Attributes: those of :class:`Retrieval`; ``probe_batch`` counts entries here (ours: 1024).
    """

    name: ClassVar[str] = "retrieval-tokens"

    def score_blocks(self, cache: MemoryCache, rope: RopeSpec, probe: QuestionProbe, next_position: int) -> torch.Tensor:
        """``(len(store),)`` float32: each block's largest entry score for the question."""
        def entries(block: HostBlock, li: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return block.keys[li], block.values[li], block.positions

        return self._score(cache, rope, probe, next_position, entries, len, reduce="max")
