"""Loader of StreamBench v0.3 (StreamChat, arXiv 2501.13468): open questions asked at moments of a stream.

File format (``streaming_bench_v0.3.json``, as the StreamChat code reads it): a JSON list of entries
``{"info": {"class_1", "class_2", "video_path", "video_name"?}, "breakpoint": [{"time", "question",
"answer", "class"}, ...]}``. ``class_1`` is the video source ("Ego", "WebVideo", "Movie"), ``class_2``
its topic, the video file is ``<class_1>/<video_path>`` under the data folder, ``time`` is the second
of the video at which the question is asked, ``answer`` a free-form sentence and ``class`` one of
:data:`STREAMBENCH_CLASSES`. ``video_name`` is missing in some entries; some videos appear in two
entries; breakpoints are not always in time order.

What :func:`load_streambench` makes of it:

* **one stream per distinct video**: entries are grouped by ``(class_1, video_path)`` (the file they
  play; ``video_name`` is not used for that since it can be absent). The breakpoints of all entries of
  a video are merged and sorted by time (a stable sort: questions at the same second keep file order).
  A breakpoint that repeats an earlier one of the same video (same time, question and answer) is
  skipped with a reason naming the one it repeats, so no question is asked twice.
* **ids**: a stream's id is its ``video_name`` when the entries of that video give one (the first one
  given) and no other video of the file uses the same name; otherwise ``<class_1>/<video_path>``
  without its extension. A record's qid is ``<stream id>#<entry index>.<breakpoint index>`` (its place
  in the file, so it does not change when another question is added or dropped).
* **records**: ``benchmark="streambench"``, open questions (no options; ``answer`` is the reference
  sentence), ``timestamp`` = ``time`` (so the streaming protocol asks each question once every frame
  up to it is in), ``task_type`` = the class code ("CI", "KG", "LM", "OS", "SF", "SM") and
  ``task_kind`` from :data:`STREAMBENCH_TASK_KINDS`. ``extra`` holds ``source`` (``class_1``),
  ``topic`` (``class_2``, when given), ``class_name``, ``stream`` (the stream id), ``round`` (position
  in the stream's time order), ``previous_qids`` (the stream's questions asked before this one, for a
  protocol that replays the dialogue: CI questions refer to it), ``entries`` (file indices of the
  entries merged into the stream) and ``video_name`` when the entry gave one.
* **malformed items**, each reported as a :class:`~._common.SkippedRecord` (index = the entry's
  position in the file, with the qid where known) and announced by one warning: an entry that is not
  an object, lacks ``info`` / ``class_1`` / ``video_path`` or has no non-empty ``breakpoint`` list is
  skipped whole; a breakpoint with no time / question / answer, a bad time or a class outside the
  six is skipped alone, its reason starting with "breakpoint <k>:".

Scoring is by an LLM judge (yes/no + 0-5 score): :mod:`ppllava_hermes.evaluation.streambench_scoring`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..records import QARecord
from ._common import (
    LoadResult,
    Malformed,
    PathLike,
    RecordCollector,
    parse_timestamp,
    read_json,
    require,
    require_text,
    resolve_video,
)

#: Question classes of StreamBench (code -> name, as the StreamChat README names them).
STREAMBENCH_CLASSES: dict[str, str] = {
    "CI": "Conversational Interaction",
    "KG": "Knowledge-based Question Answering",
    "LM": "Long-term Memory Search",
    "OS": "Object Search",
    "SF": "Simple Factual",
    "SM": "Short-term Memory Search",
}

#: Class code -> ``task_kind``. Our reading of the class names, not a label of the benchmark: the memory
#: searches (LM, SM) and object search (OS) ask about what was seen before the question, the others about
#: the moment it is asked (KG needs no video at all). Every kind here is asked at its ``timestamp`` by the
#: streaming protocol; results are reported per class (``task_type``), which is what the paper reports.
STREAMBENCH_TASK_KINDS: dict[str, str] = {
    "CI": "realtime",
    "KG": "realtime",
    "LM": "backward",
    "OS": "backward",
    "SF": "realtime",
    "SM": "backward",
}

#: The class whose questions are answerable without the video; summaries give totals without it too.
KNOWLEDGE_CLASS = "KG"


@dataclass
class _Entry:
    """The parts of one file entry that decide its stream."""

    index: int
    source: str
    topic: str | None
    video_path: str
    video_name: str | None
    breakpoints: list[Any]


@dataclass
class _Question:
    entry: _Entry
    k: int  # position in the entry's breakpoint list
    time: float
    question: str
    answer: str
    code: str


def _clean_path(path: str) -> str:
    # "./a.mp4" and "a.mp4" are the same file, so the same stream
    while path.startswith("./"):
        path = path[2:]
    return path


def _entry(index: int, item: Any) -> _Entry:
    info = require(item, "info")
    if not isinstance(info, dict):
        raise Malformed(f"'info' is a {type(info).__name__}, not an object")
    source = require_text(require(info, "class_1"), "class_1")
    video_path = require_text(require(info, "video_path"), "video_path")
    points = require(item, "breakpoint")
    if not isinstance(points, list) or not points:
        raise Malformed("'breakpoint' is not a non-empty list")
    topic = info.get("class_2")
    name = info.get("video_name")
    return _Entry(
        index=index,
        source=source,
        topic=str(topic) if topic is not None else None,
        video_path=_clean_path(video_path),
        video_name=str(name).strip() if name is not None and str(name).strip() else None,  # blank: missing
        breakpoints=points,
    )


def _question(entry: _Entry, k: int, point: Any) -> _Question:
    try:
        if not isinstance(point, dict):
            raise Malformed(f"is a {type(point).__name__}, not an object")
        code = require_text(require(point, "class"), "class").upper()
        if code not in STREAMBENCH_CLASSES:
            raise Malformed(f"class {point['class']!r} is not one of {', '.join(STREAMBENCH_CLASSES)}")
        return _Question(
            entry=entry,
            k=k,
            time=parse_timestamp(require(point, "time")),
            question=require_text(require(point, "question"), "question"),
            answer=require_text(require(point, "answer"), "answer"),
            code=code,
        )
    except Malformed as e:
        raise Malformed(f"breakpoint {k}: {e}") from None


def _stream_ids(streams: dict[tuple[str, str], list[_Entry]]) -> dict[tuple[str, str], str]:
    """Stream id of each video: its video_name if given and unique to it, else class_1/video_path."""
    named: dict[tuple[str, str], str | None] = {
        key: next((e.video_name for e in entries if e.video_name), None) for key, entries in streams.items()
    }
    users: dict[str, int] = defaultdict(int)
    for name in named.values():
        if name:
            users[name] += 1
    ids: dict[tuple[str, str], str] = {}
    for key, name in named.items():
        if name and users[name] == 1:
            ids[key] = name
        else:  # no name, or one two videos share: the path tells them apart
            source, path = key
            ids[key] = f"{source}/{PurePosixPath(path).with_suffix('')}"
    return ids


def load_streambench(annotation_path: PathLike, video_dir: PathLike | None = None) -> LoadResult:
    """Load ``streaming_bench_v0.3.json`` (see the module docstring for the records it makes).

    ``video_dir`` is the data folder holding ``Ego/``, ``WebVideo/`` and ``Movie/``; without it videos are
    the relative paths ``<class_1>/<video_path>``. Records come stream by stream (in the order each video
    first appears in the file), each stream's questions in time order.
    """
    path = Path(annotation_path)
    data = read_json(path, list)
    out = RecordCollector("streambench", path)
    streams: dict[tuple[str, str], list[_Entry]] = {}
    for i, item in enumerate(data):
        try:
            entry = _entry(i, item)
        except Malformed as e:
            out.skip(i, str(e))
            continue
        streams.setdefault((entry.source, entry.video_path), []).append(entry)
    ids = _stream_ids(streams)
    for key, entries in streams.items():
        stream = ids[key]
        video = resolve_video(f"{key[0]}/{key[1]}", video_dir)
        questions: list[_Question] = []
        for entry in entries:
            for k, point in enumerate(entry.breakpoints):
                qid = f"{stream}#{entry.index}.{k}"
                try:
                    questions.append(_question(entry, k, point))
                except Malformed as e:
                    out.skip(entry.index, str(e), qid)
        questions.sort(key=lambda q: q.time)  # stable: same-second questions keep file order
        seen: dict[tuple[float, str, str], str] = {}
        previous: list[str] = []
        for q in questions:
            qid = f"{stream}#{q.entry.index}.{q.k}"
            same = (q.time, " ".join(q.question.split()).casefold(), " ".join(q.answer.split()).casefold())
            if same in seen:
                why = f"breakpoint {q.k}: repeats question {seen[same]} of the same video"
                out.skip(q.entry.index, why, qid)
                continue
            seen[same] = qid
            extra: dict[str, Any] = {
                "source": q.entry.source,
                "class_name": STREAMBENCH_CLASSES[q.code],
                "stream": stream,
                "round": len(previous),
                "previous_qids": list(previous),
                "entries": [e.index for e in entries],
            }
            if q.entry.topic is not None:
                extra["topic"] = q.entry.topic
            if q.entry.video_name is not None:
                extra["video_name"] = q.entry.video_name
            record = QARecord(
                benchmark="streambench",
                qid=qid,
                video=video,
                question=q.question,
                answer=q.answer,
                task_type=q.code,
                task_kind=STREAMBENCH_TASK_KINDS[q.code],
                timestamp=q.time,
                extra=extra,
            )
            before = len(out.result.records)
            out.add(q.entry.index, lambda record=record: record, qid)
            if len(out.result.records) > before:  # only questions really asked count as earlier turns
                previous.append(qid)
    return out.finish()
