"""Video instruction data for training: LLaVA-Video / VideoChatGPT-style JSON, and ShapesWorld clips.

What this module knows:

* the instruction formats: a JSON array or JSON Lines of records with a video and either
  ``conversations`` (LLaVA-Video / VideoChatGPT-Instruct: ``[{"from": "human", "value": "<video>\\nQ"},
  {"from": "gpt", "value": "A"}, ...]``) or ``q`` / ``a`` (``question`` / ``answer``) keys; every
  (human, gpt) pair becomes one example (the video, that question, that answer: the streaming session
  asks one question after the video, so earlier turns are not carried over); preference records
  (``prompt``, ``chosen``, ``rejected``, ``video``) for DPO;
* the text CLIP sees: the question alone (PPLLaVA ref: question-only text into CLIP), i.e. the human
  turn without the ``<video>`` tag and without an options block;
* data errors: a missing video, a malformed JSON line, a conversation with no answer, a video that
  cannot be decoded. Each is reported with its file and line by :class:`DataErrorLog`, then either
  skipped (a warning, counted) or fatal (:class:`DataError`) by its ``on_error`` policy; nothing is
  dropped silently;
* ShapesWorld's generated instruction data (:func:`shapesworld_examples`, in memory, and
  :func:`write_shapesworld_json`, mp4 files + a JSON file in the LLaVA-Video format).

Frames are read through the project's own video reader (:func:`ppllava_hermes.video.read_video`).
It knows nothing of models, tokenizers or pooling.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ON_ERROR = ("skip", "fail")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
_MEDIA_TAG = re.compile(r"<(video|image)>\s*", re.IGNORECASE)
# a line that starts an options block: "Options:", "A. red", "(B) blue", "C) green"
_OPTIONS_LINE = re.compile(r"^\s*(options?\s*:|\(?[A-H][.):]\s)", re.IGNORECASE)
_INLINE_OPTIONS = re.compile(r"\s+options?\s*:.*$", re.IGNORECASE | re.DOTALL)


class DataError(ValueError):
    """A bad training record; ``str(err)`` is ``"<file>:<line>: <reason>"``."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        super().__init__(f"{source}:{line if line is not None else '?'}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.source, self.line, self.reason))


class DataWarning(UserWarning):
    """A bad training record was skipped (``--on-data-error skip``)."""


@dataclass
class DataErrorLog:
    """Collects data errors; ``on_error="skip"`` warns and counts, ``"fail"`` raises :class:`DataError`.

    Attributes:
        on_error: ``"skip"`` or ``"fail"``.
        errors: ``"<file>:<line>: <reason>"`` of every skipped record, in order.
    """

    on_error: str = "skip"
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def report(self, source: str | Path, line: int | None, reason: str) -> None:
        """Record one bad record: raise (fail) or warn and count (skip)."""
        err = DataError(str(source), line, reason)
        if self.on_error == "fail":
            raise err
        self.errors.append(str(err))
        warnings.warn(f"skipping {err}", DataWarning, stacklevel=2)

    @property
    def count(self) -> int:
        return len(self.errors)

    def summary(self) -> str:
        return f"{self.count} bad record(s) skipped" + (f"; first: {self.errors[0]}" if self.errors else "")


@dataclass
class VideoInput:
    """Frames of one video as the model takes them.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8.
        timestamps: ``(T,)`` float64 seconds, strictly increasing.
        key: a stable id of the video (its path or ShapesWorld id), under which a model with a feature
            cache keeps the frozen encodings across batches and epochs; None: never cached across batches.
        cache: per-batch memo of frozen encodings (vision tower, CLIP patches), filled by the model so
            that the policy and the reference of DPO, or chosen and rejected rows, encode a video once.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    key: str | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames)
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {self.frames.shape} {self.frames.dtype}")
        if len(self.frames) == 0 or len(self.timestamps) != len(self.frames):
            raise ValueError(f"{len(self.frames)} frames with {len(self.timestamps)} timestamps")


@dataclass
class VideoQAExample:
    """One training example: a video, a question about it and the answer (and, for DPO, a rejected one).

    Attributes:
        video: path of the video file (resolved), or an id of in-memory frames.
        question: the text the VLM is asked (for multiple choice: with its options).
        answer: the target answer text (DPO: the chosen one).
        clip_query: question-only text for the CLIP relevance of prompt-guided pooling.
        source: the file the record came from (for messages).
        line: the record's line in ``source`` (1-based), None when not from a file.
        options: option texts of a multiple-choice question (for accuracy), else empty.
        answer_index: index of the right option, None for open questions.
        rejected: the dispreferred answer (preference data), else None.
        task_type: e.g. ShapesWorld's "color"; "" when unknown.
        frames, timestamps: in-memory video (ShapesWorld), or filled by :meth:`VideoQADataset.__getitem__`.
    """

    video: str
    question: str
    answer: str
    clip_query: str
    source: str = ""
    line: int | None = None
    options: list[str] = field(default_factory=list)
    answer_index: int | None = None
    rejected: str | None = None
    task_type: str = ""
    frames: np.ndarray | None = field(default=None, repr=False)
    timestamps: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError(f"{self.where}: empty question")
        if not self.answer.strip():
            raise ValueError(f"{self.where}: empty answer")
        if not self.clip_query.strip():
            self.clip_query = self.question

    @property
    def where(self) -> str:
        return f"{self.source or '<memory>'}:{self.line if self.line is not None else '?'}"

    def video_input(self) -> VideoInput:
        if self.frames is None or self.timestamps is None:
            raise ValueError(f"{self.where}: frames not loaded")
        return VideoInput(self.frames, self.timestamps, key=self.video)


def question_only(text: str) -> str:
    """The question without media tags and without an options block (the text CLIP sees).

    ``"<video>\\nWhat colour? Options: red, blue."`` -> ``"What colour?"``;
    ``"What is shown?\\nA. a dog\\nB. a cat"`` -> ``"What is shown?"``.
    """
    text = _MEDIA_TAG.sub("", text).strip()
    lines = []
    for line in text.splitlines():
        if _OPTIONS_LINE.match(line):
            break
        lines.append(line)
    kept = " ".join(s.strip() for s in lines if s.strip())
    kept = _INLINE_OPTIONS.sub("", kept).strip()
    return kept or text


def _strip_media(text: str) -> str:
    return _MEDIA_TAG.sub("", text).strip()


# ---- reading instruction files -------------------------------------------------------------------
def iter_json_records(path: str | Path, errors: DataErrorLog) -> Iterator[tuple[int, Any]]:
    """``(line, record)`` of a JSON array file or a JSON Lines file; malformed JSON goes to ``errors``.

    A JSON Lines file is reported line by line. A JSON array is parsed item by item, so each record
    has the line it starts on; if the array itself is malformed, the error names the line where
    parsing failed and the rest of the file is skipped (or fatal).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        errors.report(path, None, f"cannot read the data file ({err.strerror or err})")
        return
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_json_array(path, text, errors)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            errors.report(path, lineno, f"malformed JSON line ({err.msg} at column {err.colno})")


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _iter_json_array(path: Path, text: str, errors: DataErrorLog) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, 0).end() + 1  # past "["
    i = ws.match(text, i).end()
    if text[i : i + 1] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            errors.report(path, err.lineno, f"malformed JSON ({err.msg}); the rest of the file is skipped")
            return
        yield _line_of(text, i), obj
        i = ws.match(text, end).end()
        sep = text[i : i + 1]
        if sep == "]":
            return
        if sep != ",":
            errors.report(
                path, _line_of(text, i), "malformed JSON (expected ',' or ']'); the rest of the file is skipped"
            )
            return
        i = ws.match(text, i + 1).end()


def resolve_video(name: str, video_root: str | Path | None) -> Path | None:
    """The video file a record names (relative to ``video_root``); tries common extensions for a bare
    id (VideoChatGPT's ``video_id``). None if no such file exists."""
    base = Path(name) if video_root is None or Path(name).is_absolute() else Path(video_root) / name
    if base.is_file():
        return base
    if not base.suffix:
        for ext in VIDEO_EXTENSIONS:
            if base.with_suffix(ext).is_file():
                return base.with_suffix(ext)
    return None


def _video_name(record: dict) -> str | None:
    for key in ("video", "video_path", "video_id", "video_name"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _turn_pairs(conversations: Any) -> Iterator[tuple[int, str, str | None]]:
    """``(turn index, human text, gpt text or None)`` for each human turn of a conversation."""
    turns = list(conversations)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "user"):
            continue
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        reply = None
        if isinstance(nxt, dict) and nxt.get("from") in ("gpt", "assistant"):
            value = nxt.get("value")
            reply = value if isinstance(value, str) and value.strip() else None
        yield i, str(turn.get("value", "")), reply


def examples_from_record(
    record: Any,
    *,
    source: str | Path,
    line: int | None,
    video_root: str | Path | None,
    errors: DataErrorLog,
    check_video: bool = True,
) -> list[VideoQAExample]:
    """The examples of one record (see module doc); problems are reported to ``errors``."""
    source = str(source)
    if not isinstance(record, dict):
        errors.report(source, line, f"a record must be a JSON object, got {type(record).__name__}")
        return []
    name = _video_name(record)
    if name is None:
        errors.report(source, line, "record has no video (keys 'video', 'video_path' or 'video_id')")
        return []
    path = resolve_video(name, video_root) if check_video else Path(name)
    if path is None:
        where = f" under {str(video_root)!r}" if video_root is not None else ""
        errors.report(source, line, f"missing video {name!r}{where}")
        return []
    common = dict(video=str(path), source=source, line=line, task_type=str(record.get("task_type", "")))

    if "chosen" in record or "rejected" in record:  # preference record
        prompt, chosen, rejected = (record.get(k) for k in ("prompt", "chosen", "rejected"))
        if not all(isinstance(x, str) and x.strip() for x in (prompt, chosen, rejected)):
            errors.report(source, line, "preference record needs non-empty 'prompt', 'chosen' and 'rejected'")
            return []
        prompt = _strip_media(prompt)
        query = record.get("clip_query") or question_only(prompt)
        return [VideoQAExample(question=prompt, answer=chosen.strip(), rejected=rejected.strip(), clip_query=query,
                               **common)]

    if "conversations" in record:
        conv = record["conversations"]
        if not isinstance(conv, list) or not conv:
            errors.report(source, line, "'conversations' must be a non-empty list of turns")
            return []
        out = []
        for turn, human, reply in _turn_pairs(conv):
            question = _strip_media(human)
            if not question:
                errors.report(source, line, f"conversation turn {turn} has an empty question")
                continue
            if reply is None:
                errors.report(source, line, f"conversation turn {turn} ({question[:40]!r}) has no answer")
                continue
            out.append(VideoQAExample(question=question, answer=reply.strip(), clip_query=question_only(question),
                                      **common))
        if not out and not any(True for _ in _turn_pairs(conv)):
            errors.report(source, line, "conversation has no human turn")
        return out

    question = record.get("q", record.get("question"))
    answer = record.get("a", record.get("answer"))
    if not isinstance(question, str) or not question.strip():
        errors.report(source, line, "record has neither 'conversations' nor a 'q' / 'question'")
        return []
    if not isinstance(answer, (str, int, float)) or not str(answer).strip():
        errors.report(source, line, f"question {question[:40]!r} has no answer")
        return []
    question = _strip_media(question)
    return [VideoQAExample(question=question, answer=str(answer).strip(), clip_query=question_only(question),
                           **common)]


def load_instruction_file(
    path: str | Path, errors: DataErrorLog, video_root: str | Path | None = None, check_video: bool = True
) -> list[VideoQAExample]:
    """All examples of an instruction file (JSON array or JSON Lines).

    Args:
        path: the file.
        errors: where bad records go (skip or fail).
        video_root: folder relative video paths are resolved against (default: the file's folder).
        check_video: report records whose video file does not exist now (cheap; decoding errors are
            reported later, when the video is read).
    """
    path = Path(path)
    root = Path(video_root) if video_root is not None else path.parent
    out: list[VideoQAExample] = []
    for line, record in iter_json_records(path, errors):
        out.extend(examples_from_record(record, source=path, line=line, video_root=root, errors=errors,
                                        check_video=check_video))
    return out


# ---- reading frames ------------------------------------------------------------------------------
@dataclass
class FrameSampling:
    """How frames are read from a video file for training.

    Attributes:
        num_frames: frames spread uniformly over the video (default 8, one session chunk).
        fps: instead of ``num_frames``, sample at this rate (capped by ``max_frames``).
        max_frames: cap with ``fps``.
    """

    num_frames: int | None = 8
    fps: float | None = None
    max_frames: int | None = 64

    def __post_init__(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ValueError("give exactly one of num_frames and fps")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


class VideoQADataset(torch.utils.data.Dataset):
    """Examples with their frames: in-memory frames as they are, files through ``read_video``.

    ``__getitem__`` returns the example with ``frames`` / ``timestamps`` filled, or None when the video
    cannot be read and ``errors.on_error == "skip"`` (the collator drops Nones; the error was reported
    with the record's file and line).
    """

    def __init__(self, examples: Sequence[VideoQAExample], errors: DataErrorLog,
                 sampling: FrameSampling | None = None) -> None:
        self.examples = list(examples)
        self.errors = errors
        self.sampling = sampling or FrameSampling()

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> VideoQAExample | None:
        ex = self.examples[index]
        if ex.frames is not None:
            return ex
        from ..video import VideoError, read_video

        s = self.sampling
        try:
            clip = read_video(ex.video, num_frames=s.num_frames, fps=s.fps,
                              max_frames=s.max_frames if s.fps is not None else None)
        except VideoError as err:
            self.errors.report(ex.source, ex.line, f"cannot read video: {err}")
            return None
        return replace(ex, frames=clip.frames, timestamps=clip.timestamps)


# ---- ShapesWorld ---------------------------------------------------------------------------------
def _shapesworld_example(frames: np.ndarray, rec, split: str, fps: float) -> VideoQAExample:
    from .. import plugins

    prompt_for = plugins.PROMPT_STYLES.get("words")
    rejected = None
    if rec.options:
        rng = np.random.default_rng(zlib.crc32(rec.qid.encode()))  # stable across processes
        wrong = [o for i, o in enumerate(rec.options) if i != rec.answer]
        rejected = wrong[int(rng.integers(len(wrong)))] if wrong else None
    return VideoQAExample(
        video=rec.qid, question=prompt_for(rec), clip_query=rec.question,
        answer=rec.options[rec.answer] if rec.options else str(rec.answer),  # the word the model says
        source=f"shapesworld:{split}", line=None, options=list(rec.options),
        answer_index=int(rec.answer) if rec.options else None, rejected=rejected, task_type=rec.task_type,
        frames=frames, timestamps=np.arange(len(frames), dtype=np.float64) / fps,
    )


def shapesworld_examples(
    split: str, n: int, *, seed_base: int = 0, mc_fraction: float = 0.5, fps: float = 1.0, **clip_kwargs: Any
) -> list[VideoQAExample]:
    """``n`` ShapesWorld short-clip examples with in-memory frames (4 frames of 112x112 at 1 fps).

    The VLM is asked the record in the "words" prompt style (the question with its options' words for
    multiple choice) and trained to say the answer's word; CLIP sees the question alone. For multiple
    choice ``rejected`` is another option (a plausible wrong answer, for DPO), chosen by the record's seed.
    Example ``i`` is clip ``seed_base + i`` of the split: the short clips of the ShapesWorld benchmark
    (``plugins.BENCHMARKS["shapesworld"].short_clips``, registered by the ShapesWorld plugin).
    """
    from .. import plugins

    benchmark = plugins.BENCHMARKS.get("shapesworld")
    if benchmark is None or benchmark.short_clips is None:
        raise ValueError("shapesworld_examples: no plugin registers the 'shapesworld' benchmark's short clips")
    clips = benchmark.short_clips(split, n, seed_base=seed_base, mc_fraction=mc_fraction, fps=fps, **clip_kwargs)
    return [_shapesworld_example(frames, rec, split, fps) for frames, rec in clips]


class ShapesWorldDataset(torch.utils.data.Dataset):
    """``n`` ShapesWorld examples generated on demand (item ``i`` = clip ``seed_base + i`` of ``split``),
    so a long run holds no frames in memory; the same index always gives the same example."""

    def __init__(self, split: str, n: int, *, seed_base: int = 0, mc_fraction: float = 0.5) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.split, self.n, self.seed_base, self.mc_fraction = split, n, seed_base, mc_fraction

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> VideoQAExample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        (ex,) = shapesworld_examples(self.split, 1, seed_base=self.seed_base + index, mc_fraction=self.mc_fraction)
        return ex


def write_shapesworld_json(
    path: str | Path, split: str, n: int, *, seed_base: int = 0, mc_fraction: float = 0.5, jsonl: bool = False
) -> Path:
    """Write ``n`` ShapesWorld clips as mp4 files next to ``path`` and their questions as a
    LLaVA-Video-style instruction file (``video`` + ``conversations``); returns ``path``.

    Reading it back with :func:`load_instruction_file` goes through the project's video reader, the
    same path real instruction data takes.
    """
    from ..video import write_video

    path = Path(path)
    video_dir = path.parent / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for ex in shapesworld_examples(split, n, seed_base=seed_base, mc_fraction=mc_fraction):
        name = f"{ex.video}.mp4".replace("/", "_")
        write_video(video_dir / name, ex.frames, fps=1.0)
        records.append({
            "id": ex.video, "video": f"videos/{name}", "task_type": ex.task_type,
            "conversations": [{"from": "human", "value": f"<video>\n{ex.question}"},
                              {"from": "gpt", "value": ex.answer}],
        })
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1) + "\n")
    return path
