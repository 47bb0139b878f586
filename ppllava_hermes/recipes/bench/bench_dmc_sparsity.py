"""Memory merging (DMC-style) and frame sparsity on ShapesWorld streams with long static stretches.

    ppllava-hermes bench bench_dmc_sparsity --out docs/results --dmc runs/dmc/cr2,runs/dmc/cr4

Writes ``dmc_sparsity.json`` (rows ``{"config", "budget", "kv_compression_ratio",
"frames_skipped_fraction", "accuracy_backward", "accuracy_realtime", "ttft_ms", "ingest_fps", ...}``
plus the command) and ``dmc_sparsity.md``. Held-out test worlds with ``--static-fraction`` of their
frames in static stretches; backward and real-time questions asked at their time through one
streaming session per video (every frame up to the question in, none after it).

Configurations (``--configs``):

* ``full``: no compression (the reference); ``hermes``: HERMES at ``--budget``;
* ``merge+hermes``: training-free merging (key similarity >= ``--merge-threshold``), then HERMES;
  ``merge+hermes+prop``: the same with proportional attention (log(count) on merged entries);
* ``dmc:<folder>``: a model retrofitted by ``train/train_dmc.py``, its learned decisions driving the
  merge, no eviction (``--dmc`` adds one per folder); compared with ``full``;
* ``novelty`` / ``novelty+hermes``: novelty gate (``--novelty-threshold``, a forced refresh after
  ``--novelty-max-skip`` skipped groups) on the full cache / HERMES; ``novelty-unbounded``: no refresh;
* ``relevance``: top-``--relevance-k`` groups per chunk by relevance to ``--standing-query`` (the
  ShapesWorld CLIP), the newest group always kept.

``kv_compression_ratio``: visual entries a full cache holds at the same question / visual entries
held (mean over questions). ``frames_skipped_fraction``: frames whose tokens a gate kept out, over
frames streamed; ``static_skipped_fraction`` the same within static stretches.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppllava_hermes.recipes.bench import machine_description

ROW_FIELDS = ("config", "budget", "kv_compression_ratio", "frames_skipped_fraction", "accuracy_backward",
              "accuracy_realtime", "ttft_ms", "ingest_fps")
DEFAULT_CONFIGS = "full,hermes,merge+hermes,merge+hermes+prop,novelty,novelty-unbounded,novelty+hermes,relevance"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench bench_dmc_sparsity", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/results", help="folder for dmc_sparsity.json / .md")
    p.add_argument("--model", default="shapesworld",
                   help="'shapesworld' (shipped checkpoint), a checkpoint folder, or 'random-shapesworld' (timing only)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated configurations")
    p.add_argument("--dmc", default="", help="comma-separated train_dmc output folders (each adds a dmc config)")
    p.add_argument("--dmc-control", default="",
                   help="train_dmc folder of a ratio-1 retrofit (same data and steps): the reference of dmc rows")
    p.add_argument("--budget", type=int, default=128, help="HERMES budget, visual tokens per layer (default 128)")
    p.add_argument("--anchors", type=int, default=16, help="HERMES anchors per deep layer (default 16)")
    p.add_argument("--videos", type=int, default=12, help="test videos (default 12)")
    p.add_argument("--duration", type=float, default=150.0, help="seconds per video (default 150)")
    p.add_argument("--static-fraction", type=float, default=0.5, help="share of frames in static stretches")
    p.add_argument("--static-segment", type=float, default=25.0, help="seconds per static stretch")
    p.add_argument("--frame-noise", type=float, default=1.0, help="pixel noise std (static frames differ slightly)")
    p.add_argument("--questions-per-type", type=int, default=3)
    p.add_argument("--chunk-frames", type=int, default=4, help="frames per prefill chunk (default 4, as trained)")
    p.add_argument("--merge-threshold", type=float, default=0.95, help="key cosine similarity to merge")
    p.add_argument("--novelty-threshold", type=float, default=0.01,
                   help="feature cosine distance to keep a frame (default 0.01: static ShapesWorld groups < 1e-3, "
                        "moving ones > 8e-3)")
    p.add_argument("--novelty-max-skip", type=int, default=5,
                   help="novelty gate: keep a group after this many skipped in a row (default 5; the "
                        "'novelty-unbounded' configuration never forces one)")
    p.add_argument("--relevance-k", type=int, default=1, help="groups kept per chunk by the relevance gate")
    p.add_argument("--standing-query", default="Which shapes and colours are in the scene?")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ setup
def load_adapter(name: str, records):
    from ppllava_hermes.world.model import load_shapesworld_adapter

    if name == "random-shapesworld":
        from .eval_shapesworld import random_shapesworld_adapter

        return random_shapesworld_adapter(records)
    return load_shapesworld_adapter(None if name == "shapesworld" else name)


class RecordingGate:
    """Wraps a gate and remembers the frame ids it kept out entirely."""

    def __init__(self, gate) -> None:
        self.gate, self.skipped = gate, set()

    def reset(self) -> None:
        self.gate.reset()

    def __call__(self, visual, frames):
        keep = self.gate(visual, frames)
        ids = visual.group_frame_ids.tolist()
        per = max(1, len(frames) // len(ids))
        for g, first in enumerate(ids):
            if not bool(keep[g].any()):
                self.skipped.update(range(first, first + per))
        return keep


def build(config: str, args: argparse.Namespace, base_adapter, dmc_adapters: dict, scorer_cache: dict):
    """``(adapter, policy, gate, proportional)`` for one configuration."""
    from ppllava_hermes.memory import FullCache, KeyDimDecider, TokenMerge, make_policy
    from ppllava_hermes.streaming.sparsity import NoveltyGate, RelevanceGate

    def hermes():
        return make_policy("hermes", budget=args.budget, anchors=args.anchors)

    if config.startswith("dmc:"):
        adapter, info = dmc_adapters[config[4:]]
        return adapter, TokenMerge(decider=KeyDimDecider(dim=info["dim"], offset=info["offset"])), None, False
    gate = None
    if config.startswith("novelty"):
        max_skip = None if "unbounded" in config else args.novelty_max_skip
        gate = RecordingGate(NoveltyGate(threshold=args.novelty_threshold, max_skip=max_skip))
    if config.startswith("relevance"):
        if "scorer" not in scorer_cache:
            from ppllava_hermes.streaming.pooling_stage import load_scorer

            scorer_cache["scorer"] = load_scorer(None, frames_per_token=base_adapter.frames_per_group)
        gate = RecordingGate(RelevanceGate(scorer_cache["scorer"], args.standing_query, k=args.relevance_k))
    if config in ("full", "novelty", "novelty-unbounded", "relevance"):
        policy = FullCache()
    elif config in ("hermes", "novelty+hermes", "relevance+hermes"):
        policy = hermes()
    elif config in ("merge+hermes", "merge+hermes+prop"):
        policy = make_policy("merge", budget=args.budget, threshold=args.merge_threshold, anchors=args.anchors)
    elif config == "merge":
        policy = TokenMerge(threshold=args.merge_threshold)
    else:
        raise ValueError(f"unknown configuration {config!r}")
    return base_adapter, policy, gate, config.endswith("+prop")


def judge(answer: str, rec) -> bool:
    from ppllava_hermes.evaluation.scoring import score_answer

    return score_answer(rec, answer)


# ------------------------------------------------------------------------------------------ running
def run_config(config: str, args, worlds, records_by_video, base_adapter, dmc_adapters, scorer_cache,
               full_entries: dict | None) -> tuple[dict[str, Any], dict[str, int], dict[str, tuple[str, bool]]]:
    """One configuration over every video: its row and, per question, the visual entries held and
    ``(task kind, correct)``."""
    from ppllava_hermes.memory.proportional import proportional_attention
    from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
    from ppllava_hermes.world.model import prompt_for

    adapter, _, _, _ = build(config, args, base_adapter, dmc_adapters, scorer_cache)
    system = len(adapter.tokenize(adapter.prefix_text()))
    generation = GenerationConfig(max_new_tokens=3)
    correct: dict[str, list[bool]] = defaultdict(list)
    ttft, ratios, entries, outcome = [], [], {}, {}
    frames_total = frames_skipped = static_total = static_skipped = 0
    ingest_s = 0.0
    for world in worlds:
        adapter, policy, gate, proportional = build(config, args, base_adapter, dmc_adapters, scorer_cache)
        session = StreamingSession(adapter, memory=policy, gate=gate,
                                   config=StreamConfig(chunk_frames=args.chunk_frames, max_new_tokens=3))
        recs = sorted(records_by_video[world.name], key=lambda r: r.timestamp)
        context = (proportional_attention(adapter.language_model.config, lambda i, s=session: s.cache.layers[i].counts)
                   if proportional else _null())
        fed = 0
        with context:
            for rec in recs:
                stop = int(rec.extra["t_index"]) + 1
                if stop > fed:
                    t0 = time.perf_counter()
                    session.add_frames(np.stack(list(world.frames(fed, stop))), world.timestamps()[fed:stop])
                    ingest_s += time.perf_counter() - t0
                    fed = stop
                answer = session.ask(prompt_for(rec), generation)
                correct[rec.task_kind].append(judge(answer.text, rec))
                outcome[rec.qid] = (rec.task_kind, correct[rec.task_kind][-1])
                ttft.append(answer.ttft_s)
                held = answer.cache_tokens - system
                entries[rec.qid] = held
                if full_entries is not None and rec.qid in full_entries:
                    ratios.append(full_entries[rec.qid] / max(1, held))
        frames_total += fed
        static = set(np.nonzero(world.static[:fed])[0].tolist())
        static_total += len(static)
        if gate is not None:
            frames_skipped += session.stats.frames_skipped
            static_skipped += len(gate.skipped & static)
    row = {
        "config": config,
        "budget": args.budget if ("hermes" in config) else None,
        "kv_compression_ratio": round(float(np.mean(ratios)), 3) if ratios else 1.0,
        "frames_skipped_fraction": round(frames_skipped / max(1, frames_total), 4),
        "accuracy_backward": round(float(np.mean(correct["backward"])), 4) if correct["backward"] else None,
        "accuracy_realtime": round(float(np.mean(correct["realtime"])), 4) if correct["realtime"] else None,
        "ttft_ms": round(1000 * float(np.mean(ttft)), 2),
        "ingest_fps": round(frames_total / max(ingest_s, 1e-9), 2),
        "static_skipped_fraction": round(static_skipped / max(1, static_total), 4),
        "n_backward": len(correct["backward"]),
        "n_realtime": len(correct["realtime"]),
    }
    return row, entries, outcome


def paired_delta(mine: dict, ref: dict, kind: str) -> tuple[float, float] | None:
    """Accuracy difference in points on the same questions, and the half-width of its 95% interval."""
    d = [float(mine[q][1]) - float(ref[q][1]) for q in mine if q in ref and mine[q][0] == kind]
    if not d:
        return None
    arr = np.asarray(d)
    return 100 * float(arr.mean()), 100 * 1.96 * float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else 0.0


def reference_of(config: str, control: str = "") -> str:
    if config.startswith("dmc:") and control and config != f"dmc:{control}":
        return f"dmc:{control}"
    return "hermes" if "+hermes" in config else "full"


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------ report
def write_report(rows: list[dict], out: Path, command: str, args: argparse.Namespace, notes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dmc_sparsity.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    head = ["config", "budget", "KV ratio", "frames skipped", "static skipped", "acc backward (n)",
            "acc real-time (n)", "Δ backward vs ref", "Δ real-time vs ref", "TTFT ms", "ingest fps"]
    lines = ["# Memory merging (DMC) and frame sparsity on ShapesWorld", "",
             f"{args.videos} held-out test videos of {args.duration:.0f} s at 1 fps, {args.static_fraction:.0%} of "
             f"frames in static stretches of {args.static_segment:.0f} s (pixel noise std {args.frame_noise}); "
             f"backward and real-time questions asked at their time; chunks of {args.chunk_frames} frames.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}"

        def delta(key, r=r):
            d = r.get(key)
            return "-" if d is None else f"{d[0]:+.1f} ± {d[1]:.1f} ({r['reference']})"
        lines.append(f"| {r['config']} | {r['budget'] if r['budget'] is not None else '-'} | "
                     f"{r['kv_compression_ratio']:.2f}x | {pct(r['frames_skipped_fraction'])}% | "
                     f"{pct(r['static_skipped_fraction'])}% | {pct(r['accuracy_backward'])} ({r['n_backward']}) | "
                     f"{pct(r['accuracy_realtime'])} ({r['n_realtime']}) | {delta('delta_backward')} | "
                     f"{delta('delta_realtime')} | {r['ttft_ms']:.1f} | {r['ingest_fps']:.1f} |")
    lines += ["", *notes, "", "Command:", "", f"    {command}", "", f"Machine: {machine_description()}", ""]
    (out / "dmc_sparsity.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from ppllava_hermes.world.generator import WorldConfig
    from ppllava_hermes.world.model import load_shapesworld_adapter
    from ppllava_hermes.world.tasks import BACKWARD_TYPES, REALTIME_TYPES, TaskConfig, make_split

    command = "ppllava-hermes bench bench_dmc_sparsity " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    cfg = WorldConfig(static_fraction=args.static_fraction, static_segment=args.static_segment,
                      frame_noise=args.frame_noise)
    split = make_split("test", args.videos, duration=args.duration, config=cfg,
                       task_config=TaskConfig(task_types=BACKWARD_TYPES + REALTIME_TYPES,
                                              questions_per_type=args.questions_per_type))
    by_video = defaultdict(list)
    for rec in split.records:
        by_video[rec.video.split("/")[-1].removesuffix(".mp4")].append(rec)
    try:
        base = load_adapter(args.model, split.records)
    except FileNotFoundError as err:
        print(f"{err}\nThe ShapesWorld model is needed: train it, or pass --model random-shapesworld for timing.")
        return 2
    dmc_adapters = {}
    configs = [c for c in args.configs.split(",") if c]
    folders = [f for f in args.dmc.split(",") if f]
    if args.dmc_control and args.dmc_control not in folders:
        folders.insert(0, args.dmc_control)
    for folder in folders:
        info_path = Path(folder) / "dmc.json"
        if not info_path.exists():
            print(f"skipping {folder}: no dmc.json (run train/train_dmc.py first)")
            continue
        dmc_adapters[folder] = (load_shapesworld_adapter(folder), json.loads(info_path.read_text()))
        configs.append(f"dmc:{folder}")
    configs = (["full"] if "full" not in configs else []) + configs  # the ratio's reference comes first
    rows, full_entries, scorer_cache, outcomes = [], None, {}, {}
    for config in configs:
        t0 = time.time()
        row, entries, outcome = run_config(config, args, split.worlds, by_video, base, dmc_adapters, scorer_cache,
                                           full_entries)
        if config == "full":
            full_entries = entries
        outcomes[config] = outcome
        ref = reference_of(config, args.dmc_control)
        if ref in outcomes and ref != config:
            row["reference"] = ref
            for kind in ("backward", "realtime"):
                pd = paired_delta(outcome, outcomes[ref], kind)
                row[f"delta_{kind}"] = None if pd is None else [round(pd[0], 2), round(pd[1], 2)]
                if ref != "full":  # every row also against the uncompressed base model
                    pd = paired_delta(outcome, outcomes["full"], kind)
                    row[f"delta_{kind}_vs_full"] = None if pd is None else [round(pd[0], 2), round(pd[1], 2)]
        rows.append(row)
        if not args.quiet:
            print(json.dumps(row), f"({time.time() - t0:.0f} s)", flush=True)
    notes = [f"HERMES: budget {args.budget}, {args.anchors} anchors; merge threshold {args.merge_threshold} "
             f"(key cosine); novelty threshold {args.novelty_threshold} (feature cosine distance, max over "
             f"tokens; forced refresh after {args.novelty_max_skip} skipped groups); relevance: top-{args.relevance_k} group per chunk + the newest, standing query "
             f"{args.standing_query!r}.",
             "KV ratio: visual entries a full cache holds at the same question / visual entries held. "
             "Δ: accuracy difference in points on the same questions against the reference configuration "
             "(full, or hermes for +hermes rows), ± the half-width of a paired 95% interval."]
    write_report(rows, Path(args.out), command, args, notes)
    print(f"wrote {Path(args.out) / 'dmc_sparsity.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
