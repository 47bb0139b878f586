"""The brief suite: ``ppllava-hermes eval --suite brief``, the brief's three benchmarks for a list of
configurations, scored their own way, and a "quality does not drop" report.

What it runs (:func:`run_suite`), with one model loaded once:

* **StreamBench** (StreamChat v0.3, :mod:`.loaders.streambench`): the streaming protocol, one session per
  video, each question asked at its time. Scored by the LLM judge (yes/no + 0-5,
  :mod:`.streambench_scoring`) through the OpenAI-compatible client when ``--judge`` is given
  (``PPLLAVA_JUDGE_BASE_URL`` / ``PPLLAVA_JUDGE_MODEL``); otherwise by the evaluator's local open-answer
  rule (:func:`~.scoring.score_open`: normalised match, short references by containment), and the report
  says so. Quality: accuracy over all questions and without KG; with a judge also the mean 0-5 score.
* **MSR-VTT captioning** (:mod:`.loaders.msrvtt_caption`): the offline protocol, the captioning prompt
  asked after the whole video; CIDEr-D, BLEU-4 and ROUGE-L per configuration (:func:`~.captioning.
  caption_comparison`: COCO tokenisation with Java, else the documented stand-in; METEOR is left out).
* **EgoSchema** (the full set, :mod:`.loaders.egoschema_full`): offline, five options; accuracy on the
  questions whose answer is known (``subset_answers.json``), and every configuration's predictions file
  for the evaluation server (:mod:`.egoschema`), hidden questions included.

Each benchmark runs every configuration of ``--suite-configs`` (default full context, HERMES, HERMES +
pooling and the retrieval memory) at each ``--budgets`` value (:func:`~.runner.run_comparison`), with the
evaluator's usual flags (frames, fps, chunking, pooling kernel, ``--max-pixels``; ``--context-window``
applies to the offline benchmarks only). The reference is full context (the first configuration when
``full`` is not listed).

**The report** (``OUT/brief_suite.json`` and ``.md``; per-record reports, results logs and the EgoSchema
predictions under ``--suite-details``): per benchmark and configuration, the quality, its difference
from the reference with a paired 95% bootstrap interval (:mod:`.bootstrap`: over questions for
StreamBench and EgoSchema, over videos for captions; ``--bootstrap`` resamples, seed ``--seed``), and the
cost with the speed-up against the reference: TTFT (mean over answered questions), visual tokens into
the LLM (mean), KV bytes at the question (mean) and the peak, the run's wall time; a speed-up is the
reference's value divided by the configuration's (above 1: faster, smaller). Records that failed count
as wrong and stay out of the cost means.

**Data** (``--data``): ``shapesworld`` writes ShapesWorld videos and the three benchmarks' files in their
released formats (the ``shapesworld`` data writer, :func:`~.brief_data.write_brief_data`, ``--world-videos`` per benchmark,
``--world-duration``, ``--world-seed``, ``--world-split``) under ``--suite-details``/data and runs on
those; any other value is a folder laid out as :func:`~.brief_data.brief_paths` says, e.g. the real
benchmarks. On ShapesWorld data ``--prompt-style auto`` means ShapesWorld's "words" style for every record.

``--resume`` keeps the answered records of each benchmark's results log (same flags required).
What this module does not know: how a protocol feeds a session, or how the files are parsed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .bootstrap import DEFAULT_RESAMPLES, LEVEL, check_resamples, paired_mean_difference, resample_indices
from .brief_data import BriefDataConfig, BriefPaths, brief_paths, write_brief_data

SUITES = ("brief",)
SUITE_BENCHMARKS: tuple[str, ...] = ("streambench", "msrvtt_caption", "egoschema")
BENCHMARK_ALIASES = {"msrvtt": "msrvtt_caption", "msr-vtt": "msrvtt_caption", "egoschema_full": "egoschema",
                     "stream_bench": "streambench"}
DEFAULT_CONFIGS: tuple[str, ...] = ("full", "hermes", "hermes+pooling", "retrieval")
REPORT_NAME = "brief_suite"


@dataclass(frozen=True)
class SuiteBenchmark:
    """How the suite runs one benchmark: its loader, protocol and what an item of its intervals is."""

    key: str
    title: str
    loader: str
    protocol: str
    item: str


BENCHMARK_SPECS: dict[str, SuiteBenchmark] = {
    "streambench": SuiteBenchmark("streambench", "StreamBench (StreamChat v0.3)", "streambench", "streaming",
                                  "question"),
    "msrvtt_caption": SuiteBenchmark("msrvtt_caption", "MSR-VTT captioning", "msrvtt_caption", "offline", "video"),
    "egoschema": SuiteBenchmark("egoschema", "EgoSchema", "egoschema_full", "offline", "question"),
}


def parse_benchmarks(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Suite benchmark keys from names or aliases; ``ValueError`` naming an unknown one."""
    out = []
    for name in names:
        key = BENCHMARK_ALIASES.get(name.strip().lower(), name.strip().lower())
        if key not in BENCHMARK_SPECS:
            raise ValueError(f"--suite-benchmarks: unknown benchmark {name!r}; the brief suite has "
                             f"{', '.join(SUITE_BENCHMARKS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("--suite-benchmarks: no benchmark given")
    return tuple(out)


@dataclass
class SuiteConfig:
    """One run of the brief suite (see the module docstring).

    Attributes:
        base: the evaluator settings every benchmark shares (model, device, frames, pooling, budgets'
            first value, ``max_pixels``, ``context_window``, ``world_*`` for generated data, ``limit``).
        configs: configuration names (``runner.CONFIGURATIONS``, aliases, uniform-N).
        budgets: memory budgets; each budgeted configuration runs at each.
        data: "shapesworld" (generated) or a folder in the :func:`~.brief_data.brief_paths` layout.
        benchmarks: which of :data:`SUITE_BENCHMARKS` to run.
        out: folder of ``brief_suite.json`` / ``.md``; details: per-benchmark reports, logs, predictions.
        bootstrap / seed: resamples and seed of the intervals.
        judge: judge StreamBench with the OpenAI-compatible judge (``PPLLAVA_JUDGE_*``).
        resume: keep the records answered by an interrupted run of the same suite.
        progress: progress bars.
    """

    base: Any
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    budgets: tuple[int | None, ...] = (None,)
    data: str = "shapesworld"
    benchmarks: tuple[str, ...] = SUITE_BENCHMARKS
    out: str = "runs/eval"
    details: str = "runs/brief_suite"
    bootstrap: int = DEFAULT_RESAMPLES
    seed: int = 0
    judge: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from .runner import comparison_configs

        self.configs = tuple(self.configs)
        self.budgets = tuple(self.budgets) or (None,)
        self.benchmarks = parse_benchmarks(self.benchmarks)
        if not self.configs:
            raise ValueError("--suite-configs: no configuration given")
        comparison_configs(self.base, self.configs, self.budgets)  # every name checked up front
        self.bootstrap = check_resamples(self.bootstrap)
        if not self.generated:
            root = Path(self.data)
            if not root.is_dir():
                from ..plugins import DATA_WRITERS

                raise FileNotFoundError(f"--data {self.data}: not a folder (and not a data writer: "
                                        f"{', '.join(DATA_WRITERS.names())})")
            missing = brief_paths(root).missing(self.benchmarks)
            if missing:
                raise FileNotFoundError(f"--data {self.data}: no {missing[0]} (the layout is in "
                                        f"ppllava_hermes.evaluation.brief_data)")

    @property
    def generated(self) -> bool:
        """Whether ``data`` names a registered data writer (generated data) rather than a folder."""
        from ..plugins import DATA_WRITERS

        return DATA_WRITERS.get(self.data) is not None


# ------------------------------------------------------------------------------------------ helpers


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _cost(run: Any) -> dict[str, Any]:
    """Cost of a run: means over answered records (failed ones have no cost), the peak, the wall time."""
    ok = [r for r in run.results if not r.error]
    return {
        "ttft_ms": None if not ok else 1000 * _mean([r.ttft_s for r in ok]),
        "visual_tokens": _mean([float(r.visual_tokens) for r in ok]),
        "kv_bytes": _mean([float(r.kv_bytes) for r in ok]),
        "peak_kv_bytes": max((r.peak_kv_bytes for r in ok), default=None),
        "wall_s": float(run.seconds),
    }


def _speedup(reference: dict[str, Any], mine: dict[str, Any]) -> dict[str, float | None]:
    """Reference value / this value for each cost (None where either is missing or zero)."""
    out: dict[str, float | None] = {}
    for key in ("ttft_ms", "visual_tokens", "kv_bytes", "peak_kv_bytes", "wall_s"):
        a, b = reference.get(key), mine.get(key)
        out[key] = float(a) / float(b) if a and b else None
    return out


def _difference(a: dict[str, float], b: dict[str, float], *, indices: Any = None, n_boot: int, seed: int) -> dict:
    """Paired difference of per-item values on the items both have (``b - a``)."""
    keys = [k for k in a if k in b]
    if indices is not None and len(keys) != indices.shape[1]:
        indices = None  # a different item set than the shared draw: its own draw
    return paired_mean_difference([a[k] for k in keys], [b[k] for k in keys], indices=indices, n_boot=n_boot,
                                  seed=seed)


VERDICTS = {
    "drop": "dropped: the whole interval is below 0",
    "gain": "improved: the whole interval is above 0",
    "no drop shown": "the interval contains 0: no drop shown at this sample size (not a proof of equality)",
}


def verdict(difference: dict[str, Any] | None) -> str | None:
    """"drop", "gain" or "no drop shown" from a difference's 95% interval (None without one)."""
    if not difference or difference.get("ci95") is None:
        return None
    lo, hi = difference["ci95"]
    return "drop" if hi < 0 else "gain" if lo > 0 else "no drop shown"


def machine_line(device: str | None) -> str:
    """Python, torch and its threads, the CPU count (and the GPU): what the times were measured on."""
    import torch

    line = (f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}, {os.cpu_count()} CPUs ({platform.machine()})")
    if hasattr(os, "getloadavg"):
        line += f", load average {os.getloadavg()[0]:.1f} at the end (other jobs included)"
    if device and device.startswith("cuda") and torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name(0)}"
    return line


# ----------------------------------------------------------------------------------------- scoring


def _score_streambench(records: list[Any], runs: list[Any], judge: Any) -> dict[str, dict[str, Any]]:
    from .streambench_scoring import StreamBenchJudgement, judge_streambench, streambench_summary

    by_qid = {r.qid: r for r in records}
    scored: dict[str, dict[str, Any]] = {}
    for run in runs:
        answered = [by_qid[r.qid] for r in run.results]
        if judge is not None:
            preds = {r.qid: (None if r.error else r.prediction) for r in run.results}
            judgements = judge_streambench(answered, preds, judge)
        else:  # the run's own verdict: the local open-answer rule
            judgements = [StreamBenchJudgement(r.qid, bool(r.correct) and not r.error, None, error=r.error)
                          for r in run.results]
        summary = streambench_summary(answered, judgements)
        kg = {q for q, rec in by_qid.items() if rec.task_type == "KG"}
        scored[run.config.label] = {
            "quality": {"accuracy": summary["total"]["accuracy"],
                        "accuracy_without_kg": summary["total_without_kg"]["accuracy"],
                        "score": summary["total"]["score"], "judge_failures": summary["total"]["judge_failures"],
                        "summary": summary},
            "items": {
                "accuracy": {j.qid: float(j.correct) for j in judgements},
                "accuracy_without_kg": {j.qid: float(j.correct) for j in judgements if j.qid not in kg},
                "score": {j.qid: float(j.score) for j in judgements if j.score is not None},
            },
        }
    return scored


def _score_captions(records: list[Any], runs: list[Any], reference: str, n_boot: int, seed: int) -> dict:
    from .captioning import caption_comparison
    from .predictions import predictions_from_results

    refs = {r.qid: list(r.extra["references"]) for r in records}
    cands: dict[str, dict[str, str]] = {}
    failed: dict[str, int] = {}
    for run in runs:
        preds = predictions_from_results(run.results)
        failed[run.config.label] = sum(1 for p in preds.values() if p is None)
        cands[run.config.label] = {q: p or "" for q, p in preds.items()}
    compared = caption_comparison(refs, cands, reference, n_boot=n_boot, seed=seed)
    out: dict[str, dict[str, Any]] = {}
    for label, c in compared.items():
        s = c["scores"]
        notes = list(s["notes"])
        if failed[label]:
            notes.append(f"{failed[label]} video(s) had no caption from the model and score as an empty caption")
        out[label] = {"quality": {"cider": s["cider"], "bleu4": s["bleu4"], "rouge_l": s["rouge_l"],
                                  "n": s["n"], "tokenizer": s["tokenizer"], "notes": notes},
                      "vs_reference": c["vs_reference"]}
    return out


def _score_egoschema(records: list[Any], runs: list[Any], folder: Path) -> dict[str, dict[str, Any]]:
    from .egoschema import UNREADABLE, egoschema_subset_accuracy, write_egoschema_submission
    from .predictions import predictions_from_results

    by_qid = {r.qid: r for r in records}
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        label = run.config.label
        answered = [by_qid[r.qid] for r in run.results]
        preds = predictions_from_results(run.results)
        path = write_egoschema_submission(folder / f"egoschema_predictions.{label}.json", answered, preds)
        submission = json.loads(path.read_text())
        subset = egoschema_subset_accuracy(answered, submission)
        known = [r for r in answered if r.extra.get("answer_known", True)]
        hidden = [r for r in answered if not r.extra.get("answer_known", True)]
        out[label] = {
            "quality": {"accuracy": subset["accuracy"], "n_known": subset["n"], "correct": subset["correct"],
                        "n_hidden": len(hidden),
                        "hidden_predicted": sum(1 for r in hidden if submission.get(r.qid, UNREADABLE) != UNREADABLE),
                        "unreadable": sum(1 for v in submission.values() if v == UNREADABLE),
                        "predictions_file": str(path)},
            "items": {"accuracy": {r.qid: float(submission.get(r.qid) == r.answer) for r in known}},
        }
    return out


# --------------------------------------------------------------------------------------------- runs


def benchmark_config(cfg: SuiteConfig, spec: SuiteBenchmark, paths: BriefPaths):
    """The ``EvalConfig`` of one benchmark of the suite (its files, protocol and prompt style)."""
    files = {
        "streambench": (paths.streambench, paths.streambench_videos, None),
        "msrvtt_caption": (paths.msrvtt, paths.msrvtt_videos, None),
        "egoschema": (paths.egoschema, paths.egoschema_videos, paths.egoschema_answers),
    }[spec.key]
    style = cfg.base.prompt_style
    if style == "auto" and cfg.generated:
        style = "words"  # ShapesWorld's own style: the ShapesWorld model answers with the option's word
    return replace(
        cfg.base, benchmark=spec.loader, annotations=str(files[0]), videos=str(files[1]),
        answers=None if files[2] is None else str(files[2]), subset=None, protocol=spec.protocol,
        judge=False, task_kinds=(), prompt_style=style, frame_source="auto", config=cfg.configs[0],
        budget=cfg.budgets[0], context_window=cfg.base.context_window if spec.protocol == "offline" else None,
    )


def _run_benchmark(cfg: SuiteConfig, spec: SuiteBenchmark, paths: BriefPaths, adapter: Any, judge: Any,
                   command: str | None) -> dict[str, Any]:
    from .report import ResultsLog, check_output_dir, write_report
    from .runner import load_records, run_comparison, select

    bench = benchmark_config(cfg, spec, paths)
    folder = check_output_dir(Path(cfg.details) / spec.key, "--suite-details")
    header = {"version": 1, "suite": "brief", "benchmark": spec.key,
              "config": {k: v for k, v in asdict(bench).items() if k != "device"},
              "configs": list(cfg.configs), "budgets": list(cfg.budgets)}
    log = ResultsLog(folder, header, resume=cfg.resume)
    records, skipped, _ = load_records(bench)
    try:
        runs = run_comparison(bench, cfg.configs, cfg.budgets, records=records, adapter=adapter,
                              progress=cfg.progress, done={k: list(v) for k, v in log.done.items()},
                              on_result=log.append)
    finally:
        log.close()
    write_report(runs, folder, title=f"{spec.title} ({spec.protocol} protocol), brief suite", command=command,
                 plots=False)
    evaluated = select(records, bench)
    labels = [run.config.label for run in runs]
    reference = "full" if "full" in labels else labels[0]
    n_boot, seed = cfg.bootstrap, cfg.seed
    if spec.key == "streambench":
        scored = _score_streambench(evaluated, runs, judge)
        metrics = ["accuracy", "accuracy_without_kg", "score"]
    elif spec.key == "msrvtt_caption":
        scored = _score_captions(evaluated, runs, reference, n_boot, seed)
        metrics = ["cider", "bleu4", "rouge_l"]
    else:
        scored = _score_egoschema(evaluated, runs, folder)
        metrics = ["accuracy"]
    headline = metrics[0]
    costs = {run.config.label: _cost(run) for run in runs}
    rows = []
    for run in runs:
        label = run.config.label
        row = {"label": label, "config": run.method.name, "budget": run.method.budget if run.method.uses_budget else None,
               "n": len(run.results), "errors": sum(1 for r in run.results if r.error),
               "quality": scored[label]["quality"], "vs_reference": {}, "cost": costs[label],
               "speedup": _speedup(costs[reference], costs[label])}
        if label != reference:
            if "vs_reference" in scored[label]:  # captions: corpus metrics resampled by caption_comparison
                row["vs_reference"] = scored[label]["vs_reference"]
            else:
                items_ref, items = scored[reference]["items"], scored[label]["items"]
                shared = resample_indices(len(items["accuracy"]), n_boot, seed)
                row["vs_reference"] = {m: _difference(items_ref[m], items[m], indices=shared, n_boot=n_boot,
                                                      seed=seed) for m in metrics if m in items}
            row["verdict"] = verdict(row["vs_reference"].get(headline))
        rows.append(row)
    return {
        "title": spec.title, "protocol": spec.protocol, "loader": spec.loader, "item": spec.item,
        "n": len(evaluated), "skipped": skipped, "reference": reference, "metrics": metrics, "headline": headline,
        "settings": {k: getattr(bench, k) for k in ("num_frames", "fps", "chunk_frames", "max_new_tokens",
                                                     "prompt_style", "context_window", "max_pixels")},
        "runs": rows,
        "files": {"report": str(folder / "results.json"), "log": str(log.path)},
    }


def run_suite(cfg: SuiteConfig, *, command: str | None = None) -> dict[str, Any]:
    """Run the suite and write ``brief_suite.json`` / ``.md`` under ``cfg.out``; returns the report."""
    from .report import check_output_dir
    from .runner import build_model_adapter

    t0 = time.perf_counter()
    out = check_output_dir(cfg.out)
    details = check_output_dir(cfg.details, "--suite-details")
    judge = None
    if cfg.judge:
        from .scoring import OpenAIJudge

        judge = OpenAIJudge.from_env()
        if judge is None:
            raise ValueError("--judge needs PPLLAVA_JUDGE_BASE_URL and PPLLAVA_JUDGE_MODEL")
    if cfg.generated:
        base = cfg.base
        made = write_brief_data(details / "data", BriefDataConfig(
            videos=base.world_videos, duration=base.world_duration, seed=base.world_seed, split=base.world_split),
            source=cfg.data)
        paths, data = made.paths, made.describe()
    else:
        paths, data = brief_paths(cfg.data), {"source": "folder", "root": str(cfg.data)}
    adapter = build_model_adapter(cfg.base.model, cfg.base.device)
    benchmarks = {key: _run_benchmark(cfg, BENCHMARK_SPECS[key], paths, adapter, judge, command)
                  for key in cfg.benchmarks}
    report = {
        "title": "The brief's benchmarks: quality against full context, and the speed-up",
        "suite": "brief",
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": time.perf_counter() - t0,
        "machine": machine_line(cfg.base.device),
        "model": cfg.base.model,
        "data": data,
        "configs": list(cfg.configs),
        "budgets": list(cfg.budgets),
        "settings": {k: getattr(cfg.base, k) for k in ("pool_mode", "pool_kernel", "num_frames", "fps",
                                                        "chunk_frames", "max_new_tokens", "max_pixels",
                                                        "context_window")},
        "judge": ({"used": True, "model": judge.model, "note": "StreamBench judged by the OpenAI-compatible judge "
                   "(yes/no + 0-5)"} if judge is not None else
                  {"used": False, "note": "no judge configured (--judge with PPLLAVA_JUDGE_BASE_URL / "
                   "PPLLAVA_JUDGE_MODEL): StreamBench scored by the local open-answer rule (normalised match; "
                   "references of up to 3 words by containment), no 0-5 score"}),
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed, "level": LEVEL, "kind": "paired percentile"},
        "benchmarks": benchmarks,
    }
    (out / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / f"{REPORT_NAME}.md").write_text(suite_markdown(report))
    return report


# ------------------------------------------------------------------------------------------- report


def _fmt(x: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{scale * x:.{digits}f}"


def _delta(d: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not d or d.get("diff") is None:
        return "-"
    ci = d.get("ci95")
    ci_text = "" if ci is None else f" [{scale * ci[0]:+.{digits}f}, {scale * ci[1]:+.{digits}f}]"
    return f"{scale * d['diff']:+.{digits}f}{ci_text}"


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _kib(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024:.0f}"


def _cost_cells(row: dict[str, Any]) -> str:
    c, s = row["cost"], row["speedup"]
    return (f"{_fmt(c['ttft_ms'])} | {_times(s['ttft_ms'])} | {_fmt(c['visual_tokens'], 0)} | "
            f"{_times(s['visual_tokens'])} | {_kib(c['kv_bytes'])} | {_times(s['kv_bytes'])} | "
            f"{_kib(c['peak_kv_bytes'])} | {_fmt(c['wall_s'])} | {_times(s['wall_s'])}")


_COST_HEAD = ("TTFT ms | TTFT speed-up | visual tokens | fewer | KV KiB at question | smaller | peak KV KiB | "
              "wall s | wall speed-up")
_COST_ALIGN = " ---: |" * 9


def real_data_command(report: dict[str, Any]) -> str:
    """The suite command for the real benchmarks laid out under ``/data/brief`` (a suggestion in the report:
    this run's configurations, a budget sized for a real model's frames, a judge for StreamBench)."""
    configs = ",".join(report["configs"])
    return ("PPLLAVA_JUDGE_BASE_URL=http://127.0.0.1:8001/v1 PPLLAVA_JUDGE_MODEL=<judge model> \\\n"
            f"ppllava-hermes eval --suite brief --data /data/brief --model <checkpoint folder or hub id> "
            f"--device cuda:0 \\\n  --suite-configs {configs} --budgets 4096 --fps 1 --frames 64 "
            "--max-new-tokens 64 --max-pixels qwen-vl-utils --judge \\\n  --out runs/brief_suite_real "
            "--suite-details runs/brief_suite_real/details")


def suite_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of :func:`run_suite`."""
    lines = [f"# {report['title']}", ""]
    data = report["data"]
    if data.get("source") == "shapesworld":
        s = data["settings"]
        lines += [
            "**Data: ShapesWorld, not the real benchmarks.** No real StreamBench, MSR-VTT or EgoSchema video is "
            "reachable here, so the suite ran on ShapesWorld videos rendered to mp4 with annotation files in the "
            f"three released formats (`ppllava_hermes.world.brief_data`: {s['videos']} videos per benchmark, "
            f"{s['split']} seeds from index {s['seed']}, {s['duration']:.0f} s streams, {s['caption_duration']:.0f} s "
            f"caption clips; counts {data['counts']}). These numbers test the pipeline and the ShapesWorld model; "
            "they say nothing about a real VLM on real video, and with this few items every interval is wide. The "
            "ShapesWorld model is tiny (4 layers, 16 visual tokens per frame pair), so fixed per-call costs dominate "
            "its times: its TTFT and wall-time ratios say little about a large model, its KV and token ratios more.",
            "",
        ]
    else:
        lines += [f"Data: the folder `{data['root']}` (layout of `ppllava_hermes.evaluation.brief_data`).", ""]
    minutes = report["wall_s"] / 60
    lines += [f"Command ({minutes:.1f} minutes from data generation to the written report, model load included; "
              "Python start-up not counted):", "", "```",
              report["command"] or "(run from Python)", "```", "", "Machine:", "", "```", report["machine"], "```", ""]
    lines += [
        f"Model: `{report['model']}`. Configurations: {', '.join(report['configs'])}; budgets (visual tokens per "
        f"layer): {', '.join('policy default' if b is None else str(b) for b in report['budgets'])}. "
        f"Pooling: {report['settings']['pool_mode']}, kernel {tuple(report['settings']['pool_kernel'])}; offline "
        f"frames: {report['settings']['num_frames']} uniform"
        + (f" (at most, at {report['settings']['fps']} fps)" if report['settings']['fps'] else "")
        + f"; chunks of {report['settings']['chunk_frames']} frames. Judge: {report['judge']['note']}.",
        "",
        "Reading the tables: Δ is the configuration minus the reference (full context) in points (captions: in "
        f"CIDEr-D / BLEU-4 / ROUGE-L x 100), with its paired {int(100 * report['bootstrap']['level'])}% bootstrap "
        f"interval ({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}; over "
        "questions, or videos for captions). Costs: TTFT and visual tokens into the LLM are means over answered "
        "items, KV at question the mean KV-cache size when the question is asked, peak KV the largest; "
        "speed-up / fewer / smaller = reference value / configuration value (above 1 is better).",
        "",
    ]
    names = {"accuracy": "accuracy", "cider": "CIDEr-D"}
    lines += ["## Summary", "",
              "| benchmark | config | headline Δ vs full [95% CI] | reading | TTFT speed-up | KV smaller | "
              "visual tokens fewer | wall speed-up |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for b in report["benchmarks"].values():
        for row in b["runs"]:
            if row["label"] == b["reference"]:
                continue
            sp = row["speedup"]
            lines.append(f"| {b['title']} | {row['label']} | {names.get(b['headline'], b['headline'])} "
                         f"{_delta(row['vs_reference'].get(b['headline']))} | {row.get('verdict') or '-'} | "
                         f"{_times(sp['ttft_ms'])} | {_times(sp['kv_bytes'])} | {_times(sp['visual_tokens'])} | "
                         f"{_times(sp['wall_s'])} |")
    lines += ["", "Reading: " + "; ".join(f"*{k}*: {v}" for k, v in VERDICTS.items()) + ".", ""]
    for key, b in report["benchmarks"].items():
        lines += [f"## {b['title']} ({b['protocol']} protocol, {b['n']} {b['item']}s)", ""]
        if key == "streambench":
            judged = report["judge"]["used"]
            lines += ["Scored by " + ("the LLM judge (yes/no, 0-5)." if judged else
                                      "the local open-answer rule (no judge configured): accuracy only, no 0-5 "
                                      "score.") + " Accuracy without KG leaves out the knowledge questions "
                      "(answerable without the video).", "",
                      "| config | n | accuracy % | Δ vs full [95% CI] | without KG % | Δ without KG | score 0-5 | "
                      "Δ score | " + _COST_HEAD + " |",
                      "| --- | ---: | ---: | --- | ---: | --- | ---: | --- |" + _COST_ALIGN]
            for row in b["runs"]:
                q, vs = row["quality"], row["vs_reference"]
                lines.append(
                    f"| {row['label']} | {row['n']} | {_fmt(q['accuracy'], 1, 100)} | {_delta(vs.get('accuracy'))} | "
                    f"{_fmt(q['accuracy_without_kg'], 1, 100)} | {_delta(vs.get('accuracy_without_kg'))} | "
                    f"{_fmt(q['score'], 2)} | {_delta(vs.get('score'), 1.0, 2)} | {_cost_cells(row)} |")
            per_class = "; ".join(
                f"{row['label']}: " + ", ".join(f"{code} {100 * g['accuracy']:.0f} ({g['n']})"
                                                for code, g in row["quality"]["summary"]["by_class"].items())
                for row in b["runs"])
            lines += ["", f"Accuracy % by class (n): {per_class}."]
        elif key == "msrvtt_caption":
            notes = sorted({n for row in b["runs"] for n in row["quality"]["notes"]})
            lines += ["CIDEr-D, BLEU-4 and ROUGE-L (pycocoevalcap, x 100) of one caption per video; tokenizer "
                      f"{b['runs'][0]['quality']['tokenizer']}; METEOR not computed by the suite."
                      + (" Notes: " + "; ".join(notes) + "." if notes else ""), "",
                      "| config | n | CIDEr-D | Δ CIDEr-D [95% CI] | BLEU-4 | Δ BLEU-4 | ROUGE-L | Δ ROUGE-L | "
                      + _COST_HEAD + " |",
                      "| --- | ---: | ---: | --- | ---: | --- | ---: | --- |" + _COST_ALIGN]
            for row in b["runs"]:
                q, vs = row["quality"], row["vs_reference"]
                lines.append(
                    f"| {row['label']} | {row['n']} | {_fmt(q['cider'], 1, 100)} | {_delta(vs.get('cider'))} | "
                    f"{_fmt(q['bleu4'], 1, 100)} | {_delta(vs.get('bleu4'))} | {_fmt(q['rouge_l'], 1, 100)} | "
                    f"{_delta(vs.get('rouge_l'))} | {_cost_cells(row)} |")
        else:
            q0 = b["runs"][0]["quality"]
            lines += [f"Accuracy on the {q0['n_known']} questions whose answer is known (`subset_answers.json`); "
                      f"the {q0['n_hidden']} others are scored by EgoSchema's server from each configuration's "
                      "predictions file (`{q_uid: option}`, -1 where the answer picks no option; POST it to "
                      "https://validation-server.onrender.com/api/upload/).", "",
                      "| config | known n | accuracy % | Δ vs full [95% CI] | hidden predicted | unreadable | "
                      + _COST_HEAD + " | predictions file |",
                      "| --- | ---: | ---: | --- | ---: | ---: |" + _COST_ALIGN + " --- |"]
            for row in b["runs"]:
                q, vs = row["quality"], row["vs_reference"]
                lines.append(
                    f"| {row['label']} | {q['n_known']} | {_fmt(q['accuracy'], 1, 100)} | {_delta(vs.get('accuracy'))} | "
                    f"{q['hidden_predicted']}/{q['n_hidden']} | {q['unreadable']} | {_cost_cells(row)} | "
                    f"`{q['predictions_file']}` |")
        errors = {row["label"]: row["errors"] for row in b["runs"] if row["errors"]}
        if errors:
            lines += ["", f"Records that failed (counted wrong, left out of the costs): {errors}."]
        if b["skipped"]:
            lines += ["", f"{len(b['skipped'])} records were skipped by the loader (reasons in the JSON)."]
        lines += ["", f"Per-record results: `{b['files']['report']}`.", ""]
    lines += [
        "## Running it on the real benchmarks", "",
        "Lay the released files out under one folder (symlinks are fine) and point `--data` at it:", "",
        "```",
        "DATA/streambench/streaming_bench_v0.3.json   + DATA/streambench/{Ego,WebVideo,Movie}/<video_path>",
        "DATA/msrvtt/test_videodatainfo.json          + DATA/msrvtt/videos/<video_id>.mp4   (MSR-VTT's TestVideo/)",
        "DATA/egoschema/questions.json                + DATA/egoschema/subset_answers.json",
        "DATA/egoschema/videos/<q_uid>.mp4",
        "```", "",
        "then, with an OpenAI-compatible judge for StreamBench (any server; without `--judge` the local rule scores "
        "it and the report says so):", "", "```", real_data_command(report), "```", "",
        "Leaderboard-faithful settings are flags of the same command: `--max-pixels` (pixels per frame; presets "
        "`qwen-vl-utils` = 768x28x28 and `qwen2-vl-example` = 360x420), `--context-window 60` (StreamingBench's "
        "leaderboard window, offline benchmarks only); OVO-Bench runs of `ppllava-hermes eval` report their "
        "averages with and without forward active responding.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ command


def suite_config_from_args(args: Any) -> SuiteConfig:
    """The :class:`SuiteConfig` of the eval command's flags (``--suite`` and the shared ones)."""
    from .command import config_from_args

    base = config_from_args(args)
    return SuiteConfig(
        base=base, configs=tuple(args.suite_configs), budgets=tuple(args.budgets), data=args.data,
        benchmarks=tuple(args.suite_benchmarks), out=args.out, details=args.suite_details,
        bootstrap=args.bootstrap, seed=args.bootstrap_seed, judge=args.judge, resume=args.resume, progress=not args.quiet,
    )


def run_suite_command(args: Any, argv: list[str] | None = None) -> int:
    """``ppllava-hermes eval --suite brief``: 2 for a usage error (before the model loads), 130 when
    interrupted (``--resume`` continues), 0 otherwise."""
    from ..specs import check_device
    from .report import OutputPathError

    words = list(argv if argv is not None else sys.argv[1:])
    if args.suite not in SUITES:
        print(f"error: --suite {args.suite!r}: unknown suite; known: {', '.join(SUITES)}", file=sys.stderr)
        return 2
    try:
        cfg = suite_config_from_args(args)
        check_device(args.device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = "ppllava-hermes " + " ".join(shlex.quote(w) for w in words if w != "--resume") if words else None
    try:
        report = run_suite(cfg, command=command)
    except KeyboardInterrupt:
        print("\ninterrupted: the answered records are kept in each benchmark's results.jsonl under "
              f"{cfg.details}; continue with the same command and --resume", file=sys.stderr)
        return 130
    except (OutputPathError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(suite_markdown(report))
    print(f"wrote {Path(cfg.out) / (REPORT_NAME + '.json')}, {Path(cfg.out) / (REPORT_NAME + '.md')}")
    return 0


__all__ = [
    "BENCHMARK_SPECS",
    "DEFAULT_CONFIGS",
    "SUITES",
    "SUITE_BENCHMARKS",
    "SuiteConfig",
    "run_suite",
    "run_suite_command",
    "suite_markdown",
]
