"""Dynamic frame sparsity: novelty and relevance gates, and the time/positions of what they skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppllava_hermes.memory import TokenKind
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.sparsity import NoveltyGate, RelevanceGate, gate_segment

from .helpers import random_frames
from .memory_helpers import adapter

FAMILIES = ["qwen2_5_vl", "llava_onevision"]


def stream_with_stretches() -> tuple[np.ndarray, np.ndarray]:
    """16 frames: moving, a repeat of (2, 3) at (4, 5), moving (6, 7), then frame 7 held for 8..15."""
    frames, times = random_frames(16, seed=5)
    frames[4:6] = frames[2:4]
    frames[8:] = frames[7]
    return frames, times * 3.0 + 10.0  # uneven, offset times: they must come back as given


def visual_entries(session: StreamingSession) -> int:
    return session.cache.count(TokenKind.VISUAL)


@pytest.mark.parametrize("family", FAMILIES)
def test_novelty_gate_skips_repeated_frames_and_keeps_changed_ones(family):
    frames, times = stream_with_stretches()
    gated = StreamingSession(adapter(family), gate=NoveltyGate(threshold=1e-4, max_skip=None),
                             config=StreamConfig(chunk_frames=4))
    gated.add_frames(frames, times)
    full = StreamingSession(adapter(family), config=StreamConfig(chunk_frames=4))
    full.add_frames(frames, times)
    # Qwen pairs frames: (8,9) differs from (6,7) and is kept; (10,11)..(14,15) repeat it. (4,5) repeats
    # (2,3). LLaVA-OneVision: frame 8 repeats 7, so 8..15 go; frames 4, 5 differ from frame 3.
    skipped = {"qwen2_5_vl": [4, 5, 10, 11, 12, 13, 14, 15], "llava_onevision": list(range(8, 16))}[family]
    assert gated.stats.frames_skipped == len(skipped)
    assert gated.stats.visual_tokens < full.stats.visual_tokens
    assert visual_entries(gated) < visual_entries(full)
    kept_frames = set(torch.unique(gated.cache.layers[0].frame_ids[gated.cache.layers[0].kinds == 1]).tolist())
    assert not kept_frames & set(skipped[1::2] if family == "qwen2_5_vl" else skipped)


@pytest.mark.parametrize("family", FAMILIES)
def test_skipped_frames_keep_their_time_and_kept_tokens_their_positions(family):
    frames, times = stream_with_stretches()
    gated = StreamingSession(adapter(family), gate=NoveltyGate(threshold=1e-4, max_skip=None),
                             config=StreamConfig(chunk_frames=4))
    full = StreamingSession(adapter(family), config=StreamConfig(chunk_frames=4))
    for start in range(0, 16, 4):  # chunk by chunk: later chunks start where they would without the gate
        gated.add_frames(frames[start : start + 4], times[start : start + 4])
        full.add_frames(frames[start : start + 4], times[start : start + 4])
        assert gated.next_position == full.next_position
    assert gated.frame_log == full.frame_log == [(i, float(t)) for i, t in enumerate(times)]
    # Every kept entry is an entry of the un-gated cache: same frame, same positions, same layer-0 key.
    g, f = gated.cache.layers[0], full.cache.layers[0]
    for j in range(len(g)):
        same = (f.positions == g.positions[:, j : j + 1]).all(dim=0) & (f.frame_ids == g.frame_ids[j])
        assert int(same.sum()) == 1, f"entry {j} has no twin without the gate"
        torch.testing.assert_close(g.keys[..., j, :], f.keys[..., same, :][..., 0, :], atol=1e-6, rtol=0)
    answer = gated.ask("What now?", GenerationConfig(max_new_tokens=2))
    assert answer.frames_seen == 16 and answer.last_frame_time == float(times[-1])


def test_a_gap_inside_a_chunk_is_a_gap_in_temporal_positions():
    """Qwen: group (4,5) skipped, (6,7) kept: its t is that of the second group, not the first."""
    frames, times = stream_with_stretches()
    gated = StreamingSession(adapter("qwen2_5_vl"), gate=NoveltyGate(threshold=1e-4), config=StreamConfig(chunk_frames=4))
    gated.add_frames(frames[:8], times[:8])
    layer = gated.cache.layers[0]
    six = layer.positions[:, (layer.frame_ids == 6) & (layer.kinds == 1)]
    full = StreamingSession(adapter("qwen2_5_vl"), config=StreamConfig(chunk_frames=4))
    full.add_frames(frames[:8], times[:8])
    fl = full.cache.layers[0]
    four = fl.positions[:, (fl.frame_ids == 4) & (fl.kinds == 1)]
    assert int((layer.frame_ids == 4).sum()) == 1  # only the chunk's start delimiter carries frame 4
    assert int(six[0].min()) > int(four[0, 1:].max())  # t of group (6,7) is after group (4,5)'s slot


def test_token_unit_keeps_only_the_changed_region():
    frames, times = random_frames(4, seed=2)
    frames[2:] = frames[:2]
    frames[2:, :20, :20] = 255 - frames[2:, :20, :20]  # top-left region of the 2x2 grid changes
    gate = NoveltyGate(threshold=0.05, space="pixels", unit="token")
    session = StreamingSession(adapter("qwen2_5_vl"), gate=gate, config=StreamConfig(chunk_frames=4))
    ad = session.adapter
    visual = ad.encode_frames(frames, times, 0)
    keep = gate(visual, frames)
    assert keep[0].all()
    assert keep[1].tolist() == [[True, False], [False, False]]
    gated = gate_segment(ad.visual_segment(visual, 50), visual, keep, 4)
    assert gated.tokens_kept == 5 and gated.frames_skipped == 0
    assert len(gated.segment) == 5 + 2  # + the delimiters


def test_nothing_kept_runs_nothing_but_time_and_positions_pass():
    ad = adapter("qwen2_5_vl")
    frames, times = random_frames(4)
    visual = ad.encode_frames(frames, times, 8)
    seg = ad.visual_segment(visual, 40)
    gated = gate_segment(seg, visual, torch.zeros(visual.grid, dtype=torch.bool), 4)
    assert gated.segment is None and gated.next_position == seg.next_position
    assert gated.frames_skipped == 4 and gated.tokens_kept == 0
    with pytest.raises(ValueError, match="does not match"):
        gate_segment(seg, visual, torch.ones(1, 1, 1, dtype=torch.bool), 4)


def test_gate_forgets_the_stream_on_reset():
    frames, times = random_frames(4, seed=1)
    frames[:] = frames[0]
    session = StreamingSession(adapter("llava_onevision"), gate=NoveltyGate(threshold=1e-4),
                               config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    assert session.stats.frames_skipped == 3
    session.reset()
    session.add_frames(frames, times)
    assert session.stats.frames_skipped == 3  # the first frame of the new stream is new again


def test_max_skip_forces_a_refresh():
    gate = NoveltyGate(threshold=2.5, max_skip=2)  # nothing is ever new enough (1 - cos <= 2)
    ad = adapter("llava_onevision")
    frames, times = random_frames(6, seed=4)
    keep = gate(ad.encode_frames(frames, times, 0), frames)
    assert keep.flatten(1).all(dim=1).tolist() == [True, False, False, True, False, False]


class FixedScorer:
    """Relevance known in advance: ``(1, t, h, w)``."""

    def __init__(self, rel: torch.Tensor) -> None:
        self.rel = rel

    def score(self, query, frames, grid=None):
        return self.rel[None]


def test_relevance_gate_keeps_the_top_k():
    rel = torch.zeros(4, 2, 2)
    rel[1] = 0.9
    rel[2, 0, 0] = 3.0  # group 2 sums highest
    rel[0, 1, 1] = 0.5
    ad = adapter("qwen2_5_vl")
    frames, times = random_frames(8)
    visual = ad.encode_frames(frames, times, 0)
    gate = RelevanceGate(FixedScorer(rel), "the red circle", k=2, keep_newest=False)
    assert gate(visual, frames).flatten(1).any(dim=1).tolist() == [False, True, True, False]
    gate = RelevanceGate(FixedScorer(rel), "the red circle", k=2)
    assert gate(visual, frames).flatten(1).all(dim=1).tolist() == [False, True, True, True]  # + the newest
    gate = RelevanceGate(FixedScorer(rel), "the red circle", k=1, unit="token", keep_newest=False)
    keep = gate(visual, frames)
    assert keep.flatten(1).sum(dim=1).tolist() == [1, 1, 1, 1]
    assert bool(keep[0, 1, 1]) and bool(keep[2, 0, 0])
    session = StreamingSession(ad, gate=RelevanceGate(FixedScorer(rel), "q", k=1, keep_newest=False),
                               config=StreamConfig(chunk_frames=8))
    session.add_frames(frames, times)
    assert session.stats.frames_skipped == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": -0.1}, "threshold"), ({"space": "audio"}, "space"), ({"unit": "pixel"}, "unit"),
    ({"reduce": "median"}, "reduce"), ({"max_skip": 0}, "max_skip"),
])
def test_bad_gate_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoveltyGate(**kwargs)
    with pytest.raises(ValueError, match="empty"):
        RelevanceGate(FixedScorer(torch.zeros(1, 1, 1)), " ")
