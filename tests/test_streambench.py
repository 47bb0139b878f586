"""StreamBench (StreamChat) v0.3: the loader on our fixture, and judged scoring with stand-in judges.

The fixture ``fixtures/streambench_v0.3_sample.json`` is hand-written in the released format: entry 0
and entry 3 are the same video (3 writes its path "./kitchen_01.mp4", has no video_name and repeats
one question of entry 0), entry 1 has no video_name and its breakpoints out of time order, entry 2
writes one time as a clock and one class in lower case, entry 4 has no video_path, entry 5 has three
bad breakpoints (class "XX", no answer, time "soon"), entry 6 is not an object. All six classes occur.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ppllava_hermes.evaluation import scoring, streambench_scoring
from ppllava_hermes.evaluation.loaders import load_benchmark, load_streambench
from ppllava_hermes.evaluation.loaders._common import MalformedRecordWarning
from ppllava_hermes.evaluation.loaders.streambench import STREAMBENCH_CLASSES
from ppllava_hermes.evaluation.records import QARecord
from ppllava_hermes.evaluation.scoring import JudgeError, JudgeVerdict, OpenAIJudge
from ppllava_hermes.evaluation.streambench_scoring import (
    StreamBenchJudgement,
    judge_streambench,
    predictions_from_results,
    streambench_markdown,
    streambench_summary,
)

from .judge_server import Chat, judge_server

FIXTURE = Path(__file__).parent / "fixtures" / "streambench_v0.3_sample.json"


def load(path: Path = FIXTURE, **kw: Any):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRecordWarning)
        return load_streambench(path, **kw)


# ---------------------------------------------------------------------------------------------- loader


def test_one_stream_per_video_with_questions_in_time_order() -> None:
    records = load().records
    streams: dict[str, list[QARecord]] = {}
    for r in records:
        streams.setdefault(r.extra["stream"], []).append(r)
    assert list(streams) == ["kitchen_01", "WebVideo/city/walk_02", "heist", "match_03"]
    kitchen = streams["kitchen_01"]  # entries 0 and 3 merged ("./kitchen_01.mp4" is the same file)
    assert [r.timestamp for r in kitchen] == [30.0, 75.0, 100.0, 140.0, 160.0]
    assert [r.qid for r in kitchen] == ["kitchen_01#0.0", "kitchen_01#0.1", "kitchen_01#3.1", "kitchen_01#0.2",
                                        "kitchen_01#3.2"]  # fmt: skip
    assert {r.video for r in kitchen} == {"Ego/kitchen_01.mp4"}
    assert all(r.extra["entries"] == [0, 3] for r in kitchen)
    assert [r.extra["round"] for r in kitchen] == [0, 1, 2, 3, 4]
    assert kitchen[2].extra["previous_qids"] == ["kitchen_01#0.0", "kitchen_01#0.1"]
    # entry 1: no video_name, so the id is class_1/video_path; its breakpoints were 200, 50, 120
    walk = streams["WebVideo/city/walk_02"]
    assert [(r.timestamp, r.task_type) for r in walk] == [(50.0, "KG"), (120.0, "CI"), (200.0, "SM")]
    assert [r.qid for r in walk] == ["WebVideo/city/walk_02#1.1", "WebVideo/city/walk_02#1.2",
                                     "WebVideo/city/walk_02#1.0"]  # fmt: skip
    assert walk[0].video == "WebVideo/city/walk_02.mp4" and "video_name" not in walk[0].extra
    heist = streams["heist"]
    assert [(r.timestamp, r.task_type) for r in heist] == [(65.0, "SF"), (95.5, "KG")]  # "00:01:05", "kg"
    assert heist[0].video == "Movie/heist.mkv"


def test_record_fields() -> None:
    records = load().records
    assert len(records) == 11
    assert {r.task_type for r in records} == set(STREAMBENCH_CLASSES)  # all six classes
    first = records[0]
    assert first.benchmark == "streambench" and first.options == [] and not first.is_multiple_choice
    assert first.question == "What am I holding right now?"
    assert first.answer == "You are holding a red knife."
    assert first.extra["source"] == "Ego" and first.extra["topic"] == "cooking"
    assert first.extra["class_name"] == "Simple Factual" and first.extra["video_name"] == "kitchen_01"
    kinds = {r.task_type: r.task_kind for r in records}
    assert kinds == {"SF": "realtime", "OS": "backward", "LM": "backward", "SM": "backward", "CI": "realtime",
                     "KG": "realtime"}  # fmt: skip
    assert {r.extra["source"] for r in records} == {"Ego", "WebVideo", "Movie"}


def test_malformed_entries_are_reported_with_index_qid_and_reason() -> None:
    with pytest.warns(MalformedRecordWarning, match=r"streambench: skipped 6 malformed record\(s\)"):
        result = load_streambench(FIXTURE)
    got = sorted((s.index, s.qid or "", s.reason) for s in result.skipped)
    assert got == [
        (3, "kitchen_01#3.0", "breakpoint 0: repeats question kitchen_01#0.0 of the same video"),
        (4, "", "missing field 'video_path'"),
        (5, "match_03#5.1", "breakpoint 1: class 'XX' is not one of CI, KG, LM, OS, SF, SM"),
        (5, "match_03#5.2", "breakpoint 2: missing field 'answer'"),
        (5, "match_03#5.3", "breakpoint 3: bad timestamp 'soon'"),
        (6, "", "item is a str, not an object"),
    ]
    # the good breakpoint of entry 5 still loads
    assert [r.qid for r in result.records if r.extra["stream"] == "match_03"] == ["match_03#5.0"]


def test_registered_and_videos_resolved(tmp_path: Path) -> None:
    (tmp_path / "Ego").mkdir()
    (tmp_path / "Ego" / "kitchen_01.mp4").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRecordWarning)
        result = load_benchmark("StreamBench", FIXTURE, video_dir=tmp_path)
    assert result.benchmark == "streambench"
    kitchen = [r for r in result.records if r.extra["stream"] == "kitchen_01"]
    assert {r.video for r in kitchen} == {str(tmp_path / "Ego" / "kitchen_01.mp4")}


def test_a_video_name_shared_by_two_videos_falls_back_to_paths(tmp_path: Path) -> None:
    point = {"time": 5, "question": "What is this?", "answer": "A cat.", "class": "SF"}
    entries = [
        {"info": {"class_1": "Ego", "video_path": "a.mp4", "video_name": "clip"}, "breakpoint": [point]},
        {"info": {"class_1": "Movie", "video_path": "b.mp4", "video_name": "clip"}, "breakpoint": [point]},
    ]
    path = tmp_path / "streaming_bench_v0.3.json"
    path.write_text(json.dumps(entries))
    records = load(path).records
    assert [r.qid for r in records] == ["Ego/a#0.0", "Movie/b#1.0"]


def test_bad_files_raise_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "streaming_bench_v0.3.json"
    path.write_text('{"info": {}}')
    with pytest.raises(ValueError, match=r"streaming_bench_v0.3.json: expected a top-level JSON list"):
        load_streambench(path)


def test_streaming_protocol_asks_each_question_at_its_time() -> None:
    protocols = pytest.importorskip("ppllava_hermes.evaluation.protocols")
    records = load().records
    events = protocols._events(list(enumerate(records)))
    assert all(ev.kind == "ask" for ev in events)
    assert sorted((ev.time, ev.record.qid) for ev in events) == sorted((r.timestamp, r.qid) for r in records)


# ------------------------------------------------------------------------------------------- scoring


class FakeJudge:
    """Answers from a table ``{prediction: (correct, score)}``; "BROKEN" raises JudgeError."""

    def __init__(self, table: dict[str, tuple[bool, float | None]]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    def judge_record(self, record: QARecord, prediction: str) -> JudgeVerdict:
        self.asked.append((record.qid, prediction))
        if prediction == "BROKEN":
            raise JudgeError("judge reply has no yes/no verdict: 'hmm'")
        correct, score = self.table[prediction]
        return JudgeVerdict(correct=correct, score=score, raw=f"{correct}/{score}")


def _predictions(records: list[QARecord]) -> dict[str, str | None]:
    """One prediction per record: right ("R") for SF and KG, wrong ("W") otherwise, plus special cases."""
    preds: dict[str, str | None] = {r.qid: "R" if r.task_type in ("SF", "KG") else "W" for r in records}
    preds["kitchen_01#0.2"] = None  # LM: the model failed
    preds["WebVideo/city/walk_02#1.2"] = "BROKEN"  # CI: the judge fails
    preds["heist#2.0"] = "   "  # SF: empty answer
    return preds


def test_judged_scoring_counts_failures_as_wrong() -> None:
    records = load().records
    judge = FakeJudge({"R": (True, 5.0), "W": (False, 1.0)})
    judgements = judge_streambench(records, _predictions(records), judge)
    assert [j.qid for j in judgements] == [r.qid for r in records]
    by = {j.qid: j for j in judgements}
    assert by["kitchen_01#0.2"] == StreamBenchJudgement("kitchen_01#0.2", False, 0.0, error="the model gave no answer")
    assert by["heist#2.0"].error == "empty answer" and by["heist#2.0"].score == 0.0
    broken = by["WebVideo/city/walk_02#1.2"]
    assert broken.correct is False and broken.score is None and broken.error.startswith("judge failed:")
    # unanswered / empty predictions never reach the judge
    assert {q for q, _ in judge.asked} == {r.qid for r in records} - {"kitchen_01#0.2", "heist#2.0"}

    summary = streambench_summary(records, judgements)
    # 11 records: SF x3 (one empty), KG x2 right; the rest wrong
    assert summary["total"] == {"n": 11, "correct": 4, "accuracy": 4 / 11, "n_scored": 10,
                                "score": (4 * 5 + 4 * 1 + 2 * 0) / 10, "judge_failures": 1}  # fmt: skip
    assert summary["total_without_kg"]["n"] == 9 and summary["total_without_kg"]["correct"] == 2
    assert list(summary["by_class"]) == ["CI", "KG", "LM", "OS", "SF", "SM"]
    sf = summary["by_class"]["SF"]
    assert (sf["n"], sf["correct"], sf["score"], sf["name"]) == (3, 2, 10 / 3, "Simple Factual")
    assert summary["by_class"]["CI"]["judge_failures"] == 1 and summary["by_class"]["CI"]["score"] == 1.0
    assert summary["by_class"]["KG"]["accuracy"] == 1.0
    assert summary["macro"]["classes"] == 6
    assert summary["macro"]["accuracy"] == pytest.approx((0 + 1 + 0 + 0 + 2 / 3 + 0) / 6)
    assert summary["macro_without_kg"]["accuracy"] == pytest.approx((2 / 3) / 5)
    sources = summary["by_source"]
    assert list(sources) == ["Ego", "Movie", "WebVideo"]
    assert (sources["Ego"]["n"], sources["Ego"]["correct"]) == (5, 1)
    assert (sources["Movie"]["n"], sources["Movie"]["correct"]) == (2, 1)  # heist: empty SF, right KG
    assert (sources["WebVideo"]["n"], sources["WebVideo"]["correct"]) == (4, 2)
    assert summary["unanswered"] == 0
    table = streambench_markdown(summary)
    assert "| total | 11 | 36.4 |" in table and "| total without KG | 9 | 22.2 |" in table
    assert "| SF (Simple Factual) | 3 | 66.7 | 3.33 | 0 |" in table and "| source: Movie | 2 | 50.0 |" in table


def test_partial_predictions_and_mismatched_ids() -> None:
    records = load().records
    judge = FakeJudge({"R": (True, 4.0)})
    judgements = judge_streambench(records, {records[0].qid: "R"}, judge)
    summary = streambench_summary(records, judgements)
    assert summary["total"]["n"] == 1 and summary["unanswered"] == 10
    assert "10 record(s) had no prediction" in streambench_markdown(summary)
    with pytest.raises(ValueError, match=r"predictions: 1 qid\(s\) are not StreamBench records of this file, "
                                         r"first 'nope#0.0'"):  # fmt: skip
        judge_streambench(records, {"nope#0.0": "R"}, judge)
    with pytest.raises(ValueError, match=r"judgement for 'nope': no such record"):
        streambench_summary(records, [StreamBenchJudgement("nope", True, 5.0)])
    mc = QARecord(benchmark="x", qid="m", video="v", question="q", options=["a", "b"], answer=0)
    with pytest.raises(ValueError, match=r"record 'm': multiple choice"):
        judge_streambench([mc], {"m": "a"}, judge)


def test_predictions_from_results() -> None:
    class Result:
        def __init__(self, qid: str, prediction: str, error: str | None = None) -> None:
            self.qid, self.prediction, self.error = qid, prediction, error

    assert predictions_from_results([Result("a", "x"), Result("b", "", "model raised")]) == {"a": "x", "b": None}
    with pytest.raises(ValueError, match=r"results: qid 'a' appears twice"):
        predictions_from_results([Result("a", "x"), Result("a", "y")])


def test_the_documented_judge_prompt_is_the_one_sent() -> None:
    doc = " ".join(streambench_scoring.__doc__.split())
    assert " ".join(scoring._JUDGE_SYSTEM.split()) in doc
    judge = OpenAIJudge("http://127.0.0.1:1/v1", "m")
    messages = judge.messages("Q?", "ref", "pred")
    assert messages[0] == {"role": "system", "content": scoring._JUDGE_SYSTEM}
    assert messages[1]["content"] == "Question: Q?\nCorrect answer: ref\nPredicted answer: pred"
    assert r'"Question: <question>\nCorrect answer: <reference>\nPredicted answer: <prediction>"' in doc


# -------------------------------------------------------------- the real client against a stand-in server


@pytest.fixture
def chat_server() -> Iterator[str]:
    with judge_server() as (url, _):
        yield url


def test_openai_judge_end_to_end(chat_server: str) -> None:
    records = load().records[:4]
    Chat.replies = [
        (200, "{'llama_pred': 'yes', 'score': 4}", 0.0),  # StreamChat's own reply style (a Python dict)
        (500, {"error": "busy"}, 0.0),  # retried ...
        (200, '{"correct": "no", "score": 2}', 0.0),  # ... then answered
        (200, "I would rather not say.", 0.0),  # no verdict: a judge failure
        (200, "too late", 1.0),  # past the client's timeout, and no retry left: a judge failure
    ]
    judge = OpenAIJudge(chat_server, "judge", timeout=0.3, max_retries=1, retry_delay=0)
    preds = {r.qid: "some answer" for r in records}
    # the last record's timeout uses both tries; give its retry the same slow reply
    Chat.replies.append((200, "too late", 1.0))
    judgements = judge_streambench(records, preds, judge)
    assert [(j.correct, j.score) for j in judgements[:2]] == [(True, 4.0), (False, 2.0)]
    assert judgements[2].error is not None and "no yes/no verdict" in judgements[2].error
    assert judgements[3].error is not None and "failed after 2 tries" in judgements[3].error
    summary = streambench_summary(records, judgements)
    assert summary["total"]["judge_failures"] == 2 and summary["total"]["correct"] == 1
    assert summary["total"]["n_scored"] == 2 and summary["total"]["score"] == 3.0
