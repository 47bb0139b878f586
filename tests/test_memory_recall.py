"""The memory-recall benchmark: its statistics, its session feeding and a --quick smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppllava_hermes.recipes.bench import memory_recall as mr
from ppllava_hermes.world.model import has_shipped_model

torch.set_num_threads(1)
needs_model = pytest.mark.skipif(not has_shipped_model(), reason="no shipped ShapesWorld checkpoint")


def test_bootstrap_interval_and_age_bins():
    assert mr.bootstrap_ci(np.ones(20), 100) == [1.0, 1.0]
    lo, hi = mr.bootstrap_ci(np.array([0.0, 1.0] * 50), 500)
    assert lo < 0.5 < hi and hi - lo < 0.25
    assert mr.bootstrap_ci(np.array([]), 10) is None
    assert [mr.age_bin(a) for a in (10.0, 29.9, 30.0, 90.0, 200.0)] == ["10-30s", "10-30s", "30-90s", ">90s", ">90s"]
    assert mr.age_bin(None) is None


def test_every_policy_name_is_a_configuration():
    from ppllava_hermes.memory import POLICIES

    configs = mr.all_configs()
    assert configs[0] == "full" and set(POLICIES) <= set(configs) and configs[-1] == mr.POOLED


@needs_model
def test_run_config_scores_the_session_answers():
    """run_config's outcomes are the timed session's answers, judged, with the visual KV they held."""
    from ppllava_hermes.memory import make_policy
    from ppllava_hermes.recipes.train.train_world_memory import CHUNK, judge
    from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
    from ppllava_hermes.streaming.timed import TimedQuestion, run_timed_questions
    from ppllava_hermes.world.model import load_shapesworld_adapter, prompt_for

    adapter = load_shapesworld_adapter()
    (stream,) = mr.build_streams(mr.parse_args(["--quick"]))
    assert all(r.timestamp >= 30.0 for r in stream.records) and stream.stop == int(stream.records[-1].timestamp) + 1
    n_system = len(adapter.tokenize(adapter.prefix_text()))
    outs, peak = mr.run_config(adapter, [stream], lambda: make_policy("window", budget=48), None, n_system)
    session = StreamingSession(adapter, memory=make_policy("window", budget=48), config=StreamConfig(chunk_frames=CHUNK))
    qs = [TimedQuestion(float(r.timestamp), prompt_for(r), r) for r in stream.records]
    done = run_timed_questions(session, stream.clips(), qs, GenerationConfig(max_new_tokens=3))
    assert [o.qid for o in outs] == [q.payload.qid for q, _ in done] and peak == session.stats.peak_kv_bytes
    for o, (q, ans) in zip(outs, done, strict=True):
        assert o.correct == judge(ans.text, q.payload)
        assert o.visual_kv == pytest.approx(ans.kv_bytes * (ans.cache_tokens - n_system) / ans.cache_tokens)
        assert (o.age is None) == (q.payload.task_kind != "backward")


@needs_model
def test_quick_run_writes_rows(tmp_path):
    assert mr.main(["--quick", "--out", str(tmp_path), "--threads", "1",
                    "--configs", "full,window,hermes,hermes+pooling"]) == 0
    rows = json.loads((tmp_path / "memory_recall.json").read_text())
    assert rows and all(tuple(r) == mr.ROW_FIELDS for r in rows)
    full = [r for r in rows if r["config"] == "full"]
    assert all(r["kv_fraction"] == 1.0 and r["ci95"]["vs_full"] is None and r["budget"] is None for r in full)
    for r in rows:
        if r["config"] != "full":
            assert r["kv_fraction"] <= 0.2 + 1e-9  # the calibrated budget holds the level at every question
            assert r["ci95"]["vs_full"] is not None
            assert (r["ci95"]["vs_window"] is None) == (r["config"] == "window")
        lo, hi = r["ci95"]["accuracy"]
        assert lo <= r["accuracy"] <= hi
    totals = {(r["config"], r["task_type"]): r["n"] for r in rows if r["age_bin"] == "all"}
    assert totals[("full", "all")] == totals[("full", "backward")] + totals[("full", "realtime")]
    binned = sum(r["n"] for r in full if r["task_type"] == "backward" and r["age_bin"] != "all")
    assert binned == totals[("full", "backward")]
    md = (tmp_path / "memory_recall.md").read_text()
    assert "ppllava-hermes bench memory_recall --quick" in md and "| hermes+pooling |" in md
    assert (tmp_path / "memory_recall.png").stat().st_size > 1000


def test_any_policy_runs_over_pooled_tokens_and_unknown_configs_are_refused(capsys):
    assert mr.split_config("novelty+pooling") == ("novelty", True) and mr.split_config("window") == ("window", False)
    assert mr.main(["--quick", "--configs", "full,lru+pooling"]) == 2
    err = capsys.readouterr().err
    assert "--configs lru+pooling" in err and "not a memory policy" in err and len(err.strip().splitlines()) == 1
