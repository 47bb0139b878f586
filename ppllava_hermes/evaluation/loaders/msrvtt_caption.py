"""Loader of MSR-VTT captioning (``test_videodatainfo.json``, also ``train_val_videodatainfo.json``).

File format: one JSON object ``{"videos": [{"video_id": "video7010", "split": "test", "category",
"url", "start time", "end time", "id"}, ...], "sentences": [{"video_id", "caption", "sen_id"}, ...]}``
(20 reference captions per video). ``start time`` / ``end time`` place the clip in its source YouTube
video; the released clip files already are that segment, so they are kept in ``extra`` and not used as
the record's ``start`` / ``end`` (which would cut the clip again).

What :func:`load_msrvtt_caption` makes: one record per video, ``benchmark="msrvtt_caption"``, qid =
``video_id``, video ``<video_id>.mp4`` (other extensions tried under ``video_dir``), question =
:data:`~ppllava_hermes.evaluation.captioning.CAPTION_PROMPT`, ``answer`` = the first reference by
``sen_id``, ``extra["references"]`` = every reference caption in ``sen_id`` order (what the caption
metrics compare with), ``task_type="caption"``, ``task_kind="open"`` (asked after the whole video).
``extra`` also keeps ``split``, ``category``, ``url``, ``source_start`` / ``source_end``.

Captions are not scored by the evaluator's open-answer match (a run's accuracy means nothing for
them): score a run's predictions with :func:`~ppllava_hermes.evaluation.captioning.caption_metrics`.

Malformed items: a video that is not an object, has no ``video_id``, repeats one or has no usable
reference caption is skipped (:class:`~._common.SkippedRecord`, index = its position in ``videos``).
A sentence that is not an object or lacks ``video_id`` / ``caption`` is not a record: it is left out
and counted, with the sentences naming no listed video, in one :class:`~._common.MalformedRecordWarning`.
A file that is not such an object raises ``ValueError`` naming it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from ..captioning import CAPTION_PROMPT
from ..records import QARecord
from ._common import (
    LoadResult,
    Malformed,
    MalformedRecordWarning,
    PathLike,
    RecordCollector,
    read_json,
    require,
    require_text,
    resolve_video,
)

MSRVTT_SPLITS = ("train", "validate", "test")


def _sen_order(sentence: dict[str, Any], position: int) -> tuple[float, int]:
    sen_id = sentence.get("sen_id")
    try:
        key = float(sen_id)
    except (TypeError, ValueError):
        key = math.inf  # no usable sen_id: after the numbered ones, in file order
    return key, position


def load_msrvtt_caption(
    annotation_path: PathLike, video_dir: PathLike | None = None, subset: str | None = None
) -> LoadResult:
    """Load MSR-VTT caption records (see the module docstring).

    Args:
        subset: keep only the videos of this split ("train", "validate" or "test"; the evaluator's
            ``--subset``); by default every video of the file.
    """
    path = Path(annotation_path)
    if subset is not None and subset not in MSRVTT_SPLITS:
        raise ValueError(f"{path}: unknown MSR-VTT split {subset!r}; expected one of {MSRVTT_SPLITS}")
    data = read_json(path, dict)
    videos, sentences = data.get("videos"), data.get("sentences")
    if not isinstance(videos, list) or not isinstance(sentences, list):
        raise ValueError(f"{path}: expected an object with 'videos' and 'sentences' lists")
    captions: dict[str, list[tuple[tuple[float, int], str]]] = {}
    bad: list[int] = []
    for s, sentence in enumerate(sentences):
        try:
            vid = require_text(require(sentence, "video_id"), "video_id")
            text = require_text(require(sentence, "caption"), "caption")
        except Malformed:
            bad.append(s)
            continue
        captions.setdefault(vid, []).append((_sen_order(sentence, s), text))
    out = RecordCollector("msrvtt_caption", path)
    listed: set[str] = set()
    for i, item in enumerate(videos):
        vid_raw = item.get("video_id") if isinstance(item, dict) else None
        qid = str(vid_raw) if vid_raw is not None else None
        if isinstance(vid_raw, str) and vid_raw.strip():
            listed.add(vid_raw.strip())
        if subset is not None and isinstance(item, dict) and item.get("split") != subset:
            continue

        def build(item: Any = item) -> QARecord:
            vid = require_text(require(item, "video_id"), "video_id")
            refs = [text for _, text in sorted(captions.get(vid, []))]
            if not refs:
                raise Malformed(f"video {vid!r} has no reference caption")
            extra: dict[str, Any] = {"references": refs}
            for key, name in (("split", "split"), ("category", "category"), ("url", "url"),
                              ("start time", "source_start"), ("end time", "source_end")):  # fmt: skip
                if item.get(key) is not None:
                    extra[name] = item[key]
            return QARecord(
                benchmark="msrvtt_caption",
                qid=vid,
                video=resolve_video(vid, video_dir, ".mp4"),
                question=CAPTION_PROMPT,
                answer=refs[0],
                task_type="caption",
                task_kind="open",
                extra=extra,
            )

        out.add(i, build, qid)
    orphans = sum(len(v) for k, v in captions.items() if k not in listed)
    if bad or orphans:
        # Sentences are not records, so they are not in ``skipped``; still worth knowing.
        first = f"; first bad sentence index {bad[0]}" if bad else ""
        warnings.warn(
            f"msrvtt_caption: {path}: {len(bad)} malformed sentence(s) left out and {orphans} sentence(s) "
            f"name no listed video{first}",
            MalformedRecordWarning,
            stacklevel=2,
        )
    return out.finish()
