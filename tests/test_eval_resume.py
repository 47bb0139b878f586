"""Nothing answered is lost: a record's failure is its result, results are logged as they come, an
interrupted evaluation resumes to the results of an uninterrupted one, output paths are checked first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ppllava_hermes import cli
from ppllava_hermes.evaluation import runner
from ppllava_hermes.evaluation.runner import EvalConfig, run_eval
from ppllava_hermes.streaming import StreamingSession

from .eval_helpers import adapter, record, scripted_ask

#: Fields that measure this run's machine and moment, not what was answered.
TIMING = {"ttft_s", "total_s", "ingest_s", "frames_per_s", "rss_bytes", "peak_rss_bytes"}


def _answered(path: Path) -> list[tuple[str, list[dict]]]:
    """``results.json``'s runs with the timing fields dropped."""
    data = json.loads(path.read_text())
    return [(run["label"], [{k: v for k, v in r.items() if k not in TIMING} for r in run["results"]])
            for run in data["runs"]]


@pytest.mark.parametrize("protocol", ["offline", "streaming"])
def test_a_record_failure_is_its_result_and_the_run_goes_on(tmp_path, monkeypatch, protocol):
    from ppllava_hermes.video import write_video

    rng = np.random.default_rng(0)
    write_video(tmp_path / "v.mp4", rng.integers(0, 255, (12, 56, 56, 3), dtype=np.uint8), fps=1.0)
    records = [
        record("ok1", 3.0),
        record("boom", 5.0, question="Which colour explodes?"),  # the model raises on this one
        record("gone", 4.0, video="missing.mp4"),  # no such video
        record("late", None, start=50.0, end=60.0),  # offline: no frame in [50, 60] s
        record("ok2", 8.0),
    ]

    def reply(session, prompt):
        if "explodes" in prompt:
            raise RuntimeError("CUDA out of memory (injected)")
        return "B"

    monkeypatch.setattr(StreamingSession, "ask", scripted_ask(reply))
    logged = []
    run = run_eval(EvalConfig(benchmark="shapesworld", protocol=protocol, videos=str(tmp_path), num_frames=4,
                              chunk_frames=4), records=records, adapter=adapter(), progress=False,
                   on_result=logged.append)
    by = {r.qid: r for r in run.results}
    assert [r.index for r in run.results] == list(range(len(records)))
    assert sorted(r.index for r in logged) == list(range(len(records)))  # every result came out as it came
    assert by["ok1"].error is None and by["ok1"].correct and by["ok2"].error is None and by["ok2"].correct
    assert by["boom"].error == "record 1 (qid 'boom'): CUDA out of memory (injected)"
    assert by["gone"].error.startswith("record 2 (qid 'gone'): ") and "missing.mp4" in by["gone"].error
    if protocol == "offline":
        assert by["late"].error.startswith("record 3 (qid 'late'): ")
    assert all(not r.correct for r in run.results if r.error)


def _eval_argv(out: Path, *extra: str) -> list[str]:
    return ["eval", "--world-videos", "2", "--world-duration", "8", "--protocol", "streaming", "--configs",
            "full,window", "--budgets", "64", "--chunk-frames", "4", "--max-new-tokens", "2",
            "--task-kinds", "short,realtime,backward", "--out", str(out), "--quiet", "--no-plots", *extra]


@pytest.mark.parametrize("stop_after", [1, 5])
def test_an_interrupted_eval_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch, capsys, stop_after):
    real_ask = StreamingSession.ask
    calls = {"n": 0, "stop": None}

    def counting_ask(self, *a, **kw):
        calls["n"] += 1
        if calls["stop"] is not None and calls["n"] > calls["stop"]:
            raise KeyboardInterrupt
        return real_ask(self, *a, **kw)

    monkeypatch.setattr(StreamingSession, "ask", counting_ask)
    assert cli.main(_eval_argv(tmp_path / "whole")) == 0
    total = calls["n"]
    assert total > stop_after + 1

    calls.update(n=0, stop=stop_after)  # Ctrl-C after `stop_after` answers
    capsys.readouterr()
    assert cli.main(_eval_argv(tmp_path / "cut")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{stop_after} answered records kept" in err and "--resume" in err
    assert not (tmp_path / "cut" / "results.json").exists()
    lines = (tmp_path / "cut" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 + stop_after  # the header, then every answer so far

    calls.update(n=0, stop=None)
    assert cli.main(_eval_argv(tmp_path / "cut", "--resume")) == 0
    assert calls["n"] == total - stop_after  # nothing asked twice
    assert _answered(tmp_path / "cut" / "results.json") == _answered(tmp_path / "whole" / "results.json")
    logged = [json.loads(line) for line in (tmp_path / "cut" / "results.jsonl").read_text().splitlines()[1:]]
    keys = [(item["run"], item["result"]["index"]) for item in logged]
    assert len(keys) == len(set(keys)) == sum(len(rs) for _, rs in _answered(tmp_path / "whole" / "results.json"))
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())["command"]
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["command"] == whole.replace("whole", "cut")


def test_a_log_cut_short_by_a_kill_resumes(tmp_path, monkeypatch):
    """A kill can leave half a line: it is dropped and that record answered again."""
    argv = _eval_argv(tmp_path, "--configs", "full", "--world-videos", "1")
    assert cli.main(argv) == 0
    log = tmp_path / "results.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # the last line half written
    before = _answered(tmp_path / "results.json")
    assert cli.main([*argv, "--resume"]) == 0
    assert _answered(tmp_path / "results.json") == before
    assert len(log.read_text().splitlines()) == len(lines)


def _never_load(*_a, **_k):
    raise AssertionError("the model was loaded before the output paths were checked")


@pytest.mark.parametrize("case", ["out_is_file", "out_under_a_file", "report_name_is_a_folder", "resume_nothing",
                                  "resume_other_flags"])
def test_output_paths_are_checked_before_the_model(tmp_path, monkeypatch, capsys, case):
    argv = ["eval", "--world-videos", "1", "--world-duration", "4", "--quiet", "--no-plots"]
    (tmp_path / "file").write_text("x")
    out = {"out_is_file": tmp_path / "file", "out_under_a_file": tmp_path / "file" / "sub"}.get(case, tmp_path / "o")
    if case == "report_name_is_a_folder":
        (out / "results.json").mkdir(parents=True)
    if case == "resume_other_flags":
        out.mkdir()
        (out / "results.jsonl").write_text(json.dumps({"header": {"version": 1, "config": {"limit": 3}}}) + "\n")
    if case.startswith("resume"):
        argv.append("--resume")
    monkeypatch.setattr(runner, "build_model_adapter", _never_load)
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert ("--resume" if case.startswith("resume") else "--out") in err


def test_an_eval_killed_with_sigkill_halfway_resumes_to_the_same_results(tmp_path):
    """A real process killed by SIGKILL mid-run (no handler runs), then ``--resume``: the same results file."""
    import signal
    import subprocess
    import sys
    import time

    cli.main(_eval_argv(tmp_path / "whole"))
    whole = _answered(tmp_path / "whole" / "results.json")
    total = sum(len(rs) for _, rs in whole)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "ppllava_hermes.cli", *_eval_argv(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = cut / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 1 + total // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed halfway"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    kept = len(log.read_text().splitlines()) - 1
    assert 0 < kept < total and not (cut / "results.json").exists()
    assert cli.main([*_eval_argv(cut), "--resume"]) == 0
    assert _answered(cut / "results.json") == whole
