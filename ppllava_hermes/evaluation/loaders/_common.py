"""Shared pieces of the benchmark loaders: result types, file reading, time / option / answer parsing.

Every loader follows the same contract: read the file (a broken file raises ``ValueError`` naming it),
turn each item into :class:`QARecord` through a converter that raises :class:`Malformed` with a short
reason, and collect the failures as :class:`SkippedRecord` (position in the file + reason). The
:class:`RecordCollector` does the bookkeeping, the checks every multiple-choice record must pass (no
empty option, an answer whose text no other option repeats) and the warning, so no record is ever
dropped silently.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import QARecord

PathLike = str | Path

# Extensions seen in the benchmarks' video folders; used both to tell "has an extension" from
# dotted ids like "RPY8D_0.0_15.2" and to look for the file when a video folder is given.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".gif")


class Malformed(ValueError):
    """One item of an annotation file cannot become a record; the message is the reason."""


class MalformedRecordWarning(UserWarning):
    """Issued once per file when some of its items were skipped."""


@dataclass(frozen=True)
class SkippedRecord:
    """An item that could not be loaded.

    Attributes:
        index: position of the item in the annotation file's top-level list (for JSON Lines, among
            its non-empty lines; for nested files such as StreamingBench SQA, of the outer item).
        reason: why it was skipped.
        qid: the id the record would have had, where it was known.
    """

    index: int
    reason: str
    qid: str | None = None


@dataclass
class LoadResult:
    """What a loader returns: the records it could build and the items it had to skip."""

    benchmark: str
    path: str
    records: list[QARecord] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


# ----------------------------------------------------------------------------------------------- files


def read_json(path: PathLike, expect: type | tuple[type, ...] = list, allow_jsonl: bool = False) -> Any:
    """Read a JSON file whose top level must be of type ``expect``.

    With ``allow_jsonl`` a file that is not one JSON document is read as JSON Lines (one object a
    line) and returned as a list. Raises ``ValueError`` naming the file on any format problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: some annotation dumps carry a BOM
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if not allow_jsonl:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as e2:
                raise ValueError(f"{path}: neither JSON nor JSON Lines (line {lineno}: {e2})") from e2
    if not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise ValueError(f"{path}: expected a top-level JSON {names}, found {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------------ time

_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(?:s|sec|secs|seconds)?$", re.IGNORECASE)


def parse_timestamp(value: Any) -> float:
    """Seconds from a number, a numeric string ("12.5", "12.5s") or a clock ("00:03:12", "3:12", "1:02:03.5").

    Raises :class:`Malformed` for anything else, negatives, NaN and infinities.
    """
    if isinstance(value, bool):  # bool is an int in Python; a True timestamp is a bug in the file
        raise Malformed(f"bad timestamp {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        m = _CLOCK.match(text)
        if m:
            hours, minutes, secs = m.group(1), m.group(2), m.group(3)
            if (hours is not None and int(minutes) >= 60) or float(secs) >= 60:
                raise Malformed(f"bad timestamp {value!r}")
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
        else:
            m = _NUMBER.match(text)
            if not m:
                raise Malformed(f"bad timestamp {value!r}")
            seconds = float(m.group(1))
    else:
        raise Malformed(f"bad timestamp {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise Malformed(f"bad timestamp {value!r}")
    return seconds


_RANGE = re.compile(r"^\s*\[?\s*([0-9:.]+)\s*(?:-|–|to)\s*([0-9:.]+)\s*\]?\s*$")


def parse_time_range(value: Any) -> tuple[float, float]:
    """(start, end) seconds from "[0:00:00 - 0:00:10]", "00:15-00:19" or a two-number list."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        start, end = parse_timestamp(value[0]), parse_timestamp(value[1])
    elif isinstance(value, str) and (m := _RANGE.match(value)):
        start, end = parse_timestamp(m.group(1)), parse_timestamp(m.group(2))
    else:
        raise Malformed(f"bad time range {value!r}")
    if end < start:
        raise Malformed(f"time range {value!r} ends before it starts")
    return start, end


# --------------------------------------------------------------------------------------------- options

# "(A) text", "A. text", "A) text", "A: text"; only capitals, so "(a) Sunken cities." sub-items inside
# a Video-MME question are not mistaken for options.
_OPTION_LINE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*(.*?)\s*$")
_QUESTION_PREFIX = re.compile(r"^\s*question\s*:\s*", re.IGNORECASE)
_OPTIONS_HEADER = re.compile(r"^\s*(?:options|choices)\s*:?\s*$", re.IGNORECASE)


def _option_line(line: str) -> tuple[str, str] | None:
    m = _OPTION_LINE.match(line)
    if not m:
        return None
    return (m.group(1) or m.group(2)), m.group(3)


def split_embedded_options(text: str) -> tuple[str, list[str], str, str]:
    """Split a prompt with the options written into it into (question, options, instruction, trailer).

    The options are the last run of lines lettered A, B, C, ... in order (a line that is not lettered
    between two lettered ones continues the previous option). Lines before a "Question:" line are the
    instruction (EgoSchema's "Select the best answer..."), lines after the options the trailer
    ("Only give the best option."). An option line with nothing after its label ("C.") is the option
    "C". Raises :class:`Malformed` when fewer than two options are found.
    """
    lines = text.split("\n")
    parsed = [_option_line(line) for line in lines]
    best: tuple[int, int, list[str]] | None = None  # (first line, last line, options)
    for start, p in enumerate(parsed):
        if not p or p[0] != "A":
            continue
        options, end, i = [p[1]], start, start + 1
        while i < len(lines):
            expected = chr(ord("A") + len(options))
            q = parsed[i]
            if q and q[0] == expected:
                options.append(q[1])
                end = i
            elif q is None and lines[i].strip() and any(r and r[0] == expected for r in parsed[i + 1 :]):
                options[-1] = f"{options[-1]} {lines[i].strip()}".lstrip()  # "A." then its text
            else:
                break
            i += 1
        if len(options) >= 2:
            best = (start, end, options)  # keep the last block: options come after the question
    if best is None:
        raise Malformed("no lettered options (A, B, ...) found in the question text")
    start, end, options = best
    head = [line for line in lines[:start] if line.strip()]
    while head and _OPTIONS_HEADER.match(head[-1]):
        head.pop()
    instruction_lines: list[str] = []
    for i, line in enumerate(head):
        if _QUESTION_PREFIX.match(line):
            instruction_lines, head = head[:i], head[i:]
            break
    if head:
        head[0] = _QUESTION_PREFIX.sub("", head[0])
    question = "\n".join(head).strip()
    if not question:
        raise Malformed("empty question before the options")
    trailer = "\n".join(line for line in lines[end + 1 :] if line.strip()).strip()
    # a label with no text ("C.") is the option "C", as in strip_option_letters
    options = [text or chr(ord("A") + i) for i, text in enumerate(options)]
    return question, options, "\n".join(instruction_lines).strip(), trailer


_LETTER_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*")


def strip_option_letters(options: Sequence[Any]) -> list[str]:
    """Option texts without "A. " / "(A) " prefixes.

    Letters are removed only when every option carries the expected one (A, B, C, ... in order), so
    texts like "2." or "Fan Z.D." are left alone. An option that is only its label ("B.", "(B)")
    keeps the letter as its text ("B"), so options that are letters never become empty strings;
    "A. B" is the option "B". Whether the result is usable is checked per record
    (:func:`check_options`, run by :class:`RecordCollector`).
    """
    texts = [require_text(o, "option") for o in options]
    stripped = []
    for i, text in enumerate(texts):
        m = _LETTER_PREFIX.match(text)
        letter = chr(ord("A") + i)
        if not m or (m.group(1) or m.group(2)) != letter:
            return texts
        stripped.append(text[m.end() :].strip() or letter)
    return stripped


def check_options(options: Sequence[str], answer: int | None = None) -> list[str]:
    """``options`` as a list, or :class:`Malformed` when one is empty or the answer cannot be told apart.

    With ``answer`` (an index), the answer's text must not also be another option's; "the same"
    ignores case, runs of spaces and a final dot, as :func:`answer_from_text` does. Two equal options
    that are both wrong are left alone: some released items have them (StreamingBench SQA), and they
    are still scored without ambiguity.
    """
    for i, text in enumerate(options):
        if not text.strip():
            raise Malformed(f"option {_label(i)} is empty")
    if answer is not None and 0 <= answer < len(options):
        key = _loose(options[answer])
        for j, text in enumerate(options):
            if j != answer and _loose(text) == key:
                a, b = sorted((answer, j))
                raise Malformed(
                    f"options {_label(a)} and {_label(b)} are the same ({text!r}) and "
                    f"{_label(answer)} is the answer"
                )
    return list(options)


def _label(i: int) -> str:
    """How option ``i`` is named in reasons: its letter, or its 1-based number past Z."""
    return chr(ord("A") + i) if i < 26 else str(i + 1)


# --------------------------------------------------------------------------------------------- answers

_LETTER_ANSWER = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*[.:]?\s*$")


def answer_from_letter(value: Any, n_options: int) -> int:
    """Index of a letter answer: "B", "(B)", "B.", "b"."""
    m = _LETTER_ANSWER.match(value) if isinstance(value, str) else None
    if not m:
        raise Malformed(f"answer {value!r} is not an option letter")
    index = ord(m.group(1).upper()) - ord("A")
    if not 0 <= index < n_options:
        raise Malformed(f"answer {value!r} is not among the {n_options} options")
    return index


def answer_from_index(value: Any, n_options: int, base: int = 0) -> int:
    """Index of an integer answer (``base`` 0 or 1); digit strings are accepted."""
    if isinstance(value, bool):
        raise Malformed(f"answer {value!r} is not an option index")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise Malformed(f"answer {value!r} is not an option index")
    index = value - base
    if not 0 <= index < n_options:
        raise Malformed(f"answer {value!r} is not among the {n_options} options")
    return index


def _loose(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip(".").strip().casefold()


def answer_from_text(value: Any, options: Sequence[str]) -> int:
    """Index of the option whose text is the answer: exact first, then ignoring case/space/final dot."""
    if not isinstance(value, str):
        raise Malformed(f"answer {value!r} is not an option text")
    exact = [i for i, o in enumerate(options) if o == value]
    if len(exact) == 1:
        return exact[0]
    loose = [i for i, o in enumerate(options) if _loose(o) == _loose(value)]
    if len(loose) == 1:
        return loose[0]
    if len(exact) > 1 or len(loose) > 1:
        raise Malformed(f"answer {value!r} matches several options")
    raise Malformed(f"answer {value!r} is not among the options")


# ---------------------------------------------------------------------------------------------- fields


def require(item: Any, key: str) -> Any:
    """``item[key]``, with a readable reason when the item is not a dict or lacks the key."""
    if not isinstance(item, dict):
        raise Malformed(f"item is a {type(item).__name__}, not an object")
    if key not in item or item[key] is None:
        raise Malformed(f"missing field {key!r}")
    return item[key]


def require_text(value: Any, what: str) -> str:
    """A non-empty string (numbers are turned into text: some open answers are bare numbers)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"{what} {value!r} is not a non-empty string")
    return value.strip()


def require_options(value: Any, minimum: int = 2) -> list[str]:
    if not isinstance(value, list) or len(value) < minimum:
        raise Malformed(f"options {value!r} is not a list of at least {minimum}")
    return strip_option_letters(value)


def qid_of(item: Any, keys: tuple[str, ...], index: int) -> str:
    """The item's id from the first of ``keys`` it has, else its position (never raises)."""
    if isinstance(item, dict):
        for key in keys:
            if item.get(key) is not None:
                return str(item[key])
    return str(index)


def first_key(item: dict[str, Any], *keys: str) -> Any:
    """The value of the first key present (not None); :class:`Malformed` naming them all otherwise."""
    for key in keys:
        if isinstance(item, dict) and item.get(key) is not None:
            return item[key]
    if not isinstance(item, dict):
        raise Malformed(f"item is a {type(item).__name__}, not an object")
    raise Malformed("missing field " + " / ".join(repr(k) for k in keys))


# ---------------------------------------------------------------------------------------------- videos


def resolve_video(
    name: str,
    video_dir: PathLike | None,
    default_ext: str | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    alternatives: Sequence[str] = (),
    subdirs: Sequence[str] = (),
) -> str:
    """Path of a video named in an annotation file.

    Without ``video_dir`` the name is returned as written (leading "./" removed), with ``default_ext``
    added when it has no video extension. With ``video_dir`` the first existing file among the
    candidates is returned: the name, then its base name, then each of ``alternatives`` (other spellings
    such as ActivityNet's id without "v_"), each directly under ``video_dir`` and then under each of
    ``subdirs``, each with ``default_ext`` and then the other extensions. When none exists it returns
    ``video_dir/name``, so a missing video fails where it is opened, naming the path that was expected.
    """

    def clean(n: str) -> str:
        n = n.strip()
        while n.startswith("./"):
            n = n[2:]
        return n

    name = clean(name)

    def with_exts(n: str) -> list[str]:
        if n.lower().endswith(VIDEO_EXTENSIONS):
            return [n]
        first = [n + default_ext] if default_ext else []
        return first + [n + e for e in extensions if e != default_ext] + [n]

    default = with_exts(name)[0] if default_ext else name
    if video_dir is None:
        return default
    root = Path(video_dir)
    names = [name] + ([name.rsplit("/", 1)[1]] if "/" in name else []) + [clean(a) for a in alternatives]
    for sub in ("", *subdirs):
        for n in names:
            for rel in with_exts(n):
                candidate = root / sub / rel if sub else root / rel
                if candidate.is_file():
                    return str(candidate)
    return str(root / default)


# ----------------------------------------------------------------------------------------- collecting


class RecordCollector:
    """Builds a :class:`LoadResult`: runs converters, records failures, checks qid uniqueness, warns."""

    def __init__(self, benchmark: str, path: PathLike) -> None:
        self.result = LoadResult(benchmark=benchmark, path=str(path))
        self._qids: set[str] = set()

    def add(
        self, index: int, build: Callable[[], QARecord | Iterable[QARecord]], qid: str | None = None
    ) -> None:
        """Run ``build`` for the item at ``index``; any format error becomes a :class:`SkippedRecord`."""
        try:
            built = build()
            records = [built] if isinstance(built, QARecord) else list(built)
        except (Malformed, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            # ValueError also covers QARecord's own checks (answer index, task_kind, negative time).
            reason = str(e) if isinstance(e, (Malformed, ValueError)) else f"{type(e).__name__}: {e}"
            self.result.skipped.append(SkippedRecord(index, reason, qid))
            return
        for record in records:
            if record.qid in self._qids:
                self.result.skipped.append(SkippedRecord(index, f"duplicate qid {record.qid!r}", record.qid))
                continue
            try:  # per record: the other questions of a nested item (StreamingBench SQA) stay
                check_options(record.options, record.answer if record.options else None)
            except Malformed as e:
                self.result.skipped.append(SkippedRecord(index, str(e), record.qid))
                continue
            self._qids.add(record.qid)
            self.result.records.append(record)

    def skip(self, index: int, reason: str, qid: str | None = None) -> None:
        self.result.skipped.append(SkippedRecord(index, reason, qid))

    def finish(self) -> LoadResult:
        """The result; warns (:class:`MalformedRecordWarning`) with the count and first indices if any were skipped."""
        skipped = self.result.skipped
        if skipped:
            first = sorted({s.index for s in skipped})[:5]
            warnings.warn(
                f"{self.result.benchmark}: skipped {len(skipped)} malformed record(s) in {self.result.path}; "
                f"first indices {first}; first reason: {skipped[0].reason}",
                MalformedRecordWarning,
                stacklevel=3,
            )
        return self.result
