"""Benchmark loaders: each benchmark's annotation file -> :class:`~ppllava_hermes.evaluation.records.QARecord`.

Use :func:`load_benchmark` with a name from :data:`BENCHMARKS`, or the per-benchmark functions::

    result = load_benchmark("ovo_bench", "ovo_bench_new.json", video_dir="/data/ovo")
    result.records   # list[QARecord]
    result.skipped   # list[SkippedRecord(index, reason)], also announced by a MalformedRecordWarning

Conventions shared by all loaders: options are stored without their letters (an option that is only a
label, "B." or "(B)", is the option "B"), a record with an empty option or whose answer repeats another
option's text is skipped as malformed, a multiple-choice answer is a 0-based index into them (whatever
the file used: letter, 0-based index or option text), times are seconds, and a file that is not JSON or
not of the expected top-level shape raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._common import (
    LoadResult,
    Malformed,
    MalformedRecordWarning,
    PathLike,
    SkippedRecord,
    parse_time_range,
    parse_timestamp,
    split_embedded_options,
    strip_option_letters,
)
from .egoschema_full import load_egoschema_full
from .msrvtt_caption import load_msrvtt_caption
from .offline import load_egoschema, load_lvbench, load_mlvu, load_mvbench, load_videomme
from .open_qa import (
    load_activitynet_qa,
    load_msrvtt_qa,
    load_msvd_qa,
    load_vcgbench,
    load_vcgbench_consistency,
    load_vcgbench_generic,
    load_vcgbench_temporal,
)
from .streambench import load_streambench
from .streaming import (
    load_ovo_bench,
    load_streamingbench,
    load_streamingbench_omni,
    load_streamingbench_proactive,
    load_streamingbench_real,
    load_streamingbench_sqa,
)

Loader = Callable[..., LoadResult]

#: Benchmark name -> loader ``(annotation_path, video_dir=None, **kw) -> LoadResult``.
BENCHMARKS: dict[str, Loader] = {
    "streamingbench": load_streamingbench,  # subset from the file name / shape, or subset=...
    "streamingbench_real": load_streamingbench_real,
    "streamingbench_omni": load_streamingbench_omni,
    "streamingbench_sqa": load_streamingbench_sqa,
    "streamingbench_proactive": load_streamingbench_proactive,
    "ovo_bench": load_ovo_bench,
    "streambench": load_streambench,  # StreamChat's StreamBench v0.3 (open answers, LLM judge)
    "egoschema": load_egoschema,  # answers_path=subset_answers.json
    "egoschema_full": load_egoschema_full,  # all 5031 questions; answers_path optional (server scores)
    "mvbench": load_mvbench,
    "videomme": load_videomme,
    "mlvu": load_mlvu,
    "mlvu_needle": load_mlvu,  # same loader: the official per-task format
    "lvbench": load_lvbench,
    "activitynet_qa": load_activitynet_qa,  # answers_path defaults to the sibling ..._a.json
    "msvd_qa": load_msvd_qa,
    "msrvtt_qa": load_msrvtt_qa,
    "msrvtt_caption": load_msrvtt_caption,  # captioning (test_videodatainfo.json); subset=split
    "vcgbench": load_vcgbench,  # subset from the file name / shape, or subset=...
    "vcgbench_generic": load_vcgbench_generic,
    "vcgbench_temporal": load_vcgbench_temporal,
    "vcgbench_consistency": load_vcgbench_consistency,
}


def _key(name: str) -> str:
    # "OVO-Bench", "ovo_bench" and "ovobench" are the same benchmark; so are "Video-MME" and "videomme".
    return "".join(ch for ch in name.lower() if ch.isalnum())


_BY_KEY = {_key(name): name for name in BENCHMARKS}


def canonical_name(name: str) -> str:
    """The :data:`BENCHMARKS` key for a loosely written name; ``ValueError`` if unknown."""
    try:
        return _BY_KEY[_key(name)]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def load_benchmark(
    name: str, annotation_path: PathLike, video_dir: PathLike | None = None, **kw: Any
) -> LoadResult:
    """Load ``annotation_path`` with the loader registered as ``name`` (case, "-" and "_" ignored).

    Extra keyword arguments go to the loader (``answers_path`` for EgoSchema / ActivityNet-QA,
    ``subset`` for StreamingBench / VCGBench and the split for MSR-VTT captions, ``split_consistency``
    for VCGBench consistency).
    """
    return BENCHMARKS[canonical_name(name)](annotation_path, video_dir, **kw)


__all__ = [
    "BENCHMARKS",
    "LoadResult",
    "Malformed",
    "MalformedRecordWarning",
    "SkippedRecord",
    "canonical_name",
    "load_activitynet_qa",
    "load_benchmark",
    "load_egoschema",
    "load_egoschema_full",
    "load_lvbench",
    "load_mlvu",
    "load_msrvtt_caption",
    "load_msrvtt_qa",
    "load_msvd_qa",
    "load_mvbench",
    "load_ovo_bench",
    "load_streambench",
    "load_streamingbench",
    "load_streamingbench_omni",
    "load_streamingbench_proactive",
    "load_streamingbench_real",
    "load_streamingbench_sqa",
    "load_vcgbench",
    "load_vcgbench_consistency",
    "load_vcgbench_generic",
    "load_vcgbench_temporal",
    "load_videomme",
    "parse_time_range",
    "parse_timestamp",
    "split_embedded_options",
    "strip_option_letters",
]
