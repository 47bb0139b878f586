"""RoPE arithmetic and position re-indexing are exact: same layout as HF, re-rotation == direct rotation."""

import pytest
import torch

from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.memory.positions import compact_positions
from ppllava_hermes.memory.rope import RopeSpec, frequency_axes, rerotate, rotate
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession

from .helpers import random_frames
from .memory_helpers import adapter

HEAD_DIM = 16


def spec(mrope: bool, scaling: float = 1.0, interleaved: bool = False) -> RopeSpec:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float) / HEAD_DIM))
    return RopeSpec(inv_freq=inv_freq, mrope_section=(2, 3, 3) if mrope else None,
                    attention_scaling=scaling, max_position_embeddings=32768, mrope_interleaved=interleaved)


def random_positions(n: int, pos_dims: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (pos_dims, n), generator=g)


def test_frequency_axes_follow_mrope_sections():
    assert frequency_axes(spec(True)).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert frequency_axes(spec(False)).tolist() == [0] * 8


def test_interleaved_frequency_axes_follow_qwen3_vl():
    """Qwen3-VL's recomposition: h on 1, 4, .. below 3*h_sec, w on 2, 5, .. below 3*w_sec, t elsewhere."""
    assert frequency_axes(spec(True, interleaved=True)).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    real = RopeSpec(inv_freq=torch.ones(64), mrope_section=(24, 20, 20), attention_scaling=1.0,
                    max_position_embeddings=262144, mrope_interleaved=True)
    axes = frequency_axes(real)
    assert axes[:60].tolist() == [0, 1, 2] * 20 and axes[60:].tolist() == [0] * 4
    assert [int((axes == a).sum()) for a in range(3)] == [24, 20, 20]


def test_rotate_matches_qwen3_vl_interleaved_rotary_embedding():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

    from ppllava_hermes.models import adapter_for_model
    from ppllava_hermes.testing import tiny_qwen3_vl

    ad = adapter_for_model(*tiny_qwen3_vl())
    rope = ad.rope_spec()
    assert rope.mrope_interleaved
    keys = torch.randn(1, 2, 24, 2 * rope.inv_freq.shape[0], generator=torch.Generator().manual_seed(0))
    pos = random_positions(24, 3, 60, seed=1)
    cos, sin = ad.language_model.rotary_emb(keys, pos.unsqueeze(1))
    _, expected = apply_rotary_pos_emb(keys, keys, cos, sin)
    torch.testing.assert_close(rotate(keys, pos, rope), expected, atol=1e-5, rtol=0)
    # The contiguous layout would not match: the test tells the two apart.
    contiguous = rotate(keys, pos, RopeSpec(rope.inv_freq, rope.mrope_section, 1.0, 32768))
    assert not torch.allclose(contiguous, expected, atol=1e-3)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_rotate_matches_the_models_own_rotary_embedding(family):
    ad = adapter(family)
    rope = ad.rope_spec()
    lm = ad.language_model
    heads, n = 2, 24
    head_dim = 2 * rope.inv_freq.shape[0]
    keys = torch.randn(1, heads, n, head_dim, generator=torch.Generator().manual_seed(0))
    pos = random_positions(n, ad.pos_dims, 60, seed=1)
    position_ids = pos.unsqueeze(1)  # (pos_dims, 1, n) for M-RoPE, (1, n) batch for 1-D
    if ad.pos_dims == 1:
        position_ids = pos
    cos, sin = lm.rotary_emb(keys, position_ids)
    module = __import__(type(lm).__module__, fromlist=["apply_rotary_pos_emb"])
    _, expected = module.apply_rotary_pos_emb(keys, keys, cos, sin)
    torch.testing.assert_close(rotate(keys, pos, rope), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mrope", [False, True, "interleaved"], ids=["rope", "mrope", "imrope"])
@pytest.mark.parametrize("scaling", [1.0, 0.7])
def test_rerotated_key_equals_key_rotated_at_new_position(mrope, scaling):
    rope = spec(bool(mrope), scaling, interleaved=mrope == "interleaved")
    pos_dims = 3 if mrope else 1
    keys = torch.randn(2, 3, 64, HEAD_DIM, generator=torch.Generator().manual_seed(2))
    old = random_positions(64, pos_dims, 30000, seed=3)
    new = random_positions(64, pos_dims, 30000, seed=4)  # every axis moves by its own delta
    moved = rerotate(rotate(keys, old, rope), old, new, rope)
    torch.testing.assert_close(moved, rotate(keys, new, rope), atol=1e-5, rtol=0)


@pytest.mark.parametrize("interleaved", [False, True], ids=["mrope", "imrope"])
def test_mrope_sections_rotate_by_their_own_delta_only(interleaved):
    rope = spec(True, interleaved=interleaved)
    keys = torch.randn(1, 1, 5, HEAD_DIM, generator=torch.Generator().manual_seed(5))
    old = random_positions(5, 3, 100, seed=6)
    new = old.clone()
    new[1] += 7  # h only: the t and w frequencies must not move
    moved = rerotate(keys, old, new, rope)
    axes = frequency_axes(rope).repeat(2)
    torch.testing.assert_close(moved[..., axes != 1], keys[..., axes != 1], atol=0, rtol=0)
    assert not torch.allclose(moved[..., axes == 1], keys[..., axes == 1])


def test_unmoved_keys_are_bit_identical():
    rope = spec(True)
    keys = torch.randn(1, 2, 6, HEAD_DIM)
    old = random_positions(6, 3, 100, seed=7)
    new = old.clone()
    new[:, 3:] -= 2
    moved = rerotate(keys, old, new, rope)
    assert torch.equal(moved[..., :3, :], keys[..., :3, :])
    assert rerotate(keys, old, old, rope) is keys


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_shifting_the_whole_memory_keeps_logits(family):
    """Attention sees relative positions only: moving every key and the question by d changes nothing."""
    ad = adapter(family)
    frames, times = random_frames(8, seed=3)
    session = StreamingSession(ad, config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    before = session.ask("What is it?", GenerationConfig(max_new_tokens=1), return_logits=True).question_logits
    d = 1000
    for layer in session.cache.layers:
        new = layer.positions + d
        layer.keys = rerotate(layer.keys, layer.positions, new, session.rope)
        layer.positions = new
    session.next_position += d
    after = session.ask("What is it?", GenerationConfig(max_new_tokens=1), return_logits=True).question_logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_compaction_is_identity_when_nothing_was_evicted(family):
    frames, times = random_frames(12, seed=4)
    session = StreamingSession(adapter(family), config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    layer = session.cache.layers[0]
    out = compact_positions(layer.positions, layer.segments)
    assert torch.equal(out.positions, layer.positions)
    assert out.next_position == session.next_position


def test_mrope_compaction_closes_gaps_between_segments_and_keeps_each_segment_intact():
    """Qwen2.5-VL layout: drop whole and partial chunks; each kept segment moves rigidly, no gaps remain."""
    frames, times = random_frames(16, seed=5)
    times = times * 8  # wide time steps: temporal positions run past the h/w extent (the Qwen rule)
    session = StreamingSession(adapter("qwen2_5_vl"), config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    layer = session.cache.layers[0]
    assert int(layer.positions[0].max()) > session.next_position  # t beyond the next start
    n = len(layer)
    keep = torch.ones(n, dtype=torch.bool)
    seg = layer.segments
    keep[seg == 1] = False  # a whole chunk
    second = (seg == 2).nonzero().squeeze(1)
    keep[second[:3]] = False  # the start of the next chunk (its vision_start and first tokens)
    layer.select(keep.nonzero().squeeze(1))
    out = compact_positions(layer.positions, layer.segments)
    old, new = layer.positions, out.positions
    for s in layer.segments.unique().tolist():
        m = layer.segments == s
        delta = new[:, m] - old[:, m]
        assert (delta == delta[:, :1]).all(), "a segment must move rigidly"
        assert (delta[0, 0] == delta).all(), "t, h and w move by the same amount"
        assert int(delta[0, 0]) <= 0
    # Gap-free on h/w: each segment starts one past the previous segment's h/w extent.
    segs = layer.segments.unique().tolist()
    for prev, cur in zip(segs, segs[1:], strict=False):
        hi = int(new[1:, layer.segments == prev].max())
        lo = int(new[:, layer.segments == cur].min())
        assert lo == hi + 1
    assert out.next_position == int(new[1:].max()) + 1
    assert torch.equal(new[:, layer.kinds == int(TokenKind.SYSTEM)], old[:, layer.kinds == int(TokenKind.SYSTEM)])


def test_dense_compaction_spans_at_most_the_entry_count():
    pos = torch.tensor([[0, 1, 10, 50, 90, 400, 401], [0, 1, 10, 12, 11, 400, 401], [0, 1, 10, 11, 13, 400, 401]])
    segments = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    out = compact_positions(pos, segments, dense=True)
    assert int(out.positions.max()) < pos.shape[1]
    assert out.next_position <= pos.shape[1]
    # Order inside a segment survives on every axis.
    for axis in range(3):
        a, b = pos[axis, 2:5], out.positions[axis, 2:5]
        assert torch.equal(torch.argsort(a, stable=True), torch.argsort(b, stable=True))


def test_1d_compaction_is_contiguous():
    pos = torch.tensor([[0, 1, 2, 7, 9, 30, 31]])
    out = compact_positions(pos, torch.tensor([0, 0, 0, 1, 1, 2, 2]))
    assert out.positions.tolist() == [[0, 1, 2, 3, 4, 5, 6]]
    assert out.next_position == 7
