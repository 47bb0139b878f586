"""The novelty memory: an entry's score is how unlike every older entry it is; repeats go, firsts stay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ppllava_hermes.memory import MemoryCache, NoveltyKV, TokenKind, TokenMeta, make_policy
from ppllava_hermes.memory.novelty import BLOCK, novelty_scores

HEAD_DIM, HEADS, SYSTEM, PER_FRAME = 8, 2, 3, 4


def test_scores_are_one_minus_the_best_older_match():
    a, b, c = torch.eye(3)
    content = torch.stack([a, b, F.normalize(a + 0.1 * b, dim=0), c])
    frames = torch.tensor([0, 0, 1, 1])
    s = novelty_scores(content, frames)
    assert s[0] == 1.0 and s[1] == 1.0  # the oldest frame: nothing to repeat
    assert s[2] == pytest.approx(1 - float(content[2] @ a), abs=1e-6)  # a near-copy of a: near 0
    assert s[3] == pytest.approx(1.0, abs=1e-6)  # orthogonal to everything older
    same_frame = novelty_scores(torch.stack([a, a]), torch.tensor([5, 5]))
    assert same_frame.tolist() == [1.0, 1.0]  # entries of one frame are not compared with each other


def test_blocked_scores_equal_the_direct_computation():
    g = torch.Generator().manual_seed(0)
    n = BLOCK + 37
    content = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    frames = torch.randint(0, 50, (n,), generator=g)
    sim = content @ content.T
    older = frames[None, :] < frames[:, None]
    want = torch.where(older.any(1), 1 - sim.masked_fill(~older, -2.0).amax(1), torch.ones(n))
    assert torch.allclose(novelty_scores(content, frames), want, atol=1e-6)


def _cache(frames: list[list[torch.Tensor]], layers: int = 2) -> MemoryCache:
    """System prompt + one committed chunk per frame; entry ``j`` of frame ``f`` has value ``frames[f][j]``
    (the same in every head and layer); keys random (novelty reads values only)."""
    cache = MemoryCache(layers, 1)
    g = torch.Generator().manual_seed(1)
    runs = [([torch.randn(HEAD_DIM, generator=g) for _ in range(SYSTEM)], -1, TokenKind.SYSTEM)]
    runs += [(vals, f, TokenKind.VISUAL) for f, vals in enumerate(frames)]
    cursor = 0
    for vals, fid, kind in runs:
        n = len(vals)
        v = torch.stack(vals)[None, None].expand(1, HEADS, n, HEAD_DIM).clone()
        for layer in cache.layers:
            layer.update(torch.randn(1, HEADS, n, HEAD_DIM, generator=g), v.clone())
        pos = torch.arange(cursor, cursor + n)[None]
        cache.commit(TokenMeta(pos, torch.full((n,), fid), torch.full((n,), int(kind))))
        cursor += n
    return cache


def test_keeps_the_first_view_of_each_thing_and_the_newest_frames():
    """A static background of 4 entries repeats in every frame; one object appears only in frame 3. With room
    for the newest 2 frames + 5 more, the memory keeps the newest frames, the first background and the
    object, and drops every repeat of the background in between."""
    g = torch.Generator().manual_seed(2)
    background = [torch.randn(HEAD_DIM, generator=g) for _ in range(PER_FRAME)]
    obj = torch.randn(HEAD_DIM, generator=g)
    frames = []
    for f in range(10):
        vals = [b + 0.01 * torch.randn(HEAD_DIM, generator=g) for b in background]
        if f == 3:
            vals[1] = obj
        frames.append(vals)
    cache = _cache(frames)
    policy = NoveltyKV(budget=2 * PER_FRAME + 5, recent=2)
    keep = policy.keep_mask(cache)
    layer = cache.layers[0]
    kept_visual = keep & (layer.kinds == int(TokenKind.VISUAL))
    fids = layer.frame_ids[kept_visual].tolist()
    assert int(kept_visual.sum()) == policy.budget
    assert fids.count(8) == PER_FRAME and fids.count(9) == PER_FRAME  # the newest frames, whole
    assert fids.count(0) == PER_FRAME  # the first view of the background
    obj_index = SYSTEM + 3 * PER_FRAME + 1
    assert bool(keep[obj_index]), "the object seen once, in frame 3, must stay"
    assert set(fids) == {0, 3, 8, 9}
    assert bool(keep[layer.kinds == int(TokenKind.SYSTEM)].all())


def test_newest_frames_alone_over_budget_keep_their_newest_entries():
    g = torch.Generator().manual_seed(3)
    cache = _cache([[torch.randn(HEAD_DIM, generator=g) for _ in range(PER_FRAME)] for _ in range(4)])
    keep = NoveltyKV(budget=3, recent=2).keep_mask(cache)
    visual = (cache.layers[0].kinds == int(TokenKind.VISUAL)).nonzero().squeeze(1)
    assert keep[visual].tolist() == [False] * (4 * PER_FRAME - 3) + [True] * 3


def test_under_budget_keeps_everything_and_options_are_checked():
    cache = _cache([[torch.ones(HEAD_DIM)] * PER_FRAME] * 2)
    assert bool(NoveltyKV(budget=100).keep_mask(cache).all())
    assert not NoveltyKV(budget=100).wants_compress(cache) and NoveltyKV(budget=4).wants_compress(cache)
    for bad, match in (({"budget": 0}, "budget"), ({"recent": -1}, "recent"), ({"layer": -1}, "layer"),
                       ({"reindex": "often"}, "reindex")):
        with pytest.raises(ValueError, match=match):
            make_policy("novelty", **bad)
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        NoveltyKV(layer=7).check_model(_rope(), num_layers=4)


def _rope():
    from ppllava_hermes.memory.rope import RopeSpec

    return RopeSpec(inv_freq=torch.ones(HEAD_DIM // 2), mrope_section=None, attention_scaling=1.0,
                    max_position_embeddings=4096)
