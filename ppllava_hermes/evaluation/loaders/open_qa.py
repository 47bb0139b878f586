"""Loaders of the open-answer benchmarks: ActivityNet-QA, MSVD-QA, MSRVTT-QA and VCGBench.

All produce records with no options, a reference text as ``answer`` and task_kind "open"; they are
scored by :func:`~ppllava_hermes.evaluation.scoring.score_open` or an LLM judge.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from ..records import QARecord
from ._common import (
    LoadResult,
    Malformed,
    MalformedRecordWarning,
    PathLike,
    RecordCollector,
    first_key,
    qid_of,
    read_json,
    require,
    require_text,
    resolve_video,
)

# ------------------------------------------------------------------------------------- ActivityNet-QA

# Question types of the "type" field in the answers file (MILVLG/activitynet-qa README).
ACTIVITYNET_QA_TYPES = {
    0: "motion",
    1: "spatial_relation",
    2: "temporal_relation",
    3: "yes_no",
    4: "color",
    5: "object",
    6: "location",
    7: "number",
    8: "other",
}


def _sibling_answers(path: Path) -> Path | None:
    """test_q.json -> test_a.json (and "questions" -> "answers"), if that file exists."""
    for pattern, repl in ((r"_q(\.json)$", r"_a\1"), (r"question", "answer")):
        name = re.sub(pattern, repl, path.name)
        if name != path.name and (path.parent / name).is_file():
            return path.parent / name
    return None


def load_activitynet_qa(
    annotation_path: PathLike, video_dir: PathLike | None = None, answers_path: PathLike | None = None
) -> LoadResult:
    """Load ActivityNet-QA from its question file and its answer file, joined on ``question_id``.

    ``answers_path`` defaults to the sibling "..._a.json" of a "..._q.json" question file. Questions
    without an answer are skipped (index = position in the question file); answers without a question
    are counted in a separate warning. Videos are ``v_<video_name>.mp4`` (other extensions and the name
    without "v_" are tried when ``video_dir`` is given). task_type is the answer type name ("yes_no").
    """
    path = Path(annotation_path)
    questions = read_json(path, list)
    if answers_path is None:
        answers_path = _sibling_answers(path)
        if answers_path is None:
            raise ValueError(f"{path}: ActivityNet-QA needs its answers file (answers_path=..._a.json)")
    answer_rows = read_json(answers_path, list)
    answers: dict[str, dict[str, Any]] = {}
    for row in answer_rows:
        if isinstance(row, dict) and row.get("question_id") is not None:
            answers[str(row["question_id"])] = row
    out = RecordCollector("activitynet_qa", path)
    used: set[str] = set()
    for i, item in enumerate(questions):
        qid = qid_of(item, ("question_id",), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            require(item, "question_id")
            row = answers.get(qid)
            if row is None:
                raise Malformed(f"question_id {qid!r} has no answer in {answers_path}")
            used.add(qid)
            name = require_text(require(item, "video_name"), "video_name")
            full = name if name.startswith("v_") else f"v_{name}"
            kind = row.get("type")
            return QARecord(
                benchmark="activitynet_qa",
                qid=qid,
                video=resolve_video(full, video_dir, ".mp4", alternatives=(name,)),
                question=require_text(require(item, "question"), "question"),
                answer=require_text(require(row, "answer"), "answer"),
                task_type=ACTIVITYNET_QA_TYPES.get(kind, str(kind) if kind is not None else ""),
                task_kind="open",
            )

        out.add(i, build, qid)
    orphans = len(answers) - len(used)
    if orphans > 0:
        # Not records, so not in ``skipped``; still worth knowing that the two files do not match.
        warnings.warn(
            f"activitynet_qa: {orphans} answer(s) in {answers_path} have no question in {path}",
            MalformedRecordWarning,
            stacklevel=2,
        )
    return out.finish()


# ---------------------------------------------------------------------------------- MSVD / MSRVTT-QA

_QUESTION_WORDS = ("what", "who", "how", "when", "where", "which", "why", "whom", "whose")


def _question_word(question: str) -> str:
    """MSVD / MSRVTT-QA results are reported per question word (what, who, how, ...)."""
    first = question.strip().split(maxsplit=1)[0].lower() if question.strip() else ""
    return first if first in _QUESTION_WORDS else "other"


def _load_video_qa(
    benchmark: str, annotation_path: PathLike, video_dir: PathLike | None, id_prefix: str, default_ext: str
) -> LoadResult:
    path = Path(annotation_path)
    data = read_json(path, list)
    out = RecordCollector(benchmark, path)
    for i, item in enumerate(data):
        qid = qid_of(item, ("question_id", "id"), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            video = first_key(item, "video_name", "video", "video_id")
            if isinstance(video, int) and not isinstance(video, bool):
                video = f"{id_prefix}{video}"  # original release: numeric ids ("video7010", "vid1")
            question = require_text(require(item, "question"), "question")
            return QARecord(
                benchmark=benchmark,
                qid=qid,
                video=resolve_video(require_text(video, "video"), video_dir, default_ext),
                question=question,
                answer=require_text(require(item, "answer"), "answer"),
                task_type=_question_word(question),
                task_kind="open",
            )

        out.add(i, build, qid)
    return out.finish()


def load_msvd_qa(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load MSVD-QA (``{"question", "video_name", "answer"}``, or the original ``video_id`` numbers).

    Videos are ``<video_name>.avi`` (YouTubeClips); task_type is the question word.
    """
    return _load_video_qa("msvd_qa", annotation_path, video_dir, "vid", ".avi")


def load_msrvtt_qa(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load MSRVTT-QA (same shapes as MSVD-QA; numeric ``video_id`` 7010 -> ``video7010.mp4``)."""
    return _load_video_qa("msrvtt_qa", annotation_path, video_dir, "video", ".mp4")


# ------------------------------------------------------------------------------------------- VCGBench

VCGBENCH_SUBSETS = ("generic", "temporal", "consistency")


def load_vcgbench(
    annotation_path: PathLike,
    video_dir: PathLike | None = None,
    subset: str | None = None,
    split_consistency: bool = False,
) -> LoadResult:
    """Load a VideoChatGPT benchmark file (``generic_qa.json``, ``temporal_qa.json``, ``consistency_qa.json``).

    Items are ``{"Q", "A", "video_name"}``; consistency items have two phrasings ``Q1`` / ``Q2`` of one
    question. By default a consistency item is one record (``question`` = Q1, ``extra["question2"]`` =
    Q2: the judge compares both predictions with ``A``); with ``split_consistency`` it is two records
    "<i>-1" and "<i>-2" sharing ``extra["pair"]`` = i. ``subset`` defaults to the one in the file name,
    else consistency if the first item has "Q1", else generic. qid is the item's position.
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    if subset is None:
        subset = next((s for s in VCGBENCH_SUBSETS if s in path.stem.lower()), None)
    if subset is None:
        subset = "consistency" if data and isinstance(data[0], dict) and "Q1" in data[0] else "generic"
    if subset not in VCGBENCH_SUBSETS:
        raise ValueError(f"unknown VCGBench subset {subset!r}; expected one of {VCGBENCH_SUBSETS}")
    out = RecordCollector(f"vcgbench_{subset}", path)
    for i, item in enumerate(data):

        def build(item: Any = item, i: int = i) -> list[QARecord]:
            video = resolve_video(require_text(require(item, "video_name"), "video_name"), video_dir, ".mp4")
            answer = require_text(require(item, "A"), "A")
            common = dict(
                benchmark="vcgbench", video=video, answer=answer, task_type=subset, task_kind="open"
            )
            if subset != "consistency":
                return [QARecord(**common, qid=str(i), question=require_text(require(item, "Q"), "Q"))]
            q1, q2 = require_text(require(item, "Q1"), "Q1"), require_text(require(item, "Q2"), "Q2")
            if split_consistency:
                return [
                    QARecord(**common, qid=f"{i}-1", question=q1, extra={"pair": i, "other_question": q2}),
                    QARecord(**common, qid=f"{i}-2", question=q2, extra={"pair": i, "other_question": q1}),
                ]
            return [QARecord(**common, qid=str(i), question=q1, extra={"question2": q2})]

        out.add(i, build, str(i))
    return out.finish()


def load_vcgbench_generic(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """VCGBench generic QA (correctness, detail, context criteria)."""
    return load_vcgbench(annotation_path, video_dir, subset="generic")


def load_vcgbench_temporal(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """VCGBench temporal-understanding QA."""
    return load_vcgbench(annotation_path, video_dir, subset="temporal")


def load_vcgbench_consistency(
    annotation_path: PathLike, video_dir: PathLike | None = None, split_consistency: bool = False
) -> LoadResult:
    """VCGBench consistency QA (two phrasings per item)."""
    return load_vcgbench(
        annotation_path, video_dir, subset="consistency", split_consistency=split_consistency
    )
