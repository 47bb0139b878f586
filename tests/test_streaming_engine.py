"""The KV engine under the session: atomic prefill, rollback, question-time padding that never changes the
stream, input checks; and the text-LM adapter on the same engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppllava_hermes.memory import make_policy
from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.streaming import GenerationConfig, KVEngine, StreamConfig, StreamingSession
from ppllava_hermes.streaming.chunks import (
    PAD_STEP_S,
    ChunkSpan,
    chunk_spans,
    group_chunk_frames,
    pad_to_group,
    resize_frames,
)

from .helpers import random_frames, tiny_adapter

torch.set_num_threads(1)


def states_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("policy", ["full", "hermes", "window", "retrieval"])
def test_a_question_at_an_odd_frame_leaves_no_trace_in_the_memory(policy):
    adapter = tiny_adapter("qwen2_5_vl")  # frame pairs: frame 5 of 5 waits for its partner
    frames, times = random_frames(30, seed=1)

    def run(ask_at: tuple[int, ...]):
        s = StreamingSession(adapter, make_policy(policy, budget=60) if policy != "full" else None,
                             config=StreamConfig(chunk_frames=4))
        answers = []
        for k in range(30):
            s.add_frames(frames[k : k + 1], times[k : k + 1])
            if k in ask_at:
                answers.append(s.ask("what?", GenerationConfig(max_new_tokens=2)))
        return s, answers

    plain, _ = run(())
    asked, answers = run((4, 20))  # after the 5th and the 21st frame: one frame pending each time
    if policy != "full":
        assert plain.stats.compress_log and max(r.evicted for r in plain.stats.compress_log) > 0
    assert states_equal(plain.cache.state(), asked.cache.state())
    assert plain.next_position == asked.next_position
    assert [t for _, t in plain.frame_log] == [t for _, t in asked.frame_log] == list(times)
    if policy == "retrieval":  # what left the window is stored the same way: positions, committed positions, keys
        a, b = plain.memory.store, asked.memory.store
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.positions, y.positions) and torch.equal(x.committed, y.committed)
            assert all(torch.equal(kx, ky) for kx, ky in zip(x.keys, y.keys, strict=True))
    assert answers[0].frames_seen == 5 and answers[0].last_frame_time == times[4]


def test_question_with_a_pending_frame_equals_the_padded_stream():
    """The question sees the lone frame exactly as flush() would have put it in."""
    adapter = tiny_adapter("qwen2_5_vl")
    frames, times = random_frames(5, seed=2)
    a = StreamingSession(adapter, config=StreamConfig(chunk_frames=4))
    a.add_frames(frames, times)
    ans_pending = a.ask("what now?", GenerationConfig(max_new_tokens=3), return_logits=True)
    assert len(a._pending_frames) == 1  # still waiting
    b = StreamingSession(adapter, config=StreamConfig(chunk_frames=4))
    b.add_frames(frames, times)
    b.flush()
    ans_flushed = b.ask("what now?", GenerationConfig(max_new_tokens=3), return_logits=True)
    torch.testing.assert_close(ans_pending.question_logits, ans_flushed.question_logits, atol=1e-5, rtol=1e-5)
    assert ans_pending.token_ids == ans_flushed.token_ids


def test_prefill_is_atomic_when_a_layer_raises():
    adapter = tiny_adapter("qwen2_5_vl")
    s = StreamingSession(adapter, make_policy("hermes", budget=80), config=StreamConfig(chunk_frames=2))
    frames, times = random_frames(8, seed=3)
    s.add_frames(frames[:4], times[:4])
    before, position = s.cache.state(), s.next_position
    layer = adapter.language_model.layers[2]  # a deep layer: layers 0-1 have written keys by then
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        raise MemoryError("simulated out of memory")

    handle = layer.register_forward_pre_hook(boom)
    try:
        with pytest.raises(MemoryError):
            s.add_frames(frames[4:6], times[4:6])
    finally:
        handle.remove()
    assert calls["n"] == 1
    assert states_equal(before, s.cache.state()) and s.next_position == position
    # the stream goes on as if the failed chunk had not been offered
    s.add_frames(frames[6:8], times[6:8])
    assert s.ask("ok?", GenerationConfig(max_new_tokens=2)).frames_seen == 6


def test_rollback_restores_a_swapped_cache_and_refuses_use_outside():
    adapter = tiny_adapter("llava_onevision")
    engine = KVEngine(adapter)
    engine.start(adapter.prefix_text())
    before, position = engine.cache.state(), engine.next_position
    other = KVEngine(adapter)
    other.start("something else entirely")
    with pytest.raises(RuntimeError, match="outside rollback"):
        engine.use_cache(other.cache, other.next_position)
    with pytest.raises(KeyboardInterrupt), engine.rollback():
        engine.use_cache(other.cache, other.next_position)
        engine.prefill(adapter.text_segment(adapter.tokenize("more"), engine.next_position))
        raise KeyboardInterrupt
    assert states_equal(before, engine.cache.state()) and engine.next_position == position


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_timestamps_are_refused_before_anything_is_ingested(bad):
    s = StreamingSession(tiny_adapter("llava_onevision"))
    frames, times = random_frames(3, seed=4)
    times = times.copy()
    times[1] = bad
    with pytest.raises(ValueError, match="timestamps must be finite seconds"):
        s.add_frames(frames, times)
    assert s.stats.frames == 0 and not s._pending_frames


def test_a_frame_size_change_inside_a_group_resizes_the_waiting_frames():
    s = StreamingSession(tiny_adapter("qwen2_5_vl"), config=StreamConfig(chunk_frames=2))
    small, t = random_frames(3, size=56, seed=5)
    big, _ = random_frames(2, size=84, seed=6)
    s.add_frames(small, t)  # one frame pending
    with pytest.warns(RuntimeWarning, match=r"frame size changed from 56x56 to 84x84 at 2.000s inside a temporal "
                                            r"group: the 1 waiting frame\(s\) were resized to 84x84"):
        s.add_frames(big, t[-1] + 1 + np.arange(2.0))
    assert s.stats.frames == 4 and s._pending_frames[0].shape == (84, 84, 3)  # one 84x84 frame waits
    # the same stream with the waiting frame resized by hand: the same memory
    ref = StreamingSession(tiny_adapter("qwen2_5_vl"), config=StreamConfig(chunk_frames=2))
    ref.add_frames(small[:2], t[:2])
    ref.add_frames(np.concatenate([resize_frames(small[2:], (84, 84)), big]), np.r_[t[2:], t[-1] + 1 + np.arange(2.0)])
    assert states_equal(s.cache.state(), ref.cache.state())
    s.add_frames(small[:1], [9.0])  # back to 56x56 with a pending frame: no second warning, resized again
    assert s.stats.frames == 6


def test_chunk_helpers():
    assert group_chunk_frames(7, 2) == 6 and group_chunk_frames(1, 2) == 2
    assert chunk_spans(7, 4, 2) == [ChunkSpan(0, 4), ChunkSpan(4, 6), ChunkSpan(6, 7, pad=1)]
    f, t = random_frames(3, seed=7)
    pf, pt, n = pad_to_group(f, t, 2)
    assert n == 1 and pf.shape[0] == 4 and np.array_equal(pf[3], f[2]) and pt[3] == t[2] + PAD_STEP_S
    assert pad_to_group(f[:2], t[:2], 2)[2] == 0


def test_text_lm_runs_on_the_same_engine():
    from transformers import LlamaConfig, LlamaForCausalLM

    from ppllava_hermes.models.text_lm import CausalLMAdapter
    from ppllava_hermes.testing import byte_tokenizer

    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    lm = CausalLMAdapter(model, tok)
    engine = KVEngine(lm, make_policy("window", budget=80))
    engine.start(lm.prefix_text())
    ids = torch.randint(5, len(tok) - 5, (12,))
    for k in range(10):
        engine.prefill(lm.text_segment(ids, engine.next_position, TokenKind.VISUAL, frame_id=k))
        engine.compress()
    held = engine.cache.layers[0].frame_ids[engine.cache.layers[0].kinds == int(TokenKind.VISUAL)]
    assert 0 < len(held) <= 80 and engine.stats.compress_log and int(held.min()) > 0  # the oldest chunk left
    assert engine.next_position == engine.cache.max_position() + 1  # re-indexed, contiguous
    out = engine.generate(lm.tokenize("question"), GenerationConfig(max_new_tokens=3))
    assert len(out.token_ids) <= 3 and out.cache_tokens == engine.cache.physical_length()


def tiny_text_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    from ppllava_hermes.models.text_lm import CausalLMAdapter
    from ppllava_hermes.testing import byte_tokenizer

    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
    torch.manual_seed(0)
    return CausalLMAdapter(LlamaForCausalLM(cfg).eval(), tok, system_prompt="Hi.")


@pytest.mark.parametrize(("policy", "anchors"), [("hermes", 0), ("hermes", 6), ("snapkv", 0)])
@pytest.mark.parametrize("every", [1, 3])
def test_compress_every_k_chunks_peaks_at_the_budget_plus_k_chunks(policy, anchors, every):
    """Compression on every k-th chunk over budget: between two compressions exactly k chunks pile up, so the
    memory peaks at system + budget + (anchors held) + k chunks, and never more."""
    lm, chunk, budget = tiny_text_lm(), 12, 40
    options = {"anchors": anchors} if policy == "hermes" else {}
    engine = KVEngine(lm, make_policy(policy, budget=budget, headroom=64, compress_every=every, **options))
    system = engine.start(lm.prefix_text())
    g = torch.Generator().manual_seed(1)
    lengths, compressed, left = [], [], []
    for k in range(24):
        ids = torch.randint(5, 250, (chunk,), generator=g)
        engine.prefill(lm.text_segment(ids, engine.next_position, TokenKind.VISUAL, frame_id=k))
        lengths.append(engine.cache.physical_length())
        if engine.compress() is not None:
            compressed.append(k)
            left.append(engine.cache.physical_length())
            held_anchors = engine.cache.count(TokenKind.ANCHOR, lm.num_layers - 1)
            assert left[-1] == system + budget + held_anchors  # back to the budget (+ the anchors it holds)
    first = next(k for k in range(24) if lengths[k] - system > budget)
    assert compressed == list(range(first + every - 1, 24, every))  # on the k-th chunk over budget, each time
    assert lengths[compressed[0]] <= system + budget + every * chunk
    for after, b in zip(left, compressed[1:], strict=False):
        assert lengths[b] == after + every * chunk  # exactly k chunks in between
    peak = max(lengths)
    assert peak <= system + budget + anchors + every * chunk
    if anchors == 0:
        assert peak == system + budget + every * chunk
    per_entry = engine.cache.kv_bytes() // engine.cache.physical_length()
    assert engine.stats.peak_kv_bytes == peak * per_entry


@pytest.mark.parametrize("policy", ["hermes", "snapkv"])
def test_compress_every_must_be_at_least_one(policy):
    with pytest.raises(ValueError, match=rf"^{policy}: compress_every must be >= 1 chunk, got 0$"):
        make_policy(policy, budget=40, compress_every=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision", "qwen3_vl"])
def test_streaming_runs_the_lm_head_only_where_logits_are_used(family):
    """Ingest computes no logits at all, a question only its last position's (then one per decoded token),
    and the logits asked for equal the full forward's; with record_logits every position's are kept."""
    if family == "qwen3_vl":
        from ppllava_hermes.models import adapter_for_model
        from ppllava_hermes.testing import tiny_qwen3_vl

        adapter = adapter_for_model(*tiny_qwen3_vl())
    else:
        adapter = tiny_adapter(family)
    rows: list[int] = []
    hook = adapter.model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    try:
        frames, times = random_frames(8, seed=7)
        s = StreamingSession(adapter, config=StreamConfig(chunk_frames=4))
        s.add_frames(frames, times)
        assert rows == [], f"ingest ran the LM head on {rows} positions"
        s.ask("What?", GenerationConfig(max_new_tokens=3))
        assert rows and rows[0] == 1 and set(rows) == {1}
        rows.clear()
        recorded = StreamingSession(adapter, config=StreamConfig(chunk_frames=4, record_logits=True))
        recorded.add_frames(frames, times)
        assert rows and max(rows) > 1 and len(recorded.logits_log) == len(rows)
    finally:
        hook.remove()
    engine = KVEngine(adapter)
    engine.start(adapter.prefix_text())
    seg = adapter.text_segment(adapter.tokenize("two words"), engine.next_position)
    with engine.rollback():
        full, _ = engine.prefill(seg)
    with engine.rollback():
        last, _ = engine.prefill(seg, logits="last")
    with engine.rollback():
        none, _ = engine.prefill(seg, logits="none")
    assert last.shape == (1, 1, full.shape[-1]) and none is None
    assert torch.allclose(last[0, -1], full[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="logits must be one of"), engine.rollback():
        engine.prefill(seg, logits="some")
