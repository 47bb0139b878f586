"""Loader of the full EgoSchema set (5031 questions), whose answers are not public.

The ``egoschema`` loader (:func:`~.offline.load_egoschema`) needs an answer for every question, so it
loads only the 500 of ``subset_answers.json``. :func:`load_egoschema_full` loads every question of
``questions.json`` (or the eval-harness ``test_qa.json``), the same records that loader makes
(benchmark "egoschema", qid = q_uid, five options, task_kind "other"), with one difference: where the
answer is unknown, ``answer`` is a placeholder 0 and ``extra["answer_known"]`` is False (True where
``answers_path`` or the item itself gives it). Such a run is scored by EgoSchema's server from the
file :func:`~ppllava_hermes.evaluation.egoschema.write_egoschema_submission` writes; its own
accuracy is meaningful only on the records with a known answer
(:func:`~ppllava_hermes.evaluation.egoschema.egoschema_subset_accuracy`).

Malformed items (skipped and reported as in every loader): no q_uid, fewer than two options, an
empty option, or an answer (from the item or ``answers_path``) that is not an option index. The shared
check that the answer's text repeats no other option runs on the placeholder too, so an item whose
option 0 repeats another option is skipped even when its answer is unknown.
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
    first_key,
    qid_of,
    read_json,
    require,
    require_options,
    require_text,
    resolve_video,
)
from .offline import _embedded_prompt


def load_egoschema_full(
    annotation_path: PathLike, video_dir: PathLike | None = None, answers_path: PathLike | None = None
) -> LoadResult:
    """Load every EgoSchema question, with answers where ``answers_path`` (or the item) gives them."""
    path = Path(annotation_path)
    data = read_json(path, list)
    answers: dict[str, Any] = read_json(answers_path, dict) if answers_path is not None else {}
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
            own = item.get("answer")
            known = answers.get(uid, own)
            n = len(options)
            if uid in answers and own is not None and answer_from_index(own, n) != answer_from_index(answers[uid], n):
                raise Malformed(
                    f"answer {own!r} in the questions file disagrees with {answers[uid]!r} in {answers_path}"
                )
            answer = answer_from_index(known, len(options)) if known is not None else 0
            extra["answer_known"] = known is not None
            for key in ("duration", "google_drive_id", "id"):
                if key in item:
                    extra[key] = item[key]
            return QARecord(
                benchmark="egoschema",
                qid=uid,
                video=resolve_video(uid, video_dir, ".mp4"),
                question=question,
                options=options,
                answer=answer,
                task_type="egoschema",
                task_kind="other",
                extra=extra,
            )

        out.add(i, build, qid)
    return out.finish()
