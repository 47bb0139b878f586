"""Memory recall on ShapesWorld: which memory keeps what questions about the past need, at a fixed budget.

    ppllava-hermes bench memory_recall                 # docs/results/memory_recall.{json,md,png}
    ppllava-hermes bench memory_recall --quick --out /tmp/x   # a smoke run (one short stream)

Specification.

* Model: the shipped ShapesWorld VLM (``--model``: another checkpoint folder of the same kind).
* Streams: ``--streams`` held-out test worlds (``video_seed("test", 5000 + i)``) of ``--seconds`` s at
  1 fps, rendered in memory. Questions: :func:`generate_questions` with every backward type (including the
  recall types ``past_color`` / ``past_shape``) and every realtime type, ``--questions-per-type`` each,
  each checked by the independent :func:`verify_records`; only questions asked at or after
  ``--ask-after`` x the stream length are kept, so that every question sees a long past.
* Session: one :class:`StreamingSession` per stream and configuration, chunk 4 frames, fed the rendered
  frames as 4-frame clips by ``run_timed_questions`` (each question at its time, with every frame up to
  it and none after), up to the last question. Greedy answers of at most 3 tokens; multiple choice is
  scored by the option the word names.
* Configurations: ``full`` (no budget) and, at each budget, every name :func:`make_policy` accepts
  (``window``, ``sink``, ``hermes``, ``uniform`` re-encoding, ``snapkv``, ``merge`` = merge then HERMES,
  and any policy registered later, e.g. ``retrieval``) plus ``hermes+pooling`` (HERMES over tokens pooled
  by the shipped CLIP against the standing query "a coloured shape", kernel (1,2,2), as the demo); any
  ``<policy>+pooling`` in ``--configs`` runs that policy over the same pooled tokens.
* Budget levels: ``--fractions`` (default 0.1 and 0.2) of the full cache's visual KV. Each configuration
  runs at the largest budget (visual tokens per layer, the ``budget`` field) whose visual KV stays within
  the level at the first :data:`CALIBRATION_QUESTIONS` questions of the first stream (they see the
  smallest full cache), searched from ``fraction x`` the smallest full cache's visual entries, since
  policies hold different extras (anchors, whole frames, sinks). ``kv_fraction`` is then measured: the
  visual KV at question time over the full cache's at the same question, averaged over the row's
  questions (visual KV: every entry but the system prompt's).
* Results: ``memory_recall.json``: a list of rows ``{"config", "budget", "kv_fraction", "task_type",
  "age_bin", "n", "accuracy", "ci95", "ttft_ms", "peak_kv_bytes", "host_bytes"}``; ``task_type`` is a task
  type, a kind ("backward", "realtime") or "all"; ``age_bin`` is "10-30s", "30-90s", ">90s" (event age =
  question time - ``extra["event_time"]``, backward questions only) or "all"; ``ci95`` is
  ``{"accuracy": [lo, hi], "vs_full": [lo, hi], "vs_window": [lo, hi]}``: 95% percentile bootstrap
  intervals (``--bootstrap`` resamples of the row's questions) of the accuracy and of the paired
  differences against ``full`` and against ``window`` at the same budget (null where not defined);
  ``ttft_ms`` the mean time to first token; ``peak_kv_bytes`` the largest KV the configuration held on
  any stream; ``host_bytes`` the most bytes it kept outside the KV cache at a question (stored frames,
  or a policy's own ``host_bytes``). The .md gives the command, the machine and the tables; the .png
  plots backward accuracy against event age per configuration.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppllava_hermes.recipes.bench import machine_description, provenance_md

AGE_BINS: tuple[tuple[str, float, float], ...] = (("10-30s", 0.0, 30.0), ("30-90s", 30.0, 90.0),
                                                  (">90s", 90.0, float("inf")))
ROW_FIELDS = ("config", "budget", "kv_fraction", "task_type", "age_bin", "n", "accuracy", "ci95", "ttft_ms",
              "peak_kv_bytes", "host_bytes")
POOLING_SUFFIX = "+pooling"  # "<policy>+pooling": that policy over tokens pooled as the demo pools them
POOLED = "hermes" + POOLING_SUFFIX  # the pooled configuration every default run includes
TEST_SEED_BASE = 5000  # test-split video indices of this benchmark (disjoint from the training report's)
CALIBRATION_QUESTIONS = 4  # questions of the first stream a budget is calibrated on


def split_config(config: str) -> tuple[str, bool]:
    """``"novelty+pooling"`` -> ``("novelty", True)``; ``"window"`` -> ``("window", False)``."""
    if config.endswith(POOLING_SUFFIX):
        return config[: -len(POOLING_SUFFIX)], True
    return config, False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench memory_recall", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/results", help="folder for memory_recall.json / .md / .png")
    p.add_argument("--model", default=None, help="ShapesWorld checkpoint folder (default: the shipped one)")
    p.add_argument("--streams", type=int, default=8, help="test streams (default 8)")
    p.add_argument("--seconds", type=float, default=240.0, help="stream length, s (default 240)")
    p.add_argument("--questions-per-type", type=int, default=12, help="questions tried per type per stream (default 12)")
    p.add_argument("--ask-after", type=float, default=0.5,
                   help="keep questions asked at or after this fraction of the stream (default 0.5)")
    p.add_argument("--fractions", default="0.1,0.2", help="budgets as fractions of the full visual KV")
    p.add_argument("--configs", default=None, help="comma-separated configurations (default: all)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 stream of 60 s, the 20%% level, 200 resamples")
    args = p.parse_args(argv)
    if args.quick:
        args.streams, args.seconds, args.questions_per_type, args.bootstrap = 1, 60.0, 2, 200
        args.fractions = "0.2"
    return args


def all_configs() -> list[str]:
    """``full``, every other name :func:`make_policy` accepts, then HERMES over pooled tokens."""
    from ppllava_hermes.memory import POLICIES

    return ["full", *(n for n in POLICIES if n != "full"), POOLED]


# ---------------------------------------------------------------------------------------------------
# (1) streams and questions


@dataclass
class Stream:
    """A test world and its kept questions (time order); ``stop``: frames streamed (up to the last question)."""

    world: Any
    records: list
    stop: int

    def clips(self):
        """The 4-frame clips the session is fed, up to the one holding the last question."""
        from ppllava_hermes.recipes.train.train_world_memory import world_clips

        for clip in world_clips(self.world):
            if clip.timestamps[0] * self.world.fps >= self.stop:
                return
            yield clip


def build_streams(args: argparse.Namespace) -> list[Stream]:
    from ppllava_hermes.recipes.train.train_world_memory import STREAM_TYPES
    from ppllava_hermes.world.generator import WorldConfig, generate_world
    from ppllava_hermes.world.tasks import TaskConfig, generate_questions, verify_records, video_seed

    out = []
    tc = TaskConfig(task_types=STREAM_TYPES, questions_per_type=args.questions_per_type, backward_min_gap=10.0)
    for i in range(args.streams):
        w = generate_world(WorldConfig(duration=args.seconds), video_seed("test", TEST_SEED_BASE + i))
        recs = [r for r in generate_questions(w, tc) if r.timestamp >= args.ask_after * w.duration]
        problems = verify_records(w, recs)
        if any(problems):
            raise RuntimeError(f"{w.name}: questions fail the independent check: {[p for p in problems if p]}")
        recs.sort(key=lambda r: r.timestamp)
        if recs:
            out.append(Stream(w, recs, int(round(recs[-1].timestamp * w.fps)) + 1))
    return out


# ---------------------------------------------------------------------------------------------------
# (2) running one configuration


@dataclass
class Outcome:
    """One question answered by one configuration."""

    qid: str
    task_type: str
    kind: str
    age: float | None
    correct: bool
    ttft_ms: float
    visual_kv: float
    host_bytes: int


def _host_bytes(session) -> int:
    """Bytes kept outside the KV cache: stored frames, plus whatever the policy reports."""
    n = getattr(session, "stored_frame_bytes", 0)  # the uniform baseline's decoded frames
    own = getattr(session.memory, "host_bytes", 0)
    return n + int(own() if callable(own) else own or 0)


def run_config(adapter, streams: list[Stream], policy, pooling_stage, n_system: int):
    """Outcomes of every question and the peak KV of one configuration over all streams: one session per
    stream, fed 4-frame clips by ``run_timed_questions`` (each question at its time)."""
    from ppllava_hermes.evaluation.scoring import parse_choice, score_open
    from ppllava_hermes.recipes.train.train_world_memory import CHUNK
    from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
    from ppllava_hermes.streaming.timed import TimedQuestion, run_timed_questions
    from ppllava_hermes.world.model import prompt_for
    from ppllava_hermes.world.tasks import TASK_KIND_OF

    gen = GenerationConfig(max_new_tokens=3)
    outcomes: list[Outcome] = []
    peak = 0
    for stream in streams:
        session = StreamingSession(adapter, memory=policy(), pooling=pooling_stage,
                                   config=StreamConfig(chunk_frames=CHUNK))
        answers = []
        qs = [TimedQuestion(float(r.timestamp), prompt_for(r), r) for r in stream.records]
        for q, ans in run_timed_questions(session, stream.clips(), qs, gen):
            answers.append((q.payload, ans, _host_bytes(session)))
        peak = max(peak, session.stats.peak_kv_bytes)
        for rec, ans, host in answers:
            ok = (parse_choice(ans.text, rec.options) == rec.answer if rec.options
                  else score_open(ans.text, str(rec.answer)))
            kind = TASK_KIND_OF[rec.task_type]
            age = float(rec.timestamp - rec.extra["event_time"]) if kind == "backward" else None
            visual = ans.kv_bytes * max(0, ans.cache_tokens - n_system) / max(1, ans.cache_tokens)
            outcomes.append(Outcome(rec.qid, rec.task_type, kind, age, bool(ok), 1000 * ans.ttft_s, visual, host))
    return outcomes, peak


# ---------------------------------------------------------------------------------------------------
# (3) statistics and rows


def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int = 0) -> list[float] | None:
    """95% percentile interval of the mean of ``values`` (paired differences or 0/1 outcomes)."""
    if len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def age_bin(age: float | None) -> str | None:
    if age is None:
        return None
    return next(name for name, lo, hi in AGE_BINS if lo <= age < hi)


def groups_of(outcomes: list[Outcome]) -> dict[tuple[str, str], list[int]]:
    """(task_type, age_bin) -> indices: each type, each kind, "all", each with "all" and the age bins."""
    g: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, o in enumerate(outcomes):
        b = age_bin(o.age)
        for t in (o.task_type, o.kind, "all"):
            g[(t, "all")].append(i)
            if b is not None:
                g[(t, b)].append(i)
    return g


def make_rows(results: dict[tuple[str, float], tuple[list[Outcome], int]],
              budget_of: dict[tuple[str, float], int | None], n_boot: int) -> list[dict]:
    """Rows of every configuration; ``results`` is keyed by (config, budget level: a KV fraction, 1.0 for
    full), pairing is by question id, against full and against the window at the same level."""
    full_out, _ = results[("full", 1.0)]
    full_by = {o.qid: o for o in full_out}
    rows = []
    for (config, level), (outs, peak) in results.items():
        budget = budget_of[(config, level)]
        window = results.get(("window", level))
        win_by = {o.qid: o for o in window[0]} if window and config != "full" else None
        for (tt, ab), idx in sorted(groups_of(outs).items()):
            sel = [outs[i] for i in idx]
            acc = np.array([o.correct for o in sel], dtype=np.float64)
            ref = np.array([full_by[o.qid].correct for o in sel], dtype=np.float64)
            fr = [o.visual_kv / max(1.0, full_by[o.qid].visual_kv) for o in sel]
            ci = {"accuracy": bootstrap_ci(acc, n_boot),
                  "vs_full": bootstrap_ci(acc - ref, n_boot) if config != "full" else None,
                  "vs_window": None}
            if win_by is not None and config != "window":
                ci["vs_window"] = bootstrap_ci(acc - np.array([win_by[o.qid].correct for o in sel], float), n_boot)
            rows.append({"config": config, "budget": budget, "kv_fraction": round(float(np.mean(fr)), 4),
                         "task_type": tt, "age_bin": ab, "n": len(sel), "accuracy": round(float(acc.mean()), 4),
                         "ci95": ci, "ttft_ms": round(float(np.mean([o.ttft_ms for o in sel])), 2),
                         "peak_kv_bytes": int(peak), "host_bytes": int(max(o.host_bytes for o in sel))})
    return rows


# ---------------------------------------------------------------------------------------------------
# (4) report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(c: list[float] | None) -> str:
    return "-" if c is None else f"[{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]"


def _level(levels: dict, config: str, budget: int | None) -> str:
    lv = levels.get((config, budget), 1.0)
    return "full" if config == "full" else f"<= {lv:.0%}"


def markdown(rows: list[dict], args: argparse.Namespace, command: str, seconds: float, notes: dict,
             levels: dict) -> str:

    def find(config, budget, tt, ab="all"):
        return next((r for r in rows if (r["config"], r["budget"], r["task_type"], r["age_bin"])
                     == (config, budget, tt, ab)), None)

    runs = list(dict.fromkeys((r["config"], r["budget"]) for r in rows))
    lines = [
        "# Memory recall on ShapesWorld",
        "",
        f"Model: {notes['model']}",
        "",
        *provenance_md(command, machine_description("cpu"), title=f"Command ({seconds / 60:.1f} minutes):"),
        "",
        f"Streams: {notes['streams']} held-out test worlds (test seeds from video index {TEST_SEED_BASE}) of "
        f"{args.seconds:.0f} s at 1 fps, chunk 4 frames; {notes['questions']} questions asked at or after "
        f"{args.ask_after:.0%} of the stream, every one checked by the independent checker "
        f"({notes['backward']} backward, {notes['realtime']} realtime). Budget levels: "
        + ", ".join(f"{f:.0%} of the full cache's visual KV ({b} entries per layer at the earliest question)"
                    for f, b in notes["budgets"])
        + "; each configuration runs at the largest budget (visual tokens per layer, the `budget` column) whose "
        "visual KV stays within the level at the first questions of the first stream (calibrated there, since "
        "policies hold different extras: anchors, whole frames, sinks). The first questions see the smallest full cache, so a budget that fits them fits every question of that stream; `KV fraction` below is measured on all of them. Full-cache visual KV at the questions: "
        + notes["full_kv"] + ".",
        "",
        "Accuracy in %, 95% bootstrap intervals over questions; vs full / vs window: paired differences in points "
        "(the window at the same budget). KV fraction: the configuration's visual KV at question time over the "
        "full cache's, mean over questions. Host: bytes kept outside the KV cache at a question (uniform stores "
        "decoded frames). Multiple choice (about half; chance 25%) and open answers (one word of 4-6) are mixed.",
        "",
        "## Backward questions (questions about the past)",
        "",
        "| config | level | budget | KV fraction | n | accuracy | 95% CI | vs full | vs window | realtime | "
        "TTFT ms | peak KV KiB | host KiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for config, budget in runs:
        b, rt = find(config, budget, "backward"), find(config, budget, "realtime")
        if b is None:
            continue
        lines.append(
            f"| {config} | {_level(levels, config, budget)} | {budget if budget is not None else '-'} | "
            f"{b['kv_fraction']:.3f} | {b['n']} | "
            f"{_pct(b['accuracy'])} | {_ci(b['ci95']['accuracy'])} | {_ci(b['ci95']['vs_full'])} | "
            f"{_ci(b['ci95']['vs_window'])} | {_pct(rt['accuracy'] if rt else None)} | {b['ttft_ms']:.1f} | "
            f"{b['peak_kv_bytes'] / 1024:.0f} | {b['host_bytes'] / 1024:.0f} |")
    lines += ["", "## Backward accuracy by event age", "",
              "| config | level | budget | " + " | ".join(f"{name} (n)" for name, _, _ in AGE_BINS) + " |",
              "| --- | --- | ---: | " + " | ".join("---:" for _ in AGE_BINS) + " |"]
    for config, budget in runs:
        cells = []
        for name, _, _ in AGE_BINS:
            r = find(config, budget, "backward", name)
            cells.append(f"{_pct(r['accuracy'])} ({r['n']})" if r else "-")
        lines.append(f"| {config} | {_level(levels, config, budget)} | {budget if budget is not None else '-'} | "
                     + " | ".join(cells) + " |")
    types = sorted({r["task_type"] for r in rows} - {"all", "backward", "realtime"})
    lines += ["", "## Per task type (accuracy %, n)", "",
              "| config | level | budget | " + " | ".join(types) + " |",
              "| --- | --- | ---: | " + " | ".join("---:" for _ in types) + " |"]
    for config, budget in runs:
        cells = []
        for t in types:
            r = find(config, budget, t)
            cells.append(f"{_pct(r['accuracy'])} ({r['n']})" if r else "-")
        lines.append(f"| {config} | {_level(levels, config, budget)} | {budget if budget is not None else '-'} | "
                     + " | ".join(cells) + " |")
    if notes.get("skipped"):
        lines += ["", "Skipped (the policy failed): " + "; ".join(notes["skipped"]) + "."]
    lines += ["", "![backward accuracy against event age](memory_recall.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], levels: dict, path: Path) -> None:
    """Backward accuracy per event-age bin, one line per configuration, one panel per budget level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lvls = sorted({v for (c, _), v in levels.items() if c != "full"}) or [1.0]
    fig, axes = plt.subplots(1, len(lvls), figsize=(6 * len(lvls), 4.5), squeeze=False)
    names = [name for name, _, _ in AGE_BINS]
    configs = list(dict.fromkeys(c for c, _ in levels))
    colour = {c: plt.get_cmap("tab20")(i % 20) for i, c in enumerate(configs)}  # one colour per configuration
    for ax, lv in zip(axes[0], lvls, strict=True):
        for (config, budget), v in levels.items():
            if config != "full" and v != lv:
                continue
            ys = []
            for name in names:
                r = next((x for x in rows if (x["config"], x["budget"], x["task_type"], x["age_bin"])
                          == (config, budget, "backward", name)), None)
                ys.append(100 * r["accuracy"] if r else np.nan)
            if not np.all(np.isnan(ys)):
                ax.plot(names, ys, marker="o", label=config if budget is None else f"{config} ({budget})",
                        linestyle="--" if config == "full" else "-", color=colour[config])
        ax.axhline(25, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"visual KV <= {lv:.0%} of the full cache")
        ax.set_xlabel("event age (question time - event time)")
        ax.set_ylabel("backward accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# (5) main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ppllava_hermes.memory import POLICIES

    bad = [c for c in (args.configs.split(",") if args.configs else []) if split_config(c)[0] not in POLICIES]
    if bad:
        print(f"error: --configs {','.join(bad)}: not a memory policy (or one + '{POOLING_SUFFIX}'); choose from "
              f"{', '.join(POLICIES)}", file=sys.stderr)
        return 2
    import torch

    from ppllava_hermes.memory import make_policy
    from ppllava_hermes.recipes.train.train_world_memory import DocumentBuilder, world_scorer
    from ppllava_hermes.world.model import VLM_DIR, load_shapesworld_adapter

    torch.set_num_threads(args.threads)
    t0 = time.time()
    adapter = load_shapesworld_adapter(args.model)
    adapter.model.eval()
    scorer = world_scorer(adapter)
    builder = DocumentBuilder(adapter, scorer)
    pooled_stage = builder.stage("clip" if scorer is not None else "avg")
    configs = args.configs.split(",") if args.configs else all_configs()
    streams = build_streams(args)
    n_system = len(adapter.tokenize(adapter.prefix_text()))
    results: dict[tuple[str, float], tuple[list[Outcome], int]] = {}
    budget_of: dict[tuple[str, float], int | None] = {}

    def run(config: str, budget: int | None, fraction: float = 1.0) -> None:
        t = time.time()
        name, pooled = split_config(config)
        policy = (lambda: make_policy(name)) if budget is None else (lambda: make_policy(name, budget=budget))
        stage = pooled_stage if pooled else None
        results[(config, fraction)] = run_config(adapter, streams, policy, stage, n_system)
        budget_of[(config, fraction)] = budget
        outs = results[(config, fraction)][0]
        back = [o.correct for o in outs if o.kind == "backward"]
        print(f"[{(time.time() - t0) / 60:5.1f} min] {config:15} budget {budget!s:5} backward "
              f"{100 * np.mean(back) if back else float('nan'):5.1f}% (n={len(back)}) in {time.time() - t:.0f}s",
              flush=True)

    run("full", None)
    full_out = results[("full", 1.0)][0]
    full_visual = [o.visual_kv for o in full_out]
    entry_bytes = 2 * adapter.num_layers * adapter.text_config.num_key_value_heads * (
        adapter.text_config.hidden_size // adapter.text_config.num_attention_heads) * 4
    min_entries = min(full_visual) / entry_bytes  # visual entries per layer of the smallest full cache
    fractions = [float(f) for f in args.fractions.split(",")]
    budgets = [(f, int(f * min_entries)) for f in fractions]
    # calibration: the first CALIBRATION_QUESTIONS questions of stream 0 (the earliest ones see the smallest
    # full cache, so they bound the fraction), with the chunks up to them only
    s0 = streams[0]
    m = min(CALIBRATION_QUESTIONS, len(s0.records))
    probe = Stream(s0.world, s0.records[:m], int(round(s0.records[m - 1].timestamp * s0.world.fps)) + 1)
    first = full_out[:m]

    def calibrated(config: str, fraction: float, start: int) -> int:
        """The largest budget (tried: ``start``, rescaled twice, then 10% steps down) whose visual KV
        stays within ``fraction`` of the full cache's at the first questions of stream 0."""
        name, pooled = split_config(config)
        stage = pooled_stage if pooled else None
        budget, best = start, None
        for attempt in range(8):
            outs, _ = run_config(adapter, [probe], lambda b=budget: make_policy(name, budget=b), stage, n_system)
            worst = max(o.visual_kv / max(1.0, f.visual_kv) for o, f in zip(outs, first, strict=True))
            if worst <= fraction:
                best = budget if best is None else max(best, budget)
                if attempt >= 2:
                    break
            elif best is not None and attempt >= 2:
                break
            nxt = int(budget * fraction / max(worst, 1e-9)) if attempt < 2 else int(budget * 0.9)
            budget = max(1, nxt if nxt != budget else budget - 1)
        return best if best is not None else budget

    skipped: list[str] = []
    for fraction, start in budgets:
        for config in configs:
            if config == "full":
                continue
            try:
                budget = calibrated(config, fraction, start)
                run(config, budget, fraction)
            except Exception as err:  # noqa: BLE001 - one failing policy must not lose the others' results
                if config in ("window", "hermes"):
                    raise
                print(f"skipping {config} at {fraction:.0%}: {type(err).__name__}: {err}", flush=True)
                skipped.append(f"{config} at {fraction:.0%} ({type(err).__name__}: {err})")
    rows = make_rows(results, budget_of, args.bootstrap)
    seconds = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "ppllava-hermes bench memory_recall " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    recs = [r for s in streams for r in s.records]
    notes = {
        "model": f"the ShapesWorld checkpoint {args.model or VLM_DIR.relative_to(VLM_DIR.parents[3])}",
        "streams": len(streams), "questions": len(recs),
        "backward": sum(r.task_kind == "backward" for r in recs), "realtime": sum(r.task_kind == "realtime" for r in recs),
        "budgets": budgets,
        "skipped": skipped,
        "full_kv": f"{min(full_visual) / entry_bytes:.0f} to {max(full_visual) / entry_bytes:.0f} visual entries per layer",
    }
    (out / "memory_recall.json").write_text(json.dumps(rows, indent=1))
    levels = {(c, budget_of[(c, lv)]): lv for c, lv in results}
    (out / "memory_recall.md").write_text(markdown(rows, args, command, seconds, notes, levels))
    plot(rows, levels, out / "memory_recall.png")
    print(f"wrote {out / 'memory_recall.json'} ({len(rows)} rows), .md and .png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
