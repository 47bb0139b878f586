"""Qwen3-VL: the streamed chunks are the HF model's own one-shot forward (fp32, tiny random models).

The reference prompt is rendered by ``Qwen3VLProcessor.apply_chat_template`` (a chat template that writes a
video part as the released Qwen3-VL template does) and expanded by the processor from the whole video
(timestamps, delimiters and video tokens), then run through ``Qwen3VLForConditionalGeneration``: DeepStack,
interleaved M-RoPE and ``get_rope_index`` are all HF's. Then every memory policy, re-indexing and pooling.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from ppllava_hermes.memory import Hermes
from ppllava_hermes.memory.positions import compact_positions
from ppllava_hermes.memory.rope import frequency_axes, rerotate
from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.qwen3_vl import Qwen3VLAdapter
from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.pooling_stage import PoolingStage, make_pooling_stage, pool_visual
from ppllava_hermes.testing import tiny_qwen3_vl

from .helpers import random_frames
from .memory_helpers import SYSTEM_PROMPT
from .test_memory_policies import CASES, NAMES, build, feed_and_check

QUESTION = "What happens in the video?"
FPS = 2.5  # frame i of the source video is at i / FPS seconds
FIRST = 7  # the stream starts at source frame 7 (2.8 s): timestamps are not multiples of the group span


#: How the released Qwen3-VL chat template writes a system turn, a user turn of video and text parts, and
#: the answer opening (the parts this test uses).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VIDEO_PART = "<|vision_start|><|video_pad|><|vision_end|>"


@cache
def adapter(max_position_embeddings: int = 32768, system_prompt: str | None = None, *, wrapper: bool = False,
            experts: int = 0) -> Qwen3VLAdapter:
    """A tiny random Qwen3-VL (built once per configuration; sessions never modify it)."""
    model, tok = tiny_qwen3_vl(max_position_embeddings=max_position_embeddings, num_experts=experts)
    kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
    return adapter_for_model(model, tok, video_wrapper=wrapper, **kwargs)


def video(n: int, size: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``n`` random frames, their times (``index / FPS``, as the processor computes them) and indices."""
    frames, _ = random_frames(n, size=size, seed=seed)
    indices = list(range(FIRST, FIRST + n))
    return frames, np.asarray(indices, dtype=np.float64) / FPS, indices


def hf_reference(ad: Qwen3VLAdapter, frames: np.ndarray, indices: list[int], question: str) -> dict:
    """The one-shot HF input for the whole video then ``question``, written by ``Qwen3VLProcessor``.

    The adapter's default layout is the released processor's, which replaced the template's whole video
    part by the per-frame-pair blocks: the part becomes a bare ``<|video_pad|>``. With ``video_wrapper``
    the text is left as transformers >= 5 renders it (it replaces ``<|video_pad|>`` only).
    """
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    vc = ad.model.config.vision_config
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=vc.patch_size, merge_size=vc.spatial_merge_size),
        tokenizer=ad.tokenizer, video_processor=ad.video_processor, chat_template=CHAT_TEMPLATE)
    messages = [{"role": "system", "content": [{"type": "text", "text": ad.system_prompt}]},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.count(VIDEO_PART) == 1
    if not ad.video_wrapper:
        text = text.replace(VIDEO_PART, processor.video_token)
    meta = VideoMetadata(total_num_frames=indices[-1] + 1, fps=FPS, frames_indices=indices)
    return dict(processor(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False,
                          return_tensors="pt"))


def streamed_logits(ad: Qwen3VLAdapter, frames: np.ndarray, times: np.ndarray, chunk: int) -> torch.Tensor:
    session = StreamingSession(ad, config=StreamConfig(chunk_frames=chunk, record_logits=True))
    for start in range(0, len(frames), chunk):  # one add_frames call per chunk
        session.add_frames(frames[start : start + chunk], times[start : start + chunk])
    assert session.stats.chunks == len(frames) // chunk
    answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=1), return_logits=True)
    return torch.cat(session.logits_log[: 1 + session.stats.chunks] + [answer.question_logits])


# ---- the one-shot forward -------------------------------------------------------------------------
def test_prompt_layout_is_the_processors():
    """Timestamps per frame pair (mean of its two frame times, one decimal), delimiters, video tokens."""
    ad = adapter()
    frames, times, indices = video(12)
    ref = hf_reference(ad, frames, indices, QUESTION)
    text = ad.tokenizer.decode(ref["input_ids"][0])
    labels = [f"<{(a + b) / 2:.1f} seconds>" for a, b in zip(times[::2], times[1::2], strict=True)]
    assert labels[0] == "<3.0 seconds>" and len(labels) == 6
    per_group = "<|vision_start|>" + "<|video_pad|>" * 4 + "<|vision_end|>"
    assert "".join(label + per_group for label in labels) in text
    visual = ad.encode_frames(frames[:4], times[:4], 0)
    assert [ad.timestamp_text(s) for s in ad.group_timestamps(visual)] == labels[:2]


def test_chunked_encoding_equals_one_shot_encoding():
    """The tower attends within a frame pair: three 4-frame chunks give the 12-frame video's tokens."""
    ad = adapter()
    frames, times, _ = video(12)
    whole = ad.encode_frames(frames, times, 0).features
    parts = torch.cat([ad.encode_frames(frames[i : i + 4], times[i : i + 4], i).features for i in (0, 4, 8)])
    assert whole.shape == (6, 2, 2, 3 * 32)  # main + 2 DeepStack maps per token
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wrapper", [False, True], ids=["released", "video_wrapper"])
@pytest.mark.parametrize("experts", [0, 4], ids=["dense", "moe"])
def test_logits_match_one_shot_forward(wrapper, experts):
    ad = adapter(wrapper=wrapper, experts=experts)
    frames, times, indices = video(12)
    streamed = streamed_logits(ad, frames, times, chunk=4)
    with torch.no_grad():
        full = ad.model(**hf_reference(ad, frames, indices, QUESTION)).logits[0]
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, atol=1e-4, rtol=0)


def test_deepstack_is_what_makes_the_logits_match():
    """Without the DeepStack maps the streamed logits leave the reference: the test above sees them."""
    ad = adapter()
    frames, times, indices = video(12)
    with torch.no_grad():
        full = ad.model(**hf_reference(ad, frames, indices, QUESTION)).logits[0]
    encode = ad.encode_frames

    def without_deepstack(*args):
        visual = encode(*args)
        visual.features[..., ad.hidden_size :] = 0
        return visual

    ad.encode_frames = without_deepstack
    try:
        streamed = streamed_logits(ad, frames, times, chunk=4)
    finally:
        del ad.encode_frames
    assert float((streamed - full).abs().max()) > 1e-2


@pytest.mark.parametrize("wrapper", [False, True], ids=["released", "video_wrapper"])
def test_greedy_answer_matches_generate(wrapper):
    ad = adapter(wrapper=wrapper)
    frames, times, indices = video(12, seed=1)
    session = StreamingSession(ad, config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=12))
    ref = hf_reference(ad, frames, indices, QUESTION)
    ad.model.model.rope_deltas = None
    with torch.no_grad():
        out = ad.model.generate(**ref, max_new_tokens=12, do_sample=False, eos_token_id=ad.eos_token_ids,
                                pad_token_id=ad.eos_token_ids[0])
    generated = [t for t in out[0, ref["input_ids"].shape[1] :].tolist() if t not in ad.eos_token_ids]
    assert len(answer.token_ids) > 0
    assert answer.token_ids == generated


def test_a_pending_frame_is_padded_like_the_processor_pads():
    """5 frames: the question sees the lone fifth frame as a pair with itself (the processor's rule)."""
    ad = adapter()
    frames, times, indices = video(5, seed=2)
    session = StreamingSession(ad, config=StreamConfig(chunk_frames=4, record_logits=True))
    session.add_frames(frames, times)
    answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=1), return_logits=True)
    streamed = torch.cat(session.logits_log[:3] + [answer.question_logits])
    with torch.no_grad():
        full = ad.model(**hf_reference(ad, frames, indices, QUESTION)).logits[0]
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("experts", [0, 4], ids=["dense", "moe"])
def test_adapter_round_trips_through_from_pretrained(tmp_path, experts):
    from ppllava_hermes.models import load_adapter

    ad = adapter(experts=experts)
    ad.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path, dtype=torch.float32)
    assert type(loaded) is Qwen3VLAdapter and type(loaded.model) is type(ad.model)
    frames, times, _ = video(4, seed=5)
    torch.testing.assert_close(loaded.encode_frames(frames, times, 0).features,
                               ad.encode_frames(frames, times, 0).features, atol=0, rtol=0)
    assert loaded.rope_spec().mrope_interleaved


def test_registered_as_tiny_qwen3_vl():
    from ppllava_hermes import specs

    for name in ("tiny-qwen3-vl", "tiny:qwen3_vl"):
        assert isinstance(specs.load_model(name), Qwen3VLAdapter)


# ---- RoPE and re-indexing -------------------------------------------------------------------------
def test_rope_spec_is_the_interleaved_layout():
    rope = adapter().rope_spec()
    assert rope.mrope_interleaved and rope.mrope_section == (4, 2, 2)
    assert frequency_axes(rope).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]


def test_rerotated_keys_equal_the_models_keys_at_shifted_positions():
    """The same stream with every position shifted by d: its cached keys are the first stream's keys
    re-rotated by d (attention sees relative positions only), and the question's logits are the same."""
    ad = adapter()
    frames, times, _ = video(8, seed=3)
    d = 1000
    sessions = []
    for offset in (0, d):
        session = StreamingSession(ad, config=StreamConfig(chunk_frames=4))
        session.next_position = offset
        session.add_frames(frames, times)
        sessions.append(session)
    base, shifted = sessions
    for a, b in zip(base.cache.layers, shifted.cache.layers, strict=True):
        assert torch.equal(a.positions + d, b.positions)
        # 1e-4: the model rounds its angles to float32 (position ~1000 x inv_freq), re-rotation does not.
        torch.testing.assert_close(rerotate(a.keys, a.positions, b.positions, base.rope), b.keys,
                                   atol=1e-4, rtol=0)
    gen = GenerationConfig(max_new_tokens=1)
    before = base.ask(QUESTION, gen, return_logits=True).question_logits
    for layer in base.cache.layers:  # move the first stream's memory by d, as re-indexing would
        new = layer.positions + d
        layer.keys = rerotate(layer.keys, layer.positions, new, base.rope)
        layer.positions = new
    base.next_position += d
    after = base.ask(QUESTION, gen, return_logits=True).question_logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    torch.testing.assert_close(after, shifted.ask(QUESTION, gen, return_logits=True).question_logits,
                               atol=1e-4, rtol=0)


def test_compaction_keeps_each_group_layout_and_closes_gaps():
    """Drop a whole chunk and the start of the next: every chunk moves rigidly, no gaps remain."""
    frames, times, _ = video(12, seed=4)
    session = StreamingSession(adapter(), config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    layer = session.cache.layers[0]
    keep = torch.ones(len(layer), dtype=torch.bool)
    keep[layer.segments == 1] = False
    keep[(layer.segments == 2).nonzero().squeeze(1)[:5]] = False
    layer.select(keep.nonzero().squeeze(1))
    out = compact_positions(layer.positions, layer.segments)
    for s in layer.segments.unique().tolist():
        delta = out.positions[:, layer.segments == s] - layer.positions[:, layer.segments == s]
        assert (delta == delta[0, 0]).all(), "a chunk moves rigidly on t, h and w"
    segs = layer.segments.unique().tolist()
    for prev, cur in zip(segs, segs[1:], strict=False):
        assert int(out.positions[:, layer.segments == cur].min()) == int(
            out.positions[1:, layer.segments == prev].max()) + 1


# ---- memory policies ------------------------------------------------------------------------------
BUDGET = 48  # a 4-frame chunk is 2 groups of 13 timestamp + 1 + 4 + 1 tokens: 38 entries


def stream_and_check(name: str, sizes: list[int], chunk_frames: int, max_position: int = 32768,
                     budget: int = BUDGET) -> StreamingSession:
    session = StreamingSession(adapter(max_position, SYSTEM_PROMPT), memory=build(name, budget),
                               config=StreamConfig(chunk_frames=chunk_frames))
    frames, times, _ = video(sum(sizes), seed=len(sizes))
    return feed_and_check(session, frames, times, sizes, name, budget, max_position)


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_keeps_its_budget_and_the_memory_survives_questions(name):
    session = stream_and_check(name, sizes=[4] * 6, chunk_frames=4)
    if CASES[name].compresses:
        assert session.stats.compress_log, "the budget must have been exceeded"
        assert max(r.evicted for r in session.stats.compress_log) > 0
    before, position = session.cache.state(), session.next_position
    answer = session.ask("What now?", GenerationConfig(max_new_tokens=4))
    session.ask("And?", GenerationConfig(max_new_tokens=3, do_sample=True, seed=1, top_p=0.9))
    after = session.cache.state()
    assert session.next_position == position
    for b, a in zip(before, after, strict=True):
        assert b.keys() == a.keys()
        for key in b:
            assert torch.equal(b[key], a[key]), key
    assert answer.frames_seen == 24


@pytest.mark.parametrize("name", ["hermes", "window", "sink", "snapkv", "merge_hermes", "retrieval"])
def test_positions_stay_under_a_small_maximum_forever(name):
    """max_position_embeddings=512: 72 frame pairs advance positions by 17 each, so only re-indexing
    keeps the stream under the limit."""
    session = stream_and_check(name, sizes=[4] * 36, chunk_frames=2, max_position=512)
    assert any(r.next_position is not None for r in session.stats.compress_log)
    assert session.next_position < 512
    session.ask("Still there?", GenerationConfig(max_new_tokens=2))


class _AlwaysCompress(Hermes):
    def wants_compress(self, cache) -> bool:
        return True


def test_hermes_with_infinite_budget_equals_full_cache():
    """Compression after every chunk (probe with eager attention, scores, eager re-indexing) keeps all."""
    frames, times, _ = video(12, seed=9)
    ad = adapter(1 << 21, SYSTEM_PROMPT)
    logits = {}
    for label, policy in [("full", None), ("hermes", _AlwaysCompress(budget=10**6, reindex="eager"))]:
        session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=4, record_logits=True))
        session.add_frames(frames, times)
        answer = session.ask("What happens?", GenerationConfig(max_new_tokens=3), return_logits=True)
        logits[label] = (torch.cat(session.logits_log[:4] + [answer.question_logits]), answer.token_ids)
    torch.testing.assert_close(logits["hermes"][0], logits["full"][0], atol=1e-5, rtol=0)
    assert logits["hermes"][1] == logits["full"][1]


# ---- pooling --------------------------------------------------------------------------------------
def test_pooling_averages_deepstack_with_the_main_features():
    """One set of window weights for the main features and every DeepStack map (channels of a token)."""
    ad = adapter()
    frames, times, _ = video(4, size=192, seed=6)
    visual = ad.encode_frames(frames, times, 0)  # grid (2, 6, 6)
    pooling = PromptGuidedPooling(PoolingConfig(kernel=(2, 3, 3)))
    weights = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    pooled = pool_visual(visual, pooling, weights)
    assert pooled.grid == (1, 2, 2) and pooled.features.shape[-1] == ad.packed_width
    d = ad.hidden_size
    for block in range(1 + ad.deepstack_levels):
        part = visual.features[..., block * d : (block + 1) * d].unsqueeze(0)
        torch.testing.assert_close(pooled.features[..., block * d : (block + 1) * d],
                                   pooling(part, weights).features[0], atol=1e-6, rtol=0)
    # A pooled group of 4 frames is written at the mean of its first and last frame times.
    assert ad.group_timestamps(pooled) == [(times[0] + times[3]) / 2]


@pytest.mark.parametrize("kernel", [(1, 1, 1), (2, 3, 3)])
def test_pooled_session_runs_with_the_expected_token_count(kernel):
    ad = adapter()
    frames, times, _ = video(8, size=192, seed=7)
    stage = PoolingStage(PromptGuidedPooling(PoolingConfig(kernel=kernel)))
    session = StreamingSession(ad, pooling=stage, config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    groups, per_group = (4, 36) if kernel == (1, 1, 1) else (2, 4)
    assert session.stats.visual_tokens == groups * per_group
    prefix = len(ad.tokenize(ad.prefix_text()))
    visual_rows = groups * (13 + 1 + per_group + 1)  # "<3.0 seconds>", the delimiters, the grid
    assert len(session.cache.layers[0]) == prefix + visual_rows
    answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=3))
    assert answer.visual_tokens_seen == groups * per_group and len(answer.token_ids) > 0


def test_identity_pooling_gives_the_unpooled_logits():
    ad = adapter()
    frames, times, _ = video(8, size=192, seed=8)
    outs = []
    for stage in (None, PoolingStage(PromptGuidedPooling(PoolingConfig(kernel=(1, 1, 1))))):
        session = StreamingSession(ad, pooling=stage, config=StreamConfig(chunk_frames=4, record_logits=True))
        session.add_frames(frames, times)
        answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=1), return_logits=True)
        outs.append(torch.cat(session.logits_log[:-1] + [answer.question_logits]))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)


def test_prompt_guided_pooling_with_a_relevance_model():
    from ppllava_hermes import specs

    ad = adapter()
    stage = make_pooling_stage(ad, mode="prompt", kernel=(2, 3, 3), standing_query="a red circle",
                               scorer=specs.load_relevance("tiny"))
    frames, times, _ = video(8, size=192, seed=9)
    session = StreamingSession(ad, pooling=stage, memory=build("hermes", 64),
                               config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    assert session.stats.visual_tokens == 2 * 4
    assert len(session.ask(QUESTION, GenerationConfig(max_new_tokens=2)).token_ids) > 0
