"""Predictions of a run, keyed by record: the input of the benchmark-specific scorers.

StreamBench's judge (:mod:`.streambench_scoring`), the caption metrics (:mod:`.captioning`) and the
EgoSchema submission (:mod:`.egoschema`) score a run after it ends, from ``{qid: prediction}``.
:func:`predictions_from_results` builds that mapping from the run's per-record results.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def predictions_from_results(results: Iterable[Any]) -> dict[str, str | None]:
    """``{qid: prediction}`` from a run's results (``RecordResult``-like: ``qid``, ``prediction``, ``error``).

    A result with an ``error`` maps to None: the model gave no answer, which each scorer counts as
    wrong rather than scoring the empty text. Two results for one qid (a run merged twice) raise
    ``ValueError`` naming it.
    """
    out: dict[str, str | None] = {}
    for result in results:
        qid = str(result.qid)
        if qid in out:
            raise ValueError(f"results: qid {qid!r} appears twice")
        out[qid] = None if getattr(result, "error", None) else str(result.prediction)
    return out
