"""Every configuration on ShapesWorld, short vs long vs streaming: ``docs/results/eval_shapesworld.{json,md,png}``.

    ppllava-hermes bench eval_shapesworld --out docs/results

Three record sets from the held-out test seeds, all answered by the shipped ShapesWorld model
(``load_shapesworld_adapter()``; without its checkpoint the script stops and says how to train it):

* short: short-clip questions (colour, shape, count, direction) on 4-frame clips, offline; the same
  clips as the training report's test set (``iter_short_clips("test", ...)``);
* long: backward questions (first to appear / leave, colour change, collision) on 3-5 minute videos,
  offline: each question sees the video up to its time at 1 fps (full context: every frame);
* streaming: real-time, backward and forward questions on 2-3 minute videos through the streaming
  protocol (one session per video, each question at its time; forward questions polled).

Configurations: full context, uniform-N (N = budget / tokens per frame), recent window, StreamingLLM,
HERMES, pooling (full cache), HERMES + pooling, each memory at every ``--budgets`` value. The JSON is a
list of rows ``{"config", "budget", "split", "task_type", "n", "accuracy", "ttft_ms", "peak_kv_bytes",
"visual_tokens"}`` (the command is in the .md); ``task_type`` is "all" (the whole split), a task kind ("short", "backward",
"realtime", "forward": every type of that kind) or one task type. Per-record results and the
standard report go to ``--details`` (default ``runs/eval_shapesworld``, not committed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS = ("full", "uniform", "window", "sink", "hermes", "pooling", "hermes+pooling")
ROW_FIELDS = ("config", "budget", "split", "task_type", "n", "accuracy", "ttft_ms", "peak_kv_bytes", "visual_tokens")
SPLITS = ("short", "long", "streaming")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench eval_shapesworld", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/results", help="folder for eval_shapesworld.json / .md / *.png")
    p.add_argument("--details", default="runs/eval_shapesworld", help="folder for the per-record report")
    p.add_argument("--model", default="shapesworld",
                   help="'shapesworld' (the shipped checkpoint), another ShapesWorld checkpoint folder, or "
                        "'random-shapesworld' (same architecture, random weights: for timing the script only)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations")
    p.add_argument("--budgets", default="128,256", help="memory budgets, visual tokens per layer (default 128,256)")
    p.add_argument("--splits", default=",".join(SPLITS), help="which of short,long,streaming to run")
    p.add_argument("--short-clips", type=int, default=100, help="short clips (default 100)")
    p.add_argument("--long-videos", type=int, default=4, help="long videos (default 4)")
    p.add_argument("--long-duration", type=float, default=240.0, help="seconds per long video (default 240)")
    p.add_argument("--stream-videos", type=int, default=3, help="streaming videos (default 3)")
    p.add_argument("--stream-duration", type=float, default=180.0, help="seconds per streaming video (default 180)")
    p.add_argument("--pool-mode", default="auto", choices=["auto", "avg", "prompt"],
                   help="pooling of the pooling configurations; auto: prompt with the shipped ShapesWorld CLIP "
                        "if it exists, else avg")
    p.add_argument("--pool-kernel", default="1,2,2",
                   help="pooling kernel T,H,W (default 1,2,2: the model's 4x4 token grid to 2x2, time kept)")
    p.add_argument("--chunk-frames", type=int, default=8, help="frames per prefill chunk (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=3, help="answer length limit (default 3: one word)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--from-details", default=None, metavar="RESULTS_JSON",
                   help="re-write the results files from a finished run's per-record results.json (no model run; "
                        "the command and runtime are read from that file)")
    return p.parse_args(argv)


def random_shapesworld_adapter(records):
    """The ShapesWorld architecture with random weights and a vocabulary from ``records`` (timing only)."""
    from ppllava_hermes.models.qwen2_5_vl import Qwen2_5_VLAdapter, default_video_processor
    from ppllava_hermes.world.generator import COLORS, DIRECTIONS, SHAPES
    from ppllava_hermes.world.model import SYSTEM_PROMPT, build_model, build_tokenizer, prompt_for

    corpus = [SYSTEM_PROMPT, "now nothing yes no", " ".join(COLORS + SHAPES + DIRECTIONS), " ".join(map(str, range(21)))]
    tok = build_tokenizer(corpus + [prompt_for(r) for r in records])
    model = build_model(tok).eval()
    return Qwen2_5_VLAdapter(model, tok, default_video_processor(model.config), system_prompt=SYSTEM_PROMPT)


def build_splits(args: argparse.Namespace) -> dict[str, tuple[list, list]]:
    """name -> (records, worlds) for the wanted splits (held-out test seeds, disjoint video ranges)."""
    from ppllava_hermes.world.tasks import (
        BACKWARD_TYPES,
        FORWARD_TYPES,
        REALTIME_TYPES,
        TaskConfig,
        iter_short_clips,
        make_split,
    )

    wanted = [s for s in args.splits.split(",") if s]
    out: dict[str, tuple[list, list]] = {}
    if "short" in wanted:
        out["short"] = ([rec for _, rec in iter_short_clips("test", args.short_clips)], [])
    if "long" in wanted:
        sp = make_split("test", args.long_videos, args.long_duration, seed_base=100,
                        task_config=TaskConfig(task_types=BACKWARD_TYPES, questions_per_type=2))
        out["long"] = (sp.records, sp.worlds)
    if "streaming" in wanted:
        types = REALTIME_TYPES + BACKWARD_TYPES + FORWARD_TYPES
        sp = make_split("test", args.stream_videos, args.stream_duration, seed_base=200,
                        task_config=TaskConfig(task_types=types, questions_per_type=2))
        out["streaming"] = (sp.records, sp.worlds)
    return out


def base_config(split: str, args: argparse.Namespace, pool_mode: str):
    from ppllava_hermes.evaluation.runner import EvalConfig

    kernel = tuple(int(k) for k in args.pool_kernel.split(","))
    common = dict(benchmark="shapesworld", model=args.model, pool_mode=pool_mode, pool_kernel=kernel, clip="shapesworld",
                  chunk_frames=args.chunk_frames, max_new_tokens=args.max_new_tokens)
    if split == "short":  # the clip's 4 frames
        return EvalConfig(protocol="offline", num_frames=32, **common)
    if split == "long":  # everything up to the question at 1 fps
        return EvalConfig(protocol="offline", fps=1.0, num_frames=None, **common)
    return EvalConfig(protocol="streaming", **common)


def rows_of(run, budgets: list[int]) -> list[dict[str, Any]]:
    """The results file's rows of one run; a configuration the budget does not change is repeated at
    every budget (same numbers)."""
    from ppllava_hermes.evaluation.report import run_budget, summarize

    rows = []
    budget = run_budget(run)
    for row in summarize(run):
        if row["task_kind"] == "all":
            task_type = "all"
        elif row["task_type"] == "all":
            task_type = row["task_kind"]
        else:
            task_type = row["task_type"]
        if task_type == "short" and run.split == "short" and row["task_type"] == "all":
            continue  # the whole short split is one kind: its "all" row says it
        if task_type == "backward" and run.split == "long":
            continue  # likewise
        for b in [budget] if budget is not None else budgets:
            rows.append({"config": run.method.name, "budget": b, "split": run.split, "task_type": task_type,
                         "n": row["n"], "accuracy": round(row["accuracy"], 4), "ttft_ms": round(row["ttft_ms"], 2),
                         "peak_kv_bytes": int(row["peak_kv_bytes"]), "visual_tokens": round(row["visual_tokens"], 1)})
    return rows


def _find(rows, config, budget, split, task_type):
    for r in rows:
        if (r["config"], r["budget"], r["split"], r["task_type"]) == (config, budget, split, task_type):
            return r
    return None


def goal_lines(rows: list[dict[str, Any]], budgets: list[int]) -> list[str]:
    """The issue's goal on backward questions, checked on what was measured."""
    lines = ["| split | budget | full | HERMES+pooling | recent window | HP - full | HP - window | HP KV / full KV | "
             "goal met |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for split, task in (("long", "all"), ("streaming", "backward")):
        for b in budgets:
            full, hp, win = (_find(rows, c, b, split, task) for c in ("full", "hermes+pooling", "window"))
            if not (full and hp and win):
                continue
            d_full = 100 * (hp["accuracy"] - full["accuracy"])
            d_win = 100 * (hp["accuracy"] - win["accuracy"])
            kv = hp["peak_kv_bytes"] / max(1, full["peak_kv_bytes"])
            met = d_full >= -2 and kv <= 0.2 and d_win >= 15
            lines.append(f"| {split} | {b} | {100 * full['accuracy']:.1f}% | {100 * hp['accuracy']:.1f}% | "
                         f"{100 * win['accuracy']:.1f}% | {d_full:+.1f} | {d_win:+.1f} | {100 * kv:.0f}% | "
                         f"{'yes' if met else 'no'} |")
    return lines


def reading_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Sample sizes and chance levels, so the differences above can be read for what they are."""
    lines = []
    n_long = next((r["n"] for r in rows if r["split"] == "long" and r["task_type"] == "all"), 0)
    n_back = next((r["n"] for r in rows if r["split"] == "streaming" and r["task_type"] == "backward"), 0)
    if n_long or n_back:
        lines.append(f"Sample sizes are small: one question moves the long split by {100 / max(n_long, 1):.1f} points and "
                     f"streaming backward questions by {100 / max(n_back, 1):.1f} points.")
    lines.append("About half the questions are multiple choice (chance 25%, 4 options); the others are open, one "
                 "word out of 4 to 6 (colour, shape, direction or count).")
    back_full = [r for r in rows if r["config"] == "full" and r["task_type"] in ("all", "backward")
                 and r["split"] in ("long", "streaming") and (r["split"] == "long") == (r["task_type"] == "all")]
    short_full = next((r for r in rows if r["config"] == "full" and r["split"] == "short" and r["task_type"] == "all"),
                      None)
    if back_full and max(r["accuracy"] for r in back_full) < 0.35:
        lines.append(
            "Full context itself answers backward questions at about chance level"
            + (f" (short clips: {100 * short_full['accuracy']:.0f}%)" if short_full else "")
            + ": the model does not answer questions about the past, so the backward rows measure costs "
            "(KV bytes, TTFT, tokens) but cannot show whether a memory keeps what those questions need; the goal "
            "above is neither met nor refuted by this checkpoint.")
    return lines


def markdown(rows, runs, args, command: str, seconds: float, model_note: str, pool_note: str) -> str:
    from ppllava_hermes.evaluation.report import run_label

    budgets = [int(b) for b in args.budgets.split(",")]
    lines = [
        "# ShapesWorld: short vs long vs streaming, every configuration",
        "",
        f"Model: {model_note} Pooling: {pool_note}",
        "",
        "Command (CPU, 2 cores shared with other jobs, torch threads "
        f"{args.threads}; {seconds / 60:.1f} minutes):",
        "",
        "```",
        command,
        "```",
        "",
        "Splits (held-out test seeds): **short** = short-clip questions on 4-frame clips, offline; **long** = "
        f"backward questions on {args.long_duration / 60:.0f}-minute videos, offline, the video up to the question at "
        f"1 fps; **streaming** = real-time, backward and forward questions on {args.stream_duration / 60:.0f}-minute "
        "videos through the streaming protocol (forward questions are polled every frame pair and count when the "
        "model says \"now\" within 2 s after the event).",
        "",
        "Columns: accuracy = right answers / n (multiple choice: the answer word must name the right option; open: "
        "the word itself); TTFT = time from the question to the first token, including work the question triggers "
        "(uniform-N re-encodes its frames; per-question pooling re-pools and prefills the video); peak KV = the largest "
        "KV cache the run held; visual tokens = visual tokens that entered the LLM for an answer (streaming: since "
        "the stream began), mean per question. Full context and pooling (full cache) keep everything: the budget does "
        "not apply, and the JSON repeats their rows at each budget. uniform-N samples budget / 8 frames (8 tokens "
        "per frame).",
        "",
        "## Goal on backward questions",
        "",
        "Issue goal: HERMES + pooling within 2 points of full context while holding <= 20% of its KV bytes, and >= 15 "
        "points above the recent window at the same budget.",
        "",
        *goal_lines(rows, budgets),
        "",
        " ".join(reading_lines(rows)),
        "",
        "## All configurations",
        "",
        "| split | config | budget | n | accuracy | TTFT ms | peak KV (KiB) | visual tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        r = next(x for x in rows if x["config"] == run.method.name and x["split"] == run.split
                 and x["task_type"] == "all" and (x["budget"] == run.method.budget or not run.method.uses_budget))
        budget = r["budget"] if run.method.uses_budget else "-"
        lines.append(f"| {run.split} | {run.method.name} | {budget} | {r['n']} | {100 * r['accuracy']:.1f}% | "
                     f"{r['ttft_ms']:.1f} | {r['peak_kv_bytes'] / 1024:.0f} | {r['visual_tokens']:.0f} |")
    kinds = ("realtime", "backward", "forward")
    lines += ["", "Streaming split by task kind:", "", "| run | " + " | ".join(kinds) + " |",
              "| --- | " + " | ".join("---:" for _ in kinds) + " |"]
    for run in runs:
        if run.split != "streaming":
            continue
        cells = []
        for k in kinds:
            rs = [x.score for x in run.results if x.task_kind == k]
            cells.append(f"{100 * sum(rs) / len(rs):.1f}% ({len(rs)})" if rs else "-")
        lines.append(f"| {run_label(run)} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", "",
              "![accuracy vs budget](eval_shapesworld_accuracy_vs_budget.png)", "",
              "![TTFT vs stream length](eval_shapesworld_ttft_vs_stream_length.png)", "",
              "![short vs long vs streaming](eval_shapesworld_short_vs_long.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ppllava_hermes.evaluation.report import write_report
    from ppllava_hermes.evaluation.runner import build_scorer, run_comparison
    from ppllava_hermes.world.clip import has_world_clip
    from ppllava_hermes.world.model import VLM_DIR, has_shipped_model, load_shapesworld_adapter

    if args.from_details:
        return rewrite_from_details(args)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    splits = build_splits(args)
    if args.model == "shapesworld":
        if not has_shipped_model():
            print(f"error: no ShapesWorld checkpoint in {VLM_DIR}; train it first with `ppllava-hermes train train_world` "
                  "(or pass --model random-shapesworld to time this script with random weights)", file=sys.stderr)
            return 1
        adapter = load_shapesworld_adapter()
        report = VLM_DIR / "training_report.json"
        model_note = "the shipped ShapesWorld model (a tiny Qwen2.5-VL trained on short clips"
        if report.exists():
            test = json.loads(report.read_text()).get("test", {})
            if "short_accuracy" in test:
                model_note += f"; its training report: short-clip test accuracy {100 * test['short_accuracy']:.1f}%"
        if (VLM_DIR / "stream_training_report.json").exists():
            model_note += ", then fine-tuned on streamed and pooled input: stream_training_report.json"
        model_note += ")."
    elif args.model == "random-shapesworld":
        adapter = random_shapesworld_adapter([r for recs, _ in splits.values() for r in recs])
        model_note = "RANDOM weights (timing run only: accuracies are meaningless)."
    else:  # another ShapesWorld checkpoint folder (same tokenizer and system prompt)
        adapter = load_shapesworld_adapter(args.model)
        model_note = f"the ShapesWorld checkpoint {args.model}."
    pool_mode = args.pool_mode if args.pool_mode != "auto" else ("prompt" if has_world_clip() else "avg")
    kind = ("prompt-guided (the shipped ShapesWorld CLIP; offline, each question re-pools the video; streaming "
            "pools against a generic prompt)" if pool_mode == "prompt" else "3-D average")
    pool_note = f"{kind}, kernel {args.pool_kernel}."
    configs = [c for c in args.configs.split(",") if c]
    budgets = [int(b) for b in args.budgets.split(",")]
    runs = []
    scorer = None
    for name, (records, worlds) in splits.items():
        base = base_config(name, args, pool_mode)
        if scorer is None and pool_mode == "prompt":
            from dataclasses import replace

            scorer = build_scorer(replace(base, config="pooling"), adapter)

        def done(run):
            print(f"[{(time.time() - t0) / 60:5.1f} min] {run.split:9} {run.config.label:20} n={len(run.results):3} "
                  f"accuracy {100 * run.accuracy:5.1f}%", flush=True)

        runs += run_comparison(base, configs, budgets, records=records, adapter=adapter, scorer=scorer,
                               worlds=worlds, progress=not args.quiet, split=name, on_run=done)
    seconds = time.time() - t0
    command = "ppllava-hermes bench eval_shapesworld " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    write_report(runs, args.details, title="ShapesWorld evaluation (per record)", command=command)
    notes = {"model": model_note, "pooling": pool_note, "seconds": seconds}
    (Path(args.details) / "notes.json").write_text(json.dumps(notes))
    write_results(runs, args, command, seconds, model_note, pool_note)
    return 0


def rewrite_from_details(args: argparse.Namespace) -> int:
    from ppllava_hermes.evaluation.report import load_runs

    path = Path(args.from_details)
    runs = load_runs(path)
    command = json.loads(path.read_text())["command"]
    notes = json.loads((path.parent / "notes.json").read_text())
    write_results(runs, args, command, notes["seconds"], notes["model"], notes["pooling"])
    return 0


def write_results(runs, args, command: str, seconds: float, model_note: str, pool_note: str) -> None:
    from ppllava_hermes.evaluation.report import (
        plot_accuracy_vs_budget,
        plot_short_vs_long,
        plot_ttft_vs_stream_length,
    )

    budgets = [int(b) for b in args.budgets.split(",")]
    rows = [row for run in runs for row in rows_of(run, budgets)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_shapesworld.json").write_text(json.dumps(rows, indent=1))  # a list of rows, command in the .md
    plot_accuracy_vs_budget(runs, out / "eval_shapesworld_accuracy_vs_budget.png")
    plot_ttft_vs_stream_length([r for r in runs if r.split != "short"], out / "eval_shapesworld_ttft_vs_stream_length.png")
    plot_short_vs_long(runs, out / "eval_shapesworld_short_vs_long.png")
    (out / "eval_shapesworld.md").write_text(markdown(rows, runs, args, command, seconds, model_note, pool_note))
    print(f"wrote {out / 'eval_shapesworld.json'} ({len(rows)} rows) and eval_shapesworld.md ({seconds / 60:.1f} min)")


if __name__ == "__main__":
    sys.exit(main())
