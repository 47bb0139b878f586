"""StreamBench scoring: an LLM judge's yes/no and 0-5 score per answer, summarised per class and source.

StreamChat (arXiv 2501.13468) scores StreamBench's free-form answers the VideoChatGPT way: a judge LLM
reads the question, the reference answer and the prediction and replies with a yes/no correctness
verdict and an integer score from 0 to 5; accuracy is the share of "yes", the score the mean. Here the
judge is the evaluator's own OpenAI-compatible client, :class:`~.scoring.OpenAIJudge` (any object with
its ``judge_record(record, prediction) -> JudgeVerdict`` method works: tests pass a stand-in).

**Judge prompt** (``OpenAIJudge.messages``), two messages:

* system: "You grade answers to questions about videos. Decide whether the predicted answer means the
  same as the correct answer: paraphrases and synonyms count as a match; contradictions, wrong facts or
  a missing key point do not. Reply with JSON only, in the form {"correct": "yes" or "no", "score": an
  integer from 0 (unrelated) to 5 (perfect match)}."
* user: ``"Question: <question>\\nCorrect answer: <reference>\\nPredicted answer: <prediction>"``.

The wording is the evaluator's, not StreamChat's script's (which asks LLaMA-3 for a Python dict
``{'llama_pred': 'yes', 'score': 4}``); the protocol, yes/no plus 0-5 on the same three fields, is the
same. **Reply parsing** (``OpenAIJudge.parse_verdict``): the first ``{...}`` block of the reply, read as
JSON, gives the verdict from its ``correct`` / ``pred`` / ``match`` key and the score from ``score``;
failing that (a Python-dict reply with single quotes, keys like ``llama_pred``, or prose), the verdict
is the reply's first "yes" / "no" word and the score the number after the word "score". Scores are
clamped to [0, 5]; a reply with no yes/no is a :class:`~.scoring.JudgeError`. The endpoint's failures
(HTTP 429 / 5xx, timeouts, refused connections) are retried by the client; what still fails is a
``JudgeError`` too.

**Predictions** are ``{qid: answer}``; :func:`predictions_from_results` makes them from a run's results.

**How answers count** (:func:`judge_streambench`): every record with a prediction gets one
:class:`StreamBenchJudgement`. A prediction that is ``None`` (the model failed on that question) or
empty is not sent to the judge: wrong, score 0, with the reason in ``error``. A judge failure is wrong
with no score (``score`` None, ``error`` its message): it stays in the accuracy's denominator, so a
flaky judge lowers accuracy instead of silently shrinking the set, and is counted in
``judge_failures``. Records without a prediction (a run on part of the file) are left out and counted
as ``unanswered`` by the summary.

**Summary** (:func:`streambench_summary`): accuracy (share correct, over all judged records) and mean
score (over those with a score) for the whole set, the set without the knowledge class KG (answerable
without the video, so it says little about video memory), each class and each source (``class_1``:
Ego / WebVideo / Movie); ``macro`` averages give each class the same weight (StreamChat's own summary
script averages its per-class numbers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .loaders.streambench import KNOWLEDGE_CLASS, STREAMBENCH_CLASSES
from .predictions import predictions_from_results
from .records import QARecord
from .scoring import JudgeError


@dataclass(frozen=True)
class StreamBenchJudgement:
    """One judged answer.

    Attributes:
        qid: the record's qid.
        correct: the judge's yes/no (False when the answer was not judged: see ``error``).
        score: the judge's 0-5 score; 0 for a missing answer, None when the judge gave none or failed.
        error: why the answer was not judged (no answer from the model, the judge failed), else None.
        raw: the judge's reply text, for auditing.
    """

    qid: str
    correct: bool
    score: float | None
    error: str | None = None
    raw: str = ""


def _check_record(record: QARecord) -> None:
    if record.is_multiple_choice:
        raise ValueError(f"record {record.qid!r}: multiple choice, not a StreamBench open question")
    if record.task_type not in STREAMBENCH_CLASSES:
        raise ValueError(
            f"record {record.qid!r}: task_type {record.task_type!r} is not a StreamBench class "
            f"({', '.join(STREAMBENCH_CLASSES)})"
        )


def judge_streambench(
    records: Sequence[QARecord], predictions: Mapping[str, str | None], judge: Any
) -> list[StreamBenchJudgement]:
    """Judge each record that has a prediction (see the module docstring for how answers count).

    ``predictions`` maps qid to the model's answer (None: the model failed). A qid that is not among
    ``records`` raises ``ValueError`` (the predictions belong to another file). Judgements come in the
    order of ``records``.
    """
    by_qid = {r.qid: r for r in records}
    unknown = [q for q in predictions if q not in by_qid]
    if unknown:
        raise ValueError(
            f"predictions: {len(unknown)} qid(s) are not StreamBench records of this file, first {unknown[0]!r}"
        )
    out: list[StreamBenchJudgement] = []
    for record in records:
        if record.qid not in predictions:
            continue
        _check_record(record)
        prediction = predictions[record.qid]
        if prediction is None or not prediction.strip():
            why = "the model gave no answer" if prediction is None else "empty answer"
            out.append(StreamBenchJudgement(record.qid, False, 0.0, error=why))
            continue
        try:
            verdict = judge.judge_record(record, prediction)
        except JudgeError as e:
            out.append(StreamBenchJudgement(record.qid, False, None, error=f"judge failed: {e}"))
            continue
        score = None if verdict.score is None else float(verdict.score)
        out.append(StreamBenchJudgement(record.qid, bool(verdict.correct), score, raw=verdict.raw))
    return out


@dataclass
class _Group:
    n: int = 0
    correct: int = 0
    scored: int = 0
    score_sum: float = 0.0
    judge_failures: int = 0

    def add(self, j: StreamBenchJudgement) -> None:
        self.n += 1
        self.correct += int(j.correct)
        if j.score is not None:
            self.scored += 1
            self.score_sum += j.score
        if j.error is not None and j.error.startswith("judge failed"):
            self.judge_failures += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.correct / self.n if self.n else 0.0,
            "n_scored": self.scored,
            "score": self.score_sum / self.scored if self.scored else None,
            "judge_failures": self.judge_failures,
        }


def _macro(classes: Mapping[str, dict[str, Any]], drop: str | None = None) -> dict[str, Any]:
    rows = [row for code, row in classes.items() if code != drop and row["n"]]
    scores = [row["score"] for row in rows if row["score"] is not None]
    return {
        "classes": len(rows),
        "accuracy": sum(row["accuracy"] for row in rows) / len(rows) if rows else 0.0,
        "score": sum(scores) / len(scores) if scores else None,
    }


def streambench_summary(
    records: Sequence[QARecord], judgements: Iterable[StreamBenchJudgement]
) -> dict[str, Any]:
    """Accuracy and mean score overall, without KG, per class and per source (plain numbers, for JSON).

    Returns ``{"total", "total_without_kg", "macro", "macro_without_kg", "by_class", "by_source",
    "unanswered"}``; a group is ``{"n", "correct", "accuracy", "n_scored", "score", "judge_failures"}``
    (``score`` None when no answer of the group has one), ``by_class`` rows also carry the class
    ``name`` and come in the order CI, KG, LM, OS, SF, SM (classes without judged answers left out),
    ``macro`` is ``{"classes", "accuracy", "score"}`` averaged over classes. A judgement whose qid is not
    among ``records`` raises ``ValueError``.
    """
    by_qid = {r.qid: r for r in records}
    total, without_kg = _Group(), _Group()
    classes: dict[str, _Group] = {}
    sources: dict[str, _Group] = {}
    judged: set[str] = set()
    for j in judgements:
        record = by_qid.get(j.qid)
        if record is None:
            raise ValueError(f"judgement for {j.qid!r}: no such record")
        _check_record(record)
        judged.add(j.qid)
        total.add(j)
        if record.task_type != KNOWLEDGE_CLASS:
            without_kg.add(j)
        classes.setdefault(record.task_type, _Group()).add(j)
        sources.setdefault(str(record.extra.get("source", "")), _Group()).add(j)
    by_class = {
        code: {"name": name, **classes[code].as_dict()}
        for code, name in STREAMBENCH_CLASSES.items()
        if code in classes
    }
    return {
        "total": total.as_dict(),
        "total_without_kg": without_kg.as_dict(),
        "macro": _macro(by_class),
        "macro_without_kg": _macro(by_class, drop=KNOWLEDGE_CLASS),
        "by_class": by_class,
        "by_source": {source: sources[source].as_dict() for source in sorted(sources)},
        "unanswered": sum(1 for r in records if r.qid not in judged),
    }


def streambench_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table: total, total without KG, macro averages, each class, each source."""

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def score(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = ["| group | n | accuracy (%) | score (0-5) | judge failures |", "| --- | --- | --- | --- | --- |"]

    def row(label: str, g: Mapping[str, Any]) -> None:
        cells = (label, g["n"], pct(g["accuracy"]), score(g["score"]), g["judge_failures"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    row("total", summary["total"])
    row("total without KG", summary["total_without_kg"])
    for key, label in (("macro", "mean over classes"), ("macro_without_kg", "mean over classes without KG")):
        m = summary[key]
        lines.append(f"| {label} | {m['classes']} classes | {pct(m['accuracy'])} | {score(m['score'])} | |")
    for code, g in summary["by_class"].items():
        row(f"{code} ({g['name']})", g)
    for source, g in summary["by_source"].items():
        row(f"source: {source}", g)
    if summary.get("unanswered"):
        lines.append(f"\n{summary['unanswered']} record(s) had no prediction and are not counted.")
    return "\n".join(lines) + "\n"


__all__ = [
    "StreamBenchJudgement",
    "judge_streambench",
    "predictions_from_results",
    "streambench_markdown",
    "streambench_summary",
]
