"""Learned DMC retrofit (train/train_dmc.py): the training attention is the inference memory, and the script runs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ppllava_hermes.memory import KeyDimDecider, TokenMerge
from ppllava_hermes.recipes.train import train_dmc
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.world.model import load_shapesworld_adapter, prompt_for


@pytest.fixture(scope="module")
def tiny():
    return train_dmc.tiny_adapter(0)


def _example(min_frames: int = 12):
    random.seed(0)
    gen = train_dmc.stream_examples("train", 5, static_fraction=0.5)
    while True:
        frames, times, rec = next(gen)
        if len(frames) >= min_frames:
            return frames, times, rec


@pytest.mark.parametrize("offset, name", [(-100.0, "every candidate merges"), (100.0, "nothing merges")])
def test_training_attention_with_hard_decisions_equals_the_streaming_memory(tiny, offset, name):
    """Question logits of one teacher-forced forward == the session's with TokenMerge(KeyDimDecider)."""
    rope = tiny.rope_spec()
    retro = train_dmc.DMCRetrofit(tiny.model, rope, dim=-1, offset=offset)
    try:
        frames, times, rec = _example()
        end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")
        seq = train_dmc.build_sequence(tiny, frames, times, rec, end)
        with torch.no_grad():
            logits, state = train_dmc.forward(tiny.model, rope, train_dmc.collate([seq]), hard=True)
        session = StreamingSession(tiny, memory=TokenMerge(decider=KeyDimDecider(dim=-1, offset=offset)),
                                   config=StreamConfig(chunk_frames=train_dmc.CHUNK))
        session.add_frames(frames, times)
        answer = session.ask(prompt_for(rec), GenerationConfig(max_new_tokens=1), return_logits=True)
    finally:
        retro.remove()
    merged = sum(r.merged for r in session.stats.compress_log)
    assert (merged > 0) == (offset < 0), name
    n_q = answer.question_logits.shape[0]
    start = seq.embeds.shape[0] - int((seq.labels != -100).sum()) - n_q
    torch.testing.assert_close(logits[0, start : start + n_q], answer.question_logits, atol=1e-4, rtol=1e-4)
    rate = float(torch.cat(state.decisions).mean())
    assert rate == (1.0 if offset < 0 else 0.0)


def test_schedule_zeroes_the_query_first_then_ramps_the_ratio():
    assert train_dmc.schedule(0, 100, 20, 4.0) == (1.0, 0.0)
    q, prior = train_dmc.schedule(20, 100, 20, 4.0)
    assert q == 0.0 and prior == 0.0
    q, prior = train_dmc.schedule(100, 100, 20, 4.0)
    assert prior == pytest.approx(0.75)


def test_the_script_runs_two_steps_and_saves_a_working_model(tmp_path):
    report = train_dmc.main(["--tiny", "--steps", "2", "--batch-size", "2", "--zero-steps", "1",
                             "--target-cr", "2", "--out", str(tmp_path), "--max-minutes", "5"])
    assert report["steps"] == 2 and len(report["log"]) == 2
    saved = json.loads((tmp_path / "dmc.json").read_text())
    assert saved["dim"] == 7 and saved["offset"] == 5.0  # head_dim 8: the last dimension
    adapter = load_shapesworld_adapter(tmp_path)
    lm = adapter.model.model.language_model
    q = lm.layers[0].self_attn.q_proj
    rows = [h * 8 + j for h in range(4) for j in (7, 3)]  # the dimension and its rotary partner, every head
    assert torch.count_nonzero(q.weight[rows]) == 0 and torch.count_nonzero(q.bias[rows]) == 0
    session = StreamingSession(adapter, memory=TokenMerge(decider=KeyDimDecider(dim=saved["dim"], offset=saved["offset"])),
                               config=StreamConfig(chunk_frames=4))
    frames, times, rec = _example(8)
    session.add_frames(frames, times)
    assert session.ask(prompt_for(rec), GenerationConfig(max_new_tokens=2)).text is not None
