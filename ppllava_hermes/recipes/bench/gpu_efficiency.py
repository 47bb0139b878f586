"""GPU efficiency of the memory policies on the published 7-8B configurations (random bf16 weights).

Each model of ``--models`` is built from its published ``config.json`` (``configs/*.json`` beside this
module: Qwen2.5-VL-7B-Instruct, LLaVA-OneVision-qwen2-7B-ov, Qwen3-VL-8B-Instruct; configurations only,
no weights) with random weights in ``--dtype`` (bfloat16) directly on ``--device``, attention
``sdpa`` for prefill and decode (the memory's own probes use whatever the engine uses). For each policy one
stream of synthetic frames at ``--fps`` (1) runs in chunks of ``--chunk-frames`` (8) frames, at the
resolution that gives the models' usual visual tokens (LLaVA-OneVision 384 px: 196 per frame; Qwen2.5-VL
448 px and Qwen3-VL 512 px: 256 per frame pair), and at each checkpoint of ``--frames`` (16, 64, 256,
1,024) the stream pauses for questions. Per (model, policy, frames) row:

- ``ttft_ms``: median time to first token over ``--questions`` questions (after one untimed), question
  prefill + first token (``max_new_tokens=1``; uniform: its re-encoding and prefill included);
  ``ttft_with_encode_ms``: plus one chunk's vision encoding (a question that waits for the newest chunk),
  SimpleStream's "TTFT with vision encoding"; ``encode_ms``: median encode time of one chunk (vision tower
  + projector), measured once per model.
- ``tpot_ms``: time per output token of one ``--answer-tokens``-token greedy answer (after the first).
- ``ingest_fps``: frames per second of ``add_frames`` (encode + prefill + compression) up to the checkpoint.
- ``peak_mem_bytes``: ``torch.cuda.max_memory_allocated`` since the policy's stream began (weights
  included; ``model_bytes`` is the weights alone); null off CUDA. ``kv_bytes``: the memory's keys and
  values at the checkpoint.

Timings synchronize the device first. Prompts are tokenized by the offline byte-level tokenizer
(``testing.byte_tokenizer``: the real tokenizers are not shipped), so text segments hold ~3-4x more
tokens than with the models' BPE tokenizers (a system prompt of ~70 tokens instead of ~20, a question of
~60 instead of ~12): TTFTs err on the high side. One command is meant to finish within 10 minutes on one
GPU: ``--time-limit`` (540 s) shares the time among the models; a checkpoint whose projected cost would
pass the model's share is skipped and listed in the report.

    ppllava-hermes bench gpu_efficiency                     # one GPU (cuda, bfloat16), ~10 min
    ppllava-hermes bench gpu_efficiency --smoke             # CPU smoke run: reduced configs (2 layers, hidden 64)

Writes ``gpu_efficiency.{json,md}`` to ``--out-dir``; a ``--smoke`` run writes only the ``.md``, labelled as
a smoke run (its numbers are not results).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import VLMAdapter
from ppllava_hermes.recipes.bench import machine_description, provenance_md
from ppllava_hermes.recipes.bench.bench_streaming import QUESTIONS, policy_for
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.testing import byte_tokenizer

CONFIG_DIR = Path(__file__).with_name("configs")
#: name -> (config file, frame side in px)
MODELS = {
    "qwen2_5_vl_7b": ("qwen2_5_vl_7b.json", 448),
    "llava_onevision_qwen2_7b": ("llava_onevision_qwen2_7b.json", 384),
    "qwen3_vl_8b": ("qwen3_vl_8b.json", 512),
}
POLICIES = ["hermes", "full", "window", "sink", "uniform", "retrieval-tokens", "retrieval"]
FIELDS = ["model", "policy", "frames", "budget", "ttft_ms", "ttft_with_encode_ms", "encode_ms", "tpot_ms",
          "ingest_fps", "peak_mem_bytes", "model_bytes", "kv_bytes", "device", "dtype"]


def hf_classes(model_type: str):
    """``(config class, model class)`` of a published ``model_type``."""
    import transformers as tf

    classes = {
        "qwen2_5_vl": (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration),
        "llava_onevision": (tf.LlavaOnevisionConfig, tf.LlavaOnevisionForConditionalGeneration),
        "qwen3_vl": (tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration),
    }
    if model_type not in classes:
        raise ValueError(f"no model class for model_type {model_type!r}")
    return classes[model_type]


def published_config(name: str) -> dict:
    """The shipped ``config.json`` of model ``name`` (a key of :data:`MODELS`)."""
    return json.loads((CONFIG_DIR / MODELS[name][0]).read_text())


def reduce_config(config: dict) -> dict:
    """The smoke-run reduction of a published configuration: 2 decoder layers, hidden 64, 4 heads, 2 KV
    heads, head_dim 16 (M-RoPE sections rescaled), a 2-layer vision tower of width 64; vocabulary, token
    ids, patch and merge sizes (so the tokens per frame) unchanged."""
    cfg = copy.deepcopy(config)
    text = cfg.get("text_config", cfg)  # Qwen2.5-VL's published file keeps the text fields at the top
    text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_window_layers=2)
    if "head_dim" in text:
        text["head_dim"] = 16
    rope = text.get("rope_scaling") or {}
    if "mrope_section" in rope:  # sections of head_dim / 2 = 8, in the published proportions
        rope["mrope_section"] = [4, 2, 2] if rope.get("mrope_interleaved") else [2, 3, 3]
    vision = cfg["vision_config"]
    vision.update(hidden_size=64, intermediate_size=128)
    if "depth" in vision:  # Qwen towers
        vision.update(depth=2, num_heads=4, out_hidden_size=64)
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = [1]
        if "deepstack_visual_indexes" in vision:
            vision["deepstack_visual_indexes"] = [0, 1]
    else:  # SigLIP
        vision.update(num_hidden_layers=2, num_attention_heads=4)
    return cfg


def build(name: str, device: str, dtype: torch.dtype, smoke: bool) -> VLMAdapter:
    """Model ``name`` from its configuration (reduced with ``smoke``), random weights, on ``device``."""
    raw = published_config(name)
    if smoke:
        raw = reduce_config(raw)
    config_cls, model_cls = hf_classes(raw["model_type"])
    config = config_cls.from_dict(raw)
    for cfg in (config, config.text_config, config.vision_config):
        cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype).eval()
    return adapter_for_model(model, byte_tokenizer())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def frames_of(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def encode_chunk_s(adapter: VLMAdapter, side: int, chunk: int, device: str, repeats: int = 3) -> float:
    """Median seconds to encode one chunk (after one untimed encode)."""
    frames = frames_of(np.random.default_rng(1), chunk, side)
    times = np.arange(chunk, dtype=np.float64)
    out = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        adapter.encode_frames(frames, times, 0)
        sync(device)
        if i:
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


@dataclass
class Deadline:
    """Wall-clock end (``time.perf_counter``) of one model's share of ``--time-limit``."""

    end: float

    def left(self) -> float:
        return self.end - time.perf_counter()


def run_policy(name: str, adapter: VLMAdapter, policy: str, side: int, encode_s: float, model_bytes: int | None,
               args: argparse.Namespace, deadline: Deadline, skipped: list[str], log) -> list[dict]:
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    session = StreamingSession(adapter, memory=policy_for(policy, args.budget, args.anchors, "lazy"),
                               config=StreamConfig(chunk_frames=args.chunk_frames))
    rng = np.random.default_rng(0)
    rows, fed, ingest_s = [], 0, 0.0
    for target in sorted(args.frames):
        # Projected cost of the next stretch: the rate so far (x the growth of a full cache's attention).
        rate = ingest_s / fed if fed else None
        if rate is not None:
            growth = target / fed if policy == "full" else 1.0
            if rate * (target - fed) * growth > deadline.left():
                skipped.append(f"{name} {policy} from {target} frames (projected past the time limit)")
                log(f"{name} {policy}: skipping {target}+ frames (time limit)")
                break
        while fed < target:
            n = min(args.chunk_frames, target - fed)
            sync(args.device)
            t0 = time.perf_counter()
            session.add_frames(frames_of(rng, n, side), (fed + np.arange(n)) / args.fps)
            sync(args.device)
            ingest_s += time.perf_counter() - t0
            fed += n
        gen = GenerationConfig(max_new_tokens=1)
        session.ask(QUESTIONS[0], gen)  # untimed: first-call effects
        ttfts = []
        for q in range(args.questions):
            sync(args.device)
            ttfts.append(session.ask(QUESTIONS[(q + 1) % len(QUESTIONS)], gen).ttft_s)
        sync(args.device)
        answer = session.ask(QUESTIONS[1], GenerationConfig(max_new_tokens=args.answer_tokens))
        decoded = len(answer.token_ids) - 1  # forwards after the first token (a stop token ends it early)
        tpot = (answer.total_s - answer.ttft_s) / decoded if decoded > 0 else None
        ttft = statistics.median(ttfts)
        row = {
            "model": name, "policy": policy, "frames": target, "budget": None if policy == "full" else args.budget,
            "ttft_ms": round(1000 * ttft, 3),
            "ttft_with_encode_ms": round(1000 * (ttft if policy == "uniform" else ttft + encode_s), 3),
            "encode_ms": round(1000 * encode_s, 3),
            "tpot_ms": None if tpot is None else round(1000 * tpot, 3),
            "ingest_fps": round(target / ingest_s, 3) if ingest_s else None,
            "peak_mem_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
            "model_bytes": model_bytes,
            "kv_bytes": int(session.engine.cache.kv_bytes()),
            "device": args.device, "dtype": args.dtype,
        }
        rows.append(row)
        mem = f"{row['peak_mem_bytes'] / 2**30:.2f} GiB" if row["peak_mem_bytes"] else "-"
        log(f"{name:24s} {policy:16s} F={target:5d} ttft={row['ttft_ms']:9.2f} ms (+enc {row['ttft_with_encode_ms']:.2f}) "
            f"tpot={row['tpot_ms']} ms ingest={row['ingest_fps']} fps peak={mem} kv={row['kv_bytes'] / 2**20:.1f} MiB")
        if deadline.left() <= 0:
            break
    return rows


def write_report(rows: list[dict], skipped: list[str], out_dir: Path, command: str, args: argparse.Namespace,
                 wall_s: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    assert all(list(r) == FIELDS for r in rows)
    if not args.smoke:
        (out_dir / "gpu_efficiency.json").write_text(json.dumps(rows, indent=1) + "\n")
    title = ("# GPU efficiency: CPU SMOKE RUN (reduced configurations; these numbers are NOT results)"
             if args.smoke else "# GPU efficiency of the memory policies (published 7-8B configurations, random weights)")
    lines = [title, ""]
    if args.smoke:
        lines += [
            "No GPU was available when this benchmark was written, so no GPU results exist yet, and the command has "
            "not yet run on one. The command for one GPU (`--time-limit`, 540 s by default, stops it starting new "
            "checkpoints past each model's share, so that it ends within 10 minutes; it writes "
            "`gpu_efficiency.json` and replaces this file):",
            "", "```", "ppllava-hermes bench gpu_efficiency", "```", "",
            "Below: the output of a CPU smoke run of the same code on the reduced configurations "
            "(`reduce_config`: 2 decoder layers, hidden 64, 2-layer vision towers; real vocabularies, token ids and "
            "tokens per frame), which checks that every model builds from its shipped configuration and streams "
            "under every policy. Its timings say nothing about a GPU or a 7B model.", "",
        ]
    lines += [
        f"Models built from `ppllava_hermes/recipes/bench/configs/` (transcribed from the published config.json "
        f"files), random {args.dtype} weights, sdpa attention; {args.fps} fps, chunks of {args.chunk_frames} frames, "
        f"budget {args.budget} (HERMES + {args.anchors} anchors); TTFT median of {args.questions} questions after one "
        f"untimed; tpot from one {args.answer_tokens}-token answer. Wall time {wall_s:.0f} s.",
        "",
        *provenance_md(command, machine_description(args.device)),
        "",
        "| model | policy | frames | TTFT ms | TTFT + encode ms | encode ms / chunk | tpot ms | ingest fps | "
        "peak mem GiB | weights GiB | KV MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def gib(x: int | None) -> str:
        return "-" if x is None else f"{x / 2**30:.2f}"

    for r in rows:
        lines.append(f"| {r['model']} | {r['policy']} | {r['frames']} | {r['ttft_ms']:.2f} | {r['ttft_with_encode_ms']:.2f} "
                     f"| {r['encode_ms']:.2f} | {r['tpot_ms'] if r['tpot_ms'] is not None else '-'} | {r['ingest_fps']} | "
                     f"{gib(r['peak_mem_bytes'])} | {gib(r['model_bytes'])} | {r['kv_bytes'] / 2**20:.1f} |")
    lines += ["", "Skipped (time limit): " + ("; ".join(skipped) if skipped else "nothing"), ""]
    (out_dir / "gpu_efficiency.md").write_text("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench gpu_efficiency", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--frames", nargs="+", type=int, default=None, help="checkpoints (default 16 64 256 1024; smoke: 16 32)")
    p.add_argument("--budget", type=int, default=None, help="visual tokens per layer (default 4096; smoke: 1024, "
                   "so that the short smoke streams compress)")
    p.add_argument("--anchors", type=int, default=64)
    p.add_argument("--chunk-frames", type=int, default=8)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--questions", type=int, default=3, help="timed questions per checkpoint (TTFT = median)")
    p.add_argument("--answer-tokens", type=int, default=16, help="tokens of the answer timed for tpot")
    p.add_argument("--time-limit", type=float, default=540.0, help="seconds for the whole run (shared by the models)")
    p.add_argument("--smoke", action="store_true",
                   help="reduced configurations on the CPU in float32 (checks the code path; not results)")
    p.add_argument("--device", default=None, help="default: cuda (smoke: cpu)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 (smoke: float32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.dtype = args.dtype or ("float32" if args.smoke else "bfloat16")
    args.frames = args.frames or ([16, 32] if args.smoke else [16, 64, 256, 1024])
    args.budget = args.budget or (1024 if args.smoke else 4096)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU, or pass --smoke for the CPU smoke run")
    if min(args.frames) < 1 or args.questions < 1 or args.answer_tokens < 2:
        p.error("--frames and --questions must be positive, --answer-tokens at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "ppllava-hermes bench gpu_efficiency " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    rows: list[dict] = []
    skipped: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    for i, name in enumerate(args.models):
        share = (args.time_limit - (time.perf_counter() - start)) / (len(args.models) - i)
        deadline = Deadline(time.perf_counter() + share)
        t0 = time.perf_counter()
        adapter = build(name, args.device, dtype, args.smoke)
        model_bytes = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
        side = MODELS[name][1]
        encode_s = encode_chunk_s(adapter, side, args.chunk_frames, args.device)
        log(f"{name}: built in {time.perf_counter() - t0:.1f} s, {model_bytes / 2**30:.2f} GiB of weights; "
            f"encode {1000 * encode_s:.1f} ms per {args.chunk_frames}-frame chunk; {deadline.left():.0f} s left for it")
        for policy in args.policies:
            if deadline.left() <= 0:
                skipped.append(f"{name} {policy} (time limit)")
                continue
            rows += run_policy(name, adapter, policy, side, encode_s, model_bytes, args, deadline, skipped, log)
            write_report(rows, skipped, args.out_dir, command, args, time.perf_counter() - start)
        del adapter
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    write_report(rows, skipped, args.out_dir, command, args, time.perf_counter() - start)
    log(f"done in {time.perf_counter() - start:.0f} s; skipped: {skipped or 'nothing'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
