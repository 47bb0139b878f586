"""Pooling benchmark: visual tokens into the LLM and prefill time with and without prompt-guided pooling.

    ppllava-hermes bench bench_pooling --frames 32 128 --repeats 3

Tiny random Qwen2.5-VL and LLaVA-OneVision (the real HF classes) at the real models' visual tokens per
frame (Qwen2.5-VL at 448x448: 256 per frame pair; LLaVA-OneVision at 384/14: 196 per frame), synthetic
frames. The video is encoded once; prefill (the LLM over every chunk's visual tokens, chunks of 8 frames)
is timed separately from CLIP scoring (a tiny random open_clip ViT at 224/14). Medians over repeats.
Writes docs/results/pooling.json (rows {"model", "frames", "pooling", "visual_tokens", "prefill_ms",
"scoring_ms"}) and pooling.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling
from ppllava_hermes.pooling.relevance import RelevanceConfig, RelevanceScorer
from ppllava_hermes.pooling.testing import tiny_open_clip
from ppllava_hermes.streaming import StreamConfig, StreamingSession
from ppllava_hermes.streaming.pooling_stage import pool_visual
from ppllava_hermes.testing import tiny_llava_onevision, tiny_qwen2_5_vl

CHUNK = 8
QUESTION = "When does the red car turn left?"


def build(model: str):
    if model == "qwen2_5_vl":
        net, tok = tiny_qwen2_5_vl(hidden_size=64)
        return adapter_for_model(net, tok), 448
    net, tok = tiny_llava_onevision(hidden_size=64, image_size=392)  # 28x28 patches -> 14x14 = 196 tokens
    return adapter_for_model(net, tok), 392


def run(model: str, frames_n: int, repeats: int, kernel) -> list[dict]:
    adapter, size = build(model)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (frames_n, size, size, 3), dtype=np.uint8)
    times = np.arange(frames_n, dtype=np.float64)
    chunks = [adapter.encode_frames(frames[s : s + CHUNK], times[s : s + CHUNK], s) for s in range(0, frames_n, CHUNK)]
    clip, tok = tiny_open_clip(image_size=224, patch_size=14, width=32)
    scorer = RelevanceScorer(clip, tok, config=RelevanceConfig(frames_per_token=adapter.frames_per_group))
    feats = scorer.encode_video(frames)
    pooling = PromptGuidedPooling(PoolingConfig(kernel=kernel, padding="drop"))
    rows = []
    for mode in ("none", "prompt"):
        prefill, scoring, tokens = [], [], 0
        for _ in range(repeats):
            visuals, score_s = chunks, 0.0
            if mode == "prompt":
                visuals = []
                for i, vis in enumerate(chunks):
                    t0 = time.perf_counter()
                    from ppllava_hermes.pooling.relevance import VideoPatchFeatures

                    w = scorer.score(QUESTION, VideoPatchFeatures(feats.features[:, i * CHUNK : (i + 1) * CHUNK]),
                                     grid=vis.grid)
                    score_s += time.perf_counter() - t0
                    visuals.append(pool_visual(vis, pooling, w))
            session = StreamingSession(adapter, config=StreamConfig(chunk_frames=CHUNK))
            for i, vis in enumerate(visuals):
                session.add_visual_tokens(vis, times[i * CHUNK : (i + 1) * CHUNK])
            prefill.append(session.stats.prefill_s)
            scoring.append(score_s)
            tokens = session.stats.visual_tokens
        rows.append({"model": model, "frames": frames_n, "pooling": "none" if mode == "none" else f"prompt {kernel}",
                     "visual_tokens": tokens, "prefill_ms": round(1000 * statistics.median(prefill), 1),
                     "scoring_ms": round(1000 * statistics.median(scoring), 1)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[32, 128])
    p.add_argument("--models", nargs="+", default=["qwen2_5_vl", "llava_onevision"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/results/pooling.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with torch.no_grad():
        for model in args.models:
            for n in args.frames:
                rows += run(model, n, args.repeats, (2, 3, 3))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    cmd = "ppllava-hermes bench bench_pooling " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Prompt-guided pooling: tokens and prefill", "", f"Command: `{cmd.strip()}`", "",
             f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch threads {args.threads}, "
             "shared 2-core CPU; medians over repeats; tiny random models with the real tokens per frame.", "",
             "| model | frames | pooling | visual tokens | prefill ms | scoring ms | prefill vs none |",
             "|---|---:|---|---:|---:|---:|---:|"]
    base = {(r["model"], r["frames"]): r["prefill_ms"] for r in rows if r["pooling"] == "none"}
    for r in rows:
        ratio = r["prefill_ms"] / base[(r["model"], r["frames"])]
        lines.append(f"| {r['model']} | {r['frames']} | {r['pooling']} | {r['visual_tokens']} | {r['prefill_ms']} | "
                     f"{r['scoring_ms']} | {ratio:.1%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
