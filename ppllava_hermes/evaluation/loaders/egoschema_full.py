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

from ._common import LoadResult, PathLike
from .offline import load_egoschema


def load_egoschema_full(
    annotation_path: PathLike, video_dir: PathLike | None = None, answers_path: PathLike | None = None
) -> LoadResult:
    """Load every EgoSchema question, with answers where ``answers_path`` (or the item) gives them."""
    return load_egoschema(annotation_path, video_dir, answers_path, hidden_answers=True)
