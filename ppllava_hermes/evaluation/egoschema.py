"""EgoSchema predictions in the format of its public evaluation server, and accuracy on the public subset.

EgoSchema publishes the answers of 500 of its 5031 questions (``subset_answers.json``, scored locally
by the evaluator as any multiple-choice benchmark); the others are scored by its server. The format it
takes (EgoSchema's README, "Benchmarking on EgoSchema"; its ``validate.py`` POSTs the file as is): one
JSON object mapping each question's ``q_uid`` to the predicted option index, an integer 0-4::

    {"0074f737-11cb-497d-8d07-77c3a8127391": 3, "00b9a0de-c59e-49cb-a127-6081e2fb8c8e": 0, ...}

sent with ``curl -X POST -H "Content-Type: application/json" -d @<file>
https://validation-server.onrender.com/api/upload/`` (or submitted to the Kaggle competition
"egoschema-public"); the reply gives the accuracy on all 5031 questions and on the public 500.

:func:`egoschema_submission` builds that object from records (qid = q_uid, as both EgoSchema loaders
make them) and predictions: an option index, or the model's text, read with
:func:`~ppllava_hermes.evaluation.scoring.parse_choice` against the record's options. A text that
picks no option is written as ``unreadable`` (default -1, as lmms-eval's EgoSchema task writes it:
never right, and the question stays in the file rather than disappearing from it); ``unreadable=None``
makes it an error instead. :func:`predictions_from_results` turns a run's results into predictions,
:func:`write_egoschema_submission` writes the file, :func:`read_egoschema_submission` checks one
before it is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .predictions import predictions_from_results
from .records import QARecord
from .scoring import parse_choice

#: Index written for a prediction that picks no option (lmms-eval's convention).
UNREADABLE = -1
#: EgoSchema questions have five options.
N_OPTIONS = 5


def _index(record: QARecord, prediction: Any, unreadable: int | None) -> int:
    what = f"prediction for {record.qid!r}"
    if isinstance(prediction, bool):
        raise ValueError(f"{what}: {prediction!r} is neither an option index nor a text")
    if isinstance(prediction, int):
        if not 0 <= prediction < len(record.options):
            raise ValueError(f"{what}: index {prediction} is not among its {len(record.options)} options")
        return prediction
    if prediction is None:
        choice = None  # the model failed on this question
    elif isinstance(prediction, str):
        choice = parse_choice(prediction, record.options)
    else:
        raise ValueError(f"{what}: {prediction!r} is neither an option index nor a text")
    if choice is not None:
        return choice
    if unreadable is None:
        raise ValueError(f"{what}: {str(prediction)[:80]!r} picks no option")
    return unreadable


def egoschema_submission(
    records: Sequence[QARecord],
    predictions: Mapping[str, int | str | None],
    *,
    unreadable: int | None = UNREADABLE,
    require_all: bool = False,
) -> dict[str, int]:
    """``{q_uid: option index}`` for the server, in the order of ``records``.

    ``predictions`` maps qid (q_uid) to an option index, the model's answer text, or None (the model
    failed: written as ``unreadable``). Raises ``ValueError`` naming the question for: a prediction whose
    qid is not among ``records``, an index out of range, a record that is not an EgoSchema question
    with five options, a text that picks no option when ``unreadable`` is None, and (``require_all``)
    a record without a prediction. Without ``require_all`` such records are left out of the file.
    """
    if unreadable is not None and not (unreadable == UNREADABLE or 0 <= unreadable < N_OPTIONS):
        raise ValueError(f"unreadable={unreadable!r}: expected -1, an option index 0-4 or None")
    by_qid = {r.qid: r for r in records}
    for qid in predictions:
        if qid not in by_qid:
            raise ValueError(f"prediction for {qid!r}: no such EgoSchema question among the records")
    out: dict[str, int] = {}
    missing: list[str] = []
    for record in records:
        if record.benchmark != "egoschema" or len(record.options) != N_OPTIONS:
            raise ValueError(
                f"record {record.qid!r}: not an EgoSchema question with {N_OPTIONS} options "
                f"(benchmark {record.benchmark!r}, {len(record.options)} options)"
            )
        if record.qid not in predictions:
            missing.append(record.qid)
            continue
        out[record.qid] = _index(record, predictions[record.qid], unreadable)
    if require_all and missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, first {missing[0]!r}")
    return out


def write_egoschema_submission(
    path: str | Path,
    records: Sequence[QARecord],
    predictions: Mapping[str, int | str | None],
    **kw: Any,
) -> Path:
    """Write :func:`egoschema_submission` to ``path`` as JSON (folders created) and return the path."""
    submission = egoschema_submission(records, predictions, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission, indent=1) + "\n", encoding="utf-8")
    return path


def read_egoschema_submission(path: str | Path) -> dict[str, int]:
    """Read a submission file and check its format: an object of non-empty string keys to -1 .. 4.

    Raises ``ValueError`` naming the file and the first offending entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        found = type(data).__name__
        raise ValueError(f"{path}: expected a JSON object {{q_uid: option index}}, found {found}")
    for key, value in data.items():
        if not key.strip():
            raise ValueError(f"{path}: an empty q_uid")
        if isinstance(value, bool) or not isinstance(value, int) or not UNREADABLE <= value < N_OPTIONS:
            raise ValueError(f"{path}: q_uid {key!r} maps to {value!r}, not an option index 0-4 (or -1)")
    return data


def egoschema_subset_accuracy(records: Sequence[QARecord], submission: Mapping[str, int]) -> dict[str, Any]:
    """Accuracy of a submission on the records whose answer is known (the public 500 in a full-set load).

    A record counts as known unless ``extra["answer_known"]`` is False (records of the ``egoschema``
    loader always have their answer). Returns ``{"n", "correct", "accuracy", "unanswered"}`` where
    ``unanswered`` is the known records the submission has no entry for (counted wrong).
    """
    known = [r for r in records if r.extra.get("answer_known", True)]
    correct = sum(1 for r in known if submission.get(r.qid) == r.answer)
    return {
        "n": len(known),
        "correct": correct,
        "accuracy": correct / len(known) if known else 0.0,
        "unanswered": sum(1 for r in known if r.qid not in submission),
    }


__all__ = [
    "N_OPTIONS",
    "UNREADABLE",
    "egoschema_submission",
    "egoschema_subset_accuracy",
    "predictions_from_results",
    "read_egoschema_submission",
    "write_egoschema_submission",
]
