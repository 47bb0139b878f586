"""EgoSchema: the full-set loader (answers hidden) and the predictions file for EgoSchema's server.

Fixtures: ``fixtures/benchmarks/egoschema_questions.json`` (uid-aaa .. uid-ddd, official ``option k``
fields) and ``egoschema_answers.json`` (uid-aaa: 2, uid-bbb: 0, uid-ddd: 7, out of range; uid-ccc has
no answer, as the 4531 hidden ones).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from ppllava_hermes.evaluation.egoschema import (
    egoschema_submission,
    egoschema_subset_accuracy,
    read_egoschema_submission,
    write_egoschema_submission,
)
from ppllava_hermes.evaluation.loaders import load_benchmark, load_egoschema, load_egoschema_full
from ppllava_hermes.evaluation.loaders._common import MalformedRecordWarning
from ppllava_hermes.evaluation.records import QARecord

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
QUESTIONS = FIXTURES / "egoschema_questions.json"
ANSWERS = FIXTURES / "egoschema_answers.json"


def full(answers: Path | None = ANSWERS) -> list[QARecord]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRecordWarning)
        return load_egoschema_full(QUESTIONS, answers_path=answers).records


def test_full_loader_keeps_questions_without_answers() -> None:
    with pytest.warns(MalformedRecordWarning):
        result = load_egoschema_full(QUESTIONS, answers_path=ANSWERS)
    got = [(r.qid, r.answer, r.extra["answer_known"]) for r in result.records]
    assert got == [("uid-aaa", 2, True), ("uid-bbb", 0, True), ("uid-ccc", 0, False)]
    assert [(s.index, s.qid, s.reason) for s in result.skipped] == [(3, "uid-ddd", "answer 7 is not among the 5 options")]
    # the same records as the subset loader where the answer is known
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRecordWarning)
        subset = {r.qid: r for r in load_egoschema(QUESTIONS, answers_path=ANSWERS).records}
    for r in result.records[:2]:
        assert (r.options, r.answer, r.video, r.benchmark) == (
            subset[r.qid].options, subset[r.qid].answer, subset[r.qid].video, "egoschema")
    assert [r.extra["answer_known"] for r in full(None)] == [False] * 4
    assert len(load_benchmark("egoschema_full", QUESTIONS)) == 4


def test_submission_from_indices_and_texts(tmp_path: Path) -> None:
    records = full(None)  # uid-aaa .. uid-ddd; options "C cooks.", "C cleans.", "C paints.", "C reads.", "C sleeps."
    preds = {"uid-aaa": "The answer is (C).", "uid-bbb": 4, "uid-ccc": "I have no idea.", "uid-ddd": None}
    submission = egoschema_submission(records, preds)
    assert submission == {"uid-aaa": 2, "uid-bbb": 4, "uid-ccc": -1, "uid-ddd": -1}
    path = write_egoschema_submission(tmp_path / "out" / "egoschema_submission.json", records, preds)
    assert json.loads(path.read_text()) == submission  # the server's format: {q_uid: index}
    assert list(json.loads(path.read_text())) == ["uid-aaa", "uid-bbb", "uid-ccc", "uid-ddd"]
    assert read_egoschema_submission(path) == submission
    assert egoschema_submission(records, {"uid-aaa": "C cleans."}) == {"uid-aaa": 1}  # option text


def test_submission_errors_name_the_question() -> None:
    records = full(None)
    with pytest.raises(ValueError, match=r"prediction for 'uid-ccc': 'I have no idea.' picks no option"):
        egoschema_submission(records, {"uid-ccc": "I have no idea."}, unreadable=None)
    with pytest.raises(ValueError, match=r"prediction for 'uid-aaa': index 5 is not among its 5 options"):
        egoschema_submission(records, {"uid-aaa": 5})
    with pytest.raises(ValueError, match=r"prediction for 'uid-aaa': True is neither"):
        egoschema_submission(records, {"uid-aaa": True})
    with pytest.raises(ValueError, match=r"prediction for 'nope': no such EgoSchema question"):
        egoschema_submission(records, {"nope": 1})
    with pytest.raises(ValueError, match=r"3 question\(s\) have no prediction, first 'uid-bbb'"):
        egoschema_submission(records, {"uid-aaa": 1}, require_all=True)
    with pytest.raises(ValueError, match=r"unreadable=7"):
        egoschema_submission(records, {}, unreadable=7)
    other = QARecord(benchmark="mvbench", qid="m", video="v", question="q", options=["a", "b"], answer=0)
    with pytest.raises(ValueError, match=r"record 'm': not an EgoSchema question with 5 options"):
        egoschema_submission([other], {})


def test_reading_checks_the_format(tmp_path: Path) -> None:
    path = tmp_path / "sub.json"
    for text, why in (('[1, 2]', "expected a JSON object"), ('{"u": 5}', "q_uid 'u' maps to 5"),
                      ('{"u": "2"}', "q_uid 'u' maps to '2'"), ("{", "not a readable JSON file")):  # fmt: skip
        path.write_text(text)
        with pytest.raises(ValueError, match=why):
            read_egoschema_submission(path)


def test_subset_accuracy_on_known_answers() -> None:
    records = full()  # uid-aaa (2), uid-bbb (0) known; uid-ccc unknown
    acc = egoschema_subset_accuracy(records, {"uid-aaa": 2, "uid-bbb": 3, "uid-ccc": 0})
    assert acc == {"n": 2, "correct": 1, "accuracy": 0.5, "unanswered": 0}
    assert egoschema_subset_accuracy(records, {"uid-aaa": 2})["unanswered"] == 1
