"""The brief suite (``eval --suite brief``) and the leaderboard-faithful options.

* the suite end to end on a tiny generated ShapesWorld dataset in the three formats (StreamBench judged by a
  stand-in judge on 127.0.0.1, then the same run resumed with the local rule), and the report's fields;
* the data generator's files read back by the benchmarks' own loaders;
* paired intervals (means, corpus BLEU-4 recomputed exactly as pycocoevalcap does);
* the leaderboard options: the 60 s context window really drops older frames, OVO-Bench averages with and
  without forward from known per-task numbers (OVO-Bench's README example), pixels per frame;
* usage errors as one line and exit status 2, before any model loads.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ppllava_hermes.evaluation.bootstrap import paired_mean_difference, resample_indices
from ppllava_hermes.evaluation.brief_data import BriefDataConfig, brief_paths, write_brief_data
from ppllava_hermes.evaluation.captioning import bleu_stats, caption_comparison, corpus_bleu4, simple_tokenize
from ppllava_hermes.evaluation.command import build_parser, main
from ppllava_hermes.evaluation.egoschema import read_egoschema_submission
from ppllava_hermes.evaluation.frames import (
    ArraySource,
    ResizedSource,
    SourceResolver,
    fit_pixels,
    parse_max_pixels,
)
from ppllava_hermes.evaluation.leaderboard import ovo_averages, ovo_bench_summary, ovo_task_accuracy
from ppllava_hermes.evaluation.loaders import load_benchmark
from ppllava_hermes.evaluation.loaders._common import MalformedRecordWarning
from ppllava_hermes.evaluation.protocols import (
    Engine,
    MethodConfig,
    ProtocolConfig,
    error_result,
    run_offline,
)
from ppllava_hermes.evaluation.records import QARecord
from ppllava_hermes.evaluation.report import markdown, write_report
from ppllava_hermes.evaluation.runner import EvalConfig, EvalRun
from ppllava_hermes.evaluation.scoring import normalize_answer
from ppllava_hermes.evaluation.suite import VERDICTS, verdict

from . import eval_helpers
from .judge_server import judge_server

# ------------------------------------------------------------------------------------ the suite end to end


def _judge_reply(body: dict) -> str:
    """Stand-in judge: right when the reference's words are in the prediction, 5 or 0; one reply is malformed."""
    text = body["messages"][1]["content"]
    ref = normalize_answer(re.search(r"Correct answer: (.*)\n", text).group(1)).split()
    pred = normalize_answer(re.search(r"Predicted answer: (.*)$", text, re.DOTALL).group(1)).split()
    ok = bool(ref) and set(ref) <= set(pred)
    return json.dumps({"correct": "yes" if ok else "no", "score": 5 if ok else 0})


SUITE_ARGS = ["--suite", "brief", "--model", "shapesworld", "--world-videos", "2", "--world-duration", "30",
              "--suite-configs", "full,hermes+pooling,retrieval", "--budgets", "48", "--pool-kernel", "1,2,2",
              "--max-new-tokens", "3", "--frames", "16", "--bootstrap", "200", "--threads", "1", "--quiet"]


def test_suite_end_to_end_on_generated_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out, details = tmp_path / "out", tmp_path / "details"
    args = [*SUITE_ARGS, "--out", str(out), "--suite-details", str(details)]
    with judge_server() as (url, chat):
        chat.reply = _judge_reply
        monkeypatch.setenv("PPLLAVA_JUDGE_BASE_URL", url)
        monkeypatch.setenv("PPLLAVA_JUDGE_MODEL", "stand-in")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([*args, "--judge"]) == 0
        judged_calls = chat.calls
    report = json.loads((out / "brief_suite.json").read_text())
    md = (out / "brief_suite.md").read_text()

    # the report's fields
    assert set(report) >= {"title", "suite", "command", "created", "wall_s", "machine", "model", "data", "configs",
                           "budgets", "judge", "bootstrap", "benchmarks"}
    assert report["command"].startswith("ppllava-hermes eval --suite brief") and report["command"] in md
    assert report["data"]["source"] == "shapesworld" and report["data"]["settings"]["videos"] == 2
    assert report["judge"]["used"] is True and report["bootstrap"]["resamples"] == 200
    assert list(report["benchmarks"]) == ["streambench", "msrvtt_caption", "egoschema"]
    labels = ["full", "hermes+pooling@48", "retrieval@48"]
    for key, b in report["benchmarks"].items():
        assert b["reference"] == "full" and [row["label"] for row in b["runs"]] == labels, key
        for row in b["runs"]:
            assert set(row["cost"]) == {"ttft_ms", "visual_tokens", "kv_bytes", "peak_kv_bytes", "wall_s"}
            assert row["cost"]["ttft_ms"] > 0 and row["cost"]["visual_tokens"] > 0 and row["cost"]["kv_bytes"] > 0
            if row["label"] == "full":
                assert row["vs_reference"] == {} and row["speedup"]["ttft_ms"] == 1.0 and "verdict" not in row
                continue
            assert row["verdict"] in VERDICTS and b["headline"] == b["metrics"][0]
            assert set(row["vs_reference"]) == set(b["metrics"]) - ({"score"} if key != "streambench" else set())
            for d in row["vs_reference"].values():
                lo, hi = d["ci95"]
                assert lo <= hi and math.isfinite(d["diff"])
            # pooling keeps a quarter of the 2x2-pooled tokens: fewer visual tokens than full context
            if row["config"] == "hermes+pooling":
                assert row["speedup"]["visual_tokens"] > 1.5
        assert Path(b["files"]["report"]).is_file() and f"## {b['title']}" in md

    sb = report["benchmarks"]["streambench"]
    n_questions = sb["n"]
    assert n_questions > 0 and judged_calls == 3 * n_questions  # every answer of every configuration judged
    for row in sb["runs"]:
        q = row["quality"]
        assert q["score"] == pytest.approx(5 * q["accuracy"])  # the stand-in scores 5 for yes, 0 for no
        assert q["summary"]["by_class"] and set(q["summary"]["by_source"]) <= {"Ego", "WebVideo", "Movie"}
    caps = report["benchmarks"]["msrvtt_caption"]
    assert {"cider", "bleu4", "rouge_l", "tokenizer"} <= set(caps["runs"][0]["quality"])
    ego = report["benchmarks"]["egoschema"]
    for row in ego["runs"]:
        q = row["quality"]
        assert (q["n_known"], q["n_hidden"]) == (1, 1)
        submission = read_egoschema_submission(q["predictions_file"])
        assert len(submission) == 2  # the hidden question is in the file too
    assert "Running it on the real benchmarks" in md and "--data /data/brief" in md

    # the same suite resumed without a judge: nothing is asked again, StreamBench falls back on the local rule
    capsys.readouterr()
    assert main([*args, "--resume", "--suite-benchmarks", "streambench"]) == 0
    local = json.loads((out / "brief_suite.json").read_text())
    assert local["judge"]["used"] is False and "local open-answer rule" in local["judge"]["note"]
    assert list(local["benchmarks"]) == ["streambench"]
    runs = local["benchmarks"]["streambench"]["runs"]
    assert all(row["quality"]["score"] is None for row in runs)
    assert "no judge configured" in (out / "brief_suite.md").read_text()
    log = (details / "streambench" / "results.jsonl").read_text().splitlines()
    assert len(log) == 1 + 3 * n_questions  # resumed: the header and each answer once


def test_generated_data_reads_back_through_the_loaders(tmp_path: Path) -> None:
    data = write_brief_data(tmp_path, BriefDataConfig(videos=3, duration=30.0))
    paths = brief_paths(tmp_path)
    assert paths.missing() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", MalformedRecordWarning)  # nothing malformed in what we write
        sb = load_benchmark("streambench", paths.streambench, paths.streambench_videos)
        caps = load_benchmark("msrvtt_caption", paths.msrvtt, paths.msrvtt_videos)
        ego = load_benchmark("egoschema_full", paths.egoschema, paths.egoschema_videos,
                             answers_path=paths.egoschema_answers)
    assert len(sb.records) == data.counts["streambench_questions"] and not sb.skipped
    assert {r.task_type for r in sb.records} <= {"SF", "SM", "LM"}
    assert all(Path(r.video).is_file() for r in sb.records + caps.records + ego.records)
    assert [r.qid for r in caps.records] == ["video7010", "video7011", "video7012"]
    assert all(r.extra["references"] for r in caps.records)
    assert len(ego.records) == 3 and all(len(r.options) == 5 for r in ego.records)
    assert [r.extra["answer_known"] for r in ego.records] == [True, True, False]
    # an EgoSchema clip ends at its question: the video is exactly what it is about
    from ppllava_hermes.video import probe

    assert all(probe(r.video).duration <= 30.0 for r in ego.records)
    with pytest.raises(ValueError, match="videos must be a positive integer"):
        BriefDataConfig(videos=0)


# ------------------------------------------------------------------------------------------ intervals


def test_paired_mean_difference() -> None:
    a, b = [1, 0, 1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 1, 1, 1, 1]
    d = paired_mean_difference(a, b, n_boot=500, seed=3)
    assert d["n"] == 8 and d["diff"] == pytest.approx(0.25) and (d["a"], d["b"]) == (0.625, 0.875)
    lo, hi = d["ci95"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0  # only +1 differences exist: the interval cannot go below 0
    assert paired_mean_difference(a, a, n_boot=500)["ci95"] == [0.0, 0.0]
    assert paired_mean_difference(a, b, n_boot=500, seed=3) == d  # seeded
    assert paired_mean_difference([], [], n_boot=500)["ci95"] is None
    with pytest.raises(ValueError, match=">= 100"):
        resample_indices(5, n_boot=10)


def test_corpus_bleu_resampling_matches_pycocoevalcap() -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    refs = {"v1": ["a red circle moves left", "a red circle"], "v2": ["two blue squares and a cross"],
            "v3": ["a green triangle bounces"]}
    cands = {"v1": "a red circle moves", "v2": "a blue square", "v3": "a green triangle bounces around"}
    gts = {v: [simple_tokenize(r) for r in rs] for v, rs in refs.items()}
    res = {v: [simple_tokenize(cands[v])] for v in refs}
    stats = bleu_stats([gts[v] for v in refs], [res[v][0] for v in refs])
    want, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert float(corpus_bleu4(stats.sum(axis=0))) == pytest.approx(want[3], rel=1e-9)
    for v in refs:  # and each video alone, its sentence BLEU-4
        one, _ = Bleu(4).compute_score({v: gts[v]}, {v: res[v]}, verbose=0)
        assert float(corpus_bleu4(stats[list(refs).index(v)])) == pytest.approx(one[3], rel=1e-9)
    same = caption_comparison(refs, {"full": cands, "copy": dict(cands)}, "full", n_boot=200, tokenizer="simple")
    assert same["full"]["vs_reference"] == {}
    assert all(d["diff"] == 0 and d["ci95"] == [0.0, 0.0] for d in same["copy"]["vs_reference"].values())
    worse = caption_comparison(refs, {"full": cands, "bad": {v: "nothing" for v in refs}}, "full", n_boot=200,
                               tokenizer="simple")
    vs = worse["bad"]["vs_reference"]
    assert vs["bleu4"]["diff"] == pytest.approx(-worse["full"]["scores"]["bleu4"])
    assert all(d["ci95"][1] <= 0 for d in vs.values())
    with pytest.raises(ValueError, match="other videos"):
        caption_comparison(refs, {"full": cands, "part": {"v1": "a red circle"}}, "full", n_boot=200)


# ------------------------------------------------------------------------------------ leaderboard options


def _seen_window(record: QARecord, source: ArraySource, settings: ProtocolConfig) -> list[float]:
    engine = Engine(eval_helpers.adapter(), MethodConfig(), settings)
    seen: list[list[float]] = []
    results = run_offline([(0, record)], source, engine,
                          on_ask=lambda session, rec, t: seen.append(list(session.seen_times)))
    assert not results[0].error, results[0].error
    return seen[0]


def test_context_window_drops_older_frames() -> None:
    source = ArraySource(eval_helpers.clip(n=100, size=28))  # 100 frames at 1 fps: 0 .. 99 s
    asked = eval_helpers.record("q", 90.0)
    settings = ProtocolConfig(num_frames=None, fps=1.0, max_new_tokens=1)  # every frame it may see
    everything = _seen_window(asked, source, settings)
    assert everything == [float(t) for t in range(91)]  # the whole prefix
    window = _seen_window(asked, source, replace(settings, context_window=60.0))
    assert window == [float(t) for t in range(30, 91)]  # [90 - 60, 90]: the older frames are gone
    sparse = _seen_window(asked, source, ProtocolConfig(num_frames=8, context_window=60.0, max_new_tokens=1))
    assert len(sparse) == 8 and min(sparse) >= 30.0 and max(sparse) <= 90.0  # uniform frames inside the window
    after_video = _seen_window(eval_helpers.record("end", None), source, replace(settings, context_window=60.0))
    assert after_video == [float(t) for t in range(39, 100)]  # the last 60 s of the video
    early = _seen_window(eval_helpers.record("early", 20.0), source, replace(settings, context_window=60.0))
    assert early == [float(t) for t in range(21)]  # a window longer than the prefix is the prefix
    assert EvalConfig(context_window=60.0).protocol_config().context_window == 60.0
    with pytest.raises(ValueError, match="offline protocol"):
        EvalConfig(protocol="streaming", context_window=60.0)
    with pytest.raises(ValueError, match="positive"):
        ProtocolConfig(context_window=0.0)


#: OVO-Bench's README example (Gemini, ``bash scripts/score_Gemini.sh``): per-task accuracies (%) and what
#: its score script prints from them: Backward 62.32, Realtime 70.77, Forward 57.15, Total Avg. 65.25.
OVO_README = {"HLD": 52.69, "ASI": 75.68, "EPM": 58.59, "STU": 54.49, "OJR": 67.39, "ATR": 80.17, "FPD": 68.32,
              "ACR": 66.97, "OCR": 87.25, "REC": 35.53, "SSR": 74.24, "CRR": 61.67}


def test_ovo_averages_with_and_without_forward() -> None:
    s = ovo_averages({k: v / 100 for k, v in OVO_README.items()})
    assert {k: round(100 * v, 2) for k, v in s["categories"].items()} == {
        "realtime": 70.77, "backward": 62.32, "forward": 57.15}
    assert round(100 * s["task_mean_with_forward"], 2) == 65.25  # the script's "Total Avg."
    assert round(100 * s["overall_with_forward"], 2) == 63.41  # mean of the three category averages
    assert round(100 * s["overall_without_forward"], 2) == round((70.765 + 62.32) / 2, 2)
    assert s["task_mean_without_forward"] == pytest.approx(
        sum(v for k, v in OVO_README.items() if k not in ("REC", "SSR", "CRR")) / 900)
    no_forward = ovo_averages({k: v / 100 for k, v in OVO_README.items() if k not in ("REC", "SSR", "CRR")})
    assert no_forward["categories"]["forward"] is None and no_forward["overall_with_forward"] is None
    assert no_forward["overall_without_forward"] == pytest.approx(s["overall_without_forward"])
    with pytest.raises(ValueError, match="'XYZ'"):
        ovo_averages({"XYZ": 0.5})


def _ovo_result(index: int, task: str, kind: str, score: float, probes: list[bool] | None = None, error: bool = False):
    rec = QARecord(benchmark="ovo_bench", qid=f"q{index}", video="v.mp4", question="?", answer="x",
                   task_type=task, task_kind=kind)
    base = error_result(index, rec, "failed")
    if error:
        return base
    return replace(base, error=None, score=score, correct=score == 1.0,
                   probes=[{"timestamp": float(k), "prediction": "", "answer": "", "correct": ok}
                           for k, ok in enumerate(probes or [])])


def test_ovo_forward_tasks_are_scored_over_probes_and_reported() -> None:
    results = [
        _ovo_result(0, "REC", "forward", 2 / 3, [True, True, False]),
        _ovo_result(1, "REC", "forward", 1.0, [True]),
        _ovo_result(2, "REC", "forward", 0.0, error=True),  # failed whole: one wrong probe
        _ovo_result(3, "EPM", "backward", 1.0), _ovo_result(4, "EPM", "backward", 0.0),
        _ovo_result(5, "OCR", "realtime", 1.0),
    ]
    tasks = ovo_task_accuracy(results)
    assert tasks == {"EPM": 0.5, "OCR": 1.0, "REC": pytest.approx(3 / 5)}  # probes: 3 right of 5
    summary = ovo_bench_summary(results)
    assert summary["overall_without_forward"] == pytest.approx(0.75)
    assert summary["overall_with_forward"] == pytest.approx((0.5 + 1.0 + 0.6) / 3)
    run = EvalRun(EvalConfig(), MethodConfig(), results)
    text = markdown([run])
    assert "OVO-Bench averages" in text and "overall (without forward)" in text and "| 75.00 |" in text


def test_ovo_leaderboard_in_results_json(tmp_path: Path) -> None:
    run = EvalRun(EvalConfig(), MethodConfig(), [_ovo_result(0, "EPM", "backward", 1.0)])
    write_report([run], tmp_path, plots=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["leaderboard"]["ovo_bench"][0]["categories"]["backward"] == 1.0


def test_max_pixels_presets_and_resizing() -> None:
    assert parse_max_pixels("qwen-vl-utils") == 768 * 28 * 28 == 602112
    assert parse_max_pixels("qwen2-vl-example") == parse_max_pixels("360*420") == 151200
    assert parse_max_pixels("none") is None and parse_max_pixels("5000") == 5000
    with pytest.raises(ValueError, match="max_pixels 'big'"):
        parse_max_pixels("big")
    assert fit_pixels(720, 1280, 360 * 420) == (291, 518) and 291 * 518 <= 151200  # aspect kept, floored
    assert fit_pixels(56, 56, 10_000) == (56, 56)  # never enlarged
    clip = eval_helpers.clip(n=4, size=56)
    small = ResizedSource(ArraySource(clip), 28 * 28).sample(num_frames=None, fps=None)
    assert small.frames.shape == (4, 28, 28, 3) and list(small.timestamps) == list(clip.timestamps)
    streamed = list(ResizedSource(ArraySource(clip), 28 * 28).stream(fps=None, chunk_frames=2))
    assert [c.frames.shape for c in streamed] == [(2, 28, 28, 3)] * 2
    # through the evaluator: a ShapesWorld record's 112x112 frames at 56x56
    record = eval_helpers.split().records[0]
    frames = SourceResolver(max_pixels=56 * 56)(record).sample(num_frames=2, fps=None).frames
    assert frames.shape[1:] == (56, 56, 3)
    assert EvalConfig(max_pixels="qwen2-vl-example").max_pixels == 151200
    with pytest.raises(ValueError, match="max_pixels"):
        EvalConfig(max_pixels="huge")


def test_verdicts_and_relative_video_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert verdict({"diff": -0.1, "ci95": [-0.2, -0.01]}) == "drop"
    assert verdict({"diff": 0.1, "ci95": [0.01, 0.2]}) == "gain"
    assert verdict({"diff": 0.0, "ci95": [-0.1, 0.1]}) == "no drop shown" and verdict(None) is None
    # a loader puts a relative --videos in front of the path; the resolver does not add it twice
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "a.mp4").write_bytes(b"")
    rec = eval_helpers.record("q", 1.0, video="vids/a.mp4")
    assert SourceResolver("vids").path(rec) == Path("vids/a.mp4")
    assert SourceResolver("vids").path(eval_helpers.record("q", 1.0, video="a.mp4")) == Path("vids/a.mp4")
    assert SourceResolver("vids").path(eval_helpers.record("q", 1.0, video="b.mp4")) == Path("vids/b.mp4")


# ---------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(("extra", "message"), [
    (["--data", "/no/such/folder"], "--data /no/such/folder: not a folder"),
    (["--bootstrap", "10"], "bootstrap resamples must be an integer >= 100"),
    (["--suite-configs", "full,bogus"], "unknown configuration 'bogus'"),
    (["--suite-benchmarks", "mvbench"], "--suite-benchmarks: unknown benchmark 'mvbench'"),
])
def test_usage_errors_are_one_line(extra: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--suite", "brief", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_data_folder_missing_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "streambench").mkdir()
    assert main(["--suite", "brief", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "streaming_bench_v0.3.json" in capsys.readouterr().err
    args = build_parser().parse_args(["--suite", "brief"])
    assert args.suite_configs == ["full", "hermes", "hermes+pooling", "retrieval"] and args.data == "shapesworld"


def test_bootstrap_draws_are_shared(tmp_path: Path) -> None:
    idx = resample_indices(6, 200, seed=1)
    assert idx.shape == (200, 6) and np.array_equal(idx, resample_indices(6, 200, seed=1))
