"""The evaluation runner: scoring end to end, report files, comparison mode, shards and their merge."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ppllava_hermes.evaluation.protocols import RecordResult
from ppllava_hermes.evaluation.report import PLOTS, RUN_FIELDS, SUMMARY_FIELDS, summarize, write_report
from ppllava_hermes.evaluation.runner import (
    RESULT_FIELDS,
    EvalConfig,
    comparison_configs,
    load_records_json,
    merge_results,
    resolve_configuration,
    run_comparison,
    run_eval,
    save_records,
    shard_items,
)
from ppllava_hermes.streaming import StreamingSession

from .eval_helpers import adapter, scripted_ask, split


def _answers_right_on_even(records):
    """A scripted model: the right answer for records at even positions, a wrong one for odd."""
    from ppllava_hermes.evaluation.protocols import format_prompt

    by_prompt = {}
    for i, r in enumerate(records):
        if r.options:
            right = r.options[r.answer]
            wrong = r.options[(r.answer + 1) % len(r.options)]
            by_prompt[format_prompt(r)] = f"The answer is {right}." if i % 2 == 0 else wrong
        else:
            by_prompt[format_prompt(r)] = str(r.answer) if i % 2 == 0 else "purple"
    return lambda session, prompt: by_prompt[prompt]


def test_answers_are_scored_through_the_runner(monkeypatch):
    sp = split()
    records = [r for r in sp.records if r.task_kind in ("short", "realtime", "backward")]
    # unique prompts, so the scripted model knows which record it is asked
    records = list({r.question + str(r.options): r for r in records}.values())
    monkeypatch.setattr(StreamingSession, "ask", scripted_ask(_answers_right_on_even(records)))
    for protocol in ("offline", "streaming"):
        run = run_eval(EvalConfig(protocol=protocol, num_frames=8, chunk_frames=4), records=records,
                       adapter=adapter(), worlds=sp.worlds, progress=False)
        assert [r.correct for r in run.results] == [i % 2 == 0 for i in range(len(records))]
        assert run.accuracy == pytest.approx(sum(i % 2 == 0 for i in range(len(records))) / len(records))
        rows = {(row["task_kind"], row["task_type"]): row for row in summarize(run)}
        assert rows[("all", "all")]["n"] == len(records)
        for kind in {r.task_kind for r in records}:
            mine = [i % 2 == 0 for i, r in enumerate(records) if r.task_kind == kind]
            assert rows[(kind, "all")]["accuracy"] == pytest.approx(sum(mine) / len(mine))


def test_report_files_have_exactly_the_documented_fields(tmp_path):
    sp = split()
    records = [r for r in sp.records if r.task_kind != "forward"][:4]
    run = run_eval(EvalConfig(protocol="streaming", config="window", budget=64, max_new_tokens=1, chunk_frames=4),
                   records=records, adapter=adapter(), worlds=sp.worlds, progress=False, split="streaming")
    paths = write_report([run], tmp_path, title="t", command="ppllava-hermes eval ...")
    data = json.loads(paths["json"].read_text())
    assert set(data) == {"title", "command", "created", "summary", "runs"}
    assert all(tuple(row) == SUMMARY_FIELDS for row in data["summary"])
    assert tuple(data["runs"][0]) == RUN_FIELDS
    assert all(tuple(r) == RESULT_FIELDS for r in data["runs"][0]["results"])
    assert data["runs"][0]["label"] == "window@64" and data["summary"][0]["budget"] == 64
    first = data["runs"][0]["results"][0]
    assert first["ttft_s"] > 0 and first["peak_kv_bytes"] >= first["kv_bytes"] > 0 and first["peak_rss_bytes"] > 0
    md = paths["markdown"].read_text()
    assert "| streaming | window | 64 | streaming | 4 |" in md and "ppllava-hermes eval ..." in md
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_runs_each_configuration_at_each_budget():
    sp = split(1, 16.0)
    records = [r for r in sp.records if r.task_kind in ("backward", "realtime")]
    base = EvalConfig(protocol="streaming", max_new_tokens=1, chunk_frames=4)
    runs = run_comparison(base, ["full", "window", "hermes"], [48, 96], records=records, adapter=adapter(),
                          worlds=sp.worlds, progress=False)
    labels = [r.config.label for r in runs]
    assert labels == ["full", "window@48", "window@96", "hermes@48", "hermes@96"]
    system = len(adapter().tokenize(adapter().prefix_text()))
    # A question asked while a partial temporal group waits sees that group too (padded, inside the
    # question's rollback): at most one group's segment above the budget, less than a chunk's own prefill.
    ad = adapter()
    frames = np.zeros((ad.frames_per_group, 112, 112, 3), dtype=np.uint8)
    group = len(ad.visual_segment(ad.encode_frames(frames, np.arange(ad.frames_per_group, dtype=float), 0), 0))
    full = runs[0]
    for run in runs:
        assert len(run.results) == len(records)
        for res, ref in zip(run.results, full.results, strict=True):
            assert res.visual_tokens == ref.visual_tokens  # the same stream went in
            budget = run.method.budget
            if run.method.memory == "window":
                assert res.memory_tokens - system <= budget + group
            elif run.method.memory == "hermes":
                assert res.memory_tokens - system <= budget + run.method.make_policy().anchors + group
            else:
                assert res.memory_tokens >= system + res.visual_tokens  # + the chunks' vision delimiters
    last = max(range(len(records)), key=lambda i: full.results[i].frames_seen)
    assert runs[1].results[last].peak_kv_bytes < full.results[last].peak_kv_bytes


def test_configuration_names_and_budget_free_configurations():
    assert resolve_configuration("StreamingLLM")[0] == "sink"
    assert resolve_configuration("uniform-8")[1]["memory_kwargs"] == {"frames": 8}
    with pytest.raises(ValueError, match="unknown configuration"):
        resolve_configuration("magic")
    with pytest.raises(ValueError, match="uniform-N"):
        resolve_configuration("uniform-0")
    cfgs = comparison_configs(EvalConfig(), ["full", "uniform-4", "pooling", "hermes+pooling", "uniform"], [64, 128])
    assert [c.label for c in cfgs] == ["full", "uniform-4", "pooling", "hermes+pooling@64",
                                       "hermes+pooling@128", "uniform@64", "uniform@128"]
    assert EvalConfig(config="hermes+pooling", pool_mode="avg").method().pooling == "avg"
    with pytest.raises(ValueError, match="protocol"):
        EvalConfig(protocol="live")
    with pytest.raises(ValueError, match="annotation"):
        EvalConfig(benchmark="ovo_bench")


def test_records_round_trip_through_json(tmp_path):
    records = split().records
    assert load_records_json(save_records(records, tmp_path / "r.json")) == records


def test_two_ranks_answer_disjoint_videos_and_merge_to_the_single_process_run():
    sp = split(2, 12.0)
    records = [r for r in sp.records if r.task_kind in ("short", "realtime")]
    cfg = EvalConfig(protocol="streaming", max_new_tokens=2, chunk_frames=4)
    items = list(enumerate(records))
    shards = [shard_items(items, rank, 2) for rank in range(2)]
    videos = [{r.video for _, r in s} for s in shards]
    assert videos[0] and videos[1] and not videos[0] & videos[1]
    assert sorted(i for s in shards for i, _ in s) == list(range(len(records)))

    def keep_own(results, world_size):  # a simulated rank: no real gather
        return results

    parts = [run_eval(cfg, records=records, adapter=adapter(), worlds=sp.worlds, shard=(rank, 2), gather=keep_own,
                      progress=False).results for rank in range(2)]
    merged = merge_results(parts, expected=len(records))
    single = run_eval(cfg, records=records, adapter=adapter(), worlds=sp.worlds, shard=(0, 1), progress=False)
    assert [(r.index, r.qid, r.prediction, r.correct) for r in merged] == \
        [(r.index, r.qid, r.prediction, r.correct) for r in single.results]
    with pytest.raises(ValueError, match="more than one shard"):
        merge_results([parts[0], parts[0]])
    with pytest.raises(ValueError, match="results for"):
        merge_results(parts[:1], expected=len(records))
    with pytest.raises(ValueError, match="rank"):
        shard_items(items, 2, 2)


def test_result_fields_are_stable():
    assert RESULT_FIELDS[:3] == ("index", "qid", "benchmark")
    assert {"prediction", "correct", "ttft_s", "total_s", "visual_tokens", "peak_kv_bytes", "peak_rss_bytes",
            "frames_per_s"} <= set(RESULT_FIELDS)
    assert replace(RecordResult(*([0] * len(RESULT_FIELDS))), qid="x").qid == "x"


def test_shapesworld_results_script_writes_rows_with_exact_fields(tmp_path):
    from ppllava_hermes.recipes.bench import eval_shapesworld

    argv = ["--model", "random-shapesworld", "--splits", "short", "--short-clips", "3", "--configs", "full,window",
            "--budgets", "64,128", "--out", str(tmp_path), "--details", str(tmp_path / "details"), "--quiet"]
    assert eval_shapesworld.main(argv) == 0
    rows = json.loads((tmp_path / "eval_shapesworld.json").read_text())
    assert rows and all(tuple(r) == eval_shapesworld.ROW_FIELDS for r in rows)
    overall = [(r["config"], r["budget"]) for r in rows if r["task_type"] == "all"]
    assert overall == [("full", 64), ("full", 128), ("window", 64), ("window", 128)]  # full repeated per budget
    md = (tmp_path / "eval_shapesworld.md").read_text()
    assert "ppllava-hermes bench eval_shapesworld --model random-shapesworld" in md and "RANDOM weights" in md
    # the results files can be re-written from the per-record report, without the model
    (tmp_path / "eval_shapesworld.json").unlink()
    assert eval_shapesworld.main(argv + ["--from-details", str(tmp_path / "details" / "results.json")]) == 0
    assert json.loads((tmp_path / "eval_shapesworld.json").read_text()) == rows


def test_a_benchmark_file_runs_through_the_reader_and_the_streaming_protocol(tmp_path, monkeypatch):
    """OVO-Bench's format end to end: the loader's records, videos read from disk, probes at their times."""
    import warnings
    from pathlib import Path

    import numpy as np

    from ppllava_hermes.evaluation import load_benchmark
    from ppllava_hermes.video import write_video

    fixture = Path(__file__).parent / "fixtures" / "benchmarks" / "ovo_bench.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's malformed items are announced
        records = load_benchmark("ovo_bench", fixture, tmp_path).records
    rng = np.random.default_rng(0)
    for video in {r.video for r in records}:
        mine = [r for r in records if r.video == video]
        last = max([r.timestamp or 0.0 for r in mine] + [p["timestamp"] for r in mine for p in r.extra.get("probes", [])])
        n = int(last) + 2
        Path(video).parent.mkdir(parents=True, exist_ok=True)
        write_video(video, rng.integers(0, 255, (n, 56, 56, 3), dtype=np.uint8), fps=1.0)
    monkeypatch.setattr(StreamingSession, "ask", scripted_ask(lambda s, q: "Yes" if "Answer Yes or No" in q else "B"))
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_eval(EvalConfig(benchmark="ovo_bench", annotations=str(fixture), videos=str(tmp_path),
                                  protocol="streaming", fps=0.5, chunk_frames=8), adapter=adapter(), progress=False,
                       on_ask=lambda s, r, t: seen.append((r.qid, t, s.frame_log[-1][1])))
    assert len(run.results) == len(records) and len(run.skipped) == 4  # the fixture's malformed items
    assert all(last <= t for _, t, last in seen)
    by = {r.qid: r for r in run.results}
    probe_record = next(r for r in records if r.extra.get("probes"))
    assert len(by[probe_record.qid].probes) == len(probe_record.extra["probes"])
    assert [t for q, t, _ in seen if q == probe_record.qid] == [p["timestamp"] for p in probe_record.extra["probes"]]
    mc = [r for r in records if r.options]
    assert all(by[r.qid].correct == (r.answer == 1) for r in mc)  # the scripted model always says "B"
