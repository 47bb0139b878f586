"""Soak: a bounded memory on an endless stream stays bounded (KV bytes, RSS) and fast (TTFT, ingest).

    ppllava-hermes bench soak                         # docs/results/soak.{json,md,png}, 40,000 frames
    ppllava-hermes bench soak --frames 4000 --out /tmp/s   # a short run

Specification.

* Model: ``--model`` (default ``tiny-qwen2.5-vl``, the tiny random Qwen2.5-VL: what is measured is the
  engine and the memory, not the answers). Frames: ``--size`` px square, a moving square over noise,
  generated per chunk (nothing is kept), timestamps at 1 fps; chunks of ``--chunk-frames``.
* Policies: ``--policies`` (default hermes, window, sink, merge) at ``--budget`` visual tokens per layer,
  one :class:`StreamingSession` each, ``--frames`` frames.
* Every ``--every`` frames a row: ``{"policy", "frames", "rss_mb", "kv_bytes", "memory_tokens",
  "next_position", "ttft_ms", "ingest_fps"}``: resident memory now (``/proc/self/statm``), the memory's KV
  bytes and entries per layer, the next RoPE position (re-indexing keeps it bounded), the TTFT of a
  one-token question, and frames per second over the last ``--every`` frames.
* Summary per policy (``summary`` in the JSON): KV bytes min / max after the first report, RSS drift
  (last - first report), TTFT first / median / last, median ingest fps.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ppllava_hermes.recipes.bench import machine_description, provenance_md

ROW_FIELDS = ("policy", "frames", "rss_mb", "kv_bytes", "memory_tokens", "next_position", "ttft_ms", "ingest_fps")


def rss_mb() -> float:
    """Resident memory of this process now (not the peak), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def frames_at(start: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` frames from frame ``start`` on: low noise and a bright square that moves one pixel a frame."""
    out = rng.integers(0, 40, (n, size, size, 3), dtype=np.uint8)
    side = size // 4
    for i in range(n):
        x = (start + i) % (size - side)
        out[i, size // 3 : size // 3 + side, x : x + side] = (230, 60, 40)
    return out


def soak(adapter, policy_name: str, budget: int, args) -> list[dict]:
    from ppllava_hermes.memory import make_policy
    from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession

    session = StreamingSession(adapter, memory=make_policy(policy_name, budget=budget),
                               config=StreamConfig(chunk_frames=args.chunk_frames))
    rng = np.random.default_rng(0)
    rows, t_last, frames = [], time.perf_counter(), 0
    while frames < args.frames:
        n = min(args.chunk_frames, args.frames - frames)
        session.add_frames(frames_at(frames, n, args.size, rng), np.arange(frames, frames + n, dtype=np.float64))
        frames += n
        if frames % args.every == 0:
            fps = args.every / (time.perf_counter() - t_last)
            ans = session.ask("What is moving?", GenerationConfig(max_new_tokens=1))
            rows.append({"policy": policy_name, "frames": frames, "rss_mb": round(rss_mb(), 2),
                         "kv_bytes": session.cache.kv_bytes(), "memory_tokens": session.cache.physical_length(),
                         "next_position": int(session.next_position), "ttft_ms": round(ans.ttft_s * 1000, 3),
                         "ingest_fps": round(fps, 1)})
            print(json.dumps(rows[-1]), flush=True)
            t_last = time.perf_counter()
    return rows


def summarize(rows: list[dict]) -> dict:
    after = rows[1:] or rows
    return {"kv_bytes_min": min(r["kv_bytes"] for r in after), "kv_bytes_max": max(r["kv_bytes"] for r in after),
            "rss_mb_first": rows[0]["rss_mb"], "rss_mb_last": rows[-1]["rss_mb"],
            "rss_drift_mb": round(rows[-1]["rss_mb"] - rows[0]["rss_mb"], 2),
            "ttft_ms_first": rows[0]["ttft_ms"], "ttft_ms_median": float(np.median([r["ttft_ms"] for r in rows])),
            "ttft_ms_last": rows[-1]["ttft_ms"],
            "ingest_fps_median": float(np.median([r["ingest_fps"] for r in rows])),
            "max_next_position": max(r["next_position"] for r in rows)}


def markdown(summary: dict, args, command: str, seconds: float) -> str:
    lines = ["# Soak: bounded memory on an endless stream", "",
             f"{args.frames:,} frames per policy ({args.size}x{args.size}, chunks of {args.chunk_frames}, model "
             f"`{args.model}`), budget {args.budget} visual tokens per layer; a report every {args.every:,} frames. "
             "Spec: `ppllava_hermes/recipes/bench/soak.py`; every report is in `soak.json`.", "",
             *provenance_md(command, machine_description()), "", f"Total {seconds / 60:.1f} min.", "",
             "| policy | KV bytes (min..max after the first report) | RSS first -> last (MiB) | drift | TTFT first / median / "
             "last (ms) | ingest fps (median) | max position |", "|---|---|---|---|---|---|---|"]
    for p, s in summary.items():
        lines.append(f"| {p} | {s['kv_bytes_min']:,}..{s['kv_bytes_max']:,} | {s['rss_mb_first']:.1f} -> "
                     f"{s['rss_mb_last']:.1f} | {s['rss_drift_mb']:+.1f} | {s['ttft_ms_first']:.1f} / "
                     f"{s['ttft_ms_median']:.1f} / {s['ttft_ms_last']:.1f} | {s['ingest_fps_median']:.0f} | "
                     f"{s['max_next_position']:,} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for p in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == p]
        x = [r["frames"] for r in rs]
        axes[0].plot(x, [r["kv_bytes"] / 1024 for r in rs], label=p)
        axes[1].plot(x, [r["rss_mb"] for r in rs], label=p)
        axes[2].plot(x, [r["ttft_ms"] for r in rs], label=p)
    for ax, y in zip(axes, ("KV (KiB)", "RSS (MiB)", "TTFT (ms)"), strict=True):
        ax.set_xlabel("frames streamed")
        ax.set_ylabel(y)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench soak", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-qwen2.5-vl")
    p.add_argument("--policies", default="hermes,window,sink,merge")
    p.add_argument("--budget", type=int, default=128)
    p.add_argument("--frames", type=int, default=40_000)
    p.add_argument("--every", type=int, default=1_000)
    p.add_argument("--chunk-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    if args.every % args.chunk_frames or args.every < args.chunk_frames:
        p.error(f"--every {args.every} must be a multiple of --chunk-frames {args.chunk_frames}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ppllava_hermes.specs import load_model

    torch.set_num_threads(args.threads)
    t0 = time.time()
    adapter = load_model(args.model)
    rows: list[dict] = []
    for name in args.policies.split(","):
        rows += soak(adapter, name, args.budget, args)
    summary = {p: summarize([r for r in rows if r["policy"] == p]) for p in dict.fromkeys(r["policy"] for r in rows)}
    seconds = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "ppllava-hermes bench soak " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    (out / "soak.json").write_text(json.dumps({"command": command, "summary": summary, "rows": rows}, indent=1))
    (out / "soak.md").write_text(markdown(summary, args, command, seconds))
    plot(rows, out / "soak.png")
    print(f"wrote {out / 'soak.json'} ({len(rows)} rows), .md and .png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
