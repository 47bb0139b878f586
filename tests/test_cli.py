"""The ppllava-hermes command: argument errors, help, and an end-to-end stream on a generated video."""

import json

import numpy as np
import pytest

from ppllava_hermes.cli import main, parse_timed_question
from ppllava_hermes.streaming import StreamConfig, StreamingSession
from ppllava_hermes.streaming.timed import TimedQuestion, run_timed_questions
from ppllava_hermes.video import VideoClip, write_video

from .helpers import random_frames, tiny_adapter


def test_parse_timed_question():
    q = parse_timed_question("12.5:what is happening? a: b")
    assert (q.time, q.text) == (12.5, "what is happening? a: b")
    for bad in ("what?", "-1:what?", "x:what?", "3:   "):
        with pytest.raises(Exception, match="SECONDS:QUESTION"):
            parse_timed_question(bad)


@pytest.mark.parametrize("spec, time, text", [
    ("0:15:question", 15.0, "question"),  # a clock time, never t=0 with the question "15:question"
    ("1:05:what?", 65.0, "what?"),
    ("01:30.5:what?", 90.5, "what?"),
    ("1:02:03:what?", 3723.0, "what?"),  # the longest clock time wins
    ("12.0:30: is it half past?", 12.0, "30: is it half past?"),  # a decimal point: plain seconds
    ("7:what: a colon later", 7.0, "what: a colon later"),
])
def test_ask_accepts_seconds_and_clock_times(spec, time, text):
    q = parse_timed_question(spec)
    assert (q.time, q.text) == (time, text)


@pytest.mark.parametrize("spec", ["0:5:q", "1:75:q", "1:60:00:q", "nan:x", "inf:x", "1:05:", "0:15"])
def test_ask_refuses_ambiguous_or_non_finite_times(spec):
    with pytest.raises(Exception, match="SECONDS:QUESTION"):
        parse_timed_question(spec)


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--ask", "--memory", "--budget", "--pool", "--standing-query", "--fps", "--realtime"):
        assert flag in out


def test_missing_video_is_a_clear_error(tmp_path, capsys):
    assert main(["stream", str(tmp_path / "nope.mp4"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nope.mp4" in err and "not found" in err


def test_stream_end_to_end_on_a_generated_video(tmp_path, capsys):
    frames, _ = random_frames(12, size=56, seed=1)
    path = write_video(tmp_path / "v.mp4", frames, fps=2.0)
    out_json = tmp_path / "answers.json"
    code = main(["stream", str(path), "--model", "tiny-qwen2.5-vl", "--memory", "full", "--fps", "2",
                 "--ask", "2.0:what is happening?", "--ask", "100:and at the end?", "--max-new-tokens", "3",
                 "--chunk-frames", "4", "--quiet", "--json", str(out_json)])
    assert code == 0
    data = json.loads(out_json.read_text())
    first, last = data["questions"]
    assert first["frames_seen"] == 5 and first["last_frame_time"] == 2.0  # frames 0, 0.5, ..., 2.0
    assert last["frames_seen"] == 12
    assert data["stats"]["frames"] == 12
    assert "TTFT" in capsys.readouterr().out


def test_cli_offers_every_memory_policy(capsys):
    from ppllava_hermes.memory import POLICIES

    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    assert "--memory {" + ",".join(POLICIES) + "}" in capsys.readouterr().out


@pytest.mark.parametrize("memory", ["snapkv", "merge"])
def test_stream_with_snapkv_and_merge(tmp_path, memory):
    frames, _ = random_frames(12, size=56, seed=3)
    path = write_video(tmp_path / "v.mp4", frames, fps=2.0)
    out_json = tmp_path / "answers.json"
    code = main(["stream", str(path), "--model", "tiny-qwen2.5-vl", "--memory", memory, "--budget", "64",
                 "--fps", "2", "--ask", "100:what happened?", "--max-new-tokens", "2", "--chunk-frames", "4",
                 "--quiet", "--json", str(out_json)])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["stats"]["frames"] == 12 and len(data["questions"]) == 1


def test_budget_below_the_system_prompt_is_a_clear_error(tmp_path, capsys):
    frames, _ = random_frames(4, size=56, seed=3)
    path = write_video(tmp_path / "v.mp4", frames, fps=2.0)
    assert main(["stream", str(path), "--model", "tiny-qwen2.5-vl", "--memory", "snapkv", "--budget", "8",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "budget 8 is smaller than the system prompt" in err and "Traceback" not in err


def test_timed_questions_see_no_future_frame():
    adapter = tiny_adapter("llava_onevision")
    session = StreamingSession(adapter, config=StreamConfig(chunk_frames=3))
    frames, _ = random_frames(10, size=56, seed=2)
    times = np.arange(10) * 1.0
    clips = [VideoClip(frames[i : i + 4], times[i : i + 4]) for i in range(0, 10, 4)]
    seen = []

    def check(q, ans):
        # the memory holds exactly the frames up to the question's time, none after
        seen.append(max(t for _, t in session.frame_log))
        assert ans.last_frame_time <= q.time
        assert int(session.cache.layers[0].frame_ids.max()) == len(session.frame_log) - 1

    qs = [TimedQuestion(2.5, "a?"), TimedQuestion(5.0, "b?"), TimedQuestion(0.0, "c?")]
    done = run_timed_questions(session, clips, qs, on_answer=check)
    assert [q.time for q, _ in done] == [0.0, 2.5, 5.0]
    assert seen == [0.0, 2.0, 5.0]
    assert session.stats.frames == 10


@pytest.mark.parametrize("command", [["stream", "v.mp4"], ["eval"]])
@pytest.mark.parametrize("bad", ["2,3", "2,0,3", "a,b,c"])
def test_pool_kernel_is_checked_by_both_subcommands(command, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--pool-kernel", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --pool-kernel: {bad!r}: expected three positive integers T,H,W such as 2,3,3" in err
