"""Pooling inside the streaming engine: identity, token reduction through ask(), exact pooled positions."""

import pytest
import torch

from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.pooling_stage import PoolingStage, pool_visual

from .helpers import random_frames, tiny_adapter

# Frame sizes that give a 6x6 (Qwen2.5-VL, merged) or 3x3 (LLaVA-OneVision, bilinear-pooled) token grid.
SIZES = {"qwen2_5_vl": ({}, 168), "llava_onevision": ({"image_size": 84}, 84)}


def _session(family, kernel, record=True):
    kwargs, size = SIZES[family]
    adapter = tiny_adapter(family, **kwargs)
    stage = None if kernel is None else PoolingStage(PromptGuidedPooling(PoolingConfig(kernel=kernel)))
    return adapter, size, StreamingSession(adapter, pooling=stage,
                                           config=StreamConfig(chunk_frames=8, record_logits=record))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_identity_kernel_gives_same_logits(family):
    outs = []
    for kernel in (None, (1, 1, 1)):
        _, size, session = _session(family, kernel)
        frames, times = random_frames(16, size=size, seed=4)
        session.add_frames(frames, times)
        ans = session.ask("What is shown?", GenerationConfig(max_new_tokens=1), return_logits=True)
        outs.append(torch.cat(session.logits_log[:-1] + [ans.question_logits]))
    assert outs[0].shape == outs[1].shape
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_reference_kernel_cuts_visual_tokens_by_80_percent(family):
    seen = {}
    for kernel in (None, (2, 3, 3)):
        _, size, session = _session(family, kernel, record=False)
        frames, times = random_frames(16, size=size, seed=5)
        session.add_frames(frames, times)
        ans = session.ask("What is shown?", GenerationConfig(max_new_tokens=2))
        seen[kernel] = ans.visual_tokens_seen
    assert seen[(2, 3, 3)] <= 0.2 * seen[None], seen


def test_pooled_positions_match_hand_computed_qwen():
    adapter, size, session = _session("qwen2_5_vl", (2, 3, 3), record=False)
    frames, times = random_frames(8, size=size, seed=6)  # 0.5 s apart: 4 groups of 2 frames, 6x6 tokens each
    session.add_frames(frames, times)
    layer = session.cache.layers[0]
    prefix = len(adapter.tokenize(adapter.prefix_text()))
    pos = layer.positions[:, prefix:]
    # pooled grid 2 x 2 x 2; a pooled group spans 2 groups = 2 s; tokens_per_second = 2 -> t step 4
    s = prefix  # <|vision_start|> sits at position `prefix`, video tokens start at prefix + 1
    v = s + 1
    t_expect = [v + 0] * 4 + [v + 4] * 4
    h_expect = [v + 0, v + 0, v + 1, v + 1] * 2
    w_expect = [v + 0, v + 1, v + 0, v + 1] * 2
    end = v + 2  # text resumes at start + max(h, w)
    assert pos[:, 0].tolist() == [s, s, s]
    assert pos[0, 1:9].tolist() == t_expect
    assert pos[1, 1:9].tolist() == h_expect
    assert pos[2, 1:9].tolist() == w_expect
    assert pos[:, 9].tolist() == [end, end, end]
    assert session.next_position == end + 1
    # pooled tokens carry the frame id of their first source frame (groups 0 and 2 -> frames 0 and 4)
    assert layer.frame_ids[prefix + 1 : prefix + 9].tolist() == [0] * 4 + [4] * 4


def test_pooled_positions_contiguous_llava():
    adapter, size, session = _session("llava_onevision", (2, 3, 3), record=False)
    frames, times = random_frames(8, size=size, seed=7)
    session.add_frames(frames, times)
    layer = session.cache.layers[0]
    prefix = len(adapter.tokenize(adapter.prefix_text()))
    # 8 frames of 3x3 -> 4 x 1 x 1 pooled tokens + the newline token + the chat format's "\n" after a
    # video, contiguous positions
    assert len(adapter.after_video_ids()) == 1
    assert layer.positions[0, prefix:].tolist() == list(range(prefix, prefix + 6))
    assert layer.frame_ids[prefix:].tolist() == [0, 2, 4, 6, 6, 6]


def test_relevance_weights_steer_pooled_token():
    adapter = tiny_adapter("qwen2_5_vl")
    frames, times = random_frames(2, size=168, seed=8)
    visual = adapter.encode_frames(frames, times, 0)  # grid (1, 6, 6)
    pooling = PromptGuidedPooling(PoolingConfig(kernel=(1, 3, 3)))
    weights = torch.full((1, 1, 6, 6), 1e-4)
    weights[0, 0, 1, 2] = 0.5  # inside window (0, 0)
    pooled = pool_visual(visual, pooling, weights)
    assert pooled.grid == (1, 2, 2)
    torch.testing.assert_close(pooled.features[0, 0, 0], visual.features[0, 1, 2], atol=1e-4, rtol=0)


def test_standing_query_needs_scorer():
    with pytest.raises(ValueError, match="relevance scorer"):
        PoolingStage(PromptGuidedPooling(), scorer=None, query="a red circle")
    with pytest.raises(ValueError, match="empty"):
        PoolingStage(PromptGuidedPooling(), scorer=object(), query="  ")


def test_grid_kernel_mismatch_is_a_clear_error():
    adapter = tiny_adapter("qwen2_5_vl")
    frames, times = random_frames(2, size=56, seed=9)  # 2x2 grid: a 3x3 kernel does not fit
    visual = adapter.encode_frames(frames, times, 0)
    with pytest.raises(ValueError, match="kernel"):
        pool_visual(visual, PromptGuidedPooling(PoolingConfig(kernel=(1, 3, 3))), None)
