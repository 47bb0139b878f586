"""Stage 3 of the ShapesWorld VLM (train_world_memory) and the recall question types it trains on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ppllava_hermes.recipes.train import train_world_memory as tm
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.timed import TimedQuestion, run_timed_questions
from ppllava_hermes.world.generator import WorldConfig, generate_world
from ppllava_hermes.world.model import answer_text, has_shipped_model, load_shapesworld_adapter, prompt_for
from ppllava_hermes.world.tasks import MEMORY_TYPES, TaskConfig, check_record, generate_questions, video_seed

torch.set_num_threads(1)
needs_model = pytest.mark.skipif(not has_shipped_model(), reason="no shipped ShapesWorld checkpoint")


def test_recall_questions_are_about_objects_that_left():
    found = 0
    for seed in range(12):
        w = generate_world(WorldConfig(duration=150.0), seed)
        for r in generate_questions(w, TaskConfig(task_types=MEMORY_TYPES, questions_per_type=3)):
            found += 1
            assert not check_record(w, r)
            k = int(r.extra["t_index"])
            assert r.extra["object_id"] not in w.present_ids(k)  # nothing present shows the answer
            assert r.timestamp - r.extra["event_time"] >= 10.0
            if not r.options:  # another word, or the question one frame before the object left, must fail
                assert check_record(w, dataclasses.replace(r, answer="xyz"))
            gone = int(round(r.extra["event_time"] * w.fps))
            early = dataclasses.replace(r, timestamp=(gone - 1) / w.fps)
            assert check_record(w, early)
    assert found >= 20


def test_plan_session_chunks():
    """The plan follows the session's rules (the packed-logit test below checks it against the session)."""
    times = [5.0, 6.0, 6.0, 13.0, 22.5]
    chunks, asks, extras = tm.plan_session(24, times)
    # the stream itself prefills every frame once, in order, in whole groups of at most one chunk
    flat = [i for c in chunks for i, _ in c]
    assert flat == list(range(24)) and all(len(c) % 2 == 0 and len(c) <= 4 for c in chunks)
    # a question at 5 s sees frames 0..5 and nothing later
    assert max(i for c in chunks[: asks[0]] for i, _ in c) == 5 and extras[0] is None
    # at 6 s frame 6 is a partial group: padded with its copy for that question only, and still streamed later
    assert [i for i, _ in extras[1]] == [6, 6] and extras[1][1][1] == pytest.approx(6.0 + 1e-6)
    assert asks[1] == asks[2] and extras[2] == extras[1]
    assert max(i for c in chunks[: asks[1]] for i, _ in c) == 5
    assert max(i for c in chunks[: asks[3]] for i, _ in c) == 13 and extras[3] is None
    assert max(i for c in chunks[: asks[4]] for i, _ in c) == 21 and [i for i, _ in extras[4]] == [22, 22]


@needs_model
@pytest.mark.parametrize("pool", [None, "avg", "clip"])
def test_packed_logits_equal_the_session(pool):
    """Every question's logits in one packed forward equal StreamingSession.ask's on the same stream."""
    adapter = load_shapesworld_adapter()
    scorer = None
    if pool == "clip":
        from ppllava_hermes.streaming.pooling_stage import load_scorer

        try:
            scorer = load_scorer(None, frames_per_token=2)
        except FileNotFoundError:
            pytest.skip("no shipped ShapesWorld CLIP")
    builder = tm.DocumentBuilder(adapter, scorer)
    stage = builder.stage(pool)
    w = generate_world(WorldConfig(duration=41.0), video_seed("train", 77))
    recs = tm.stream_records(w, 1, 2)[:6]
    assert len({int(r.timestamp) % 2 for r in recs}) == 2  # odd and even question frames (padding)
    plan = tm.plan_session(w.n_frames, [r.timestamp for r in recs])
    assert any(x is not None for x in plan[2])  # some questions see a padded partial group
    doc = builder.document(np.stack(list(w.frames())), *plan, recs, stage)
    short_frames = np.stack(list(w.frames(0, 4)))
    other = builder.clip_document(short_frames, recs[0], stage)
    logits = tm.packed_logits(adapter.model.eval(), tm.pack([[doc, other]]))[0]

    session = StreamingSession(adapter, pooling=stage, config=StreamConfig(chunk_frames=4))
    got = []
    ask = session.ask
    session.ask = lambda text, gen=None: got.append(ask(text, gen, return_logits=True).question_logits) or ask(text, gen)
    qs = [TimedQuestion(float(r.timestamp), prompt_for(r), j) for j, r in enumerate(recs)]
    done = run_timed_questions(session, tm.world_clips(w), qs, GenerationConfig(max_new_tokens=1))
    starts, o = [], doc.embeds.shape[0]
    for e, *_ in doc.blocks:
        starts.append(o)
        o += e.shape[0]
    for (q, _), ql in zip(done, got, strict=True):
        block = doc.blocks[q.payload]
        n_answer = len(adapter.tokenize(answer_text(recs[q.payload]))) + 1
        s = starts[q.payload] + block[0].shape[0] - n_answer - ql.shape[0]  # after a padded group, if any
        torch.testing.assert_close(logits[s : s + ql.shape[0]], ql, atol=1e-4, rtol=1e-4)
    # the short document packed behind the stream is independent of it
    s = o + other.embeds.shape[0]
    solo = tm.packed_logits(adapter.model, tm.pack([[other]]))[0]
    torch.testing.assert_close(logits[s : s + other.blocks[0][0].shape[0]],
                               solo[other.embeds.shape[0] : len(other)], atol=1e-4, rtol=1e-4)


def test_lr_factor_warms_up_and_decays():
    assert tm.lr_factor(1, 10, 100, 0.0) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 0.01)))
    assert tm.lr_factor(50, 10, 100, 0.0) == pytest.approx(0.5)
    assert tm.lr_factor(50, 10, 100, 1.0) == pytest.approx(0.0, abs=1e-12)  # out of time: rate 0


@needs_model
def test_train_world_memory_smoke(tmp_path):
    from ppllava_hermes.world.model import VLM_DIR

    out = tmp_path / "vlm"
    tm.main(["--init", str(VLM_DIR), "--out", str(out), "--steps", "1", "--streams", "1", "--shorts", "2",
             "--min-seconds", "20", "--max-seconds", "20", "--questions-per-type", "1", "--final-streams", "1",
             "--final-clips", "2", "--threads", "1", "--pool-probs", "1,0,0"])
    report = json.loads((out / "memory_training_report.json").read_text())
    assert report["steps"] == 1 and report["log"] == [] and "streams_full" in report["test"]
    assert (out / "training_report.json").read_text() == (VLM_DIR / "training_report.json").read_text()
    load_shapesworld_adapter(out)


def test_watch_decisions_are_labelled_as_the_forward_protocol_scores():
    from ppllava_hermes.world.tasks import FORWARD_TYPES

    w = generate_world(WorldConfig(duration=120.0), video_seed("train", 78))
    recs = generate_questions(w, TaskConfig(task_types=FORWARD_TYPES, questions_per_type=2))
    assert recs
    for rec in recs:
        ds = tm.watch_decisions(w, rec, max_negatives=6)
        e, tol = rec.extra["event_time"], rec.extra["tolerance"]
        ends = set(tm.chunk_end_times(w.n_frames, w.fps, tm.WATCH_CHUNK))
        assert all(d.timestamp in ends and d.timestamp > rec.timestamp and d.question == rec.question for d in ds)
        now = [d.timestamp for d in ds if d.answer == tm.WATCH_POSITIVE]
        no = [d.timestamp for d in ds if d.answer == tm.WATCH_NEGATIVE]
        assert now and all(e <= t <= e + tol for t in now)  # a 2 s tolerance holds a 2-frame chunk's end
        assert all(t < e for t in no) and len(no) <= 6
        assert max(no, default=-1) == max((t for t in ends if rec.timestamp < t < e), default=-1)  # the hardest kept


@needs_model
def test_watch_decision_blocks_equal_the_sessions_watch_scores():
    """A watch stream's packed decision logits equal what StreamingSession.watch scores on the same stream."""
    import random

    from ppllava_hermes.world.model import WATCH
    from ppllava_hermes.world.tasks import FORWARD_TYPES

    adapter = load_shapesworld_adapter()
    builder = tm.DocumentBuilder(adapter)
    w = generate_world(WorldConfig(duration=60.0), video_seed("train", 79))
    rec = generate_questions(w, TaskConfig(task_types=FORWARD_TYPES, questions_per_type=1))[0]
    ds = tm.watch_decisions(w, rec, rng=random.Random(0))
    doc = builder.stream_document(w, ds, None, chunk=tm.WATCH_CHUNK)
    with torch.no_grad():
        logits = tm.packed_logits(adapter.model.eval(), tm.pack([[doc]]))[0]
    ordered = sorted(ds, key=lambda d: d.timestamp)
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=tm.WATCH_CHUNK))
    wid = None
    for s in range(0, int(max(d.timestamp for d in ds)) + 1, tm.WATCH_CHUNK):
        if wid is None and rec.timestamp < s + tm.WATCH_CHUNK - 1:
            wid = session.watch(rec.question, WATCH)
        clip = w.clip(s, s + tm.WATCH_CHUNK)
        session.add_frames(clip.frames, clip.timestamps)
    scores = dict(session.watches[wid].scores)
    o = doc.embeds.shape[0]
    pos, neg = session.watches[wid].positive_ids, session.watches[wid].negative_ids
    for d, (e, *_rest) in zip(ordered, doc.blocks, strict=True):
        last_q = o + e.shape[0] - 3  # the question's last token predicts the answer word ("now"/"no", end)
        p = torch.softmax(logits[last_q], -1)
        assert float(p[pos].sum() / (p[pos].sum() + p[neg].sum())) == pytest.approx(scores[d.timestamp], abs=1e-4)
        o += e.shape[0]
