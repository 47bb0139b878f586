"""Loaders of the offline multiple-choice benchmarks: EgoSchema, MVBench, Video-MME, MLVU, LVBench.

Two families of files are read for each:

* the Flash-VStream / eval-harness style ``test_qa.json`` (``{"id", "video_id", "question", "answer",
  ...}``) where the options are written into ``question`` ("(A) ..." or "A. ...") and ``answer`` is a
  0-based option index;
* the benchmarks' own releases, where options are a list and the answer is a letter (Video-MME,
  LVBench) or the right option's text (MVBench, MLVU ``candidates``), or EgoSchema's ``option 0`` ...
  ``option 4`` fields with the answers in a separate ``{q_uid: index}`` file.

The loader tells them apart per item, so a file mixing both still loads.
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
    first_key,
    parse_time_range,
    qid_of,
    read_json,
    require,
    require_options,
    require_text,
    resolve_video,
    split_embedded_options,
)


def _embedded_prompt(item: dict[str, Any]) -> tuple[str, list[str], dict[str, Any]]:
    """Question, options and prompt extras of an item whose options are written into its question."""
    question, options, instruction, trailer = split_embedded_options(
        require_text(require(item, "question"), "question")
    )
    extra: dict[str, Any] = {}
    if instruction:
        extra["instruction"] = instruction  # EgoSchema's "Select the best answer ..."
    if trailer:
        extra["prompt_suffix"] = trailer  # "Only give the best option."
    return question, options, extra


def _embedded(item: dict[str, Any]) -> tuple[str, list[str], int, dict[str, Any]]:
    """Eval-harness style item: options in the prompt, 0-based ``answer``."""
    question, options, extra = _embedded_prompt(item)
    return question, options, answer_from_index(require(item, "answer"), len(options)), extra


def _listed(item: dict[str, Any], options_key: str) -> tuple[str, list[str], int]:
    """Question, options and answer of an item with an options list; letter or option-text answer."""
    question = require_text(require(item, "question"), "question")
    options = require_options(require(item, options_key))
    raw = require(item, "answer")
    if isinstance(raw, int) and not isinstance(raw, bool):
        answer = answer_from_index(raw, len(options))
    else:
        try:
            answer = answer_from_letter(raw, len(options))
        except Malformed:
            answer = answer_from_text(raw, options)
    return question, options, answer


# ------------------------------------------------------------------------------------------ EgoSchema


def load_egoschema(
    annotation_path: PathLike, video_dir: PathLike | None = None, answers_path: PathLike | None = None, *,
    hidden_answers: bool = False,
) -> LoadResult:
    """Load EgoSchema questions, with answers from a separate ``{q_uid: index}`` file.

    Questions are either the official ``questions.json`` (``q_uid``, ``question``, ``option 0`` ...
    ``option 4``) or the eval-harness ``test_qa.json`` (``video_id``, options written into the prompt,
    0-based ``answer``). With ``answers_path`` (``subset_answers.json``) answers come from that file; an
    item it lacks is skipped, as is an item whose own answer disagrees with it. Videos are
    ``<q_uid>.mp4``; qid is the q_uid. task_kind "other": 3-minute clips built to need long-range context.
    ``hidden_answers`` (the full set, :func:`~.egoschema_full.load_egoschema_full`): a question without an
    answer is kept with the placeholder answer 0, and every record says ``extra["answer_known"]``.
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    answers: dict[str, Any] | None = None
    if answers_path is not None:
        answers = read_json(answers_path, dict)
    out = RecordCollector("egoschema", path)
    for i, item in enumerate(data):
        qid = qid_of(item, ("q_uid", "video_id"), i)

        def build(item: Any = item) -> QARecord:
            uid = require_text(first_key(item, "q_uid", "video_id"), "q_uid")
            extra: dict[str, Any] = {}
            if "option 0" in item:
                question = require_text(require(item, "question"), "question")
                options = require_options([item[f"option {k}"] for k in range(10) if f"option {k}" in item])
            else:
                question, options, extra = _embedded_prompt(item)
            own = item.get("answer")  # the eval-harness file carries one; the official file does not
            answer: int | None = None
            if answers is not None and uid in answers:
                answer = answer_from_index(answers[uid], len(options))
                if own is not None and answer_from_index(own, len(options)) != answer:
                    raise Malformed(
                        f"answer {own!r} in the questions file disagrees with {answers[uid]!r} in {answers_path}"
                    )
            elif answers is not None and not hidden_answers:
                raise Malformed(f"q_uid {uid!r} has no answer in {answers_path}")
            elif own is not None:
                answer = answer_from_index(own, len(options))
            elif not hidden_answers:
                raise Malformed("no answer (give answers_path=subset_answers.json)")
            if hidden_answers:
                extra["answer_known"] = answer is not None
            for key in ("duration", "google_drive_id", "id"):
                if key in item:
                    extra[key] = item[key]
            return QARecord(
                benchmark="egoschema",
                qid=uid,
                video=resolve_video(uid, video_dir, ".mp4"),
                question=question,
                options=options,
                answer=answer if answer is not None else 0,
                task_type="egoschema",
                task_kind="other",
                extra=extra,
            )

        out.add(i, build, qid)
    return out.finish()


# -------------------------------------------------------------------------------------------- MVBench


def load_mvbench(
    annotation_path: PathLike, video_dir: PathLike | None = None, task_type: str | None = None
) -> LoadResult:
    """Load MVBench: the eval-harness ``test_qa.json`` or one of the official per-task JSON files.

    Official items are ``{"video", "question", "candidates", "answer": <option text>}`` (+ ``start`` /
    ``end`` seconds for clipped tasks); their task is ``task_type`` or the file's stem. task_kind "short".
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    out = RecordCollector("mvbench", path)
    for i, item in enumerate(data):
        qid = qid_of(item, ("id",), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            extra: dict[str, Any] = {}
            start = end = None
            if "candidates" in item:
                question, options, answer = _listed(item, "candidates")
                if item.get("start") is not None or item.get("end") is not None:
                    start, end = parse_time_range([require(item, "start"), require(item, "end")])
                task = task_type or str(item.get("task_type") or path.stem)
            else:
                question, options, answer, extra = _embedded(item)
                task = task_type or str(item.get("task_type", ""))
            video = resolve_video(
                require_text(first_key(item, "video", "video_id"), "video"), video_dir, ".mp4"
            )
            return QARecord(
                benchmark="mvbench",
                qid=qid,
                video=video,
                question=question,
                options=options,
                answer=answer,
                task_type=task,
                task_kind="short",
                start=start,
                end=end,
                extra=extra,
            )

        out.add(i, build, qid)
    return out.finish()


# ------------------------------------------------------------------------------------------ Video-MME

VIDEOMME_DURATIONS = ("short", "medium", "long")


def load_videomme(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load Video-MME: eval-harness items (options in the prompt, 0-based answer) or the official rows
    (``options`` ["A. ...", ...], letter ``answer``, ``videoID``, ``question_id``).

    ``duration_class`` is the file's ``duration`` ("short" / "medium" / "long"; anything else is
    skipped). task_kind "short" for short videos, "other" for medium and long ones. Videos are
    ``<YouTube id>.mp4``.
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    out = RecordCollector("videomme", path)
    for i, item in enumerate(data):
        qid = qid_of(item, ("question_id", "id"), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            extra: dict[str, Any] = {}
            if isinstance(item.get("options"), list):
                question, options, answer = _listed(item, "options")
            else:
                question, options, answer, extra = _embedded(item)
            duration = str(require(item, "duration")).strip().lower()
            if duration not in VIDEOMME_DURATIONS:
                raise Malformed(f"duration {item['duration']!r} is not one of {VIDEOMME_DURATIONS}")
            # The official rows' "video_id" is a running number ("001"); the file is named by videoID.
            video_name = require_text(first_key(item, "videoID", "video_id"), "video_id")
            for key in ("domain", "sub_category", "url"):
                if key in item:
                    extra[key] = item[key]
            return QARecord(
                benchmark="videomme",
                qid=qid,
                video=resolve_video(video_name, video_dir, ".mp4"),
                question=question,
                options=options,
                answer=answer,
                task_type=str(item.get("task_type", "")),
                task_kind="short" if duration == "short" else "other",
                duration_class=duration,
                extra=extra,
            )

        out.add(i, build, qid)
    return out.finish()


# ----------------------------------------------------------------------------------------------- MLVU


def load_mlvu(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load MLVU: eval-harness items (``type``, options in the prompt, 0-based answer) or the official
    per-task files (``video``, ``candidates``, ``answer`` = option text, ``question_type``; e.g.
    ``2_needle.json``).

    Official items without ``candidates`` (the generation tasks sub_scene / summary) become open
    records. Videos of official files are looked up under ``<video_dir>/<file stem>/`` too (the dataset
    keeps ``2_needle.json``'s videos in ``video/2_needle/``). task_kind "other" (long videos); qid
    ``id`` or the item's position.
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    out = RecordCollector("mlvu", path)
    for i, item in enumerate(data):
        qid = qid_of(item, ("id",), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            extra: dict[str, Any] = {}
            if "duration" in item:
                extra["duration"] = item["duration"]
            task = (
                str(first_key(item, "question_type", "type"))
                if ("question_type" in item or "type" in item)
                else ""
            )
            if "candidates" in item:
                question, options, answer = _listed(item, "candidates")
            elif "video_id" in item:
                question, options, answer, more = _embedded(item)
                extra.update(more)
            else:  # official generation task: open answer
                question = require_text(require(item, "question"), "question")
                options, answer = [], require_text(require(item, "answer"), "answer")
                if "scoring_points" in item:
                    extra["scoring_points"] = item["scoring_points"]
            name = require_text(first_key(item, "video", "video_id"), "video")
            video = resolve_video(name, video_dir, ".mp4", subdirs=(path.stem,))
            return QARecord(
                benchmark="mlvu",
                qid=qid,
                video=video,
                question=question,
                options=options,
                answer=answer,
                task_type=task,
                task_kind="other" if options else "open",
                extra=extra,
            )

        out.add(i, build, qid)
    return out.finish()


# -------------------------------------------------------------------------------------------- LVBench


def _lvbench_record(
    item: dict[str, Any], qid: str, video_name: str, video_dir: PathLike | None, extra: dict[str, Any]
) -> QARecord:
    question, options, instruction, trailer = split_embedded_options(
        require_text(require(item, "question"), "question")
    )
    raw = require(item, "answer")
    if isinstance(raw, str) and not raw.strip().isdigit():
        answer = answer_from_letter(raw, len(options))  # official: "D"
    else:
        answer = answer_from_index(raw, len(options))  # eval harness: 0-based
    types = item.get("question_type") or []
    if isinstance(types, str):
        types = [types]
    start = end = None
    if item.get("time_reference"):
        start, end = parse_time_range(item["time_reference"])
    extra = dict(extra, task_types=list(types), time_reference=item.get("time_reference"))
    return QARecord(
        benchmark="lvbench",
        qid=qid,
        video=resolve_video(video_name, video_dir, ".mp4"),
        question=question,
        options=options,
        answer=answer,
        task_type=types[0] if types else "",
        task_kind="other",
        start=start,
        end=end,
        extra=extra,
    )


def load_lvbench(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load LVBench: eval-harness items (options in the prompt, 0-based answer) or the official
    ``video_info.meta.jsonl`` (one video a line: ``key``, ``type``, ``qa`` list with letter answers).

    ``time_reference`` ("04:19-08:41": the part of the video the question is about) becomes start/end.
    A question may have several ``question_type``s: task_type is the first, ``extra["task_types"]`` all
    of them (:func:`~ppllava_hermes.evaluation.scoring.accuracy` counts the record under each).
    task_kind "other". For JSON Lines, skipped indices are line positions (of non-empty lines).
    """
    path = Path(annotation_path)
    data = read_json(path, list, allow_jsonl=True)
    out = RecordCollector("lvbench", path)
    for i, item in enumerate(data):
        if isinstance(item, dict) and "qa" in item:  # official: one video with its questions
            qas = item["qa"]
            if not isinstance(qas, list) or not item.get("key"):
                out.skip(i, "official LVBench line needs a 'key' and a 'qa' list")
                continue
            info = item.get("video_info") if isinstance(item.get("video_info"), dict) else {}
            base = {"video_type": item.get("type"), **info}
            for j, qa in enumerate(qas):
                qid = (
                    str(qa.get("uid", f"{item['key']}-{j}")) if isinstance(qa, dict) else f"{item['key']}-{j}"
                )
                out.add(
                    i,
                    lambda qa=qa, qid=qid, key=str(item["key"]), base=base: _lvbench_record(
                        qa, qid, key, video_dir, base
                    ),
                    qid,
                )
            continue
        qid = qid_of(item, ("id",), i)

        def build(item: Any = item, qid: str = qid) -> QARecord:
            extra = {k: item[k] for k in ("type", "duration_minutes", "fps", "resolution") if k in item}
            extra["video_type"] = extra.pop("type", None)
            return _lvbench_record(
                item, qid, require_text(require(item, "video_id"), "video_id"), video_dir, extra
            )

        out.add(i, build, qid)
    return out.finish()
