"""Probe attention without eager attention (``models/probe.py``): the captured-query weights equal the eager
ones on every family, several prompts in one forward equal one forward each, only the layers asked for are
computed (and the forward stops after the deepest), the memory and the attention implementation are left as
they were; the engine's probe reads only what a policy needs and none where no layer does."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from ppllava_hermes.memory import Hermes, MemoryPolicy, make_policy
from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import LMAdapter
from ppllava_hermes.models.probe import attention_weights, probe_attention, resolve_method
from ppllava_hermes.streaming import KVEngine, StreamConfig, StreamingSession
from ppllava_hermes.testing import tiny_qwen3_vl

from .helpers import random_frames
from .memory_helpers import adapter

torch.set_num_threads(1)

PROMPTS = ["Describe what is happening in the current scene.", "Summarize the video so far."]
FAMILIES = ["qwen2_5_vl", "llava_onevision", "qwen3_vl", "qwen3_vl_moe", "llama"]


@cache
def lm(family: str) -> LMAdapter:
    """A tiny random model of ``family`` (sdpa attention, system prompt "Hi."), built once."""
    if family.startswith("qwen3_vl"):
        model, tok = tiny_qwen3_vl(num_experts=4 if family.endswith("moe") else 0)
        return adapter_for_model(model, tok, system_prompt="Hi.")
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        from ppllava_hermes.models.text_lm import CausalLMAdapter
        from ppllava_hermes.testing import byte_tokenizer

        tok = byte_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                          attn_implementation="sdpa")
        torch.manual_seed(0)
        return CausalLMAdapter(LlamaForCausalLM(cfg).eval(), tok, system_prompt="Hi.")
    return adapter(family)


def streamed(family: str) -> KVEngine:
    """An engine whose memory went through several HERMES compressions (evictions, anchors, re-indexed
    positions): a memory as a probe meets it mid-stream."""
    model = lm(family)
    policy = Hermes(budget=24, anchors=8, headroom=64, reindex="eager")
    if family == "llama":
        engine = KVEngine(model, policy)
        engine.start(model.prefix_text())
        g = torch.Generator().manual_seed(0)
        for k in range(12):
            ids = torch.randint(5, 250, (16,), generator=g)
            engine.prefill(model.text_segment(ids, engine.next_position, TokenKind.VISUAL, frame_id=k))
            engine.compress()
        return engine
    session = StreamingSession(model, policy, config=StreamConfig(chunk_frames=4))
    frames, times = random_frames(24, seed=3)
    session.add_frames(frames, times)
    return session.engine


def segments(model: LMAdapter, start: int):
    return [model.text_segment(model.tokenize(p), start, TokenKind.TEXT) for p in PROMPTS]


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for row_a, row_b in zip(a, b, strict=True)
               for x, y in zip(row_a, row_b, strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_queries_give_the_eager_weights_and_leave_everything_as_it_was(family):
    engine = streamed(family)
    model, mem = engine.lm, engine.cache
    assert engine.stats.compress_log and max(r.evicted for r in engine.stats.compress_log) > 0
    assert resolve_method(model) == "queries"
    before = mem.state()
    segs = segments(model, engine.next_position)
    eager = probe_attention(model, mem, segs, method="eager")
    seen = []
    handle = model.attention_modules()[0].register_forward_pre_hook(
        lambda *_: seen.append(model.text_config._attn_implementation))
    try:
        batched = probe_attention(model, mem, segs, method="queries")
        single = [probe_attention(model, mem, [s], method="queries")[0] for s in segs]
    finally:
        handle.remove()
    assert seen == ["sdpa"] * 3  # one forward for both prompts, one each: never switched to eager
    assert max_diff(eager, single) < 1e-5
    assert max_diff(single, batched) < 1e-5
    for row in batched:
        assert len(row) == model.num_layers
        for w in row:
            assert w.shape == (mem.physical_length(),) and w.dtype == torch.float32 and float(w.sum()) <= 1 + 1e-5
    after = mem.state()
    assert all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(before, after,
                                                                                                strict=True))
    assert all(layer.get_seq_length() == len(layer) for layer in mem.layers)


def test_only_the_layers_asked_for_are_computed_and_the_forward_stops_after_the_deepest():
    engine = streamed("qwen2_5_vl")
    model, mem = engine.lm, engine.cache
    segs = segments(model, engine.next_position)
    full = probe_attention(model, mem, segs, method="eager")
    calls = [0] * model.num_layers
    handles = [m.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, m in enumerate(model.attention_modules())]
    try:
        part = probe_attention(model, mem, segs, [[1], [0, 2]])
    finally:
        for h in handles:
            h.remove()
    assert calls == [1, 1, 1, 0]  # one forward, and layer 3 never ran
    assert [[w is not None for w in row] for row in part] == [[False, True, False, False], [True, False, True, False]]
    assert max(float((part[p][i] - full[p][i]).abs().max()) for p, i in [(0, 1), (1, 0), (1, 2)]) < 1e-5
    assert probe_attention(model, mem, segs, [[], []]) == [[None] * 4, [None] * 4]


def test_flash_like_implementations_run_one_forward_per_prompt(monkeypatch):
    engine = streamed("llava_onevision")
    model, mem = engine.lm, engine.cache
    segs = segments(model, engine.next_position)
    reference = probe_attention(model, mem, segs)
    forwards = []
    real = model.probe_forward
    monkeypatch.setattr(model, "probe_forward", lambda *a, **k: forwards.append(a[3]) or real(*a, **k))
    # As under flash attention (no custom masks; sdpa stands in for it on this CPU):
    monkeypatch.setattr("ppllava_hermes.models.probe.MASKABLE", ("eager",))
    separate = probe_attention(model, mem, segs)
    assert forwards == [None, None]  # two forwards, the model's own causal mask each
    assert max_diff(reference, separate) < 1e-5


def test_auto_falls_back_to_eager_on_an_attention_class_it_was_not_tested_on(monkeypatch):
    model = lm("llama")

    class OtherAttention(torch.nn.Module):
        q_proj = head_dim = scaling = None

    monkeypatch.setattr(model, "attention_modules", lambda: [OtherAttention()])
    assert resolve_method(model) == "eager" and resolve_method(model, "queries") == "queries"
    with pytest.raises(ValueError, match="probe method must be one of"):
        resolve_method(model, "fast")
    with pytest.raises(ValueError, match="probe_method must be one of"):
        KVEngine(model, probe_method="fast")


def test_attention_weights_follow_repeat_kv_and_the_mask():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 3, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)
    allowed = torch.ones(3, 5, dtype=torch.bool)
    allowed[0, 3:] = False
    w = attention_weights(q, k, 8 ** -0.5, allowed)
    ref = torch.softmax((q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * 8 ** -0.5
                        + torch.where(allowed, 0.0, float("-inf")), dim=-1)
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=0)
    assert float(w[0, :, 0, 3:].abs().max()) == 0.0


class AllLayersHermes(Hermes):
    """HERMES probing every layer with both prompts (as before ``probe_layers``)."""

    def probe_layers(self, num_layers: int) -> dict[str, list[int]]:
        return MemoryPolicy.probe_layers(self, num_layers)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_hermes_memory_is_the_same_with_the_reduced_probe_as_with_every_eager_layer(family):
    frames, times = random_frames(28, seed=5)
    states = []
    for policy, method in [(AllLayersHermes(budget=24, anchors=8, headroom=64), "eager"),
                           (Hermes(budget=24, anchors=8, headroom=64), "auto")]:
        session = StreamingSession(lm(family), policy, config=StreamConfig(chunk_frames=4))
        session.engine.probe_method = method
        session.add_frames(frames, times)
        assert len(session.stats.compress_log) >= 4
        states.append(session.cache.state())
    assert all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
               for x, y in zip(*states, strict=True))


def test_hermes_probes_only_where_attention_has_weight_and_not_at_all_under_pure_recency(monkeypatch):
    assert Hermes().probe_layers(4) == {"local": [2], "global": [2, 3]}  # layer 0 shallow, layer 1 top of middle: a = 1
    lay = Hermes().probe_layers(30)  # shallow 0-2, middle 3-20 (a = 1 at 3), deep 21-29
    assert lay == {"local": list(range(4, 21)), "global": list(range(4, 30))}
    recency = Hermes(budget=24, anchors=8, headroom=64, deep_recency=(1.0, 20.0),
                     middle_recency=((1.0, 20.0), (1.0, 0.5)))
    assert recency.probe_layers(4) == {}
    assert make_policy("snapkv", budget=24).probe_layers(3) == {"window": [0, 1, 2]}
    frames, times = random_frames(20, seed=8)
    states = []
    for policy in [recency, AllLayersHermes(**{f: getattr(recency, f) for f in ("budget", "anchors", "headroom",
                                                                                 "deep_recency", "middle_recency")})]:
        session = StreamingSession(lm("llava_onevision"), policy, config=StreamConfig(chunk_frames=4))
        probes = []
        real = session.engine.probe
        monkeypatch.setattr(session.engine, "probe", lambda *a, _r=real, _p=probes, **k: _p.append(1) or _r(*a, **k))
        session.add_frames(frames, times)
        assert session.stats.compress_log
        assert bool(probes) == (policy is not recency)
        states.append(session.cache.state())
    # Recency only: the probe could not change a score, so skipping it changes nothing.
    assert all(torch.equal(x[k], y[k]) for x, y in zip(*states, strict=True) for k in x)
