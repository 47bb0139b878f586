"""The interface between the streaming session and a memory policy.

A policy decides what the KV memory keeps, folds or drops after each chunk of visual tokens is
written; the tensors live in :class:`~ppllava_hermes.memory.cache.MemoryCache`. Policies see keys,
values, positions and token metadata only: nothing of video, pooling or a model family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .cache import MemoryCache, MemoryLayer, TokenKind
from .positions import REINDEX_MODES, reindex_cache

if TYPE_CHECKING:
    from .rope import RopeSpec


@dataclass
class CompressResult:
    """What one call to :meth:`MemoryPolicy.compress` did.

    Attributes:
        evicted: entries removed per layer (max over layers).
        merged: entries folded into others (anchors, merges), max over layers.
        next_position: where the next token's positions start after re-indexing (None: unchanged).
        seconds: wall time spent compressing, its probe included: filled in by the engine
            (``streaming.engine.KVEngine.compress``), which times every policy the same way; policies
            leave it at 0.
    """

    evicted: int = 0
    merged: int = 0
    next_position: int | None = None
    seconds: float = 0.0


@dataclass
class AttentionProbe:
    """Attention of pseudo-query prompts to the cache, one ``(seq_len,)`` tensor per layer per prompt.

    ``scores[name][layer]`` is the attention weight each cache entry received, averaged over heads and
    over the prompt's tokens; None for a layer the policy's :meth:`MemoryPolicy.probe_layers` did not ask
    for (it was not computed).
    """

    scores: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)


#: What a session hands :meth:`MemoryPolicy.question_cache`: ``probe(cache, start)`` runs the question's
#: tokens (exactly those the answer prefills), at positions ``start, start+1, ...``, over ``cache`` (the
#: engine's probe attention, ``models/probe.py``: the eager weights, or the same computed from the probe's
#: captured queries) and returns, per layer, a ``(len(cache),)`` float32 CPU tensor: the attention each
#: entry of ``cache`` received, averaged over heads and question tokens. ``cache`` is left exactly as it
#: was (its keys and values are cut back to their length; no metadata is committed).
QuestionProbe = Callable[[MemoryCache, int], list[torch.Tensor]]


class MemoryPolicy:
    """Base policy: keep everything (the full cache). Subclasses override :meth:`compress`.

    Class attributes a session reads:
        probe_prompts: pseudo-query prompts whose attention the policy wants before compressing
            (empty: no probe is run); :meth:`probe_layers` narrows them to the layers it reads.
        compress_every: the engine calls :meth:`compress` on every ``compress_every``-th chunk that finds
            :meth:`wants_compress` true (1: each of them). Policies that offer it as an option state the
            peak it allows.

    (The offline uniform baseline, :class:`~.uniform.UniformSampling`, is not a streaming memory: a session
    given it runs as ``streaming.uniform.UniformSession``.)
    """

    name: str = "full"
    probe_prompts: dict[str, str] = {}
    compress_every: int = 1

    def probe_layers(self, num_layers: int) -> dict[str, list[int]]:
        """Per probe prompt, the layers whose attention :meth:`compress` reads (default: every layer).

        The engine computes only those (a prompt with none, or no prompt left: no probe forward); the
        probe's other layers are None.
        """
        return {name: list(range(num_layers)) for name in self.probe_prompts}

    def check_model(self, rope: RopeSpec | None, num_layers: int) -> None:
        """Called when a session is built; raise ``ValueError`` if the policy cannot run on this model."""

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        """Called once the system prompt is in the cache; raise ``ValueError`` on a bad configuration."""

    def wants_compress(self, cache: MemoryCache) -> bool:
        """Whether :meth:`compress` has work to do now (lets the session skip the probe); called once per
        chunk (and by composite policies), so it must not change the policy's state."""
        return False

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        """Shrink ``cache`` in place to the policy's budget. Default: keep everything."""
        return CompressResult()

    def question_cache(self, cache: MemoryCache, rope: RopeSpec, probe: QuestionProbe,
                       next_position: int) -> tuple[MemoryCache, int] | None:
        """A cache built for one question, or None (default): answer from ``cache`` as it is.

        Called once per question, before the question is prefilled, with the cache the question would be
        answered from, the model's RoPE spec, a :data:`QuestionProbe` for this question and the position
        the question would start at. A policy that returns ``(new_cache, start)`` must not modify
        ``cache`` (nor share tensors with it that it mutates in place); the session answers from
        ``new_cache`` with the question at ``start`` and then goes back to ``cache``, so nothing the
        question writes reaches the stream.
        """
        return None


def require_rope(rope: RopeSpec | None, policy: str) -> None:
    """Policies that move keys need the model's rotary embedding."""
    if rope is None or getattr(rope, "inv_freq", None) is None:
        raise ValueError(
            f"memory policy {policy!r} re-rotates cached keys and needs a model with rotary position "
            "embeddings (RopeSpec with inv_freq); this model has none"
        )


def check_budget(budget: int, num_system_tokens: int, policy: str) -> None:
    """The budget (visual tokens per layer) must at least match the system prompt it sits beside."""
    if budget < num_system_tokens:
        raise ValueError(
            f"memory policy {policy!r}: budget {budget} is smaller than the system prompt "
            f"({num_system_tokens} tokens); raise the budget or shorten the system prompt"
        )


def check_position_room(policy: str, rope: RopeSpec, num_system_tokens: int, budget: int, headroom: int,
                        anchors: int = 0) -> None:
    """What a policy may hold (system + budget + anchors) plus re-indexing headroom must fit under the model's
    position limit, or re-indexing could not keep positions bounded in an endless stream."""
    parts = [("system", num_system_tokens), ("budget", budget)]
    parts += [("anchors", anchors)] if anchors else []
    parts += [("headroom", headroom)]
    need = sum(n for _, n in parts)
    if need >= rope.max_position_embeddings:
        terms = " + ".join(f"{name} ({n})" for name, n in parts)
        raise ValueError(
            f"{policy}: {terms} = {need} positions do not fit under the model's "
            f"{rope.max_position_embeddings}: re-indexing could not keep positions bounded"
        )


class FullCache(MemoryPolicy):
    """No eviction: the reference for parity and the upper bound of quality and cost."""

    name = "full"


class ReindexingPolicy(MemoryPolicy):
    """Base of the policies that drop or merge cached entries and re-index positions afterwards.

    Subclasses are dataclasses with ``reindex`` ("eager" or "lazy") and ``headroom`` (positions kept
    free under the model maximum) fields; this class holds what they share: the validation of those
    two options (:meth:`check_reindex_options`), the RoPE requirement (keys are re-rotated:
    :meth:`check_model`), the budget checks at setup (:meth:`check_room`), the re-indexing step that
    ends a compression (:meth:`reindex_positions`) and, for policies whose layers hold the same entries,
    the selection of one set of entries in every layer (:meth:`select_everywhere`). Timing is the
    engine's (:attr:`CompressResult.seconds`).
    """

    reindex: str
    headroom: int

    def check_reindex_options(self) -> None:
        """For ``__post_init__``: ``ValueError`` on an unknown re-index mode or a negative headroom."""
        if self.reindex not in REINDEX_MODES:
            raise ValueError(f"{self.name}: reindex must be one of {REINDEX_MODES}, got {self.reindex!r}")
        if self.headroom < 0:
            raise ValueError(f"{self.name}: headroom must be >= 0, got {self.headroom}")

    def check_model(self, rope: RopeSpec | None, num_layers: int) -> None:
        require_rope(rope, self.name)

    def check_room(self, rope: RopeSpec, num_system_tokens: int, budget: int, anchors: int = 0) -> None:
        """At setup: RoPE present, the budget at least the system prompt, and everything kept plus the
        headroom under the model's position limit."""
        require_rope(rope, self.name)
        check_budget(budget, num_system_tokens, self.name)
        check_position_room(self.name, rope, num_system_tokens, budget, self.headroom, anchors)

    def reindex_positions(self, cache: MemoryCache, rope: RopeSpec, next_position: int) -> int:
        """Re-index the cache's positions with this policy's mode and headroom; returns the next position."""
        return reindex_cache(cache, rope, next_position, mode=self.reindex, headroom=self.headroom)

    def select_everywhere(self, cache: MemoryCache, keep: torch.Tensor, rope: RopeSpec,
                          next_position: int) -> CompressResult:
        """Keep the entries ``keep`` ``(N,)`` bool marks in every layer (policies whose layers hold the same
        entries), re-index, and report."""
        index = keep.nonzero().squeeze(1)
        evicted = len(cache.layers[0]) - index.numel()
        for layer in cache.layers:
            layer.select(index)
        new_next = self.reindex_positions(cache, rope, next_position)
        return CompressResult(evicted=evicted, next_position=new_next)


def keep_top(kinds: torch.Tensor, scores: torch.Tensor, budget: int) -> torch.Tensor:
    """``(M,)`` long, increasing: the entries a layer keeps under a per-entry score.

    Every entry whose kind (``kinds`` ``(N,)``) is not VISUAL is kept, and of the visual entries the
    ``budget`` with the highest ``scores`` (``(N_visual,)`` float, one per visual entry in cache order);
    all of them when there are at most ``budget``. Ties go towards newer (later) entries: ``1e-9 * rank /
    N_visual`` is added before ``torch.topk`` (the rule SnapKV has always used, kept bit for bit). That
    offset is only representable next to small scores (float32: below about ``1e-9 / N_visual`` relative
    to the score), so it decides ties at or near 0 (e.g. no probe: the newest entries win); exact ties
    at larger values (the plateaus max-pooling makes) fall to ``torch.topk``'s order, which torch does
    not specify.
    """
    visual = (kinds == int(TokenKind.VISUAL)).nonzero().squeeze(1)
    if scores.shape != visual.shape:
        raise ValueError(f"keep_top: {visual.numel()} visual entries but scores of shape {tuple(scores.shape)}")
    others = (kinds != int(TokenKind.VISUAL)).nonzero().squeeze(1)
    if visual.numel() <= budget:
        return torch.sort(torch.cat([others, visual])).values
    scores = scores + 1e-9 * torch.arange(scores.numel()) / scores.numel()
    kept = visual[torch.topk(scores, budget).indices]
    return torch.sort(torch.cat([others, kept])).values


class ScoringPolicy(ReindexingPolicy):
    """Base of the policies that score each layer's visual entries and keep the best ``budget`` of them.

    A subclass (a dataclass with ``budget``, ``reindex`` and ``headroom`` fields) implements only
    :meth:`score`; this class's :meth:`compress` does, per layer whose visual entries exceed the budget,
    the shared keep-top (:func:`keep_top`: the ``budget`` best-scored visual entries plus every non-visual
    entry, in their original order, ties towards newer entries), then re-indexes positions once
    (:meth:`~ReindexingPolicy.reindex_positions`). Layers may hold different entries. It also supplies
    the setup check (:meth:`~ReindexingPolicy.check_room` at ``budget``) and :meth:`wants_compress`
    (more visual entries than ``budget``).
    """

    budget: int

    def setup(self, cache: MemoryCache, rope: RopeSpec, num_system_tokens: int) -> None:
        self.check_room(rope, num_system_tokens, self.budget)

    def wants_compress(self, cache: MemoryCache) -> bool:
        return cache.count(TokenKind.VISUAL) > self.budget

    def score(self, index: int, layer: MemoryLayer, probe: AttentionProbe | None) -> torch.Tensor:
        """``(N_visual,)`` float CPU scores of layer ``index``'s visual entries, in cache order (higher: keep).

        Called only for layers holding more than ``budget`` visual entries.
        """
        raise NotImplementedError

    def compress(self, cache: MemoryCache, rope: RopeSpec, probe: AttentionProbe | None,
                 next_position: int) -> CompressResult:
        evicted = 0
        for i, layer in enumerate(cache.layers):
            if int((layer.kinds == int(TokenKind.VISUAL)).sum()) <= self.budget:
                continue
            before = len(layer)
            layer.select(keep_top(layer.kinds, self.score(i, layer, probe), self.budget))
            evicted = max(evicted, before - len(layer))
        new_next = self.reindex_positions(cache, rope, next_position)
        return CompressResult(evicted=evicted, next_position=new_next)
