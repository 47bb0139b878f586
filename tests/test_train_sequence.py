"""The training sequence equals the streaming session's; trainable pooling extras; instruction data errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.training import (
    DataError,
    DataErrorLog,
    PooledVideoLM,
    TrainableConfig,
    VideoInput,
    answer_ids,
    apply_trainable,
    chunk_spans,
    collate_video_batch,
    load_instruction_file,
    question_only,
    shapesworld_examples,
)
from ppllava_hermes.training.build import load_clip, load_vlm

torch.set_num_threads(1)


def _model(family: str, clip: str = "tiny") -> PooledVideoLM:
    adapter = load_vlm(f"tiny:{family}")
    scorer = load_clip(clip, adapter.frames_per_group)
    config = PoolingConfig(kernel=(1, 2, 2), padding="replicate", learn_tau=True, window_bias=True,
                           adapter_dim=8, feature_dim=adapter.text_config.hidden_size)
    torch.manual_seed(0)
    return PooledVideoLM(adapter, PromptGuidedPooling(config), scorer, chunk_frames=4)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_teacher_forced_logits_equal_the_sessions(family):
    model = _model(family)
    with torch.no_grad():  # a trained adapter is not the identity: make it matter
        model.pooling.adapter.up.weight.normal_(0, 0.1)
    examples = shapesworld_examples("train", 2)
    ex = examples[0]
    # 7 frames: a full chunk, whole groups, then a padded partial group (Qwen2.5-VL)
    frames = np.concatenate([ex.frames, ex.frames[:3]])
    video = VideoInput(frames, np.arange(7.0))
    batch = collate_video_batch(model.adapter, [video, examples[1].video_input()],
                                [ex.question, examples[1].question], [ex.clip_query, examples[1].clip_query],
                                [(0, ex.answer), (1, examples[1].answer), (0, "blue")])
    with torch.no_grad():
        out = model(**batch)
    # the session, fed the same pooled chunks, then the question and the answer tokens one by one
    chunks = model.pooled_chunks(VideoInput(frames, np.arange(7.0)), ex.clip_query)
    session = StreamingSession(model.adapter, config=StreamConfig(chunk_frames=4, record_logits=True))
    for c in chunks:
        session.add_visual_tokens(c.visual, c.frame_times)
    q = model.adapter.tokenize(model.adapter.question_text(ex.question))
    ids = answer_ids(model.adapter, ex.answer)
    with torch.no_grad():
        logits, _ = session.engine.prefill(
            model.adapter.text_segment(torch.cat([q, ids]), session.next_position, TokenKind.TEXT))
    ref = logits[0, len(q) - 1 : len(q) - 1 + len(ids)]
    torch.testing.assert_close(out.logits[0, : len(ids)], ref, atol=1e-4, rtol=1e-4)
    # the same prompt in another row (DPO's rejected row) has the same first-token logits
    torch.testing.assert_close(out.logits[2, 0], out.logits[0, 0])
    # and ask() of a fresh session agrees on the first answer token
    s2 = StreamingSession(model.adapter, config=StreamConfig(chunk_frames=4))
    for c in chunks:
        s2.add_visual_tokens(c.visual, c.frame_times)
    ans = s2.ask(ex.question, GenerationConfig(max_new_tokens=1), return_logits=True)
    torch.testing.assert_close(out.logits[0, 0], ans.question_logits[-1], atol=1e-4, rtol=1e-4)
    assert out.loss is not None and torch.isfinite(out.loss)


@pytest.mark.parametrize("n, chunk, group, expected", [
    (4, 4, 2, [(0, 4, 0)]),
    (7, 4, 2, [(0, 4, 0), (4, 6, 0), (6, 7, 1)]),
    (5, 8, 2, [(0, 4, 0), (4, 5, 1)]),
    (3, 2, 1, [(0, 2, 0), (2, 3, 0)]),
])
def test_chunk_spans_follow_the_session(n, chunk, group, expected):
    assert [(s.start, s.stop, s.pad) for s in chunk_spans(n, chunk, group)] == expected


def test_pooling_extras_identity_at_init_and_round_trip(tmp_path):
    x = torch.randn(2, 4, 4, 4, 16)
    w = torch.rand(2, 4, 4, 4)
    plain = PromptGuidedPooling(PoolingConfig(kernel=(2, 2, 2)))
    extra = PromptGuidedPooling(PoolingConfig(kernel=(2, 2, 2), window_bias=True, adapter_dim=4, feature_dim=16))
    torch.testing.assert_close(extra(x, w).features, plain(x, w).features)  # zero-initialised: unchanged
    ident = PromptGuidedPooling(PoolingConfig(kernel=(1, 1, 1), adapter_dim=4, feature_dim=16, window_bias=True))
    assert ident(x, w).features is x  # kernel (1,1,1) stays an exact identity
    with torch.no_grad():
        for p in extra.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    extra.save_pretrained(tmp_path / "pool")
    loaded = PromptGuidedPooling.from_pretrained(tmp_path / "pool")
    torch.testing.assert_close(loaded(x, w).features, extra(x, w).features)
    with pytest.raises(ValueError, match="feature_dim"):
        PoolingConfig(adapter_dim=4)
    with pytest.raises(ValueError, match="fixed kernel"):
        PoolingConfig(target=(2, 2, 2), window_bias=True)


def test_clip_text_tail_trains_on_long_questions():
    model = _model("qwen2_5_vl")
    names = apply_trainable(model, TrainableConfig())
    tail = [p for n, p in model.named_parameters() if n.endswith("positional_embedding.original")]
    assert len(tail) == 1 and any("positional_embedding.original" in n for n in names)
    ex = shapesworld_examples("train", 1)[0]
    long_query = " ".join(["which shape is moving left in the video"] * 5)  # > 20 CLIP tokens
    batch = collate_video_batch(model.adapter, [ex.video_input()], [ex.question], [long_query], [(0, ex.answer)])
    model(**batch).loss.backward()
    assert tail[0].grad is not None and tail[0].grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_question_only():
    assert question_only("<video>\nWhat colour is it? Options: red, blue.") == "What colour is it?"
    assert question_only("What is shown?\nA. a dog\nB. a cat") == "What is shown?"
    assert question_only("<video> Describe the video.") == "Describe the video."


def _write_bad_jsonl(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")  # exists (decoding errors are reported later)
    lines = [
        json.dumps({"video": "v.mp4", "conversations": [{"from": "human", "value": "<video>\nQ1?"},
                                                       {"from": "gpt", "value": "A1"}]}),
        '{"video": "v.mp4", "conversations": [',
        json.dumps({"video": "missing.mp4", "q": "Q?", "a": "A"}),
        json.dumps({"video": "v.mp4", "conversations": [{"from": "human", "value": "<video>\nQ2?"}]}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_data_errors_skip_with_file_and_line(tmp_path):
    path = _write_bad_jsonl(tmp_path)
    errors = DataErrorLog("skip")
    with pytest.warns(UserWarning) as caught:
        examples = load_instruction_file(path, errors)
    assert [ex.question for ex in examples] == ["Q1?"] and examples[0].line == 1
    assert errors.count == 3
    assert f"{path}:2: malformed JSON" in errors.errors[0]
    assert f"{path}:3: missing video 'missing.mp4'" in errors.errors[1]
    assert f"{path}:4: conversation turn 0" in errors.errors[2] and "no answer" in errors.errors[2]
    assert len([w for w in caught if "skipping" in str(w.message)]) == 3


def test_data_errors_fail_with_file_and_line(tmp_path):
    path = _write_bad_jsonl(tmp_path)
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        load_instruction_file(path, DataErrorLog("fail"))


def test_json_array_records_carry_their_lines(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    path = tmp_path / "d.json"
    path.write_text('[\n {"video": "a.mp4", "q": "one?", "a": "x"},\n\n {"video": "a.mp4", "q": "two?", "a": "y"}\n]\n')
    examples = load_instruction_file(path, DataErrorLog("fail"))
    assert [(ex.question, ex.line) for ex in examples] == [("one?", 2), ("two?", 4)]
    path.write_text('[\n {"video": "a.mp4", "q": "one?", "a": "x"},\n {"video": "a.mp4", "q": \n]\n')
    errors = DataErrorLog("skip")
    with pytest.warns(UserWarning):
        examples = load_instruction_file(path, errors)
    assert len(examples) == 1 and errors.errors[0].startswith(f"{path}:4: malformed JSON")
