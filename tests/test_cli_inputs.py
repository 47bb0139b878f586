"""Every bad command-line input is one line naming it and the reason, exit 2, never a traceback; the
end of a stream is told truthfully (the last odd frame ingested, late questions at the last frame)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ppllava_hermes.cli import main
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.timed import TimedQuestion, run_timed_questions
from ppllava_hermes.video import write_video
from ppllava_hermes.video.types import VideoClip

from .helpers import random_frames, tiny_adapter


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """Five frames at 1 fps: an odd count, so Qwen's last temporal group is short of a frame."""
    frames, _ = random_frames(5, size=56, seed=3)
    return str(write_video(tmp_path_factory.mktemp("v") / "v.mp4", frames, fps=1.0))


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    return int(code), captured.err


STREAM_CASES = [
    (["--fps", "0"], "--fps"), (["--fps", "-1"], "--fps"), (["--fps", "nan"], "--fps"), (["--fps", "inf"], "--fps"),
    (["--chunk-frames", "0"], "--chunk-frames"), (["--chunk-frames", "-1"], "--chunk-frames"),
    (["--max-frames", "0"], "--max-frames"), (["--budget", "0"], "--budget"),
    (["--temperature", "-1"], "--temperature"), (["--temperature", "nan"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--max-new-tokens", "100000"], "--max-new-tokens"),
    (["--device", "bogus"], "--device"), (["--ask", "0:5:what?"], "--ask"), (["--ask", "nan:what?"], "--ask"),
    (["--ask", "inf:what?"], "--ask"), (["--json", "/nonexistent-folder/out.json"], "--json"),
]
if not torch.cuda.is_available():
    STREAM_CASES.append((["--device", "cuda:0"], "--device"))
DEMO_CASES = [
    (["--minutes", "0"], "--minutes"), (["--minutes", "-1"], "--minutes"), (["--minutes", "nan"], "--minutes"),
    (["--questions", "-3"], "--questions"), (["--budget", "0"], "--budget"),
]


@pytest.mark.parametrize("command, flags, named", [("stream", f, n) for f, n in STREAM_CASES]
                         + [("demo", f, n) for f, n in DEMO_CASES]
                         + [("eval", ["--fps", "nan"], "--fps"), ("eval", ["--chunk-frames", "0"], "--chunk-frames"),
                            ("eval", ["--max-new-tokens", "100000"], "--max-new-tokens"),
                            ("eval", ["--device", "bogus"], "--device")])
def test_a_bad_input_is_one_line_and_exit_2(command, flags, named, video, tmp_path, capsys):
    argv = [command, *([video] if command == "stream" else []), *flags, "--quiet"]
    if command == "eval":
        argv += ["--out", str(tmp_path / "out")]
    code, err = _run(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err, err


def test_a_directory_for_json_is_refused(video, tmp_path, capsys):
    code, err = _run(["stream", video, "--json", str(tmp_path), "--quiet"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "--json" in err


@pytest.mark.parametrize("argv, code, needle", [
    (["stream", "VIDEO", "--fps", "nan"], 2, "--fps"),
    (["eval", "--out", "FILE", "--world-videos", "1", "--quiet"], 2, "--out"),
])
def test_the_process_exits_with_one_line_and_no_traceback(argv, code, needle, video, tmp_path):
    (tmp_path / "f").write_text("x")
    argv = [video if a == "VIDEO" else str(tmp_path / "f") if a == "FILE" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "ppllava_hermes.cli", *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == code
    assert "Traceback" not in proc.stderr and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_failure_at_run_time_is_one_line_and_exit_1(video, monkeypatch, capsys):
    def broken(self, *a, **k):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(StreamingSession, "ask", broken)
    code, err = _run(["stream", video, "--ask", "1:what?", "--quiet"], capsys)
    assert code == 1 and "Traceback" not in err and err.strip().endswith("(--debug shows the traceback)")
    assert "CUDA out of memory (injected)" in err
    with pytest.raises(RuntimeError, match="injected"):
        main(["--debug", "stream", video, "--ask", "1:what?", "--quiet"])


def test_ctrl_c_is_one_line_and_exit_130(video, monkeypatch, capsys):
    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(StreamingSession, "ask", interrupted)
    code, err = _run(["stream", video, "--ask", "1:what?", "--quiet"], capsys)
    assert code == 130 and err.strip() == "interrupted"


def test_late_questions_are_reported_at_the_last_frame_and_the_odd_frame_is_ingested(video, tmp_path, capsys):
    out = tmp_path / "answers.json"
    code, _ = _run(["stream", video, "--ask", "0:02:early?", "--ask", "500:late?", "--json", str(out),
                    "--max-new-tokens", "2", "--quiet"], capsys)
    assert code == 0
    rows = json.loads(out.read_text())
    early, late = rows["questions"]
    assert early["time"] == 2.0 and "note" not in early and early["last_frame_time"] == 2.0
    assert late["time"] == 4.0 and late["asked_for"] == 500.0 and "past the end" in late["note"]
    assert late["frames_seen"] == 5 and rows["stats"]["frames"] == 5  # the fifth frame, alone in its group


def test_run_timed_questions_flushes_before_end_of_stream_questions():
    adapter = tiny_adapter("qwen2_5_vl")
    assert adapter.frames_per_group == 2
    frames, _ = random_frames(5, size=56, seed=4)
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=4))
    clip = VideoClip(frames, np.arange(5, dtype=np.float64), "five")
    done = run_timed_questions(session, [clip], [TimedQuestion(1.0, "a?"), TimedQuestion(9.0, "b?")],
                               GenerationConfig(max_new_tokens=1))
    (q1, _), (q2, a2) = done
    assert q1.time == 1.0 and q1.note is None
    assert (q2.time, q2.asked_for) == (4.0, 9.0) and "past the end" in q2.note
    assert session.stats.frames == 5 and a2.last_frame_time == 4.0


def test_run_timed_questions_refuses_a_question_before_frames_already_in_the_session():
    """The causality check runs on this path too: a session that already holds frames up to 3 s cannot
    answer a question timed at 1 s as if it were asked then."""
    from ppllava_hermes.streaming.timed import CausalityError

    session = StreamingSession(tiny_adapter("llava_onevision"), config=StreamConfig(chunk_frames=2))
    frames, _ = random_frames(6, size=56, seed=5)
    session.add_frames(frames[:4], np.arange(4, dtype=np.float64))
    clip = VideoClip(frames[4:], np.arange(4, 6, dtype=np.float64), "late")
    with pytest.raises(CausalityError, match=r"question 'a\?' asked at 1.000s but the frame at 3.000s"):
        run_timed_questions(session, [clip], [TimedQuestion(1.0, "a?")], GenerationConfig(max_new_tokens=1))


def _shipped() -> bool:
    from ppllava_hermes.world.model import has_shipped_model

    return has_shipped_model()


@pytest.mark.skipif(not _shipped(), reason="no ShapesWorld model shipped in this build")
@pytest.mark.parametrize("flags, needle", [
    ([], "the largest --budget that fits is "),  # stream's default hermes budget needs more positions
    (["--memory", "window", "--budget", "64", "--max-new-tokens", "4096"], "--max-new-tokens 4096: the model has"),
])
def test_the_shipped_model_names_what_fits(flags, needle, video, capsys):
    code, err = _run(["stream", video, "--model", "shapesworld", *flags, "--quiet"], capsys)
    assert code == 2 and needle in err and "Traceback" not in err
    if not flags:
        budget = int(err.rsplit(" ", 1)[1])
        code, _ = _run(["stream", video, "--model", "shapesworld", "--budget", str(budget), "--ask", "2:what?",
                        "--max-new-tokens", "1", "--quiet"], capsys)
        assert code == 0
