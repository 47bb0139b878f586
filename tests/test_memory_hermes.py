"""HERMES specifics: tiers, recency vs attention, anchors (exact folding, one per frame, bounded), equal lengths."""

from __future__ import annotations

import pytest
import torch

from ppllava_hermes.memory import Hermes, MemoryCache, TokenKind, TokenMeta
from ppllava_hermes.memory.hermes import DEEP, MIDDLE, SHALLOW
from ppllava_hermes.memory.policy import AttentionProbe
from ppllava_hermes.memory.rope import RopeSpec, rotate
from ppllava_hermes.streaming import StreamConfig, StreamingSession

from .helpers import random_frames
from .memory_helpers import adapter

HEAD_DIM = 8
SYSTEM = 4
GRID = 2  # synthetic frames: a 2 x 2 grid of tokens


def spec(mrope: bool) -> RopeSpec:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float) / HEAD_DIM))
    return RopeSpec(inv_freq=inv_freq, mrope_section=(1, 1, 2) if mrope else None, attention_scaling=1.0,
                    max_position_embeddings=4096)


class Synthetic:
    """A cache built by hand: every token of frame f in layer l has the same key before rotation
    (``base[l][f]``) and the same value, so a correct anchor equals ``rotate(base, anchor position)``."""

    def __init__(self, frames: int, mrope: bool, num_layers: int = 4, seed: int = 0) -> None:
        self.rope = spec(mrope)
        self.pos_dims = 3 if mrope else 1
        self.cache = MemoryCache(num_layers, self.pos_dims)
        g = torch.Generator().manual_seed(seed)
        room = 64 + 1  # frames a test may add, + the system prompt's slot (last)
        self.base = torch.randn(num_layers, room, 1, 2, 1, HEAD_DIM, generator=g)
        self.vals = torch.randn(num_layers, room, 1, 2, 1, HEAD_DIM, generator=g)
        self.cursor = 0
        self._commit(torch.arange(SYSTEM).unsqueeze(0).expand(self.pos_dims, -1), frame=-1, kind=TokenKind.SYSTEM)
        for f in range(frames):
            self.add_frame(f)

    def add_frame(self, f: int) -> None:
        c = self.cursor
        if self.pos_dims == 3:
            rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
            pos = torch.stack([torch.full((GRID * GRID,), c), c + rows.flatten(), c + cols.flatten()])
        else:
            pos = torch.arange(c, c + GRID * GRID).unsqueeze(0)
        self._commit(pos, frame=f, kind=TokenKind.VISUAL)

    def _commit(self, pos: torch.Tensor, frame: int, kind: TokenKind) -> None:
        n = pos.shape[1]
        slot = frame if frame >= 0 else self.base.shape[1] - 1
        for i, layer in enumerate(self.cache.layers):
            keys = rotate(self.base[i, slot].expand(1, 2, n, HEAD_DIM), pos, self.rope)
            layer.update(keys, self.vals[i, slot].expand(1, 2, n, HEAD_DIM).clone())
        self.cache.commit(TokenMeta(pos.clone(), torch.full((n,), frame), torch.full((n,), int(kind))))
        self.cursor = int(pos.max()) + 1


def test_tiers_follow_the_reference_fractions():
    h = Hermes()
    assert [h.tier(i, 4)[0] for i in range(4)] == [SHALLOW, MIDDLE, MIDDLE, DEEP]
    tiers = [h.tier(i, 28)[0] for i in range(28)]
    assert tiers[:3] == [SHALLOW] * 3 and tiers[3:20] == [MIDDLE] * 17 and tiers[20:] == [DEEP] * 8
    assert h.recency_params(3, 28) == pytest.approx((1.0, 20.0))  # top of the middle band: p = 0
    assert h.recency_params(19, 28) == pytest.approx((0.1, 0.5))  # bottom: p = 1
    assert h.recency_params(11, 28) == pytest.approx((0.55, 10.25))  # p = 0.5
    assert h.recency_params(0, 28) == (1.0, 20.0) and h.recency_params(27, 28)[0] == 0.0


@pytest.mark.parametrize("mrope", [False, True], ids=["rope", "mrope"])
def test_anchor_is_the_average_of_its_frames_keys_rerotated_to_one_position(mrope):
    syn = Synthetic(frames=8, mrope=mrope)
    policy = Hermes(budget=10, anchors=100, headroom=64, smoothing=(0, 0, 0))
    policy.setup(syn.cache, syn.rope, SYSTEM)
    policy.compress(syn.cache, syn.rope, None, syn.cursor)
    deep = syn.cache.layers[3]
    anchors = (deep.kinds == int(TokenKind.ANCHOR)).nonzero().squeeze(1)
    assert anchors.numel() > 0
    for i in anchors.tolist():
        f = int(deep.frame_ids[i])
        # Same key before rotation for the whole frame: the average of re-rotated keys is that key at the
        # anchor's own position, t/h/w sections each turned by their own delta.
        expected = rotate(syn.base[3, f].expand(1, 2, 1, HEAD_DIM), deep.positions[:, i : i + 1], syn.rope)
        torch.testing.assert_close(deep.keys[..., i : i + 1, :], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(deep.values[..., i, :], syn.vals[3, f, ..., 0, :], atol=1e-6, rtol=0)
        kept_of_frame = int(((deep.frame_ids == f) & (deep.kinds == int(TokenKind.VISUAL))).sum())
        assert int(deep.counts[i]) + kept_of_frame == GRID * GRID
    assert torch.unique(deep.frame_ids[anchors]).numel() == anchors.numel()  # one anchor per frame


def test_anchors_merge_when_the_allowance_overflows_and_still_account_for_every_token():
    syn = Synthetic(frames=12, mrope=True)
    policy = Hermes(budget=8, anchors=3, headroom=64)
    policy.setup(syn.cache, syn.rope, SYSTEM)
    for f in range(12, 20):  # keep streaming, compress after every frame
        policy.compress(syn.cache, syn.rope, None, syn.cursor)
        syn.add_frame(f)
    policy.compress(syn.cache, syn.rope, None, syn.cursor)
    deep = syn.cache.layers[3]
    memory = deep.kinds != int(TokenKind.SYSTEM)
    assert int((deep.kinds == int(TokenKind.ANCHOR)).sum()) == 3
    assert float(deep.counts[memory].sum()) == 20 * GRID * GRID
    lengths = {len(layer) for layer in syn.cache.layers}
    assert lengths == {SYSTEM + 8 + 3}


def test_deep_layers_keep_what_the_global_probe_attends_and_shallow_layers_keep_the_newest():
    syn = Synthetic(frames=10, mrope=False)
    n = len(syn.cache.layers[0])
    favourite = torch.arange(SYSTEM, SYSTEM + GRID * GRID)  # frame 0, the oldest
    attention = torch.full((n,), 0.01)
    attention[favourite] = 1.0
    probe = AttentionProbe(scores={"global": [attention] * 4, "local": [torch.full((n,), 0.01)] * 4})
    policy = Hermes(budget=8, anchors=2, headroom=64, smoothing=(0, 0, 0))
    policy.setup(syn.cache, syn.rope, SYSTEM)
    policy.compress(syn.cache, syn.rope, probe, syn.cursor)
    deep, shallow = syn.cache.layers[3], syn.cache.layers[0]
    deep_visual = deep.frame_ids[deep.kinds == int(TokenKind.VISUAL)]
    assert (deep_visual == 0).sum() == GRID * GRID  # all of the attended frame survives in the deep layer
    shallow_visual = shallow.frame_ids[shallow.kinds == int(TokenKind.VISUAL)]
    assert 0 not in shallow_visual.tolist()
    # Shallow (pure recency): exactly the newest budget + anchors entries of the stream.
    assert shallow_visual.tolist() == [f for f in range(10) for _ in range(GRID * GRID)][-(8 + 2):]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_stream_memory_accounts_for_every_token_and_represents_every_frame(family):
    session = StreamingSession(adapter(family), memory=Hermes(budget=24, anchors=1000, headroom=64),
                               config=StreamConfig(chunk_frames=4))
    frames, times = random_frames(32, seed=6)
    session.add_frames(frames, times)
    n_system = session.cache.count(TokenKind.SYSTEM)
    streamed = int(max(int(layer.uids.max()) for layer in session.cache.layers)) + 1 - n_system
    group_ids = sorted({fid for fid in range(32)} if family == "llava_onevision" else set(range(0, 32, 2)))
    anchors = [session.cache.count(TokenKind.ANCHOR, i) for i in range(4)]
    assert anchors[:3] == [0, 0, 0] and anchors[3] > 0
    for i, layer in enumerate(session.cache.layers):
        visual = int((layer.kinds == int(TokenKind.VISUAL)).sum())
        assert visual + anchors[i] == 24 + anchors[3]  # equal memory slots in every layer
    deep = session.cache.layers[3]
    memory = deep.kinds != int(TokenKind.SYSTEM)
    assert float(deep.counts[memory].sum()) == streamed  # nothing is lost in the deep layer
    assert sorted(set(deep.frame_ids[memory].tolist())) == group_ids  # every frame is still there
    anchor_frames = deep.frame_ids[deep.kinds == int(TokenKind.ANCHOR)]
    assert torch.unique(anchor_frames).numel() == anchor_frames.numel()


def test_smoothing_reads_the_layer_below_by_stream_uid():
    syn = Synthetic(frames=6, mrope=False)
    policy = Hermes(budget=8, anchors=0, headroom=64, smoothing=(0.0, 0.0, 0.0))
    plain = policy.scores(syn.cache, None)
    smoothed = Hermes(budget=8, anchors=0, headroom=64, smoothing=(1.0, 1.0, 1.0)).scores(syn.cache, None)
    # g = 1 everywhere: every layer takes the deepest layer's scores (same entries here).
    for layer_scores in smoothed:
        torch.testing.assert_close(layer_scores, plain[3], atol=1e-5, rtol=0)


def test_snapkv_keeps_attention_peaks_with_their_neighbours():
    from ppllava_hermes.memory import SnapKV

    syn = Synthetic(frames=10, mrope=False)
    n = len(syn.cache.layers[0])
    attention = torch.full((n,), 0.01)
    peak = SYSTEM + 17  # one entry of frame 4
    attention[peak] = 1.0
    policy = SnapKV(budget=5, kernel=5, headroom=64)
    policy.setup(syn.cache, syn.rope, SYSTEM)
    policy.compress(syn.cache, syn.rope, AttentionProbe(scores={"window": [attention] * 4}), syn.cursor)
    for layer in syn.cache.layers:
        kept = layer.uids[layer.kinds == int(TokenKind.VISUAL)].tolist()
        assert kept == list(range(peak - 2, peak + 3))


def test_scores_do_not_depend_on_the_layers_probe_layers_skips():
    """Layers where recency weighs 1 ignore attention: a probe without them (None) gives bit-identical scores."""
    syn = Synthetic(frames=8, mrope=False, num_layers=10)
    n = len(syn.cache.layers[0])
    g = torch.Generator().manual_seed(3)
    full = AttentionProbe(scores={name: [torch.rand(n, generator=g) for _ in range(10)] for name in ("local", "global")})
    policy = Hermes(budget=8, anchors=2, headroom=64)
    need = policy.probe_layers(10)
    assert need == {"local": [2, 3, 4, 5, 6], "global": [2, 3, 4, 5, 6, 7, 8, 9]}  # 0 shallow, 1 top of middle: a = 1
    reduced = AttentionProbe(scores={name: [s if i in need[name] else None for i, s in enumerate(rows)]
                                     for name, rows in full.scores.items()})
    for a, b in zip(policy.scores(syn.cache, full), policy.scores(syn.cache, reduced), strict=True):
        assert torch.equal(a, b)
