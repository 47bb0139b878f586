"""Reports of evaluation runs: a JSON file, a Markdown table and PNG plots.

``write_report(runs, out_dir)`` writes

* ``results.json``: ``{"title", "command", "created", "summary": [row, ...], "runs": [run, ...]}``;
  a summary row has exactly :data:`SUMMARY_FIELDS`, a run ``{"label", "split", "config", "method",
  "seconds", "n", "accuracy", "skipped", "results"}`` and each result exactly
  :data:`~.runner.RESULT_FIELDS` (one per record, see :class:`~.protocols.RecordResult`);
* ``summary.md``: one line per run (accuracy and cost side by side) and accuracy per task kind; for
  OVO-Bench runs also its leaderboard averages with and without forward active responding
  (:mod:`.leaderboard`, also under ``"leaderboard"`` in ``results.json``);
* ``accuracy_vs_budget.png``, ``ttft_vs_stream_length.png``, ``short_vs_long.png`` (matplotlib,
  drawn off-screen with the Agg canvas).

While a run goes, :class:`ResultsLog` appends each record's result to ``results.jsonl`` in the same folder
(one JSON object a line: a ``{"header": ...}`` line naming the evaluation, then ``{"run": label, "result":
{...}}`` lines), so an interrupted run keeps what it answered and ``eval --resume`` continues from it.

Accuracy is the mean of the records' scores (0/1, or the fraction of probes right for OVO-Bench
forward records). Latencies and token counts are means over records; KV bytes and process memory are
maxima. What this module does not know: how results were produced.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..compat import require
from .leaderboard import ovo_bench_summary, ovo_markdown
from .protocols import RecordResult
from .runner import EvalRun

SUMMARY_FIELDS: tuple[str, ...] = (
    "config", "budget", "protocol", "split", "task_kind", "task_type", "n", "accuracy", "ttft_ms",
    "total_ms", "visual_tokens", "memory_tokens", "peak_kv_bytes", "peak_rss_bytes", "frames_per_s",
)
RUN_FIELDS: tuple[str, ...] = ("label", "split", "config", "method", "seconds", "n", "accuracy", "skipped", "results")
PLOTS = ("accuracy_vs_budget.png", "ttft_vs_stream_length.png", "short_vs_long.png")
LOG_NAME = "results.jsonl"
REPORT_FILES = ("results.json", "summary.md", LOG_NAME, *PLOTS)


class OutputPathError(ValueError):
    """An output path that cannot be written (a file where a folder is expected, a missing parent, ...)."""


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Make sure ``path`` is (or can become) a writable folder for the report, and create it.

    Raises :class:`OutputPathError` naming ``flag`` when it is a file, when a folder above it is a file,
    when it cannot be written, or when one of the report's files (:data:`REPORT_FILES`) is a folder.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{flag} {path}: is a file, expected a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: {parent} is not writable")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"{flag} {path}: cannot create the folder ({err.strerror or err})") from None
    for name in REPORT_FILES:
        if (out / name).is_dir():
            raise OutputPathError(f"{flag} {path}: {out / name} is a folder, the report writes a file there")
    return out


def _jsonable(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparing headers."""
    return json.loads(json.dumps(value, default=str))


class ResultsLog:
    """The JSON-lines log of an evaluation: results appended (and flushed) one by one as they come.

    ``ResultsLog(folder, header)`` starts a new log (replacing an old one); ``ResultsLog(folder, header,
    resume=True)`` keeps the results of an earlier run with the same header (a line cut short by a kill is
    dropped) and appends after them. ``done`` maps run labels to their results so far.
    """

    def __init__(self, folder: str | Path, header: dict[str, Any], *, resume: bool = False,
                 name: str = LOG_NAME) -> None:
        self.path = Path(folder) / name
        self.header = _jsonable(header)
        self.done: dict[str, list[RecordResult]] = {}
        lines = [json.dumps({"header": self.header})]
        if resume:
            lines = self._read()
        self.path.write_text("".join(line + "\n" for line in lines))
        self._file = self.path.open("a")

    def _read(self) -> list[str]:
        if not self.path.is_file():
            raise OutputPathError(f"--resume: no {self.path.name} in {self.path.parent} to continue from")
        raw = self.path.read_text().splitlines()
        kept: list[str] = []
        for number, line in enumerate(raw, 1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                if number == len(raw):  # the last line, cut short by a kill: answered again
                    break
                raise OutputPathError(f"--resume: {self.path} line {number} is not JSON") from None
            if number == 1:
                if not isinstance(item, dict) or "header" not in item:
                    raise OutputPathError(f"--resume: {self.path} has no header line")
                if item["header"] != self.header:
                    theirs, ours = item["header"], self.header
                    keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
                    raise OutputPathError(f"--resume: {self.path} was written by a different evaluation "
                                          f"({', '.join(keys)} differ); use another --out or drop --resume")
            else:
                label, result = item["run"], RecordResult(**item["result"])
                runs = self.done.setdefault(label, [])
                runs[:] = [r for r in runs if r.index != result.index] + [result]
            kept.append(line)
        return kept

    @property
    def count(self) -> int:
        """Results in the log (kept from before and appended since)."""
        return sum(len(v) for v in self.done.values())

    def append(self, label: str, result: RecordResult) -> None:
        """Write one result and flush it to the operating system (it survives a kill of this process)."""
        self._file.write(json.dumps({"run": label, "result": asdict(result)}) + "\n")
        self._file.flush()
        self.done.setdefault(label, []).append(result)

    def close(self) -> None:
        self._file.close()


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def run_budget(run: EvalRun) -> int | None:
    """The budget that applies to a run (None for full context, pooling alone and uniform-N)."""
    return run.method.budget if run.method.uses_budget else None


def aggregate(run: EvalRun, results: Sequence[RecordResult], task_kind: str, task_type: str) -> dict[str, Any]:
    """One summary row over ``results`` of ``run``."""
    return {
        "config": run.method.name,
        "budget": run_budget(run),
        "protocol": run.config.protocol,
        "split": run.split,
        "task_kind": task_kind,
        "task_type": task_type,
        "n": len(results),
        "accuracy": _mean([r.score for r in results]),
        "ttft_ms": 1000 * _mean([r.ttft_s for r in results]),
        "total_ms": 1000 * _mean([r.total_s for r in results]),
        "visual_tokens": _mean([r.visual_tokens for r in results]),
        "memory_tokens": _mean([r.memory_tokens for r in results]),
        "peak_kv_bytes": max((r.peak_kv_bytes for r in results), default=0),
        "peak_rss_bytes": max((r.peak_rss_bytes for r in results), default=0),
        "frames_per_s": _mean([r.frames_per_s for r in results]),
    }


def summarize(run: EvalRun) -> list[dict[str, Any]]:
    """Rows: overall ("all", "all"), per task kind (kind, "all"), per task type (kind, type)."""
    rows = [aggregate(run, run.results, "all", "all")]
    kinds: dict[str, list[RecordResult]] = defaultdict(list)
    types: dict[tuple[str, str], list[RecordResult]] = defaultdict(list)
    for r in run.results:
        kinds[r.task_kind].append(r)
        types[(r.task_kind, r.task_type)].append(r)
    rows += [aggregate(run, rs, k, "all") for k, rs in sorted(kinds.items())]
    rows += [aggregate(run, rs, k, t) for (k, t), rs in sorted(types.items())]
    return rows


def run_label(run: EvalRun) -> str:
    budget = run_budget(run)
    return run.method.name if budget is None else f"{run.method.name}@{budget}"


def run_json(run: EvalRun) -> dict[str, Any]:
    return {
        "label": run_label(run),
        "split": run.split,
        "config": asdict(run.config),
        "method": asdict(run.method),
        "seconds": run.seconds,
        "n": len(run.results),
        "accuracy": run.accuracy,
        "skipped": run.skipped,
        "results": [asdict(r) for r in run.results],
    }


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def leaderboard_rows(runs: Sequence[EvalRun]) -> list[dict[str, Any]]:
    """OVO-Bench leaderboard averages of each run that has OVO-Bench results (``{"run", "split", ...}``)."""
    rows = []
    for run in runs:
        summary = ovo_bench_summary(run.results)
        if summary is not None:
            rows.append({"run": run_label(run), "split": run.split, **summary})
    return rows


def markdown(runs: Sequence[EvalRun], *, title: str = "Evaluation", command: str | None = None) -> str:
    """The Markdown report: settings, one line per run, accuracy per task kind."""
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        "| split | config | budget | protocol | n | accuracy | TTFT ms | total ms | visual tokens into LLM | "
        "memory entries | peak KV | peak RSS | frames/s |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        row = summarize(run)[0]
        budget = "-" if row["budget"] is None else str(row["budget"])
        lines.append(
            f"| {run.split or '-'} | {row['config']} | {budget} | {row['protocol']} | {row['n']} | "
            f"{100 * row['accuracy']:.1f}% | {row['ttft_ms']:.1f} | {row['total_ms']:.1f} | "
            f"{row['visual_tokens']:.0f} | {row['memory_tokens']:.0f} | {_bytes(row['peak_kv_bytes'])} | "
            f"{_bytes(row['peak_rss_bytes'])} | {row['frames_per_s']:.1f} |"
        )
    kinds = sorted({r.task_kind for run in runs for r in run.results})
    if len(kinds) > 1:
        lines += ["", "Accuracy by task kind (n in brackets):", "",
                  "| split | run | " + " | ".join(kinds) + " |", "| --- | --- | " + " | ".join("---:" for _ in kinds) + " |"]
        for run in runs:
            by = {row["task_kind"]: row for row in summarize(run) if row["task_type"] == "all"}
            cells = [f"{100 * by[k]['accuracy']:.1f}% ({by[k]['n']})" if k in by else "-" for k in kinds]
            lines.append(f"| {run.split or '-'} | {run_label(run)} | " + " | ".join(cells) + " |")
    ovo = leaderboard_rows(runs)
    if ovo:
        lines += ["", "OVO-Bench averages (%; task accuracies as its scoring script computes them, forward over "
                      "probes; which average a paper reports must be read from it):", "",
                  *ovo_markdown((row["run"], row) for row in ovo)]
    skipped = max((len(run.skipped) for run in runs), default=0)
    if skipped:
        lines += ["", f"{skipped} records were skipped (malformed, or forward questions offline): reasons in "
                      "results.json."]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- plots


def _figure(width: float = 7.0, height: float = 4.5):
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plots").FigureCanvasAgg
    Figure = require("matplotlib.figure", "plots").Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)  # off-screen: no display, no global pyplot state
    return fig


def plot_accuracy_vs_budget(runs: Sequence[EvalRun], path: Path) -> Path:
    splits = list(dict.fromkeys(run.split or "all" for run in runs))
    fig = _figure(5.0 * len(splits), 4.2)
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    names = list(dict.fromkeys(run.method.name for run in runs))
    for ax, split in zip(axes, splits, strict=True):
        chosen = [run for run in runs if (run.split or "all") == split]
        lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
        flat: dict[str, float] = {}
        for run in chosen:
            budget = run_budget(run)
            if budget is None:
                flat[run.method.name] = run.accuracy
            else:
                lines[run.method.name].append((budget, run.accuracy))
        for name, points in sorted(lines.items()):
            points.sort()
            ax.plot([b for b, _ in points], [100 * a for _, a in points], marker="o", label=name,
                    color=f"C{names.index(name) % 10}")
        for k, (name, acc) in enumerate(sorted(flat.items())):
            ax.axhline(100 * acc, linestyle=("--", ":", "-.")[k % 3], color=f"C{names.index(name) % 10}",
                       label=f"{name} (no budget)")
        budgets = sorted({b for pts in lines.values() for b, _ in pts})
        if budgets and budgets[0] > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.minorticks_off()
        ax.set_xlabel("budget (visual tokens per layer)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(split)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _styles(runs: Sequence[EvalRun]) -> dict[int, dict[str, Any]]:
    """One colour per configuration, one line style per budget (solid: the largest or none)."""
    names = list(dict.fromkeys(run.method.name for run in runs))
    budgets = sorted({b for run in runs if (b := run_budget(run)) is not None}, reverse=True)
    styles = ("-", "--", ":", "-.")
    return {id(run): {"color": f"C{names.index(run.method.name) % 10}",
                      "linestyle": styles[budgets.index(run_budget(run)) % 4] if run_budget(run) is not None else "-"}
            for run in runs}


def plot_ttft_vs_stream_length(runs: Sequence[EvalRun], path: Path) -> Path:
    """TTFT against the stream position of the question, one panel per split."""
    splits = list(dict.fromkeys(run.split or "all" for run in runs)) or ["all"]
    fig = _figure(5.5 * len(splits), 4.5)
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    style = _styles(runs)
    for ax, split in zip(axes, splits, strict=True):
        drawn = 0
        for run in (r for r in runs if (r.split or "all") == split):
            # mean TTFT per stream time: several records may be asked at the same moment
            by_t: dict[float, list[float]] = defaultdict(list)
            for r in run.results:
                if r.stream_seconds is not None:
                    by_t[round(r.stream_seconds, 3)].append(1000 * r.ttft_s)
            if not by_t:
                continue
            drawn += 1
            xs = sorted(by_t)
            ax.plot(xs, [_mean(by_t[x]) for x in xs], marker=".", linewidth=1, label=run_label(run), **style[id(run)])
        ax.set_xlabel("stream length at the question (s of video in memory)")
        ax.set_ylabel("time to first token (ms)")
        ax.set_title(split)
        ax.grid(alpha=0.3)
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=6, ncol=2)
        else:
            ax.text(0.5, 0.5, "no results with a stream position", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _group_of(run: EvalRun, r: RecordResult) -> str:
    if run.split:
        return run.split
    return r.duration_class or r.task_kind


def plot_short_vs_long(runs: Sequence[EvalRun], path: Path) -> Path:
    """Accuracy per group (the run's split, else the record's duration class, else its task kind)."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    style = _styles(runs)
    look: dict[str, dict[str, Any]] = {}
    for run in runs:
        look[run_label(run)] = style[id(run)]
        for r in run.results:
            table[run_label(run)][_group_of(run, r)].append(r.score)
    groups = sorted({g for row in table.values() for g in row},
                    key=lambda g: (["short", "medium", "long", "streaming"] + [g]).index(g))
    labels = list(table)
    fig = _figure(max(7.0, 0.35 * len(labels) * max(1, len(groups))), 4.5)
    ax = fig.subplots()
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        xs = [g + (k - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        ys = [100 * _mean(table[label][g]) if table[label][g] else math.nan for g in groups]
        hatch = {"-": None, "--": "//", ":": "..", "-.": "xx"}[look[label]["linestyle"]]
        ax.bar(xs, ys, width=width, label=label, color=look[label]["color"], hatch=hatch, edgecolor="white")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def load_runs(path: str | Path) -> list[EvalRun]:
    """The runs of a ``results.json`` written by :func:`write_report` (to re-draw tables and plots)."""
    from .protocols import MethodConfig
    from .runner import EvalConfig

    data = json.loads(Path(path).read_text())
    runs = []
    for r in data["runs"]:
        config = dict(r["config"], pool_kernel=tuple(r["config"]["pool_kernel"]),
                      task_kinds=tuple(r["config"]["task_kinds"]))
        method = dict(r["method"], kernel=tuple(r["method"]["kernel"]))
        runs.append(EvalRun(EvalConfig(**config), MethodConfig(**method), [RecordResult(**x) for x in r["results"]],
                            skipped=r["skipped"], seconds=r["seconds"], split=r["split"]))
    return runs


def write_report(runs: Sequence[EvalRun], out_dir: str | Path, *, title: str = "Evaluation",
                 command: str | None = None, plots: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``summary.md`` and the plots under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "summary.md"}
    payload = {
        "title": title,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": [row for run in runs for row in summarize(run)],
        "runs": [run_json(run) for run in runs],
    }
    ovo = leaderboard_rows(runs)
    if ovo:
        payload["leaderboard"] = {"ovo_bench": ovo}
    paths["json"].write_text(json.dumps(payload, indent=1))
    paths["markdown"].write_text(markdown(runs, title=title, command=command))
    if plots and runs:
        paths["accuracy_vs_budget"] = plot_accuracy_vs_budget(runs, out / PLOTS[0])
        paths["ttft_vs_stream_length"] = plot_ttft_vs_stream_length(runs, out / PLOTS[1])
        paths["short_vs_long"] = plot_short_vs_long(runs, out / PLOTS[2])
    return paths
