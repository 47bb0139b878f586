"""Token merging (DMC-style) and proportional attention: exactness, weighted means, positions, decisions.

The budget / order / system-prompt invariants of the merge policies run in the shared matrix of
``test_memory_policies.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppllava_hermes.memory import (
    FullCache,
    Hermes,
    KeyDimDecider,
    MergeThenEvict,
    TokenKind,
    TokenMerge,
    make_policy,
)
from ppllava_hermes.memory.cache import MemoryLayer, TokenMeta
from ppllava_hermes.memory.merge import _carry_probe, _places, merge_pair
from ppllava_hermes.memory.policy import AttentionProbe
from ppllava_hermes.memory.proportional import count_bias, proportional_attention, proportional_sdpa
from ppllava_hermes.memory.rope import rerotate, rotate
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession

from .helpers import random_frames
from .memory_helpers import adapter

FAMILIES = ["qwen2_5_vl", "llava_onevision"]


def static_frames(n: int, moving: int = 4, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` random frames, then the last of them repeated: a static stretch."""
    frames, times = random_frames(n, seed=seed)
    frames[moving:] = frames[moving - 1]
    return frames, times


def run(family: str, policy, frames, times, chunk: int = 4, question: str = "What now?"):
    session = StreamingSession(adapter(family), memory=policy, config=StreamConfig(chunk_frames=chunk,
                                                                                   record_logits=True))
    session.add_frames(frames, times)
    answer = session.ask(question, GenerationConfig(max_new_tokens=3), return_logits=True)
    return session, answer


# ---- a merge that never fires is the plain policy, bit for bit --------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("plain, merged", [
    (lambda: FullCache(), lambda: TokenMerge(threshold=2.0)),
    (lambda: Hermes(budget=24, anchors=4, headroom=64),
     lambda: MergeThenEvict(TokenMerge(threshold=2.0), Hermes(budget=24, anchors=4, headroom=64))),
    (lambda: Hermes(budget=24, anchors=4, headroom=64, reindex="eager"),
     lambda: make_policy("merge", budget=24, threshold=2.0, anchors=4, headroom=64, reindex="eager")),
], ids=["full", "hermes", "hermes_eager_by_name"])
def test_merge_that_never_fires_equals_the_plain_policy(family, plain, merged):
    frames, times = static_frames(16)
    s_plain, a_plain = run(family, plain(), frames, times)
    s_merge, a_merge = run(family, merged(), frames, times)
    assert all(r.merged == 0 or isinstance(s_merge.memory, MergeThenEvict) for r in s_merge.stats.compress_log)
    assert s_plain.next_position == s_merge.next_position
    for p, m in zip(s_plain.cache.state(), s_merge.cache.state(), strict=True):
        assert p.keys() == m.keys()
        for key in p:
            assert torch.equal(p[key], m[key]), key
    assert len(s_plain.logits_log) == len(s_merge.logits_log)
    for lp, lm in zip(s_plain.logits_log, s_merge.logits_log, strict=True):
        assert torch.equal(lp, lm)
    assert torch.equal(a_plain.question_logits, a_merge.question_logits)
    assert a_plain.token_ids == a_merge.token_ids


# ---- a merged entry is the weighted mean of its members ---------------------------------------------
def _layer(keys: torch.Tensor, positions: torch.Tensor, counts: torch.Tensor) -> MemoryLayer:
    layer = MemoryLayer(pos_dims=positions.shape[0])
    layer.keys, layer.values, layer.is_initialized = keys, keys.flip(-1) * 2 + 1, True
    layer.append_meta(TokenMeta(positions, torch.arange(keys.shape[-2]),
                                torch.full((keys.shape[-2],), int(TokenKind.VISUAL))))
    layer.counts = counts.float()
    return layer


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_pair_is_the_count_weighted_mean_after_rerotation(family):
    rope = adapter(family).rope_spec()
    d = 2 * rope.inv_freq.shape[0]
    pos_dims = 3 if rope.mrope_section is not None else 1
    torch.manual_seed(0)
    keys = torch.randn(1, 2, 4, d, dtype=torch.float64)
    positions = torch.tensor([[3, 9, 17, 30]] * pos_dims) + torch.arange(pos_dims)[:, None]
    layer = _layer(keys.clone(), positions, torch.tensor([2.0, 3.0, 1.0, 5.0]))
    values = layer.values.clone()
    merge_pair(layer, torch.tensor([3]), torch.tensor([1]), rope)  # entry 1 (count 3) into entry 3 (count 5)
    assert len(layer) == 3 and layer.counts.tolist() == [2.0, 1.0, 8.0]
    moved = rerotate(keys[..., 1:2, :], positions[:, 1:2], positions[:, 3:4], rope)
    want = (3 * moved + 5 * keys[..., 3:4, :]) / 8
    torch.testing.assert_close(layer.keys[..., 2:3, :], want, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.values[..., 2:3, :], (3 * values[..., 1:2, :] + 5 * values[..., 3:4, :]) / 8)
    assert torch.equal(layer.positions[:, 2], positions[:, 3])  # the survivor keeps its position
    assert torch.equal(layer.keys[..., :2, :], keys[..., [0, 2], :])  # others untouched


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("survivor", ["newest", "oldest"])
def test_a_merged_stream_entry_is_the_mean_of_the_full_caches_members(family, survivor):
    """Layer 0 keys do not depend on attention, so the full cache holds the very members of each merge."""
    frames, times = static_frames(12, moving=2)
    full, _ = run(family, FullCache(), frames, times)
    merged, _ = run(family, TokenMerge(threshold=-1.0, survivor=survivor), frames, times)  # always merge
    rope = full.rope
    f0, m0 = full.cache.layers[0], merged.cache.layers[0]
    assert (m0.counts > 1).any()
    places = {}
    for seg in torch.unique(f0.segments[f0.kinds == int(TokenKind.VISUAL)]).tolist():
        idx = (f0.segments == seg).nonzero().squeeze(1)
        pl, _ = _places(f0.positions[:, idx], f0.frame_ids[idx])
        for i, (a, b) in zip(idx.tolist(), pl.tolist(), strict=True):
            if a >= 0:
                places.setdefault((a, b), []).append(i)
    for j in (m0.counts > 1).nonzero().squeeze(1).tolist():
        uid = int(m0.uids[j])
        group = next(g for g in places.values() if uid in f0.uids[g].tolist())
        assert len(group) == int(m0.counts[j])  # threshold -1: a place collapses into one entry
        at = m0.positions[:, j : j + 1].expand(-1, len(group))
        members = rerotate(f0.keys[..., group, :], f0.positions[:, group], at, rope)
        torch.testing.assert_close(m0.keys[..., j, :], members.mean(dim=-2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m0.values[..., j, :], f0.values[..., group, :].mean(dim=-2), atol=1e-5, rtol=1e-5)
        keep_at = max(group) if survivor == "newest" else min(group)
        assert torch.equal(m0.positions[:, j], f0.positions[:, keep_at])
        assert int(m0.frame_ids[j]) == int(f0.frame_ids[keep_at])


def test_static_frames_merge_and_moving_ones_do_not():
    frames, times = static_frames(16, moving=8)
    session, _ = run("qwen2_5_vl", TokenMerge(threshold=0.999), frames, times)
    layer = session.cache.layers[0]
    # Frames 7..15 are one picture: groups (8,9)...(14,15) fold into (6,7)'s places? (6,7) differs (6 moves).
    merged = int((layer.counts - 1).clamp(min=0).sum())
    assert merged == 3 * 4  # three static groups of 2x2 tokens merged, nothing among the moving ones
    assert (layer.frame_ids[layer.counts > 1] == 14).all()  # newest survivor carries the newest frame id


# ---- positions and questions ----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_merging_keeps_positions_bounded_and_consistent_with_reindexing(family):
    frames, times = static_frames(48, moving=6)
    session = StreamingSession(adapter(family, 256), memory=make_policy(
        "merge", budget=24, threshold=0.5, anchors=4, headroom=64, reindex="eager"),
        config=StreamConfig(chunk_frames=2))
    session.add_frames(frames, times)
    assert any(r.merged for r in session.stats.compress_log)
    assert session.next_position < 256
    for layer in session.cache.layers:
        assert int(layer.positions.max()) < session.next_position
        assert bool((layer.uids[1:] > layer.uids[:-1]).all())
    before = session.cache.state()
    session.ask("Still?", GenerationConfig(max_new_tokens=2))
    for b, a in zip(before, session.cache.state(), strict=True):
        for key in b:
            assert torch.equal(b[key], a[key])


def test_probe_scores_follow_the_merged_entries():
    owners = [torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2])]
    from ppllava_hermes.memory.merge import MergeStep

    probe = AttentionProbe({"global": [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([1.0, 2.0, 3.0, 4.0])]})
    moved = _carry_probe(probe, MergeStep(owners, merged=1))
    torch.testing.assert_close(moved.scores["global"][0], torch.tensor([0.1, 0.5, 0.4]))
    torch.testing.assert_close(moved.scores["global"][1], torch.tensor([3.0, 3.0, 4.0]))


# ---- deciders -------------------------------------------------------------------------------------
def test_key_dim_decider_reads_the_key_before_rotation():
    rope = adapter("qwen2_5_vl").rope_spec()
    d = 2 * rope.inv_freq.shape[0]
    raw = torch.randn(1, 2, 5, d)
    raw[..., -1] = torch.tensor([[-3.0, 0.0, 4.0, 5.5, 9.0], [-5.0, 2.0, 4.0, 6.5, 9.0]])
    positions = torch.tensor([[10, 20, 30, 40, 50], [11, 12, 13, 14, 15], [11, 13, 15, 17, 19]])
    cached = rotate(raw, positions, rope)
    decider = KeyDimDecider(dim=-1, offset=5.0)
    scores = decider.scores(cached, positions, cached, rope)
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([-4.0, 1.0, 4.0, 6.0, 9.0]) - 5.0), atol=1e-5, rtol=0)
    assert (scores >= decider.threshold).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("decide", ["layer", "shared"])
def test_layers_stay_equal_in_length_whatever_they_decide(decide):
    frames, times = static_frames(16, moving=6)
    session, _ = run("llava_onevision", TokenMerge(threshold=0.6, decide=decide, match="sequence"), frames, times)
    assert len({len(layer) for layer in session.cache.layers}) == 1
    assert sum(r.merged for r in session.stats.compress_log) > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"match": "spatial"}, "match"), ({"survivor": "middle"}, "survivor"), ({"decide": "head"}, "decide"),
    ({"max_count": 1}, "max_count"), ({"reindex": "never"}, "reindex"), ({"headroom": -1}, "headroom"),
])
def test_bad_merge_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenMerge(**kwargs)
    with pytest.raises(ValueError, match="threshold"):
        KeyDimDecider(threshold=0.0)
    with pytest.raises(ValueError, match="need a budget"):
        make_policy("merge", anchors=3)


def test_max_count_caps_what_one_entry_stands_for():
    frames, times = static_frames(16, moving=2)
    session, _ = run("qwen2_5_vl", TokenMerge(threshold=-1.0, max_count=3), frames, times)
    assert float(session.cache.layers[0].counts.max()) == 3.0


# ---- proportional attention -----------------------------------------------------------------------
def test_log_count_bias_equals_attending_to_copies():
    torch.manual_seed(0)

    class Module(torch.nn.Module):
        layer_idx, num_key_value_groups = 0, 2

    q = torch.randn(1, 4, 3, 8)
    past_k, past_v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    new_k, new_v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    counts = torch.tensor([1.0, 3.0, 1.0, 2.0, 4.0])
    from ppllava_hermes.memory import proportional as prop

    token = prop._SOURCE.set(lambda i: counts)
    try:
        got, _ = proportional_sdpa(Module(), q, torch.cat([past_k, new_k], 2), torch.cat([past_v, new_v], 2), None)
    finally:
        prop._SOURCE.reset(token)
    reps = counts.long()
    k = torch.cat([past_k.repeat_interleave(reps, dim=2), new_k], 2).repeat_interleave(2, 1)
    v = torch.cat([past_v.repeat_interleave(reps, dim=2), new_v], 2).repeat_interleave(2, 1)
    n = int(reps.sum())
    mask = torch.ones(3, n + 3, dtype=torch.bool)
    mask[:, n:] = torch.ones(3, 3, dtype=torch.bool).tril()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert count_bias(torch.ones(2), 2, torch.device("cpu"), torch.float32)[0].tolist() == [0.0, 0.0, 0.0, float("-inf")]


@pytest.mark.parametrize("family", FAMILIES)
def test_proportional_attention_with_unit_counts_is_plain_attention(family):
    frames, times = static_frames(8)
    plain, a_plain = run(family, FullCache(), frames, times)
    session = StreamingSession(adapter(family), config=StreamConfig(chunk_frames=4, record_logits=True))
    config = session.adapter.language_model.config
    with proportional_attention(config, lambda i: session.cache.layers[i].counts):
        session.add_frames(frames, times)
        answer = session.ask("What now?", GenerationConfig(max_new_tokens=3), return_logits=True)
    assert config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(answer.question_logits, a_plain.question_logits, atol=1e-5, rtol=1e-5)
    merged = StreamingSession(adapter(family), memory=TokenMerge(threshold=-1.0), config=StreamConfig(chunk_frames=4))
    with proportional_attention(config, lambda i: merged.cache.layers[i].counts):
        merged.add_frames(frames, times)
        with_counts = merged.ask("What now?", GenerationConfig(max_new_tokens=3), return_logits=True)
    without = StreamingSession(adapter(family), memory=TokenMerge(threshold=-1.0), config=StreamConfig(chunk_frames=4))
    without.add_frames(frames, times)
    no_counts = without.ask("What now?", GenerationConfig(max_new_tokens=3), return_logits=True)
    assert not torch.allclose(with_counts.question_logits, no_counts.question_logits, atol=1e-4)


def test_merge_then_hermes_probes_only_the_layers_hermes_reads():
    """The engine probes the evicting policy's layers only; the memory is the same as with every layer probed."""

    class ProbeAll(MergeThenEvict):
        def probe_layers(self, num_layers):
            return {name: list(range(num_layers)) for name in self.probe_prompts}

    def run(cls):
        ad = adapter("qwen2_5_vl")
        policy = cls(merge=TokenMerge(threshold=0.5, headroom=64), evict=Hermes(budget=20, anchors=4, headroom=64))
        s = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=4))
        frames, times = static_frames(40, moving=24)
        s.add_frames(frames, times)
        return policy, s

    policy, s = run(MergeThenEvict)
    assert policy.probe_layers(4) == Hermes().probe_layers(4)
    assert sum(len(v) for v in policy.probe_layers(4).values()) < 2 * 4  # fewer than every layer twice
    _, ref = run(ProbeAll)
    assert s.stats.compress_log and any(r.evicted for r in s.stats.compress_log)
    for a, b in zip(s.cache.state(), ref.cache.state(), strict=True):
        assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
