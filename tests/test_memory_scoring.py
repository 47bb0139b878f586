"""The scoring-policy base: the shared keep-top (ties towards newer entries, non-visual entries always kept,
budget never exceeded), one re-indexing per compression, and timing left to the engine."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppllava_hermes.memory import MemoryCache, SnapKV, StreamingLLM, TokenKind, TokenMeta
from ppllava_hermes.memory.policy import AttentionProbe, ScoringPolicy, keep_top
from ppllava_hermes.memory.rope import RopeSpec
from ppllava_hermes.streaming import StreamConfig, StreamingSession

from .helpers import random_frames
from .memory_helpers import adapter

S, V, T, A = (int(k) for k in (TokenKind.SYSTEM, TokenKind.VISUAL, TokenKind.TEXT, TokenKind.ANCHOR))
HEAD_DIM = 8


def _kinds(*kinds: int) -> torch.Tensor:
    return torch.tensor(kinds, dtype=torch.long)


def test_ties_go_to_the_newest_visual_entries():
    kinds = _kinds(S, S, V, V, V, T, V, V, V, A)
    visual = (kinds == V).nonzero().squeeze(1)
    kept = keep_top(kinds, torch.zeros(visual.numel()), budget=4)
    assert kept.tolist() == [0, 1, 4, 5, 6, 7, 8, 9]  # everything non-visual + the 4 newest visual
    # Ties at 0 among the rest (where the tie-break offset is representable): the newest win.
    scores = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.0, 0.0])  # visual entries 2, 3, 4, 6, 7, 8
    assert keep_top(kinds, scores, budget=3).tolist() == [0, 1, 3, 5, 6, 8, 9]
    assert keep_top(kinds, scores, budget=4).tolist() == [0, 1, 3, 5, 6, 7, 8, 9]


def test_at_most_budget_visual_entries_keeps_everything():
    kinds = _kinds(S, V, T, V, V)
    assert keep_top(kinds, torch.tensor([0.3, 0.1, 0.2]), budget=3).tolist() == [0, 1, 2, 3, 4]
    assert keep_top(_kinds(S, T), torch.zeros(0), budget=1).tolist() == [0, 1]


def test_scores_must_match_the_visual_entries():
    with pytest.raises(ValueError, match="3 visual entries"):
        keep_top(_kinds(S, V, V, V), torch.zeros(2), budget=1)


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from([S, V, V, V, T, A]), min_size=0, max_size=40),
       budget=st.integers(min_value=1, max_value=20), data=st.data())
def test_keep_top_invariants(kinds, budget, data):
    kinds_t = torch.tensor(kinds, dtype=torch.long)
    n_visual = int((kinds_t == V).sum())
    # Scores on a coarse grid, so ties are common.
    raw = data.draw(st.lists(st.integers(min_value=0, max_value=3), min_size=n_visual, max_size=n_visual))
    scores = torch.tensor(raw, dtype=torch.float32) / 4
    kept = keep_top(kinds_t, scores, budget)
    assert bool((kept[1:] > kept[:-1]).all()), "original order, no duplicates"
    others = (kinds_t != V).nonzero().squeeze(1)
    assert set(others.tolist()) <= set(kept.tolist()), "non-visual entries are always kept"
    kept_visual = [i for i in kept.tolist() if kinds[i] == V]
    assert len(kept_visual) == min(budget, n_visual), "exactly the budget (or all) visual entries"
    # The kept visual entries are the best by score; among entries scored 0, the newest.
    visual = (kinds_t == V).nonzero().squeeze(1).tolist()
    kept_j = [j for j, i in enumerate(visual) if i in set(kept_visual)]
    dropped_j = [j for j in range(n_visual) if j not in set(kept_j)]
    if kept_j and dropped_j:
        assert min(raw[j] for j in kept_j) >= max(raw[j] for j in dropped_j)
        zeros_kept = [j for j in kept_j if raw[j] == 0]
        zeros_dropped = [j for j in dropped_j if raw[j] == 0]
        if zeros_kept and zeros_dropped:
            assert min(zeros_kept) > max(zeros_dropped), "ties at 0 go to the newest entries"


def _spec() -> RopeSpec:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float) / HEAD_DIM))
    return RopeSpec(inv_freq=inv_freq, mrope_section=None, attention_scaling=1.0, max_position_embeddings=4096)


def _cache(runs: list[tuple[int, int, int]], num_layers: int = 3) -> tuple[MemoryCache, int]:
    """A hand-built 1-D RoPE cache of runs ``(frame, kind, n)``, the same entries in every layer."""
    g = torch.Generator().manual_seed(0)
    cache = MemoryCache(num_layers, 1)
    cursor = 0
    for frame, kind, n in runs:
        for layer in cache.layers:
            layer.update(torch.randn(1, 2, n, HEAD_DIM, generator=g), torch.randn(1, 2, n, HEAD_DIM, generator=g))
        cache.commit(TokenMeta(torch.arange(cursor, cursor + n)[None], torch.full((n,), frame),
                               torch.full((n,), kind)))
        cursor += n
    return cache, cursor


class _ByUid(ScoringPolicy):
    """Test policy: layer ``i`` prefers its oldest entries when ``i`` is odd, its newest otherwise."""

    name = "by-uid"

    def __init__(self, budget: int) -> None:
        self.budget, self.reindex, self.headroom = budget, "eager", 16
        self.reindexed = 0

    def score(self, index, layer, probe):
        uids = layer.uids[layer.kinds == V].double()
        return -uids if index % 2 else uids

    def reindex_positions(self, cache, rope, next_position):
        self.reindexed += 1
        return super().reindex_positions(cache, rope, next_position)


def test_compress_keeps_top_per_layer_and_reindexes_once():
    runs = [(-1, S, 3)] + [(f, V, 4) for f in range(4)] + [(-1, T, 2)] + [(f, V, 4) for f in range(4, 6)]
    cache, cursor = _cache(runs)
    policy = _ByUid(budget=10)
    policy.setup(cache, _spec(), 3)
    assert policy.wants_compress(cache)
    result = policy.compress(cache, _spec(), None, cursor)
    assert policy.reindexed == 1 and not policy.wants_compress(cache)
    assert result.evicted == 14 and result.merged == 0 and result.seconds == 0.0
    assert result.next_position == 3 + 10 + 2  # eager: the kept entries are packed after the system prompt
    for i, layer in enumerate(cache.layers):
        assert len(layer) == 3 + 10 + 2
        assert layer.kinds.tolist().count(T) == 2 and layer.kinds.tolist().count(S) == 3
        visual = layer.uids[layer.kinds == V]
        assert visual.tolist() == (list(range(3, 13)) if i % 2 else [17, 18, *range(21, 29)])
        assert bool((layer.uids[1:] > layer.uids[:-1]).all())


def test_sink_score_keeps_the_sinks_and_the_newest_entries():
    runs = [(-1, S, 3)] + [(f, V, 5) for f in range(6)]
    cache, cursor = _cache(runs)
    policy = StreamingLLM(budget=12, sink_tokens=3, headroom=16)
    policy.setup(cache, _spec(), 3)
    result = policy.compress(cache, _spec(), None, cursor)
    assert result.evicted == 30 - 12
    for layer in cache.layers:
        assert layer.uids.tolist() == [0, 1, 2, 3, 4, 5, *range(33 - 9, 33)]


def test_snapkv_score_is_the_pooled_probe_attention():
    runs = [(-1, S, 2)] + [(f, V, 4) for f in range(3)]
    cache, _ = _cache(runs, num_layers=2)
    attention = torch.tensor([0.9, 0.9, 0, 0, 0.5, 0, 0, 0, 0, 0, 0, 0.2, 0, 0])
    probe = AttentionProbe(scores={"window": [attention, attention.flip(0)]})
    policy = SnapKV(budget=4, kernel=3, headroom=16)
    assert policy.score(0, cache.layers[0], probe).tolist() == pytest.approx(
        [0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.0])
    assert policy.score(1, cache.layers[1], None).tolist() == [0.0] * 12


def test_policies_leave_timing_to_the_engine():
    """A policy's own result carries no time; the engine fills ``seconds`` for every compression."""
    runs = [(-1, S, 3)] + [(f, V, 4) for f in range(6)]
    for policy in (SnapKV(budget=8, headroom=16), StreamingLLM(budget=8, headroom=16)):
        cache, cursor = _cache(runs)
        policy.setup(cache, _spec(), 3)
        assert policy.compress(cache, _spec(), None, cursor).seconds == 0.0
    session = StreamingSession(adapter("qwen2_5_vl"), memory=SnapKV(budget=24, headroom=64),
                               config=StreamConfig(chunk_frames=4))
    frames, times = random_frames(16, seed=1)
    session.add_frames(frames, times)
    assert session.stats.compress_log and all(r.seconds > 0 for r in session.stats.compress_log)
    assert session.stats.compress_s == pytest.approx(sum(r.seconds for r in session.stats.compress_log))
