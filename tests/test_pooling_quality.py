"""The pooling-quality benchmark: its questions, its pairing, and a --quick run."""

from __future__ import annotations

import json

import pytest
import torch

from ppllava_hermes.recipes.bench import pooling_quality as pq
from ppllava_hermes.world.clip import has_world_clip
from ppllava_hermes.world.model import has_shipped_model

torch.set_num_threads(1)
needs_models = pytest.mark.skipif(not (has_shipped_model() and has_world_clip()),
                                  reason="no shipped ShapesWorld VLM / CLIP checkpoint")


def test_levels_go_down_to_one_token_per_group():
    assert [pq.tokens_per_group(k) for k in pq.LEVELS] == [4, 2, 1]
    with pytest.raises(ValueError, match="does not divide"):
        pq.tokens_per_group((1, 3, 3))


def test_questions_name_one_of_several_objects():
    clips = pq.build_clips(6)
    streams = pq.build_streams(3)
    assert len(clips) == 6 and len(streams) == 3
    assert all(it.n_objects >= pq.MIN_OBJECTS for it in clips + streams)
    assert {it.example.task_type for it in clips} <= set(pq.CLIP_TYPES)
    assert {it.example.task_type for it in streams} <= set(pq.STREAM_TYPES)
    assert all(len(it.example.frames) == pq.CHUNK for it in clips)
    assert all(len(it.example.frames) % pq.CHUNK == 0 and len(it.example.frames) >= 2 * pq.CHUNK for it in streams)
    assert all(it.example.video.startswith("shapesworld") for it in clips + streams)


def _outcome(qid: str, pooling: str, kernel, correct: bool, tokens: int = 4, groups: int = 2) -> pq.Outcome:
    return pq.Outcome(qid, "short_clips", "color", pooling, kernel, tokens, groups, "red", correct)


def test_rows_pair_against_average_pooling_on_the_same_questions():
    k = (1, 4, 4)
    outs = [_outcome(f"q{i}", "avg", k, i < 2, 2) for i in range(4)]
    outs += [_outcome(f"q{i}", "prompt", k, True, 2) for i in range(4)]
    rows = pq.make_rows(outs, 200)
    assert [tuple(r) for r in rows] == [pq.ROW_FIELDS] * 2
    avg, prompt = rows
    assert (avg["pooling"], avg["accuracy"], avg["ci95"]["vs_avg"]) == ("avg", 0.5, None)
    assert prompt["accuracy"] == 1.0 and prompt["tokens_per_group"] == 1
    lo, hi = prompt["ci95"]["vs_avg"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0  # paired differences: 0, 0, 1, 1


def test_token_counts_must_agree_at_a_level():
    k = (1, 2, 2)
    pq.check_token_counts([_outcome("q", "avg", k, True, 8), _outcome("q", "uniform_drop", k, False, 8)])
    with pytest.raises(AssertionError):
        pq.check_token_counts([_outcome("q", "avg", k, True, 8), _outcome("q", "uniform_drop", k, False, 4)])


@needs_models
def test_quick_run_writes_rows(tmp_path):
    out, details = tmp_path / "out", tmp_path / "details"
    assert pq.main(["--quick", "--out", str(out), "--details", str(details)]) == 0
    data = json.loads((out / "pooling_quality.json").read_text())
    assert data["command"].startswith("ppllava-hermes bench pooling_quality --quick")
    rows = data["rows"]
    assert rows and all(tuple(r) == pq.ROW_FIELDS for r in rows)
    assert {r["split"] for r in rows} == set(pq.SPLITS)
    assert {r["tokens_per_group"] for r in rows} == {16, 4, 2, 1}
    assert {(r["pooling"], r["tokens_per_group"]) for r in rows if r["split"] == "short_clips"} >= {
        ("none", 16), *((p, n) for p in ("avg", "uniform_drop", "prompt") for n in (4, 2, 1)), ("prompt_finetuned", 1)}
    for r in rows:
        lo, hi = r["ci95"]["accuracy"]
        assert lo <= r["accuracy"] <= hi
        assert (r["ci95"]["vs_avg"] is None) == (r["pooling"] in ("avg", "none"))
    outcomes = json.loads((details / "outcomes.json").read_text())
    by_level: dict[tuple, set[int]] = {}
    for o in outcomes:
        by_level.setdefault((o["qid"], tuple(o["kernel"] or ())), set()).add(o["visual_tokens"])
    assert all(len(v) == 1 for v in by_level.values())  # same token count for every pooling at a level
    assert len({o["pooling"] for o in outcomes}) == 5
    md = (out / "pooling_quality.md").read_text()
    assert "ppllava-hermes bench pooling_quality --quick" in md and "| short_clips | prompt | 1 |" in md
    assert (out / "pooling_quality.png").stat().st_size > 1000
