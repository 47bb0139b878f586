"""The streaming engine is the HF model's own forward pass, chunk by chunk (fp32, tiny random models)."""

import pytest
import torch

from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession

from .helpers import hf_reference_inputs, random_frames, tiny_adapter

FAMILIES = ["qwen2_5_vl", "llava_onevision"]
QUESTION = "What happens in the video?"


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_one_shot_forward(family):
    adapter = tiny_adapter(family)
    frames, times = random_frames(12)
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=4, record_logits=True))
    for start in range(0, 12, 4):  # three add_frames calls, one chunk each
        session.add_frames(frames[start : start + 4], times[start : start + 4])
    assert session.stats.chunks == 3
    answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=1), return_logits=True)
    streamed = torch.cat(session.logits_log[:4] + [answer.question_logits])

    chunks = [(frames[i : i + 4], times[i : i + 4]) for i in range(0, 12, 4)]
    ref = hf_reference_inputs(adapter, chunks, QUESTION)
    with torch.no_grad():
        full = adapter.model(**ref).logits[0]
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_answer_matches_generate(family):
    adapter = tiny_adapter(family)
    frames, times = random_frames(12, seed=1)
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    answer = session.ask(QUESTION, GenerationConfig(max_new_tokens=12))

    chunks = [(frames[i : i + 4], times[i : i + 4]) for i in range(0, 12, 4)]
    ref = hf_reference_inputs(adapter, chunks, QUESTION)
    if hasattr(adapter.model.model, "rope_deltas"):
        adapter.model.model.rope_deltas = None
    with torch.no_grad():
        out = adapter.model.generate(**ref, max_new_tokens=12, do_sample=False,
                                     eos_token_id=adapter.eos_token_ids, pad_token_id=adapter.eos_token_ids[0])
    generated = out[0, ref["input_ids"].shape[1] :].tolist()
    generated = [t for t in generated if t not in adapter.eos_token_ids]
    assert len(answer.token_ids) > 0
    assert answer.token_ids == generated


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_restored_after_ask(family):
    adapter = tiny_adapter(family)
    frames, times = random_frames(8, seed=2)
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=4))
    session.add_frames(frames, times)
    before = session.cache.state()
    position = session.next_position
    session.ask(QUESTION, GenerationConfig(max_new_tokens=5))
    session.ask("And now?", GenerationConfig(max_new_tokens=3, do_sample=True, seed=3, top_p=0.9))
    after = session.cache.state()
    assert session.next_position == position
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert b.keys() == a.keys()
        for key in b:
            assert torch.equal(b[key], a[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_round_trips_through_from_pretrained(family, tmp_path):
    from ppllava_hermes.models import load_adapter

    adapter = tiny_adapter(family)
    adapter.save_pretrained(tmp_path)
    loaded = load_adapter(tmp_path, dtype=torch.float32)
    assert type(loaded) is type(adapter)
    frames, times = random_frames(4, seed=5)
    a = adapter.encode_frames(frames, times, 0).features
    b = loaded.encode_frames(frames, times, 0).features
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert loaded.tokenize("what?").tolist() == adapter.tokenize("what?").tolist()


def test_load_adapter_errors_name_the_path(tmp_path):
    from ppllava_hermes.models import load_adapter

    with pytest.raises(ValueError, match="cannot read its config"):
        load_adapter(tmp_path / "missing")


def test_full_cache_past_the_position_limit_warns_once():
    import dataclasses
    import warnings

    adapter = tiny_adapter("qwen2_5_vl")
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=2))
    frames, times = random_frames(8, size=56, seed=4)
    session.add_frames(frames[:2], times[:2])
    limit = session.next_position + 3  # the next chunk crosses it
    session.rope = dataclasses.replace(session.rope, max_position_embeddings=limit)
    with pytest.warns(RuntimeWarning, match=rf"past the model's max_position_embeddings \({limit}\).*'full'"):
        session.add_frames(frames[2:4], times[2:4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.add_frames(frames[4:], times[4:])  # once per stream
    assert session.next_position > limit
