"""``ppllava-hermes eval``: every flag documented, and a tiny end-to-end run writing the report."""

from __future__ import annotations

import argparse
import json

import pytest

from ppllava_hermes import cli
from ppllava_hermes.evaluation.command import add_eval_arguments
from ppllava_hermes.evaluation.report import PLOTS


def test_eval_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 30
    for action in flags:
        assert action.help and len(action.help) > 10, action.option_strings
        assert action.option_strings[-1] in text
    for needed in ("--benchmark", "--annotations", "--videos", "--model", "--protocol", "--configs", "--budgets",
                   "--out", "--frames", "--fps", "--limit", "--max-new-tokens", "--pool-kernel"):
        assert needed in text


def test_eval_end_to_end_on_a_generated_video(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["eval", "--world-videos", "1", "--world-duration", "10", "--protocol", "streaming",
            "--configs", "full,window", "--budgets", "64", "--chunk-frames", "4", "--max-new-tokens", "2",
            "--task-kinds", "short,realtime", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert [run["label"] for run in data["runs"]] == ["full", "window@64"]
    assert data["command"].startswith("ppllava-hermes eval --world-videos 1")
    assert all(r["task_kind"] in ("short", "realtime") for r in data["runs"][0]["results"])
    assert data["runs"][0]["n"] > 0 and (out / "summary.md").exists()
    assert all((out / name).exists() for name in PLOTS)
    assert "window" in capsys.readouterr().out


def test_eval_reports_bad_arguments(capsys):
    assert cli.main(["eval", "--configs", "full,magic", "--out", "/nonexistent/x", "--quiet"]) == 2
    assert "unknown configuration 'magic'" in capsys.readouterr().err
    assert cli.main(["eval", "--benchmark", "ovo_bench", "--quiet"]) == 2
