"""Efficiency benchmark of the memory policies: TTFT, ingest throughput, peak KV bytes, compression time.

For each model family and policy, one stream of synthetic frames runs through a tiny model whose
vision side keeps the real model's visual tokens per frame (LLaVA-OneVision: 392 px, patch 14 ->
28 x 28 -> pooled 14 x 14 = 196 per frame + a newline per chunk; Qwen2.5-VL: 448 px -> 256 per frame
pair + 2 delimiters per chunk). At F = 16, 64, 256, 1024 frames the stream pauses and asks several
questions (TTFT = median); ingest figures are cumulative up to F. Frames are really encoded (the tiny
towers make it cheap); nothing is cached. Numbers from tiny CPU models show how costs scale with the
stream length, not what a 7B model costs.

    ppllava-hermes bench bench_streaming                      # the CPU run behind docs/results/
    ppllava-hermes bench bench_streaming --large --device cuda --dtype bfloat16   # bigger LMs on a GPU

Writes ``streaming_efficiency.{json,md,png}`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppllava_hermes.memory import make_policy
from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import VLMAdapter
from ppllava_hermes.recipes.bench import machine_description, provenance_md
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.testing import tiny_llava_onevision, tiny_qwen2_5_vl

POLICIES = ["hermes", "window", "sink", "retrieval", "uniform", "full"]  # retrieval: peak KV is its resident window
QUESTIONS = [
    "What is happening in the video right now?",
    "What color was the first object that appeared?",
    "How many people have entered the room so far?",
    "Where did the red car go after it stopped?",
    "What did the person pick up at the beginning?",
    "Is the door open or closed at the moment?",
    "Which object moved the most during the video?",
]
FIELDS = ["model", "policy", "frames", "budget", "ttft_ms", "ingest_fps", "peak_kv_bytes", "kv_bytes_formula",
          "compress_ms", "ingest_ms"]


@dataclass
class ModelSetup:
    adapter: VLMAdapter
    frame_size: int
    tokens_per_frame: float  # visual tokens per frame on the grid
    extra_per_chunk: int  # delimiters / newline tokens each chunk adds


def build_model(family: str, large: bool, device: str, dtype: torch.dtype) -> ModelSetup:
    """Tiny (CPU) or larger (GPU) random model of ``family`` with the real visual tokens per frame."""
    # Large: the LM dimensions of the 0.5B members of both families (Qwen2-0.5B / Qwen2.5-0.5B).
    lm = (dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, vision_hidden=128, vision_depth=4)
          if large else dict(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2))
    if family == "llava_onevision":
        model, tok = tiny_llava_onevision(image_size=392, patch_size=14, max_position_embeddings=1 << 20, **lm)
        setup = (392, 196.0, 1)
    elif family == "qwen2_5_vl":
        model, tok = tiny_qwen2_5_vl(max_position_embeddings=1 << 20, **lm)
        setup = (448, 128.0, 2)
    else:
        raise ValueError(f"unknown model family {family!r}")
    model = model.to(device=device, dtype=dtype)
    return ModelSetup(adapter_for_model(model, tok), *setup)


def bytes_per_entry(adapter: VLMAdapter, dtype: torch.dtype) -> int:
    """Bytes one cache entry costs over all layers: layers x 2 (k, v) x kv_heads x head_dim x dtype bytes."""
    cfg = adapter.text_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8


def kv_formula(policy: str, setup: ModelSetup, frames: int, chunk_frames: int, budget: int, anchors: int,
               system: int, per_entry: int) -> int:
    """Peak KV bytes the budget formula predicts after ``frames`` frames.

    Streaming policies peak right after a chunk is prefilled, before it is compressed:
    ``system + budget (+ anchors for HERMES) + one chunk``, capped by everything streamed so far.
    Full cache: everything. Uniform: the system prompt + the frames a question re-encodes.
    """
    chunk = int(chunk_frames * setup.tokens_per_frame) + setup.extra_per_chunk
    chunks = -(-frames // chunk_frames)
    streamed = int(frames * setup.tokens_per_frame) + chunks * setup.extra_per_chunk
    if policy == "full":
        return per_entry * (system + streamed)
    if policy == "uniform":
        n = min(frames, max(1, budget // int(setup.tokens_per_frame)))
        replay_chunks = -(-n // chunk_frames)
        return per_entry * (system + int(n * setup.tokens_per_frame) + replay_chunks * setup.extra_per_chunk)
    held = budget + (anchors if policy == "hermes" else 0)
    return per_entry * (system + min(streamed, held + chunk))


def policy_for(name: str, budget: int, anchors: int, reindex: str):
    if name == "full":
        return make_policy("full")
    if name == "hermes":
        return make_policy("hermes", budget=budget, anchors=anchors, reindex=reindex)
    return make_policy(name, budget=budget)


def run_policy(family: str, setup: ModelSetup, name: str, args: argparse.Namespace, dtype: torch.dtype,
               log) -> list[dict]:
    checkpoints = sorted(args.frames)
    if name == "full" and args.full_max_frames:
        checkpoints = [f for f in checkpoints if f <= args.full_max_frames]
    if not checkpoints:
        return []
    session = StreamingSession(setup.adapter, memory=policy_for(name, args.budget, args.anchors, args.reindex),
                               config=StreamConfig(chunk_frames=args.chunk_frames))
    rng = np.random.default_rng(0)
    per_entry = bytes_per_entry(setup.adapter, dtype)
    system = len(setup.adapter.tokenize(setup.adapter.prefix_text()))
    rows, ingest_s, fed = [], 0.0, 0
    for target in checkpoints:
        while fed < target:
            n = min(args.chunk_frames, target - fed)
            frames = rng.integers(0, 256, (n, setup.frame_size, setup.frame_size, 3), dtype=np.uint8)
            times = (fed + np.arange(n)) / args.fps
            t0 = time.perf_counter()
            session.add_frames(frames, times)
            ingest_s += time.perf_counter() - t0
            fed += n
        for q in range(args.warmup):  # untimed: first-call effects (allocator, caches) out of the median
            session.ask(QUESTIONS[q % len(QUESTIONS)], GenerationConfig(max_new_tokens=1))
        ttfts = []
        for q in range(args.questions):
            answer = session.ask(QUESTIONS[q % len(QUESTIONS)], GenerationConfig(max_new_tokens=1))
            ttfts.append(answer.ttft_s)
        row = {
            "model": family,
            "policy": name,
            "frames": target,
            "budget": None if name == "full" else args.budget,
            "ttft_ms": round(1000 * statistics.median(ttfts), 3),
            "ingest_fps": round(target / ingest_s, 3) if ingest_s > 0 else None,
            "peak_kv_bytes": int(session.stats.peak_kv_bytes),
            "kv_bytes_formula": kv_formula(name, setup, target, session.chunk_frames, args.budget, args.anchors,
                                           system, per_entry),
            "compress_ms": round(1000 * session.stats.compress_s, 3),
            "ingest_ms": round(1000 * ingest_s, 3),
        }
        rows.append(row)
        log(f"{family:16s} {name:8s} F={target:5d} ttft={row['ttft_ms']:9.2f} ms  ingest={row['ingest_fps']} fps  "
            f"peak={row['peak_kv_bytes'] / 2**20:8.2f} MiB (formula {row['kv_bytes_formula'] / 2**20:8.2f})  "
            f"compress={row['compress_ms']:.0f}/{row['ingest_ms']:.0f} ms")
    return rows


# ---- report --------------------------------------------------------------------------------------
def targets(rows: list[dict]) -> list[str]:
    """The four efficiency targets, checked per model."""
    out = []
    by = {(r["model"], r["policy"], r["frames"]): r for r in rows}
    for model in sorted({r["model"] for r in rows}):
        frames = sorted({r["frames"] for r in rows if r["model"] == model and r["policy"] == "hermes"})
        if not frames:
            continue
        lo, hi = by[(model, "hermes", frames[0])], by[(model, "hermes", frames[-1])]
        ratio = hi["ttft_ms"] / lo["ttft_ms"]
        out.append(f"- {model}: HERMES TTFT at {frames[-1]} frames / at {frames[0]} = {ratio:.2f} "
                   f"(target <= 1.2): {'met' if ratio <= 1.2 else 'NOT met'}")
        full = by.get((model, "full", frames[-1]))
        if full:
            r = full["ttft_ms"] / hi["ttft_ms"]
            out.append(f"- {model}: full-cache TTFT / HERMES TTFT at {frames[-1]} frames = {r:.1f}x "
                       f"(target >= 10x): {'met' if r >= 10 else 'NOT met'}")
        else:
            out.append(f"- {model}: no full-cache run at {frames[-1]} frames (capped)")
        dev = abs(hi["peak_kv_bytes"] - hi["kv_bytes_formula"]) / hi["kv_bytes_formula"]
        out.append(f"- {model}: HERMES peak KV at {frames[-1]} frames is {100 * dev:.2f}% off the budget formula "
                   f"(target <= 5%): {'met' if dev <= 0.05 else 'NOT met'}")
        share = hi["compress_ms"] / hi["ingest_ms"]
        out.append(f"- {model}: HERMES compression = {100 * share:.1f}% of ingest time at {frames[-1]} frames "
                   f"(target <= 25%): {'met' if share <= 0.25 else 'NOT met'}")
    return out


def write_report(rows: list[dict], out_dir: Path, command: str, args: argparse.Namespace) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    assert all(list(r) == FIELDS for r in rows), "rows must carry exactly the documented fields"
    (out_dir / "streaming_efficiency.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Streaming efficiency of the memory policies",
        "",
        "Tiny random models (real HF classes) with the real visual tokens per frame; synthetic frames, "
        f"{args.fps} fps, chunks of {args.chunk_frames} frames, budget {args.budget} visual tokens per layer "
        f"(HERMES: + {args.anchors} anchors, re-index {args.reindex}; uniform: budget // tokens-per-frame frames "
        "re-encoded per question). TTFT: median of "
        f"{args.questions} questions asked at F frames (prefill of the question + first token; uniform includes "
        f"re-encoding its frames; {args.warmup} untimed warm-up question(s) first). Ingest: cumulative wall time of `add_frames` up to F (encode + prefill + "
        "compress). Peak KV: largest cache right after a chunk's prefill, before compression (uniform: at question "
        "time). `kv_bytes_formula`: layers x 2 x kv_heads x head_dim x bytes x (system + budget [+ anchors] + one "
        "chunk), capped by what was streamed (full: everything streamed).",
        "",
        *provenance_md(command, machine_description(args.device)),
        "",
        "| model | policy | frames | budget | TTFT ms | ingest fps | peak KV MiB | formula MiB | compress ms | ingest ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['policy']} | {r['frames']} | {r['budget'] if r['budget'] is not None else '-'} | "
            f"{r['ttft_ms']:.2f} | {r['ingest_fps']} | {r['peak_kv_bytes'] / 2**20:.2f} | "
            f"{r['kv_bytes_formula'] / 2**20:.2f} | {r['compress_ms']:.0f} | {r['ingest_ms']:.0f} |"
        )
    lines += ["", "## Targets", "", *targets(rows), ""]
    (out_dir / "streaming_efficiency.md").write_text("\n".join(lines))
    plot(rows, out_dir / "streaming_efficiency.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        for policy in POLICIES:
            pts = sorted((r["frames"], r["ttft_ms"], r["peak_kv_bytes"]) for r in rows
                         if r["model"] == model and r["policy"] == policy)
            if not pts:
                continue
            f, ttft, kv = zip(*pts, strict=True)
            axes[0][col].plot(f, ttft, marker="o", label=policy)
            axes[1][col].plot(f, [b / 2**20 for b in kv], marker="o", label=policy)
        axes[0][col].set_title(f"{model}: time to first token")
        axes[0][col].set_ylabel("TTFT (ms)")
        axes[1][col].set_title(f"{model}: peak KV cache")
        axes[1][col].set_ylabel("peak KV (MiB)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("frames streamed")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench bench_streaming", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["llava_onevision", "qwen2_5_vl"],
                   choices=["llava_onevision", "qwen2_5_vl"])
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--frames", nargs="+", type=int, default=[16, 64, 256, 1024], help="checkpoints (frames)")
    p.add_argument("--budget", type=int, default=None,
                   help="visual tokens per layer (default: 2048 tiny, 4096 with --large, the reference)")
    p.add_argument("--anchors", type=int, default=64, help="HERMES anchor allowance per deep layer")
    p.add_argument("--reindex", default="lazy", choices=["lazy", "eager"], help="HERMES re-indexing mode")
    p.add_argument("--chunk-frames", type=int, default=8)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--questions", type=int, default=11, help="questions per checkpoint (TTFT = median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed questions before the timed ones")
    p.add_argument("--full-max-frames", type=int, default=0,
                   help="skip full-cache checkpoints above this many frames (0: no cap)")
    p.add_argument("--large", action="store_true", help="0.5B-sized language models (for a GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    p.add_argument("--keep-rows", type=Path, default=None,
                   help="JSON of an earlier run: its rows for (model, policy) pairs not run now are kept "
                        "(e.g. the long full-cache runs)")
    p.add_argument("--keep-rows-command", default="", help="the command that produced --keep-rows (for the report)")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 4096 if args.large else 2048
    if min(args.frames) < 1 or args.questions < 1 or args.chunk_frames < 1:
        p.error("--frames, --questions and --chunk-frames must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    command = "ppllava-hermes bench bench_streaming " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows: list[dict] = []
    if args.keep_rows:
        kept = json.loads(args.keep_rows.read_text())
        rows = [r for r in kept if not (r["model"] in args.models and r["policy"] in args.policies)]
        if args.keep_rows_command:
            command += f"\n# rows of {sorted({r['policy'] for r in rows})} kept from:\n{args.keep_rows_command}"

    def log(msg: str) -> None:
        print(msg, flush=True)

    for family in args.models:
        setup = build_model(family, args.large, args.device, dtype)
        for name in args.policies:
            t0 = time.perf_counter()
            rows += run_policy(family, setup, name, args, dtype, log)
            rows.sort(key=lambda r: (r["model"], POLICIES.index(r["policy"]), r["frames"]))
            log(f"{family} {name}: {time.perf_counter() - t0:.0f} s")
            write_report(rows, args.out_dir, command, args)  # partial results survive an interruption
    for line in targets(rows):
        log(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
