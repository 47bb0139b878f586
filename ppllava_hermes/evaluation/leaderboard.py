"""Leaderboard averages: the numbers a benchmark's own scoring script prints, from a run's results.

**OVO-Bench** (JoeLeelyf/OVO-Bench, its ``utils/OVOBenchScore.py``). Twelve tasks
in three categories: Backward Tracing (EPM, ASI, HLD), Real-Time Visual Perception (STU, OJR, ATR, ACR,
OCR, FPD) and Forward Active Responding (REC, SSR, CRR). What is averaged, and how:

* a task's accuracy: backward and real-time tasks, the share of questions right; forward tasks, the
  share of *probes* right over all of the task's probes (``OVOBenchScore.calculate_score_forward``
  appends one score per ``test_info`` entry), not the mean of per-question fractions. A forward question
  that failed as a whole (no probes in its result) counts as one wrong probe here;
* a category's average: the mean of its tasks' accuracies (``Backward Avg.``, ``Realtime Avg.``,
  ``Forward Avg.`` in the script);
* ``task_mean_with_forward``: the mean of the twelve task accuracies, the ``Total Avg.`` that OVO-Bench's
  own ``utils/OVOBenchScore.py`` prints (its README's Gemini example: task accuracies whose mean is 65.25,
  printed beside category averages of 62.32 / 70.77 / 57.15), and ``task_mean_without_forward`` the same
  over the nine real-time and backward tasks;
* ``overall_with_forward``: the mean of the three category averages, the other convention in circulation
  (tables that print one column per category and their mean; copies of the scoring script that replace
  ``Total Avg.`` by it), 63.41 on the same example;
* ``overall_without_forward``: the mean of the real-time and backward averages, what papers on models
  that cannot respond proactively report as their OVO-Bench average (forward is left out, not counted 0).

Published OVO-Bench numbers use one of these four; which one must be read from each paper. A category
with no task in the results is None, and so is every average that needs it.

Accuracies here are fractions in [0, 1]. What this module does not know: how results were produced.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .loaders.streaming import OVO_BACKWARD, OVO_FORWARD, OVO_REALTIME

#: OVO-Bench category of each task code.
OVO_CATEGORY: dict[str, str] = {
    **dict.fromkeys(OVO_BACKWARD, "backward"),
    **dict.fromkeys(OVO_REALTIME, "realtime"),
    **dict.fromkeys(OVO_FORWARD, "forward"),
}
OVO_CATEGORIES: tuple[str, ...] = ("realtime", "backward", "forward")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def ovo_averages(task_accuracy: Mapping[str, float]) -> dict[str, Any]:
    """Category averages and the four overall averages (see the module docstring) from per-task accuracies.

    ``task_accuracy`` maps OVO-Bench task codes to accuracies in [0, 1]; an unknown code raises
    ``ValueError`` naming it. Returns ``{"tasks", "categories", "overall_with_forward",
    "overall_without_forward", "task_mean_with_forward", "task_mean_without_forward"}``.
    """
    unknown = sorted(set(task_accuracy) - set(OVO_CATEGORY))
    if unknown:
        raise ValueError(f"OVO-Bench task {unknown[0]!r} is not one of {', '.join(OVO_CATEGORY)}")
    by_category: dict[str, list[float]] = defaultdict(list)
    for task, acc in task_accuracy.items():
        by_category[OVO_CATEGORY[task]].append(float(acc))
    categories = {c: _mean(by_category[c]) for c in OVO_CATEGORIES}
    with_fw = [categories[c] for c in OVO_CATEGORIES]
    without_fw = [categories["realtime"], categories["backward"]]
    tasks_no_fw = by_category["realtime"] + by_category["backward"]
    return {
        "tasks": {t: float(task_accuracy[t]) for t in OVO_CATEGORY if t in task_accuracy},
        "categories": categories,
        "overall_with_forward": None if None in with_fw else _mean(with_fw),  # type: ignore[arg-type]
        "overall_without_forward": None if None in without_fw else _mean(without_fw),  # type: ignore[arg-type]
        "task_mean_with_forward": None if None in with_fw else _mean(tasks_no_fw + by_category["forward"]),
        "task_mean_without_forward": None if None in without_fw else _mean(tasks_no_fw),
    }


def ovo_task_accuracy(results: Iterable[Any]) -> dict[str, float]:
    """Per-task accuracy of OVO-Bench results (``RecordResult``-like: ``benchmark``, ``task_type``, ``score``,
    ``probes``), scored as OVO-Bench's script does (forward: over probes). Other benchmarks' results are
    ignored."""
    right: dict[str, float] = defaultdict(float)
    total: dict[str, int] = defaultdict(int)
    for r in results:
        if r.benchmark != "ovo_bench" or r.task_type not in OVO_CATEGORY:
            continue
        if OVO_CATEGORY[r.task_type] == "forward":
            probes = list(r.probes or [])
            right[r.task_type] += sum(bool(p.get("correct")) for p in probes)
            total[r.task_type] += max(1, len(probes))
        else:
            right[r.task_type] += float(r.score)
            total[r.task_type] += 1
    return {t: right[t] / total[t] for t in OVO_CATEGORY if total.get(t)}


def ovo_bench_summary(results: Iterable[Any]) -> dict[str, Any] | None:
    """:func:`ovo_averages` of a run's OVO-Bench results (None when it has none)."""
    tasks = ovo_task_accuracy(results)
    return ovo_averages(tasks) if tasks else None


def ovo_markdown(rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Markdown lines: one row per ``(run label, ovo_averages(...))``, numbers in percent."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    lines = ["| run | real-time | backward | forward | overall (with forward) | overall (without forward) | "
             "task mean (with forward) | task mean (without forward) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, s in rows:
        c = s["categories"]
        lines.append(f"| {label} | {pct(c['realtime'])} | {pct(c['backward'])} | {pct(c['forward'])} | "
                     f"{pct(s['overall_with_forward'])} | {pct(s['overall_without_forward'])} | "
                     f"{pct(s['task_mean_with_forward'])} | {pct(s['task_mean_without_forward'])} |")
    return lines
