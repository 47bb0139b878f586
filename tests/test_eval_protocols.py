"""Evaluation protocols: streaming causality from the frame log, offline windows and re-pooling, forward polling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ppllava_hermes.evaluation.frames import ArraySource, SourceResolver
from ppllava_hermes.evaluation.protocols import (
    Engine,
    MethodConfig,
    ProtocolConfig,
    format_prompt,
    run_offline,
    run_streaming,
    says_now,
)
from ppllava_hermes.evaluation.runner import EvalConfig, run_eval
from ppllava_hermes.streaming import StreamingSession

from .eval_helpers import adapter, clip, record, scripted_ask, split


def _snapshots():
    seen = []

    def hook(session, rec, t):
        seen.append((id(session), rec.qid, t, session.seen_times))

    return seen, hook


@pytest.mark.parametrize("source", ["world", "file"])
def test_streaming_question_at_t_sees_every_frame_up_to_t_and_none_after(source, tmp_path):
    sp = split()
    world = sp.worlds[0]
    records = [r for r in sp.records if r.task_kind != "forward"]
    # Moments between frames and at the very start, on top of the generated questions.
    records += [replace(records[0], qid="between", timestamp=5.5), replace(records[0], qid="first", timestamp=0.0)]
    assert {r.task_kind for r in records} >= {"short", "backward", "realtime"}
    seen, hook = _snapshots()
    cfg = EvalConfig(protocol="streaming", config="hermes", budget=64, chunk_frames=4, max_new_tokens=2,
                     frame_source=source, videos=str(tmp_path))
    run = run_eval(cfg, records=records, adapter=adapter(), worlds=sp.worlds, progress=False, on_ask=hook)
    assert len(run.results) == len(records) == len(seen)
    all_times = world.timestamps()
    asked = sorted(seen, key=lambda s: s[2])
    for _, qid, t, times in asked:
        assert times == [float(x) for x in all_times if x <= t + 1e-9], (qid, t)  # all up to t, none after
    # One session per video, fed on between questions: each log extends the previous one.
    assert len({s[0] for s in seen}) == 1
    for (_, _, _, a), (_, _, _, b) in zip(asked, asked[1:], strict=False):
        assert b[: len(a)] == a
    by_qid = {r.qid: r for r in run.results}
    assert by_qid["between"].stream_seconds == 5.0 and by_qid["between"].frames_seen == 6
    assert by_qid["first"].frames_seen == 1
    if source == "file":  # the mp4 was written and read back through the video reader
        assert (tmp_path / records[0].video).exists()


def test_streaming_stops_reading_after_the_last_question():
    seen, hook = _snapshots()
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="streaming", chunk_frames=4, max_new_tokens=1))
    out = run_streaming([(0, record("a", 6.0))], ArraySource(clip(20, 112)), engine, on_ask=hook)
    assert out[0].frames_seen == 7 and seen[0][3][-1] == 6.0


@pytest.mark.parametrize("mode", ["world", "file"])
def test_offline_windows_share_sessions_and_sample_inside_the_window(mode, tmp_path):
    sp = split()
    seen, hook = _snapshots()
    r0 = sp.records[0]
    recs = [replace(r0, qid="a", start=2.0, end=9.0, timestamp=9.0), replace(r0, qid="b", start=2.0, end=9.0, timestamp=9.0),
            replace(r0, qid="c", start=None, end=None, timestamp=15.0)]
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="offline", num_frames=4, chunk_frames=4,
                                                              max_new_tokens=1))
    source = SourceResolver(tmp_path, mode=mode, worlds=sp.worlds)(r0)
    assert type(source).__name__ == ("WorldSource" if mode == "world" else "FileSource")
    out = {r.qid: r for r in run_offline(list(enumerate(recs)), source, engine, on_ask=hook)}
    logs = {qid: (sid, times) for sid, qid, _, times in seen}
    assert logs["a"][0] == logs["b"][0] != logs["c"][0]  # same window: one encoded session
    assert logs["a"][1] == [3.0, 5.0, 7.0, 9.0]  # 4 uniform frames of [2, 9]: segment middles
    assert logs["c"][1] == [2.0, 6.0, 10.0, 14.0]  # [0, timestamp]
    assert out["c"].asked_at == 15.0 and out["c"].stream_seconds == 14.0
    assert out["a"].frames_seen == 4 and out["a"].visual_tokens == 2 * 16
    # fps instead of a count: 0.5 fps over [0, 15] -> 8 frames
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="offline", fps=0.5, num_frames=None))
    assert run_offline([(0, recs[2])], source, engine)[0].frames_seen == 8
    whole = source.sample(num_frames=4, fps=None)  # no window: the reader's own uniform sampling
    assert whole.timestamps.tolist() == [2.0, 7.0, 12.0, 17.0] and whole.frames.shape[1:] == (112, 112, 3)


def test_offline_prompt_pooling_encodes_once_and_repools_per_question():
    from ppllava_hermes.pooling.relevance import RelevanceConfig, RelevanceScorer
    from ppllava_hermes.pooling.testing import tiny_open_clip

    model, tok = tiny_open_clip()
    scorer = RelevanceScorer(model, tok, config=RelevanceConfig(frames_per_token=2))
    queries = []
    real_score = scorer.score

    def spy(prompt, video, grid=None):
        queries.append(prompt)
        return real_score(prompt, video, grid=grid)

    scorer.score = spy
    ad = adapter()
    calls = []
    real_encode = ad.encode_frames
    ad.encode_frames = lambda *a: calls.append(1) or real_encode(*a)
    try:
        method = MethodConfig(name="pooling", pooling="prompt", kernel=(2, 2, 2))
        engine = Engine(ad, method, ProtocolConfig(protocol="offline", num_frames=8, chunk_frames=8, max_new_tokens=1),
                        scorer=scorer)
        recs = [record("a", 7.0, question="Where is the red circle?"), record("b", 7.0, question="Is it blue?")]
        out = run_offline(list(enumerate(recs)), ArraySource(clip(8, 112)), engine)
    finally:
        del ad.encode_frames
    assert len(calls) == 1  # the video is encoded once for both questions
    assert set(queries) == {"Where is the red circle?", "Is it blue?"}  # CLIP sees the question alone
    # 8 frames -> 4 groups of 4x4 tokens -> pooled (2,2,2) -> 2 x 2x2 = 8 tokens
    assert [r.visual_tokens for r in out] == [8, 8]
    assert "Options" not in queries[0] and "A. red" in out[0].prompt


def test_offline_rejects_forward_questions_and_runner_skips_them():
    sp = split()
    fwd = [r for r in sp.records if r.task_kind == "forward"]
    assert fwd
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="offline", num_frames=4))
    with pytest.raises(ValueError, match="streaming protocol"):
        run_offline([(0, fwd[0])], SourceResolver(worlds=sp.worlds)(fwd[0]), engine)
    run = run_eval(EvalConfig(protocol="offline", num_frames=4, max_new_tokens=1), records=fwd[:1] + sp.records[:1],
                   adapter=adapter(), worlds=sp.worlds, progress=False)
    assert len(run.results) == 1 and run.skipped[0]["qid"] == fwd[0].qid


def _script(engine: Engine, reply) -> None:
    """Sessions of ``engine`` answer ``reply(newest frame time)``."""
    make = engine.new_session

    def new_session(pooling="stream"):
        s = make(pooling)
        s.ask = scripted_ask(lambda sess, q: reply(sess.frame_log[-1][1])).__get__(s)
        return s

    engine.new_session = new_session


def _fire_at(engine: Engine, fire_at: float) -> None:
    """The model says "now" once its newest frame is at or after ``fire_at``, "not yet" before."""
    _script(engine, lambda t: "now" if t >= fire_at else "not yet")


@pytest.mark.parametrize(
    "fire_at, correct, response, polls",
    [(9.0, True, 9.0, 4),  # polls at 3, 5, 7, 9 (one frame pair apart): fires at the event
     (10.0, True, 11.0, 5),  # fires one poll after the event, inside the 2 s tolerance
     (4.0, False, 5.0, 2),  # before the event: a false alarm
     (12.5, False, None, 5),  # not by event + tolerance (11 s): a miss; polling stops there
     (99.0, False, None, 5)],
)
def test_forward_question_is_polled_and_scored_in_its_tolerance_window(fire_at, correct, response, polls):
    fwd = record("f", 3.0, kind="forward", options=[], answer="now", question="Tell me when it turns red.",
                 extra={"event_time": 9.0, "tolerance": 2.0})
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="streaming", chunk_frames=8, max_new_tokens=1))
    _fire_at(engine, fire_at)
    seen, hook = _snapshots()
    (out,) = run_streaming([(0, fwd)], ArraySource(clip(20, 112)), engine, on_ask=hook)
    assert (out.correct, out.response_time, out.polls) == (correct, response, polls)
    assert [s[2] for s in seen][:3] == [3.0, 5.0, 7.0][: min(3, polls)]
    assert all(times[-1] <= t for _, _, t, times in seen)


@pytest.mark.parametrize(
    "fire_at, correct, response",
    [(9.0, True, 9.0),  # decisions after every 2-frame chunk (1, 3, 5, ...): the first at or after 9 s fires
     (4.0, False, 5.0),  # before the event: a false alarm
     (12.5, False, None)],  # not by event + tolerance: a miss, and the watch is removed
)
def test_forward_question_as_a_standing_query(fire_at, correct, response):
    import torch

    fwd = record("f", 3.0, kind="forward", options=[], answer="now", question="Tell me when it turns red.",
                 extra={"event_time": 9.0, "tolerance": 2.0})
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="streaming", chunk_frames=2, max_new_tokens=1,
                                                              forward_mode="watch"))
    make, sessions = engine.new_session, []

    def new_session(pooling="stream"):
        s = make(pooling)
        s.config.fused_watch = False  # the scripted decision below replaces the separate pass
        vocab = s.adapter.model.config.get_text_config().vocab_size

        def decide(ids):
            logits = torch.zeros(vocab)
            w = next(iter(s.watches.values()))
            logits[w.positive_ids[0]] = 9.0 if s.frame_log[-1][1] >= fire_at else -9.0
            return logits

        s.engine.next_token_logits = decide
        sessions.append(s)
        return s

    engine.new_session = new_session
    (out,) = run_streaming([(0, fwd)], ArraySource(clip(20, 112)), engine)
    assert (out.correct, out.response_time) == (correct, response)
    assert out.polls >= 1 and not sessions[0].watches  # decided by the watch, which is gone afterwards


def test_ovo_forward_probes_are_asked_at_their_own_times():
    probes = [{"timestamp": 4.0, "question": "Has it started? Answer Yes or No.", "answer": "No"},
              {"timestamp": 12.0, "question": "Has it started? Answer Yes or No.", "answer": "Yes"}]
    rec = record("p", 4.0, kind="forward", options=[], answer="Yes", question="Has it started?",
                 extra={"probes": probes})
    engine = Engine(adapter(), MethodConfig(), ProtocolConfig(protocol="streaming", chunk_frames=4, max_new_tokens=1))
    _script(engine, lambda t: "Yes." if t >= 10 else "No, not yet.")
    seen, hook = _snapshots()
    (out,) = run_streaming([(0, rec)], ArraySource(clip(20, 112)), engine, on_ask=hook)
    assert [s[2] for s in seen] == [4.0, 12.0] and [s[3][-1] for s in seen] == [4.0, 12.0]
    assert [p["correct"] for p in out.probes] == [True, True] and out.correct and out.score == 1.0
    _script(engine, lambda t: "Yes")  # right at 12 s only
    (out,) = run_streaming([(0, rec)], ArraySource(clip(20, 112)), engine)
    assert out.score == 0.5 and not out.correct and out.prediction == "Yes | Yes"


def test_says_now_and_prompt_formats():
    assert says_now("now") and says_now("Yes, it left.") and says_now("It happens now.")
    assert not says_now("No, not now") and not says_now("not now") and not says_now("not yet") and not says_now("")
    r = record("x", 1.0)
    assert format_prompt(r, "letters").endswith("directly.") and "B. blue" in format_prompt(r, "letters")
    assert format_prompt(replace(r, benchmark="shapesworld")) == "What is shown (x)? Options: red, blue, green."
    assert format_prompt(r, "plain") == r.question


def test_streaming_session_per_video_is_new(monkeypatch):
    created = []
    real_init = StreamingSession.__init__

    def init(self, *a, **k):
        created.append(self)
        real_init(self, *a, **k)

    monkeypatch.setattr(StreamingSession, "__init__", init)
    sp = split(2, 12.0)
    recs = [r for r in sp.records if r.task_kind == "realtime"]
    assert len({r.video for r in recs}) == 2
    run = run_eval(EvalConfig(protocol="streaming", max_new_tokens=1, chunk_frames=4), records=recs,
                   adapter=adapter(), worlds=sp.worlds, progress=False)
    assert len(created) == 2 and len(run.results) == len(recs)
    assert np.all([r.frames_seen == int(r.asked_at) + 1 for r in run.results])
