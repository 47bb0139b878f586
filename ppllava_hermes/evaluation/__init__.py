"""Evaluation: benchmark records, loaders of each benchmark's annotation files, and answer scoring.

``load_benchmark(name, annotation_path, video_dir=None, **kw)`` turns a benchmark file into
:class:`QARecord` s (see :data:`BENCHMARKS` for the names); :mod:`.scoring` reads and scores answers.
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
