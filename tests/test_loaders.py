"""Tests of the benchmark loaders: each format's fixture (with malformed items) and its real excerpt.

Real excerpts live in ``$PPLLAVA_SHARED_BENCHMARKS`` (default ``<repo>/../shared/benchmarks``); the
tests that read them are skipped when the folder or file is absent.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ppllava_hermes.evaluation import BENCHMARKS, LoadResult, MalformedRecordWarning, QARecord, load_benchmark
from ppllava_hermes.evaluation.loaders import (
    canonical_name,
    load_egoschema,
    load_ovo_bench,
    load_streamingbench,
    parse_time_range,
    parse_timestamp,
    split_embedded_options,
    strip_option_letters,
)
from ppllava_hermes.evaluation.loaders._common import (
    Malformed,
    answer_from_index,
    answer_from_letter,
    answer_from_text,
    resolve_video,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
SHARED = Path(os.environ.get("PPLLAVA_SHARED_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"real excerpt {path} not available")
    return path


def load_clean(name: str, path: Path, **kw: Any) -> LoadResult:
    """Load a file that must have no malformed items (a skip warning fails the test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", MalformedRecordWarning)
        result = load_benchmark(name, path, **kw)
    assert result.skipped == []
    return result


def load_with_skips(name: str, path: Path, indices: list[int], **kw: Any) -> LoadResult:
    """Load a fixture whose items at ``indices`` are malformed; they must be reported and warned about."""
    count = len(indices)
    with pytest.warns(MalformedRecordWarning, match=rf"skipped {count} malformed record\(s\)") as caught:
        result = load_benchmark(name, path, **kw)
    message = next(str(w.message) for w in caught if issubclass(w.category, MalformedRecordWarning) and "skipped" in str(w.message))
    assert str(sorted(set(indices))[:5]) in message  # the first indices are named
    assert [s.index for s in result.skipped] == indices
    assert all(s.reason for s in result.skipped)
    return result


def by_qid(result: LoadResult) -> dict[str, QARecord]:
    return {r.qid: r for r in result.records}


# ------------------------------------------------------------------------------------- StreamingBench


def test_streamingbench_real_fixture() -> None:
    result = load_with_skips("streamingbench_real", FIXTURES / "streamingbench_real.json", [1, 2])
    recs = by_qid(result)
    assert list(recs) == ["0-0", "0-1", "3-0"]
    first = recs["0-0"]
    assert first.options == ["Washed dishes.", "Cut onions.", "Toasted buns.", "Left the kitchen."]
    assert first.answer == 2 and first.answer_letter == "C"
    assert first.timestamp == 12.0 and first.task_kind == "backward"  # "Clips Summarize" asks about the past
    assert recs["0-1"].timestamp == 65.0 and recs["0-1"].task_kind == "realtime"
    assert first.video == "videos/sample_1_real.mp4"
    assert "not among the 4 options" in result.skipped[0].reason
    assert "bad timestamp" in result.skipped[1].reason


def test_streamingbench_omni_and_proactive_fixtures() -> None:
    omni = load_with_skips("streamingbench_omni", FIXTURES / "streamingbench_omni.json", [1])
    assert [(r.task_type, r.answer, r.task_kind) for r in omni.records] == [("Emotion Recognition", 1, "realtime")]
    assert "options" in omni.skipped[0].reason
    pro = load_with_skips("streamingbench_proactive", FIXTURES / "streamingbench_proactive.json", [1])
    (rec,) = pro.records
    assert rec.answer == "10" and rec.options == [] and rec.task_kind == "forward"
    assert rec.timestamp == 5.0 and rec.extra["ground_truth_time"] == 27.0


def test_streamingbench_sqa_fixture() -> None:
    result = load_with_skips("streamingbench_sqa", FIXTURES / "streamingbench_sqa.json", [1])
    recs = by_qid(result)
    assert list(recs) == ["0-0", "0-1", "0-2", "1-0"]
    assert recs["0-1"].options == ["2.", "6.", "7.", "4."]  # unlettered: "2." is not a letter prefix
    assert recs["1-0"].options == ["DEN.", "MIA.", "BOS.", "GS."]
    assert recs["0-2"].extra["previous_qids"] == ["0-0", "0-1"]
    assert result.skipped[0].qid == "1-1"


def test_streamingbench_subset_inferred_from_name_and_shape(tmp_path: Path) -> None:
    with pytest.warns(MalformedRecordWarning):
        assert load_streamingbench(FIXTURES / "streamingbench_sqa.json").benchmark == "streamingbench_sqa"
    data = json.loads((FIXTURES / "streamingbench_proactive.json").read_text())[:1]
    anonymous = tmp_path / "questions.json"
    anonymous.write_text(json.dumps(data))
    assert load_streamingbench(anonymous).records[0].task_kind == "forward"


def test_streamingbench_real_excerpt() -> None:
    result = load_clean("streamingbench_real", shared("streamingbench_real.json"))
    assert len(result.records) == 12
    kinds = Counter(r.task_kind for r in result.records)
    assert kinds == {"backward": 5, "realtime": 7}
    rec = by_qid(result)["0-0"]
    assert rec.question.startswith("Which of the following options best summarizes")
    assert rec.options[2] == "The individual replenished bread inventory by placing new buns onto the shelves."
    assert rec.answer == 2 and rec.timestamp == 31.0
    assert rec.extra["time_range"] == (0.0, 10.0)  # the clip range, which the timestamp lies outside of
    assert by_qid(result)["5-0"].task_type == "Object Recognition"


def test_streamingbench_sqa_and_proactive_excerpts() -> None:
    sqa = load_clean("streamingbench_sqa", shared("streamingbench_sqa.json"))
    assert len(sqa.records) == 30
    recs = by_qid(sqa)
    assert recs["0-1"].options == ["2.", "6.", "7.", "4."] and recs["0-1"].answer == 2
    assert recs["1-0"].options == ["DEN.", "MIA.", "BOS.", "GS."] and recs["1-0"].answer == 2
    assert recs["1-0"].timestamp == 41.0
    assert recs["5-4"].extra["previous_qids"] == ["5-0", "5-1", "5-2", "5-3"]
    pro = load_clean("streamingbench_proactive", shared("streamingbench_proactive.json"))
    assert len(pro.records) == 6
    first = pro.records[0]
    assert (first.answer, first.timestamp, first.extra["ground_truth_time"]) == ("3", 20.0, 29.0)


# ------------------------------------------------------------------------------------------ OVO-Bench


def test_ovo_bench_fixture() -> None:
    result = load_with_skips("ovo_bench", FIXTURES / "ovo_bench.json", [3, 4, 8, 9])
    recs = by_qid(result)
    assert [recs[q].task_kind for q in ("10", "11", "12", "20", "21", "22")] == [
        "backward", "realtime", "realtime", "forward", "forward", "forward",
    ]  # fmt: skip
    assert recs["11"].options == ["On the left.", "On the right.", "Behind the player."]
    assert recs["11"].answer == 0 and recs["11"].timestamp == 88.5
    assert recs["12"].answer == 1  # gt wins over an answer text that is a paraphrase of the option
    ssr = recs["21"]
    assert [p["timestamp"] for p in ssr.extra["probes"]] == [3.0, 10.0, 18.0, 25.0]  # sorted by time
    assert [p["answer"] for p in ssr.extra["probes"]] == ["No", "Yes", "No", "Yes"]
    assert ssr.extra["probes"][0]["index"] == 2 and ssr.timestamp == 3.0
    crr = recs["20"]
    assert crr.answer == "He burns it." and crr.timestamp == 100.0 and crr.extra["clue_time"] == 130.0
    assert [p["answer"] for p in crr.extra["probes"]] == ["No", "No", "Yes"]
    rec = recs["22"]
    assert [(p["timestamp"], p["answer"]) for p in rec.extra["probes"]] == [(5.0, "1"), (13.0, "2")]
    reasons = [s.reason for s in result.skipped]
    assert "not among" in reasons[0] and "realtime" in reasons[1] and "count" in reasons[2] and "XYZ" in reasons[3]


def test_ovo_bench_answer_text_fallback(tmp_path: Path) -> None:
    item = {"id": 1, "task": "ATR", "video": "v.mp4", "realtime": "00:01:05", "question": "Colour?",
            "answer": "Black.", "options": ["White.", "Black."]}  # fmt: skip
    path = tmp_path / "ovo.json"
    path.write_text(json.dumps([item]))
    (rec,) = load_ovo_bench(path).records
    assert rec.answer == 1 and rec.timestamp == 65.0


def test_ovo_bench_excerpt() -> None:
    result = load_clean("ovo_bench", shared("ovo_bench.json"))
    assert len(result.records) == 36
    assert Counter(r.task_kind for r in result.records) == {"backward": 9, "realtime": 18, "forward": 9}
    recs = by_qid(result)
    fpd = recs["1109"]
    assert fpd.question == "What is this person going to do?"
    assert fpd.options[1] == "The person is going to drill a hole." and fpd.answer == 1
    assert fpd.timestamp == 88.43 and fpd.extra["answer_text"] != fpd.options[1]
    assert len(recs["484"].options) == 3
    ssr = recs["1516"]
    assert len(ssr.extra["probes"]) == 12 and ssr.extra["probes"][0]["timestamp"] == 26.0
    assert ssr.extra["probes"][0]["answer"] == "No"
    rec = recs["1559"]
    assert [p["answer"] for p in rec.extra["probes"]] == ["1", "2", "3", "3"] and rec.answer == "3"
    assert recs["1470"].extra["clue_time"] == 398.0


# ------------------------------------------------------------------------------------------ EgoSchema


def test_egoschema_official_fixture_with_answers_file() -> None:
    result = load_with_skips(
        "egoschema", FIXTURES / "egoschema_questions.json", [2, 3], answers_path=FIXTURES / "egoschema_answers.json"
    )
    recs = by_qid(result)
    assert recs["uid-aaa"].options[2] == "C paints." and recs["uid-aaa"].answer == 2
    assert recs["uid-bbb"].answer == 0 and recs["uid-bbb"].video == "uid-bbb.mp4"
    assert "no answer" in result.skipped[0].reason and "not among the 5" in result.skipped[1].reason


def test_egoschema_without_answers_skips_everything() -> None:
    with pytest.warns(MalformedRecordWarning, match="skipped 4"):
        result = load_egoschema(FIXTURES / "egoschema_questions.json")
    assert result.records == [] and "answers_path" in result.skipped[0].reason


def test_egoschema_disagreeing_answers_are_skipped(tmp_path: Path) -> None:
    qa = json.loads(shared("egoschema_subset_qa.json").read_text())[:2]
    answers = {qa[0]["video_id"]: qa[0]["answer"], qa[1]["video_id"]: (qa[1]["answer"] + 1) % 5}
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    with pytest.warns(MalformedRecordWarning, match="skipped 1"):
        result = load_egoschema(tmp_path / "qa.json", answers_path=tmp_path / "answers.json")
    assert len(result.records) == 1 and "disagrees" in result.skipped[0].reason


def test_egoschema_excerpt() -> None:
    result = load_clean(
        "egoschema", shared("egoschema_subset_qa.json"), answers_path=shared("egoschema_subset_answers.json")
    )
    assert len(result.records) == 30
    rec = by_qid(result)["0074f737-11cb-497d-8d07-77c3a8127391"]
    assert rec.question.startswith("Taking into account all the actions performed by c")
    assert rec.options == [
        "C is cooking.", "C is doing laundry.", "C is cleaning the kitchen.", "C is cleaning dishes.",
        "C is cleaning the bathroom.",
    ]  # fmt: skip
    assert rec.answer == 3 and rec.timestamp is None
    assert rec.extra["prompt_suffix"] == "Only give the best option."
    # The eval-harness file carries the answers too: loading it alone gives the same records.
    alone = load_clean("egoschema", shared("egoschema_subset_qa.json"))
    assert [r.answer for r in alone.records] == [r.answer for r in result.records]


# ---------------------------------------------------------------------------------- offline multiple choice


def test_mvbench_fixture_and_excerpt() -> None:
    result = load_with_skips("mvbench", FIXTURES / "mvbench_qa.json", [2, 3])
    recs = by_qid(result)
    assert recs["000000"].options == ["At the beginning.", "At the end.", "Throughout."] and recs["000000"].answer == 1
    assert recs["000000"].question == "When does the person sit down?"
    official = recs["1"]
    assert official.answer == 1 and (official.start, official.end) == (2.5, 9.0)  # answer given as option text
    real = load_clean("mvbench", shared("mvbench_qa.json"))
    assert len(real.records) == 40
    rec = by_qid(real)["000000"]
    assert rec.question == "During which part of the video does the action 'person sitting on a couch' occur?"
    assert rec.options[2] == "Throughout the entire video." and rec.answer == 2
    assert rec.task_type == "action_localization" and rec.task_kind == "short"
    assert rec.video == "sta/sta_video_segment/RPY8D_0.0_15.2.mp4"  # the dotted id is not an extension


def test_videomme_fixture_and_excerpt() -> None:
    result = load_with_skips("video-mme", FIXTURES / "videomme_qa.json", [2])
    recs = by_qid(result)
    assert recs["001-1"].options[0] == "(b)(a)." and "(a) Cities." in recs["001-1"].question
    official = recs["601-2"]
    assert official.answer == 2 and official.options == ["1.", "2.", "3.", "4."]  # letter answer "C"
    assert official.video == "K64wRD8eaus.mp4" and official.duration_class == "long" and official.task_kind == "other"
    real = load_clean("videomme", shared("videomme_qa.json"))
    assert len(real.records) == 30
    assert Counter(r.duration_class for r in real.records) == {"short": 10, "medium": 10, "long": 10}
    rec = next(r for r in real.records if "Sunken" in r.question)
    assert rec.question.endswith("(c) Sunken things used to learn about ancient people.")
    assert rec.options == ["(c)(b)(a).", "(a)(b)(c).", "(a)(c)(b).", "(b)(a)(c)."] and rec.answer == 1
    first = by_qid(real)["001-1"]
    assert first.options == ["Apples.", "Candles.", "Berries.", "The three kinds are of the same number."]
    assert first.answer == 2 and first.task_kind == "short"


def test_mlvu_fixture_and_excerpts() -> None:
    result = load_with_skips("mlvu", FIXTURES / "mlvu_qa.json", [3])
    recs = by_qid(result)
    assert recs["000000"].options == ["Yellow", "Red"] and recs["000000"].answer == 1
    assert recs["1"].answer == 1 and recs["1"].task_type == "findNeedle"  # answer given as option text
    assert recs["2"].task_kind == "open" and recs["2"].answer == "They shake hands."
    real = load_clean("mlvu", shared("mlvu_qa.json"))
    assert len(real.records) == 30
    rec = by_qid(real)["000000"]
    assert rec.options == ["Yellow", "Red", "Green", "Blue"] and rec.answer == 0
    assert rec.question == "What color is the main male character in the video?" and rec.task_type == "plotQA"
    needle = load_clean("mlvu_needle", shared("mlvu_needle.json"))
    assert len(needle.records) == 20
    rec = by_qid(needle)["1"]
    assert rec.options[rec.answer] == "Fishing" and rec.answer == 3 and rec.video == "needle_38.mp4"


def test_lvbench_fixtures_and_excerpt() -> None:
    result = load_with_skips("lvbench", FIXTURES / "lvbench_qa.json", [1])
    (rec,) = result.records
    assert (rec.start, rec.end, rec.answer) == (15.0, 19.0, 3)
    assert rec.extra["task_types"] == ["key information retrieval", "entity recognition"]
    official = load_with_skips("lvbench", FIXTURES / "lvbench_meta.jsonl", [0])
    recs = by_qid(official)
    assert recs["55"].answer == 3  # letter "D"
    assert recs["900"].answer == 1 and (recs["900"].start, recs["900"].end) == (3723.0, 3900.0)  # "(B)", h:mm:ss
    assert recs["900"].video == "AbCdEf12345.mp4"
    real = load_clean("lvbench", shared("lvbench_qa.json"))
    assert len(real.records) == 30
    rec = by_qid(real)["61"]
    assert (rec.start, rec.end) == (259.0, 521.0)  # "04:19-08:41"
    first = by_qid(real)["55"]
    assert first.options == ["1636", "1366", "1363", "1633"] and first.answer == 3 and first.timestamp is None


# ------------------------------------------------------------------------------------------- open QA


def test_activitynet_qa_fixture_and_excerpt() -> None:
    with pytest.warns(MalformedRecordWarning) as caught:
        result = load_benchmark("activitynet_qa", FIXTURES / "activitynet_qa_test_q.json")
    messages = [str(w.message) for w in caught]
    assert any("1 answer(s)" in m and "no question" in m for m in messages)
    assert any("skipped 1 malformed" in m and "[2]" in m for m in messages)
    assert [s.index for s in result.skipped] == [2]
    recs = by_qid(result)
    assert recs["v_bbb_1"].answer == "white" and recs["v_bbb_1"].task_type == "color"
    assert recs["v_aaa_3"].video == "v_aaa.mp4" and recs["v_aaa_3"].task_kind == "open"
    real = load_clean("activitynet_qa", shared("activitynet_qa_test_q.json"))
    assert len(real.records) == 40
    rec = by_qid(real)["v_1QIUV7WYKXg_3"]
    assert (rec.question, rec.answer, rec.task_type) == ("is the athlete wearing trousers", "no", "yes_no")


def test_activitynet_qa_needs_answers(tmp_path: Path) -> None:
    path = tmp_path / "questions_only.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="answers"):
        load_benchmark("activitynet_qa", path)


def test_msvd_msrvtt_fixtures_and_excerpt() -> None:
    msvd = load_with_skips("msvd_qa", FIXTURES / "msvd_qa.json", [2])
    assert [(r.answer, r.task_type) for r in msvd.records] == [("man", "who"), ("box", "what")]
    msrvtt = load_with_skips("msrvtt_qa", FIXTURES / "msrvtt_qa.json", [2])
    assert [(r.video, r.answer) for r in msrvtt.records] == [("video7010.mp4", "cartoon"), ("video7011.mp4", "3")]
    real = load_clean("msvd_qa", shared("msvd_qa.json"))
    assert len(real.records) == 40
    rec = real.records[0]
    assert (rec.question, rec.answer) == ("who opened the box that held an automatic weapon in a gun?", "someone")
    assert rec.video == "jfrrO5K_vKM_55_65.avi" and rec.options == []


def test_vcgbench_fixtures_and_excerpts() -> None:
    generic = load_clean("vcgbench", FIXTURES / "vcgbench_generic_qa.json")
    assert [r.task_type for r in generic.records] == ["generic", "generic"]
    cons = load_with_skips("vcgbench_consistency", FIXTURES / "vcgbench_consistency_qa.json", [1])
    (rec,) = cons.records
    assert rec.question == "What equipment is in the gym?"
    assert rec.extra["question2"] == "Can you describe the gym equipment?"
    split = load_with_skips("vcgbench", FIXTURES / "vcgbench_consistency_qa.json", [1], split_consistency=True)
    assert [r.qid for r in split.records] == ["0-1", "0-2"] and split.records[1].extra["pair"] == 0
    for subset in ("generic", "temporal", "consistency"):
        real = load_clean("vcgbench", shared(f"vcgbench_{subset}_qa.json"))
        assert len(real.records) == 20 and {r.task_type for r in real.records} == {subset}
    real = load_clean("vcgbench", shared("vcgbench_consistency_qa.json"))
    assert real.records[0].extra["question2"].startswith("Can you describe the gym")
    assert real.records[0].answer.startswith("There is other equipment visible")


# ------------------------------------------------------------------------------------ API and helpers


def test_registry_names_and_aliases() -> None:
    for name in ("streamingbench_real", "streamingbench_omni", "streamingbench_sqa", "streamingbench_proactive",
                 "ovo_bench", "egoschema", "mvbench", "videomme", "mlvu", "lvbench", "activitynet_qa",
                 "msvd_qa", "msrvtt_qa", "vcgbench_generic", "vcgbench_temporal", "vcgbench_consistency"):  # fmt: skip
        assert name in BENCHMARKS
    assert canonical_name("OVO-Bench") == "ovo_bench" and canonical_name("Video-MME") == "videomme"
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("no-such-bench", FIXTURES / "mvbench_qa.json")


@pytest.mark.parametrize("name", ["mvbench", "ovo_bench", "streamingbench", "vcgbench", "egoschema"])
def test_bad_files_raise_value_error_naming_the_file(name: str) -> None:
    with pytest.raises(ValueError, match=r"not_json\.json.*not valid JSON"):
        load_benchmark(name, FIXTURES / "not_json.json")
    with pytest.raises(ValueError, match=r"wrong_shape\.json.*expected a top-level JSON list, found dict"):
        load_benchmark(name, FIXTURES / "wrong_shape.json")


def test_video_dir_resolution(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "sample_1_real.mp4").touch()
    result = load_with_skips("streamingbench_real", FIXTURES / "streamingbench_real.json", [1, 2], video_dir=tmp_path)
    assert result.records[0].video == str(tmp_path / "videos" / "sample_1_real.mp4")
    (tmp_path / "aaa.webm").touch()  # ActivityNet: id without "v_", another extension
    assert resolve_video("v_aaa", tmp_path, ".mp4", alternatives=("aaa",)) == str(tmp_path / "aaa.webm")
    (tmp_path / "2_needle").mkdir()
    (tmp_path / "2_needle" / "needle_1.mp4").touch()
    assert resolve_video("needle_1.mp4", tmp_path, ".mp4", subdirs=("2_needle",)) == str(tmp_path / "2_needle" / "needle_1.mp4")
    # nothing on disk: the expected path, so the error names it when the video is opened
    assert resolve_video("./x/y", tmp_path, ".mp4") == str(tmp_path / "x" / "y.mp4")
    assert resolve_video("RPY8D_0.0_15.2", None, ".mp4") == "RPY8D_0.0_15.2.mp4"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("00:03:12", 192.0), ("0:00:31", 31.0), ("3:12", 192.0), ("1:02:03.5", 3723.5), (215, 215.0), (88.43, 88.43),
     ("12.5", 12.5), ("12.5s", 12.5), ("75:10", 4510.0)],
)  # fmt: skip
def test_parse_timestamp(value: Any, seconds: float) -> None:
    assert parse_timestamp(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["00:99:00", "soon", -1, True, None, "1:2:3:4", float("nan"), "00:00:75"])
def test_parse_timestamp_rejects(value: Any) -> None:
    with pytest.raises(Malformed):
        parse_timestamp(value)


def test_parse_time_range() -> None:
    assert parse_time_range("[0:03:17 - 0:03:27]") == (197.0, 207.0)
    assert parse_time_range("04:19-08:41") == (259.0, 521.0)
    assert parse_time_range([2, 9.5]) == (2.0, 9.5)
    with pytest.raises(Malformed):
        parse_time_range("08:41-04:19")


def test_option_helpers() -> None:
    assert strip_option_letters(["A. DEN.", "B. MIA."]) == ["DEN.", "MIA."]
    assert strip_option_letters(["(A) x", "(B) y"]) == ["x", "y"]
    assert strip_option_letters(["2.", "6."]) == ["2.", "6."]
    assert strip_option_letters(["A. x", "C. y"]) == ["A. x", "C. y"]  # not A, B: left alone
    q, opts, instruction, trailer = split_embedded_options("Pick one.\nQuestion: Why?\nOptions:\n(A) a\n(B) b\nAnswer briefly.")
    assert (q, opts, instruction, trailer) == ("Why?", ["a", "b"], "Pick one.", "Answer briefly.")
    assert split_embedded_options("Q?\nA. long\ncontinued\nB. short")[1] == ["long continued", "short"]
    with pytest.raises(Malformed):
        split_embedded_options("A dog runs.\nBut where?")


def test_options_that_are_only_letters_keep_them() -> None:
    assert strip_option_letters(["A.", "B.", "(C)", "D:"]) == ["A", "B", "C", "D"]  # a label alone is the option
    assert strip_option_letters(["A", "B", "C", "D"]) == ["A", "B", "C", "D"]  # no label: left alone
    assert strip_option_letters(["A. A", "B. B"]) == ["A", "B"]
    assert strip_option_letters(["A. B", "B. A"]) == ["B", "A"]
    assert strip_option_letters(["A. red", "B."]) == ["red", "B"]
    assert split_embedded_options("Which door?\nA.\nB.\n(C)")[1] == ["A", "B", "C"]
    assert split_embedded_options("Q?\nA.\nthe red one\nB. blue")[1] == ["the red one", "blue"]


def _videomme_row(qid: str, options: list[str], answer: str) -> dict[str, Any]:
    return {"question_id": qid, "videoID": "vid", "duration": "short", "question": "Which one?",
            "options": options, "answer": answer}  # fmt: skip


def test_records_with_letter_only_or_ambiguous_options(tmp_path: Path) -> None:
    items = [
        _videomme_row("letters", ["A.", "B.", "C.", "D."], "B"),
        _videomme_row("bare", ["A", "B", "C", "D"], "C"),
        _videomme_row("twin-answer", ["A. red", "B. Red.", "C. blue"], "A"),
        _videomme_row("label-twin", ["A. B", "B."], "B"),
        _videomme_row("twin-wrong", ["A. red", "B. blue", "C. red"], "B"),  # scored without ambiguity: kept
        {"question_id": "embedded", "videoID": "vid", "duration": "short", "question": "Which?\nA.\nB.", "answer": 1},
    ]  # fmt: skip
    (tmp_path / "videomme.json").write_text(json.dumps(items))
    result = load_with_skips("videomme", tmp_path / "videomme.json", [2, 3])
    recs = by_qid(result)
    assert (recs["letters"].options, recs["letters"].answer) == (["A", "B", "C", "D"], 1)
    assert (recs["bare"].options, recs["bare"].answer) == (["A", "B", "C", "D"], 2)
    assert (recs["twin-wrong"].options, recs["twin-wrong"].answer) == (["red", "blue", "red"], 1)
    assert (recs["embedded"].options, recs["embedded"].answer) == (["A", "B"], 1)
    reasons = {s.qid: s.reason for s in result.skipped}
    assert reasons == {
        "twin-answer": "options A and B are the same ('Red.') and A is the answer",
        "label-twin": "options A and B are the same ('B') and B is the answer",
    }


def test_answer_conventions() -> None:
    for letter in ("C", "(C)", "C.", "c", " C "):
        assert answer_from_letter(letter, 4) == 2
    assert answer_from_index(0, 4) == 0 and answer_from_index("3", 4) == 3 and answer_from_index(4, 4, base=1) == 3
    assert answer_from_text("red.", ["Blue", "Red"]) == 1
    for bad in (lambda: answer_from_letter("E", 4), lambda: answer_from_index(True, 4),
                lambda: answer_from_index(-1, 4), lambda: answer_from_text("x", ["a", "b"]),
                lambda: answer_from_text("RED", ["Red", "red."])):  # fmt: skip
        with pytest.raises(Malformed):
            bad()


def test_every_real_excerpt_loads_clean() -> None:
    """Smoke check over the whole shared folder: no warning, no skip, every record valid."""
    files = {  # file: (loader, keyword arguments, record count)
        "streamingbench_real.json": ("streamingbench", {}, 12),
        "streamingbench_sqa.json": ("streamingbench", {}, 30),
        "streamingbench_proactive.json": ("streamingbench", {}, 6),
        "ovo_bench.json": ("ovo_bench", {}, 36),
        "egoschema_subset_qa.json": ("egoschema", {"answers_path": SHARED / "egoschema_subset_answers.json"}, 30),
        "mvbench_qa.json": ("mvbench", {}, 40),
        "videomme_qa.json": ("videomme", {}, 30),
        "mlvu_qa.json": ("mlvu", {}, 30),
        "mlvu_needle.json": ("mlvu", {}, 20),
        "lvbench_qa.json": ("lvbench", {}, 30),
        "activitynet_qa_test_q.json": ("activitynet_qa", {}, 40),
        "msvd_qa.json": ("msvd_qa", {}, 40),
        "vcgbench_generic_qa.json": ("vcgbench", {}, 20),
        "vcgbench_temporal_qa.json": ("vcgbench", {}, 20),
        "vcgbench_consistency_qa.json": ("vcgbench", {}, 20),
    }
    present = {f: v for f, v in files.items() if (SHARED / f).is_file()}
    if not present:
        pytest.skip(f"no real excerpts in {SHARED}")
    for file, (name, kw, count) in present.items():
        records = load_clean(name, SHARED / file, **kw).records
        assert len(records) == count, file
        assert all(isinstance(r, QARecord) for r in records)
        assert len({r.qid for r in records}) == count  # qids unique inside a file
