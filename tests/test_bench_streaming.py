"""bench_streaming: the chunk layout from the adapter, the budget formula against measured peaks, the floor's
written cache, the SmolLM2-LM LLaVA-OneVision builder (on a tiny random Llama) and the report (old rows
without the new fields, hand-written notes carried over). Tiny models, small frames: a few seconds."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.recipes.bench import bench_streaming as bs
from ppllava_hermes.testing import (
    byte_tokenizer,
    llava_onevision_around_lm,
    tiny_llava_onevision,
    tiny_qwen2_5_vl,
)


def _setup(family: str) -> bs.ModelSetup:
    if family == "llava_onevision":
        model, tok = tiny_llava_onevision()  # 56 px, patch 14: 4 x 4 -> pooled 2 x 2 = 4 tokens per frame
        tokens_per_frame = 4.0
    else:
        model, tok = tiny_qwen2_5_vl()  # 56 px: 4 x 4 patches -> merged 2 x 2 = 4 per frame pair
        tokens_per_frame = 2.0
    adapter = adapter_for_model(model, tok)
    group = adapter.frames_per_group
    probe = adapter.encode_frames(np.zeros((group, 56, 56, 3), np.uint8), np.arange(group, dtype=float), 0)
    return bs.ModelSetup(adapter, 56, tokens_per_frame, *bs.chunk_extras(adapter), max(1, probe.num_tokens // group))


@pytest.fixture(scope="module", params=["llava_onevision", "qwen2_5_vl"])
def setup(request) -> bs.ModelSetup:
    return _setup(request.param)


def test_chunk_layout_comes_from_the_adapter(setup):
    adapter = setup.adapter
    frames = np.zeros((4, 56, 56, 3), np.uint8)
    visual = adapter.encode_frames(frames, np.arange(4, dtype=float), 0)
    seg = adapter.visual_segment(visual, 0)
    t, h, w = visual.grid
    assert len(seg) - t * h * w == setup.extra_per_chunk
    assert sum(setup.chunk_blocks(4)) == len(seg)
    # each block is what one frame id tags in the segment
    _, counts = torch.unique_consecutive(seg.meta.frame_ids, return_counts=True)
    assert counts.tolist() == setup.chunk_blocks(4)
    if adapter.family == "llava_onevision":  # the model's newline + the chat format's newline after a video
        assert setup.extra_per_chunk == 1 + len(adapter.after_video_ids()) == 2


def test_peak_kv_matches_the_budget_formula(setup):
    args = bs.parse_args(["--frames", "8", "40", "--budget", "48", "--anchors", "4", "--chunk-frames", "4",
                          "--questions", "1", "--warmup", "0"])
    times = bs.ModelTimes(floor_s=0.01, encode_s=0.001)
    for policy in bs.POLICIES:
        rows = bs.run_policy("tiny", setup, policy, args, torch.float32, times, lambda _: None)
        for row in rows:
            dev = abs(row["peak_kv_bytes"] - row["kv_bytes_formula"]) / row["kv_bytes_formula"]
            exact = policy in ("window", "sink", "full", "uniform")
            assert dev == 0 if exact else dev <= 0.05, (policy, row)
            assert list(row) == bs.FIELDS and row["fill"] == "stream" and row["floor_ms"] == 10.0


def test_floor_cache_holds_exactly_system_plus_entries(setup):
    session = bs.StreamingSession(setup.adapter, memory=bs.make_policy("full"))
    bs.fill_synthetic(session, 30, setup.tokens_per_frame)
    system = len(setup.adapter.tokenize(setup.adapter.prefix_text()))
    assert session.engine.cache.physical_length() == system + 30
    answer = session.ask("What is happening?", bs.GenerationConfig(max_new_tokens=1))
    assert answer.cache_tokens == system + 30 and answer.ttft_s > 0
    assert session.engine.cache.physical_length() == system + 30  # the question rolled back
    ttft, kv = bs.synthetic_ttft(setup, 30, questions=1, warmup=0)
    assert ttft > 0 and kv == bs.bytes_per_entry(setup.adapter, torch.float32) * (system + 30)


def test_llava_onevision_around_a_llama_keeps_its_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok) - 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    model, tok2 = llava_onevision_around_lm(lm, copy.deepcopy(tok), vision_hidden=32, image_size=56)
    assert model.config.text_config.model_type == "llama"
    ids = torch.randint(0, 200, (1, 12))
    with torch.no_grad():
        a, b = lm(ids).logits, model(input_ids=ids).logits
    assert torch.equal(a, b[..., : a.shape[-1]])
    adapter = adapter_for_model(model, tok2)
    session = bs.StreamingSession(adapter, memory=bs.make_policy("hermes", budget=48, anchors=2))
    session.add_frames(np.zeros((4, 56, 56, 3), np.uint8), np.arange(4.0))
    assert session.ask("What?", bs.GenerationConfig(max_new_tokens=1)).ttft_s > 0


def test_report_keeps_old_rows_and_notes(tmp_path):
    old = {"model": "old", "policy": "hermes", "frames": 16, "budget": 8, "ttft_ms": 2.0, "ingest_fps": 1.0,
           "peak_kv_bytes": 100, "kv_bytes_formula": 100, "compress_ms": 1.0, "ingest_ms": 10.0}
    new = bs.make_row("new", "hermes", 16, 8, 0.004, 1.0, 100, 100, 0.01, bs.ModelTimes(0.002, 0.001), None, "stream")
    synth = bs.make_row("new", "full", 64, None, 0.04, None, 400, 400, 0.0, bs.ModelTimes(0.002, 0.001), None,
                        "synthetic")
    args = bs.parse_args(["--out-dir", str(tmp_path)])
    (tmp_path / "streaming_efficiency.md").write_text(f"# old\n\n{bs.NOTES_HEADING}\n\n- a hand note\n")
    bs.write_report([old, new, synth], tmp_path, "cmd", args)
    rows = json.loads((tmp_path / "streaming_efficiency.json").read_text())
    assert [list(r) for r in rows] == [bs.FIELDS] * 3 and rows[0]["floor_ms"] is None
    md = (tmp_path / "streaming_efficiency.md").read_text()
    assert md.count("- a hand note") == 1 and "| new | hermes | 16 | 8 | 4.00 | 2.00 | 2.00 |" in md
    assert "full TTFT / this (full's largest F)" in md and "10.0x (F=64)" in md
    assert (tmp_path / "streaming_efficiency.png").stat().st_size > 0
