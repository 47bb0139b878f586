"""Evaluation: benchmark records, loaders of each benchmark's annotation files, answer scoring, the evaluator.

``load_benchmark(name, annotation_path, video_dir=None, **kw)`` turns a benchmark file into
:class:`QARecord` s (see :data:`BENCHMARKS` for the names); :mod:`.scoring` reads and scores answers.
The evaluator (loaded on first use, it needs torch): :mod:`.protocols` (offline and streaming),
:mod:`.runner` (``EvalConfig``, ``run_eval``, ``run_comparison``, sharding), :mod:`.report`
(``write_report``: JSON, Markdown, plots), :mod:`.frames` (video files or ShapesWorld worlds).
"""

from .loaders import BENCHMARKS, LoadResult, MalformedRecordWarning, SkippedRecord, load_benchmark
from .records import TASK_KINDS, QARecord
from .scoring import (
    AccuracyReport,
    AccuracyStat,
    JudgeError,
    JudgeVerdict,
    OpenAIJudge,
    accuracy,
    normalize_answer,
    parse_choice,
    score_multiple_choice,
    score_open,
)

__all__ = [
    "BENCHMARKS",
    "TASK_KINDS",
    "AccuracyReport",
    "AccuracyStat",
    "JudgeError",
    "JudgeVerdict",
    "LoadResult",
    "MalformedRecordWarning",
    "OpenAIJudge",
    "QARecord",
    "SkippedRecord",
    "accuracy",
    "load_benchmark",
    "normalize_answer",
    "parse_choice",
    "score_multiple_choice",
    "score_open",
]

# The evaluator needs torch and the models: imported on first use, so records and scoring stay light.
_LAZY = {
    "EvalConfig": "runner", "EvalRun": "runner", "run_eval": "runner", "run_comparison": "runner",
    "MethodConfig": "protocols", "ProtocolConfig": "protocols", "RecordResult": "protocols",
    "write_report": "report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
