"""Loaders of the streaming benchmarks, whose questions are asked at a moment of the video.

* StreamingBench (THUNLP-MT/StreamingBench ``questions_{real,omni,sqa,proactive}.json``): a list of
  clips ``{"time", "questions": [...], "video_categories", "video_path"}``; SQA is a list of such lists
  (one per video, questions in order, later ones referring to earlier ones). Answers are letters,
  options usually (not always) carry "A. " prefixes, ``time_stamp`` is "HH:MM:SS".
* OVO-Bench (JoeLeelyf/OVO-Bench ``ovo_bench_new.json``): one flat list; backward and real-time items
  have ``options`` + 0-based ``gt`` + ``realtime`` seconds, forward items (CRR, SSR, REC) have
  ``test_info`` probes that a streaming protocol asks at their own timestamps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..records import QARecord
from ._common import (
    LoadResult,
    Malformed,
    PathLike,
    RecordCollector,
    answer_from_index,
    answer_from_letter,
    answer_from_text,
    parse_time_range,
    parse_timestamp,
    qid_of,
    read_json,
    require,
    require_options,
    require_text,
    resolve_video,
)

# ------------------------------------------------------------------------------------- StreamingBench

STREAMINGBENCH_SUBSETS = ("real", "omni", "sqa", "proactive")

# Real-time tasks that ask about what has already happened rather than what is on screen now
# ("Which option best summarizes the actions ... taken just now?"). Names are compared case-folded;
# the released file says "Clips Summarize", the paper "Clips Summarization".
_STREAMINGBENCH_PAST_TASKS = {"clips summarize", "clips summarization"}


def _streamingbench_subset(path: Path, data: list[Any]) -> str:
    """The subset named by the file ("questions_real.json"), else guessed from its shape."""
    stem = path.stem.lower()
    for subset in STREAMINGBENCH_SUBSETS:
        if subset in stem:
            return subset
    if data and isinstance(data[0], list):
        return "sqa"
    first = data[0] if data and isinstance(data[0], dict) else {}
    questions = first.get("questions") or [{}]
    if (
        isinstance(questions, list)
        and isinstance(questions[0], dict)
        and "ground_truth_output" in questions[0]
    ):
        return "proactive"
    return "real"


def _streamingbench_record(
    subset: str,
    qid: str,
    clip: dict[str, Any],
    q: dict[str, Any],
    video_dir: PathLike | None,
    extra: dict[str, Any],
) -> QARecord:
    video = resolve_video(require_text(require(clip, "video_path"), "video_path"), video_dir)
    if not isinstance(q, dict):
        raise Malformed(f"question is a {type(q).__name__}, not an object")
    question = require_text(require(q, "question"), "question")
    timestamp = parse_timestamp(require(q, "time_stamp"))
    task_type = str(q.get("task_type", ""))
    extra = {"subset": subset, **extra}
    for key in ("video_categories",):
        if key in clip:
            extra[key] = clip[key]
    if "required_ability" in q:
        extra["required_ability"] = q["required_ability"]
    if "time" in clip:
        # The clip range is kept but not used as start/end: in the released files the question's
        # time_stamp often lies outside it (e.g. "[0:00:00 - 0:00:10]" asked at 00:00:31).
        extra["time"] = clip["time"]
        try:
            extra["time_range"] = parse_time_range(clip["time"])
        except Malformed:
            pass
    common = dict(benchmark="streamingbench", qid=qid, video=video, question=question, timestamp=timestamp)
    if subset == "proactive":
        # The model must speak up by itself later on: the reference is the text to output and the
        # moment it becomes right to output it.
        answer = require_text(require(q, "ground_truth_output"), "ground_truth_output")
        extra["ground_truth_time"] = parse_timestamp(require(q, "ground_truth_time_stamp"))
        return QARecord(
            **common,
            answer=answer,
            task_type=task_type or "Proactive Output",
            task_kind="forward",
            extra=extra,
        )
    options = require_options(require(q, "options"))
    answer = answer_from_letter(require(q, "answer"), len(options))
    past = task_type.strip().casefold() in _STREAMINGBENCH_PAST_TASKS
    return QARecord(
        **common,
        options=options,
        answer=answer,
        task_type=task_type,
        task_kind="backward" if past else "realtime",
        extra=extra,
    )


def load_streamingbench(
    annotation_path: PathLike, video_dir: PathLike | None = None, subset: str | None = None
) -> LoadResult:
    """Load one StreamingBench questions file.

    Args:
        subset: "real", "omni", "sqa" or "proactive"; by default taken from the file name, else from
            the file's shape (nested lists: sqa; ``ground_truth_output``: proactive; otherwise real).

    qids are "<clip index>-<question index>" ("<video index>-<round>" for SQA). SQA records carry
    ``extra["sqa_group"]``, ``extra["sqa_round"]`` and ``extra["previous_qids"]`` (the earlier questions
    of the same video, which later questions refer to). Proactive records are open (answer = the text
    to output, ``extra["ground_truth_time"]`` = when) with task_kind "forward".
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    subset = subset or _streamingbench_subset(path, data)
    if subset not in STREAMINGBENCH_SUBSETS:
        raise ValueError(
            f"unknown StreamingBench subset {subset!r}; expected one of {STREAMINGBENCH_SUBSETS}"
        )
    out = RecordCollector(f"streamingbench_{subset}", path)
    for i, item in enumerate(data):
        if subset == "sqa":
            if not isinstance(item, list):
                out.skip(i, f"SQA item is a {type(item).__name__}, not a list of clips")
                continue
            previous: list[str] = []
            for r, clip in enumerate(item):
                qid = f"{i}-{r}"
                if (
                    not isinstance(clip, dict)
                    or not isinstance(clip.get("questions"), list)
                    or len(clip["questions"]) != 1
                ):
                    out.skip(i, f"round {r}: expected a clip with exactly one question", qid)
                    previous.append(qid)
                    continue
                extra = {"sqa_group": i, "sqa_round": r, "previous_qids": list(previous)}
                q = clip["questions"][0]
                out.add(
                    i,
                    lambda c=clip, q=q, qid=qid, e=extra: _streamingbench_record(
                        subset, qid, c, q, video_dir, e
                    ),
                    qid,
                )
                previous.append(qid)
            continue
        if not isinstance(item, dict) or not isinstance(item.get("questions"), list) or not item["questions"]:
            out.skip(i, "expected a clip object with a non-empty 'questions' list")
            continue
        for j, q in enumerate(item["questions"]):
            qid = f"{i}-{j}"
            out.add(
                i,
                lambda q=q, qid=qid, clip=item: _streamingbench_record(subset, qid, clip, q, video_dir, {}),
                qid,
            )
    return out.finish()


def load_streamingbench_real(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """StreamingBench real-time visual understanding (``questions_real.json``)."""
    return load_streamingbench(annotation_path, video_dir, subset="real")


def load_streamingbench_omni(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """StreamingBench omni-source understanding (``questions_omni.json``); same format as real."""
    return load_streamingbench(annotation_path, video_dir, subset="omni")


def load_streamingbench_sqa(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """StreamingBench sequential QA (``questions_sqa.json``): a list of per-video question lists."""
    return load_streamingbench(annotation_path, video_dir, subset="sqa")


def load_streamingbench_proactive(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """StreamingBench proactive output (``questions_proactive.json``): open answers, task_kind "forward"."""
    return load_streamingbench(annotation_path, video_dir, subset="proactive")


# ------------------------------------------------------------------------------------------ OVO-Bench

OVO_BACKWARD = {
    "EPM": "Episodic Memory",
    "ASI": "Action Sequence Identification",
    "HLD": "Hallucination Detection",
}
OVO_REALTIME = {
    "STU": "Spatial Understanding",
    "OJR": "Object Recognition",
    "ATR": "Attribute Recognition",
    "ACR": "Action Recognition",
    "OCR": "Optical Character Recognition",
    "FPD": "Future Prediction",
}
OVO_FORWARD = {
    "REC": "Repetition Event Count",
    "SSR": "Sequential Steps Recognition",
    "CRR": "Clues Reveal Responding",
}


def _ovo_multiple_choice(item: dict[str, Any], task: str, common: dict[str, Any]) -> QARecord:
    options = require_options(require(item, "options"))
    if item.get("gt") is not None:
        answer = answer_from_index(item["gt"], len(options))
    else:  # no index: fall back on the answer text, which must then be one of the options
        answer = answer_from_text(require(item, "answer"), options)
    extra = {"task_name": {**OVO_BACKWARD, **OVO_REALTIME}[task]}
    if isinstance(item.get("answer"), str):
        # Kept as given: for some FPD / ACR items it is a longer paraphrase of the right option.
        extra["answer_text"] = item["answer"]
    return QARecord(
        **common,
        question=require_text(require(item, "question"), "question"),
        options=options,
        answer=answer,
        task_kind="backward" if task in OVO_BACKWARD else "realtime",
        timestamp=parse_timestamp(require(item, "realtime")),
        extra=extra,
    )


def _yes_no(value: Any) -> str:
    if value not in (0, 1) or isinstance(value, bool):
        raise Malformed(f"probe type {value!r} is not 0 or 1")
    return "Yes" if value == 1 else "No"


def _ovo_forward(item: dict[str, Any], task: str, common: dict[str, Any]) -> QARecord:
    """A forward item: one record whose ``extra["probes"]`` are the moments it is asked again.

    Each probe is ``{"timestamp", "question", "answer", "index", ...}`` (index: position in the file's
    ``test_info``; probes are sorted by time because SSR lists them per step, not in time order).
    ``answer`` of the record is the expected answer at the last probe (the reference answer for CRR);
    forward tasks are scored probe by probe.
    """
    tests = require(item, "test_info")
    if not isinstance(tests, list) or not tests:
        raise Malformed("'test_info' is not a non-empty list")
    probes: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"task_name": OVO_FORWARD[task]}
    if task == "CRR":
        question = require_text(require(item, "question"), "question")
        reference = require_text(require(item, "answer"), "answer")
        ask_time = parse_timestamp(require(item, "ask_time"))
        extra["clue_time"] = parse_timestamp(require(item, "clue_time"))
        probe_q = (
            f"{question}\nCan this question be answered from what has been shown so far? Answer Yes or No."
        )
        for k, t in enumerate(tests):
            probes.append(
                {
                    "index": k,
                    "timestamp": parse_timestamp(require(t, "realtime")),
                    "question": probe_q,
                    "answer": _yes_no(require(t, "type")),
                }
            )
    elif task == "SSR":
        tutorial = str(item.get("tutorial", ""))
        steps = require(item, "all_steps")
        if not isinstance(steps, list) or not steps:
            raise Malformed("'all_steps' is not a non-empty list")
        extra.update(
            tutorial=tutorial,
            all_steps=steps,
            start_time=item.get("start_time"),
            end_time=item.get("end_time"),
        )
        question = f"The video shows the procedure '{tutorial}'. Is the person now performing the given step?"
        for k, t in enumerate(tests):
            step = require_text(require(t, "step"), "step")
            probes.append(
                {
                    "index": k,
                    "timestamp": parse_timestamp(require(t, "realtime")),
                    "step": step,
                    "question": f"Is the person in the video performing this step right now: '{step}'? Answer Yes or No.",
                    "answer": _yes_no(require(t, "type")),
                }
            )
        reference = ""
    else:  # REC
        activity = require_text(require(item, "activity"), "activity")
        extra.update(activity=activity, start_times=item.get("start_times"), end_times=item.get("end_times"))
        question = f"How many times has the action '{activity}' been performed so far? Answer with a number."
        for k, t in enumerate(tests):
            count = require(t, "count")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise Malformed(f"probe {k}: count {count!r} is not a non-negative integer")
            probes.append(
                {
                    "index": k,
                    "timestamp": parse_timestamp(require(t, "realtime")),
                    "question": question,
                    "answer": str(count),
                    "count": count,
                }
            )
        reference = ""
    probes.sort(key=lambda p: p["timestamp"])
    extra["probes"] = probes
    if task == "CRR":
        timestamp = ask_time
    else:
        timestamp = probes[0]["timestamp"]
        reference = probes[-1]["answer"]
    return QARecord(
        **common, question=question, answer=reference, task_kind="forward", timestamp=timestamp, extra=extra
    )


def load_ovo_bench(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load OVO-Bench (``ovo_bench_new.json``).

    Backward tasks (EPM, ASI, HLD) -> task_kind "backward"; real-time (STU, OJR, ATR, ACR, OCR, FPD) ->
    "realtime"; both multiple choice with 0-based ``gt``, asked at ``realtime`` seconds. Forward tasks
    (REC, SSR, CRR) -> "forward" open records with their probes in ``extra["probes"]`` (see
    :func:`_ovo_forward`). task_type is the three-letter code, ``extra["task_name"]`` the full name.
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    out = RecordCollector("ovo_bench", path)
    for i, item in enumerate(data):
        qid = qid_of(item, ("id",), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            task = require_text(require(item, "task"), "task")
            video = resolve_video(require_text(require(item, "video"), "video"), video_dir)
            common = dict(benchmark="ovo_bench", qid=qid, video=video, task_type=task)
            if task in OVO_BACKWARD or task in OVO_REALTIME:
                return _ovo_multiple_choice(item, task, common)
            if task in OVO_FORWARD:
                return _ovo_forward(item, task, common)
            raise Malformed(f"unknown OVO-Bench task {task!r}")

        out.add(i, build, qid)
    return out.finish()
