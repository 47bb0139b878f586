"""Offline mode: the video is encoded once; each new question re-pools cached features."""

import torch

from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling
from ppllava_hermes.pooling.relevance import RelevanceConfig, RelevanceScorer
from ppllava_hermes.pooling.testing import tiny_open_clip
from ppllava_hermes.streaming import GenerationConfig
from ppllava_hermes.streaming.offline import OfflineVideoQA

from .helpers import random_frames, tiny_adapter


class _Counting:
    """Wraps a callable and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_new_question_repools_without_encoding_again():
    adapter = tiny_adapter("qwen2_5_vl")
    clip, tok = tiny_open_clip()
    scorer = RelevanceScorer(clip, tok, config=RelevanceConfig(frames_per_token=2))
    adapter.encode_frames = _Counting(adapter.encode_frames)
    scorer.encode_video = _Counting(scorer.encode_video)
    vision = _Counting(adapter.model.model.visual.forward)
    adapter.model.model.visual.forward = vision

    qa = OfflineVideoQA(adapter, PromptGuidedPooling(PoolingConfig(kernel=(2, 3, 3))), scorer, chunk_frames=8)
    frames, times = random_frames(15, size=168, seed=3)  # odd count: padded like the HF processor
    qa.load(frames, times)
    encodes, clip_encodes, vision_calls = adapter.encode_frames.calls, scorer.encode_video.calls, vision.calls
    assert encodes == 2 and clip_encodes == 1

    answers = [qa.ask(q, GenerationConfig(max_new_tokens=2)) for q in ("a red circle?", "a blue square?", "what?")]
    assert adapter.encode_frames.calls == encodes
    assert scorer.encode_video.calls == clip_encodes
    assert vision.calls == vision_calls
    # 16 frames -> 8 groups x 6x6 = 288 grid tokens -> pooled 4 x 2 x 2 = 16 (94% fewer)
    assert all(a.visual_tokens_seen == 16 for a in answers)
    assert answers[0].frames_seen == 15


def test_question_changes_pooled_features():
    adapter = tiny_adapter("qwen2_5_vl")
    clip, tok = tiny_open_clip()
    scorer = RelevanceScorer(clip, tok, config=RelevanceConfig(frames_per_token=2))
    qa = OfflineVideoQA(adapter, PromptGuidedPooling(PoolingConfig(kernel=(2, 3, 3), tau=1e-4)), scorer)
    frames, times = random_frames(8, size=168, seed=4)
    qa.load(frames, times)
    a = qa.ask("a red circle", GenerationConfig(max_new_tokens=1))
    b = qa.ask("two dogs playing in the snow", GenerationConfig(max_new_tokens=1))
    assert a.visual_tokens_seen == b.visual_tokens_seen
    w1 = scorer.score("a red circle", qa.clip_features, grid=qa.chunks[0].visual.grid)
    w2 = scorer.score("two dogs playing in the snow", qa.clip_features, grid=qa.chunks[0].visual.grid)
    assert not torch.allclose(w1, w2)
