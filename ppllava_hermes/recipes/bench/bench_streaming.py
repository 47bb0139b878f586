"""Efficiency benchmark of the memory policies: TTFT against its floor, ingest, peak KV bytes, compression time.

For each model and policy, one stream of synthetic frames at ``--fps`` runs through a model whose vision
side gives the real model's visual tokens per frame (LLaVA-OneVision: 392 or 384 px, patch 14 -> 28 or
27 per side -> pooled 14 x 14 = 196 per frame, then per chunk the model's newline and the text its chat
format writes after a video, ``adapter.after_video_ids()``; Qwen2.5-VL: 448 px -> 256 per frame pair +
2 delimiters per chunk). Models (``--models``):

- ``llava_onevision``, ``qwen2_5_vl``: tiny random models (4 layers, hidden 64; ``--large``: the 0.5B
  members' LM sizes, for a GPU). Their TTFTs are mostly framework overhead: they show how costs scale
  with the stream, not what a real LM costs.
- ``llava_onevision-smollm2-30L``: LLaVA-OneVision (the real HF class) whose language model is
  SmolLM2-135M-Instruct's real 30 layers and weights (9 heads, 3 KV heads, head_dim 64; loaded offline,
  ``testing.smollm2_llava_onevision``) behind a random SigLIP tower (hidden 64, 2 layers) and projector at
  384 px (196 tokens per frame): probe-to-prefill and compression-to-ingest ratios of a real LM's depth.
  Its vision tower is small, so ``encode_ms`` there is not SigLIP's.

At each checkpoint F (frames streamed) the stream pauses and asks ``--questions`` questions after
``--warmup`` untimed ones; ingest figures are cumulative up to F. Row fields (``streaming_efficiency.json``):

- ``ttft_ms``: median time to first token (question prefill + the first token's pick, ``max_new_tokens=1``;
  uniform: its re-encoding and prefill of the sampled frames included).
- ``floor_ms``: the least a bounded memory's question can cost on this model: the same question path
  (``session.ask``, ``max_new_tokens=1``) on a full cache holding exactly the system prompt + ``budget``
  entries, written directly (no stream, no compression, no question-time cache); median over the same
  questions. One value per model, repeated on its rows.
- ``encode_ms``: vision encoding time of one chunk (``--chunk-frames`` frames): the session's mean over its
  ingest chunks; for rows without ingest encoding (uniform, synthetic fills) the median of 3 encodes of a
  chunk measured once per model. ``ttft_with_encode_ms``: TTFT of a question that must wait for the
  newest chunk's encoding (SimpleStream's "TTFT with vision encoding"): ``ttft_ms + encode_ms``; uniform:
  ``ttft_ms`` (its TTFT already re-encodes every frame it uses).
- ``fill``: ``"stream"`` (the row's cache was streamed) or ``"synthetic"``: a full-cache row at a frame
  count whose streaming would not fit the time (``--full-synthetic-frames``): the cache is written directly
  with random keys and values, as many entries as the stream would hold (system + every visual entry);
  the question's cost depends on the entries' number, not their values. Its ingest fields are null.
- ``peak_kv_bytes`` / ``kv_bytes_formula``: the largest cache held (stream and question-time caches)
  and the budget formula of :func:`kv_formula`.
- ``compress_ms`` / ``ingest_ms``: cumulative compression (probe included) and ``add_frames`` wall time.

Rows written before a field existed have it null.

    ppllava-hermes bench bench_streaming                      # the tiny CPU run behind docs/results/
    # the real-depth rows (~18 min on 2 loaded cores; the tiny rows kept from the file):
    ppllava-hermes bench bench_streaming --models llava_onevision-smollm2-30L --threads 1 \\
        --policies hermes full uniform window sink retrieval-tokens retrieval --frames 16 24 \\
        --frames-for hermes=16,32 full=16 uniform=16,1024 --full-synthetic-frames 32 64 256 1024 \\
        --questions 3 --warmup 1 --uniform-questions 1 --uniform-warmup 0 \\
        --keep-rows docs/results/streaming_efficiency.json
    ppllava-hermes bench bench_streaming --large --device cuda --dtype bfloat16   # bigger LMs on a GPU

Writes ``streaming_efficiency.{json,md,png}`` to ``--out-dir``; the ``.md``'s hand-written notes section
(from its :data:`NOTES_HEADING` on) is carried over when the report is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppllava_hermes.memory import POLICIES as POLICY_CLASSES
from ppllava_hermes.memory import make_policy
from ppllava_hermes.memory.cache import TokenKind, TokenMeta
from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import VLMAdapter
from ppllava_hermes.recipes.bench import machine_description, provenance_md
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.testing import smollm2_llava_onevision, tiny_llava_onevision, tiny_qwen2_5_vl

REAL_DEPTH = "llava_onevision-smollm2-30L"
MODELS = ["llava_onevision", "qwen2_5_vl", REAL_DEPTH]
# retrieval / retrieval-tokens: the resident window streams; a question adds its answer cache (kv_formula).
POLICIES = ["hermes", "window", "sink", "retrieval", "retrieval-tokens", "novelty", "uniform", "full"]
BOUNDED = ["hermes", "window", "sink", "retrieval", "retrieval-tokens", "novelty"]  # streaming memories with a budget
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
          "compress_ms", "ingest_ms", "floor_ms", "encode_ms", "ttft_with_encode_ms", "fill"]
NOTES_HEADING = "## Notes (written by hand after the runs)"
Log = Callable[[str], None]


@dataclass
class ModelSetup:
    """A model to stream with its visual layout.

    Attributes:
        adapter: the model's adapter.
        frame_size: side (px) of the synthetic frames.
        tokens_per_frame: visual grid tokens per frame.
        extra_head / extra_tail: entries a chunk holds besides its grid, before its first temporal group's
            grid and after its last one (:func:`chunk_extras`); a memory evicts them with that group.
        uniform_tokens_per_frame: what the uniform session divides its budget by (its own rule: one
            temporal group's ``num_tokens`` per frame).
    """

    adapter: VLMAdapter
    frame_size: int
    tokens_per_frame: float
    extra_head: int
    extra_tail: int
    uniform_tokens_per_frame: int

    @property
    def extra_per_chunk(self) -> int:
        return self.extra_head + self.extra_tail

    def chunk_blocks(self, frames: int) -> list[int]:
        """Entries per temporal group (the unit a frame id tags) of a chunk of ``frames`` frames."""
        group = self.adapter.frames_per_group
        blocks = [int(self.tokens_per_frame * group)] * max(1, -(-frames // group))
        blocks[0] += self.extra_head
        blocks[-1] += self.extra_tail
        return blocks


def chunk_extras(adapter: VLMAdapter) -> tuple[int, int]:
    """Entries a chunk holds besides its visual grid, from the adapter's layout: ``(before, after)``.

    LLaVA-OneVision: after the grid, the model's newline feature + the text the chat format writes after
    a video (``adapter.after_video_ids()``); Qwen2.5-VL: ``<|vision_start|>`` before, ``<|vision_end|>``
    after (+ what its format writes after a video: nothing).
    """
    after = len(adapter.after_video_ids())
    if adapter.family == "llava_onevision":
        return 0, 1 + after
    if adapter.family == "qwen2_5_vl":
        return 1, 1 + after
    raise ValueError(f"no chunk layout known for family {adapter.family!r}")


def build_model(model: str, large: bool, device: str, dtype: torch.dtype) -> ModelSetup:
    """The model ``model`` (one of :data:`MODELS`) with the real visual tokens per frame."""
    if model == REAL_DEPTH:
        if large:
            raise ValueError(f"--large does not apply to {REAL_DEPTH} (its LM is SmolLM2-135M's)")
        hf, tok = smollm2_llava_onevision(vision_hidden=64, vision_depth=2, image_size=384, patch_size=14)
        frame_size, tokens_per_frame = 384, 196.0
    else:
        # Large: the LM dimensions of the 0.5B members of both families (Qwen2-0.5B / Qwen2.5-0.5B).
        lm = (dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, vision_hidden=128, vision_depth=4)
              if large else dict(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2))
        if model == "llava_onevision":
            hf, tok = tiny_llava_onevision(image_size=392, patch_size=14, max_position_embeddings=1 << 20, **lm)
            frame_size, tokens_per_frame = 392, 196.0
        elif model == "qwen2_5_vl":
            hf, tok = tiny_qwen2_5_vl(max_position_embeddings=1 << 20, **lm)
            frame_size, tokens_per_frame = 448, 128.0
        else:
            raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
    adapter = adapter_for_model(hf.to(device=device, dtype=dtype), tok)
    group = adapter.frames_per_group
    frames = np.zeros((group, frame_size, frame_size, 3), dtype=np.uint8)
    probe = adapter.encode_frames(frames, np.arange(group, dtype=np.float64), 0)
    return ModelSetup(adapter, frame_size, tokens_per_frame, *chunk_extras(adapter), max(1, probe.num_tokens // group))


def bytes_per_entry(adapter: VLMAdapter, dtype: torch.dtype) -> int:
    """Bytes one cache entry costs over all layers: layers x 2 (k, v) x kv_heads x head_dim x dtype bytes."""
    cfg = adapter.text_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8


def stream_chunks(frames: int, chunk_frames: int) -> list[int]:
    """Frames per chunk of a stream of ``frames`` frames fed ``chunk_frames`` at a time."""
    return [chunk_frames] * (frames // chunk_frames) + ([frames % chunk_frames] if frames % chunk_frames else [])


def streamed_entries(setup: ModelSetup, frames: int, chunk_frames: int) -> int:
    """Visual entries a stream of ``frames`` frames has prefilled (grids + per-chunk extras)."""
    return sum(sum(setup.chunk_blocks(n)) for n in stream_chunks(frames, chunk_frames))


def window_kept(blocks: list[int], budget: int) -> int:
    """Entries the window rule keeps of ``blocks`` (entries per frame id, oldest first): the newest whole
    frames that fit in ``budget``, else the newest ``budget`` entries (``RecentWindow``)."""
    kept = 0
    for b in reversed(blocks):
        if kept + b > budget:
            break
        kept += b
    return kept if kept else min(budget, blocks[-1] if blocks else 0)


def window_frames(blocks: list[int], budget: int) -> int:
    """How many of ``blocks`` (newest first) :func:`window_kept` keeps whole (at least one)."""
    kept = count = 0
    for b in reversed(blocks):
        if kept + b > budget:
            break
        kept, count = kept + b, count + 1
    return max(1, count) if blocks else 0


def kv_formula(policy: str, setup: ModelSetup, frames: int, chunk_frames: int, budget: int, anchors: int,
               system: int, per_entry: int, question: int = 0) -> int:
    """Peak KV bytes the budget formula predicts after ``frames`` frames.

    Streaming policies peak right after a chunk is prefilled, before it is compressed: ``system + held +
    that chunk``, where ``held`` is what the memory kept of the earlier chunks: at most ``budget`` (+
    ``anchors`` for HERMES; sink: exactly that), for window and retrieval the newest whole frames that
    fit in ``budget`` (:func:`window_kept`). Full cache: everything. Uniform: the resident system prompt
    + the question cache (system + the frames a question re-encodes, ``budget // tokens-per-frame`` of
    them, with their chunks' extras). Retrieval (both): the larger of that and the question-time peak,
    once something was evicted: the resident window beside the larger of the answer cache (system + the
    window + up to ``budget`` retrieved entries: a bound, retrieval takes whole frames) and the scoring
    cache (system + the window + up to ``probe_batch`` candidates: stored entries for retrieval-tokens,
    one summary per stored frame for retrieval, + the ``question``'s tokens).
    """
    if policy == "full":
        return per_entry * (system + streamed_entries(setup, frames, chunk_frames))
    if policy == "uniform":
        n = min(frames, max(1, budget // setup.uniform_tokens_per_frame))
        entries = sum(sum(setup.chunk_blocks(c)) for c in stream_chunks(n, chunk_frames))
        return per_entry * (2 * system + entries)
    whole_frames = policy in ("window", "retrieval", "retrieval-tokens")
    limit = budget + (anchors if policy == "hermes" else 0)
    blocks: list[int] = []
    peak = held = 0
    for n in stream_chunks(frames, chunk_frames):
        chunk = setup.chunk_blocks(n)
        peak = max(peak, system + held + sum(chunk))
        blocks += chunk
        held = window_kept(blocks, budget) if whole_frames else min(sum(blocks), limit)
    evicted = sum(blocks) - held
    if policy in ("retrieval", "retrieval-tokens") and evicted > 0:
        cls = POLICY_CLASSES[policy]
        stored = evicted if policy == "retrieval-tokens" else len(blocks) - window_frames(blocks, budget)
        scoring = min(cls.probe_batch, stored) + question
        peak = max(peak, 2 * (system + held) + max(min(budget, evicted), scoring))
    return per_entry * peak


def policy_for(name: str, budget: int, anchors: int, reindex: str):
    if name == "full":
        return make_policy("full")
    if name == "hermes":
        return make_policy("hermes", budget=budget, anchors=anchors, reindex=reindex)
    return make_policy(name, budget=budget)


def question_tokens(adapter: VLMAdapter, asked: int) -> int:
    """Tokens of the longest of the first ``asked`` questions as prefilled (with the answer opening)."""
    return max(len(adapter.tokenize(adapter.question_text(QUESTIONS[q % len(QUESTIONS)]))) for q in range(asked))


def timed_questions(session: StreamingSession, questions: int, warmup: int) -> float:
    """Median TTFT (s) of ``questions`` questions after ``warmup`` untimed ones (first-call effects)."""
    for q in range(warmup):
        session.ask(QUESTIONS[q % len(QUESTIONS)], GenerationConfig(max_new_tokens=1))
    return statistics.median(
        session.ask(QUESTIONS[q % len(QUESTIONS)], GenerationConfig(max_new_tokens=1)).ttft_s
        for q in range(questions)
    )


# ---- caches written directly: the floor and full caches too long to stream --------------------------
def fill_synthetic(session: StreamingSession, entries: int, tokens_per_frame: float, seed: int = 0) -> None:
    """Append ``entries`` visual entries with random keys and values to ``session``'s (full-cache) memory.

    After the system prompt, at consecutive positions (every axis), tagged with the frames they would
    belong to; committed like a prefill, so ``session.ask`` answers from them as from a streamed cache.
    """
    session.start()
    engine = session.engine
    cache, cfg = engine.cache, session.adapter.text_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device, dtype = session.adapter.device, session.adapter.dtype
    for layer in cache.layers:
        shape = (1, cfg.num_key_value_heads, entries, head_dim)
        layer.update(torch.randn(shape, generator=gen).to(device, dtype),
                     torch.randn(shape, generator=gen).to(device, dtype))
    start = engine.next_position
    pos = torch.arange(start, start + entries, dtype=torch.long)
    cache.commit(TokenMeta(positions=pos.unsqueeze(0).expand(cache.pos_dims, -1).clone(),
                           frame_ids=(torch.arange(entries) / tokens_per_frame).long(),
                           kinds=torch.full((entries,), int(TokenKind.VISUAL), dtype=torch.long)))
    engine.next_position = start + entries


def synthetic_ttft(setup: ModelSetup, entries: int, questions: int, warmup: int) -> tuple[float, int]:
    """Median TTFT (s) and KV bytes of questions over a full cache of system + ``entries`` written entries."""
    session = StreamingSession(setup.adapter, memory=make_policy("full"))
    fill_synthetic(session, entries, setup.tokens_per_frame)
    kv = session.engine.cache.kv_bytes()
    ttft = timed_questions(session, questions, warmup)
    session.engine.reset()  # frees the keys and values
    return ttft, kv


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def chunk_encode_s(setup: ModelSetup, chunk_frames: int, repeats: int = 3) -> float:
    """Median seconds to encode one chunk of random frames (vision tower + projector + the family's suffix)."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (chunk_frames, setup.frame_size, setup.frame_size, 3), dtype=np.uint8)
    times = np.arange(chunk_frames, dtype=np.float64)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        setup.adapter.encode_frames(frames, times, 0)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


@dataclass
class ModelTimes:
    """Per-model measurements shared by its rows (seconds)."""

    floor_s: float
    encode_s: float


# ---- the runs -------------------------------------------------------------------------------------
def make_row(model: str, policy: str, frames: int, budget: int | None, ttft_s: float, ingest_s: float | None,
             peak: int, formula: int, compress_s: float, times: ModelTimes, encode_s: float | None,
             fill: str) -> dict:
    encode = times.encode_s if encode_s is None else encode_s
    with_encode = ttft_s if policy == "uniform" else ttft_s + encode
    return {
        "model": model,
        "policy": policy,
        "frames": frames,
        "budget": budget,
        "ttft_ms": round(1000 * ttft_s, 3),
        "ingest_fps": (round(frames / ingest_s, 3) if ingest_s else None),
        "peak_kv_bytes": int(peak),
        "kv_bytes_formula": int(formula),
        "compress_ms": round(1000 * compress_s, 3),
        "ingest_ms": (round(1000 * ingest_s, 3) if ingest_s is not None else None),
        "floor_ms": round(1000 * times.floor_s, 3),
        "encode_ms": round(1000 * encode, 3),
        "ttft_with_encode_ms": round(1000 * with_encode, 3),
        "fill": fill,
    }


def run_policy(model: str, setup: ModelSetup, name: str, args: argparse.Namespace, dtype: torch.dtype,
               times: ModelTimes, log: Log) -> list[dict]:
    checkpoints = sorted(args.frames_for.get(name, args.frames))
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
    questions, warmup = args.questions, args.warmup
    if name == "uniform" and args.uniform_questions:
        questions, warmup = args.uniform_questions, args.uniform_warmup
    for target in checkpoints:
        while fed < target:
            n = min(args.chunk_frames, target - fed)
            frames = rng.integers(0, 256, (n, setup.frame_size, setup.frame_size, 3), dtype=np.uint8)
            t0 = time.perf_counter()
            session.add_frames(frames, (fed + np.arange(n)) / args.fps)
            ingest_s += time.perf_counter() - t0
            fed += n
        ttft = timed_questions(session, questions, warmup)
        stats = session.stats
        row = make_row(model, name, target, None if name == "full" else args.budget, ttft, ingest_s,
                       stats.peak_kv_bytes,
                       kv_formula(name, setup, target, session.chunk_frames, args.budget, args.anchors, system,
                                  per_entry, question_tokens(setup.adapter, questions + warmup)),
                       stats.compress_s, times, stats.encode_s / stats.chunks if stats.chunks else None, "stream")
        rows.append(row)
        log_row(row, log)
    return rows


def run_full_synthetic(model: str, setup: ModelSetup, args: argparse.Namespace, dtype: torch.dtype,
                       times: ModelTimes, log: Log) -> list[dict]:
    """Full-cache rows at ``--full-synthetic-frames``: questions over a cache written to the stream's size."""
    rows = []
    per_entry = bytes_per_entry(setup.adapter, dtype)
    system = len(setup.adapter.tokenize(setup.adapter.prefix_text()))
    for frames in sorted(args.full_synthetic_frames):
        entries = streamed_entries(setup, frames, args.chunk_frames)
        need = per_entry * (system + entries)
        free = available_memory_bytes() if args.device == "cpu" else None
        if free is not None and 1.3 * need > free:
            log(f"{model:16s} full     F={frames:5d} synthetic: skipped, {need / 2**30:.1f} GiB of KV needs more than "
                f"the {free / 2**30:.1f} GiB available")
            continue
        ttft, kv = synthetic_ttft(setup, entries, args.questions, args.warmup)
        row = make_row(model, "full", frames, None, ttft, None, kv,
                       kv_formula("full", setup, frames, args.chunk_frames, args.budget, args.anchors, system,
                                  per_entry), 0.0, times, None, "synthetic")
        rows.append(row)
        log_row(row, log)
    return rows


def log_row(row: dict, log: Log) -> None:
    ingest = f"ingest={row['ingest_fps']} fps" if row["ingest_fps"] is not None else "ingest=-"
    log(f"{row['model']:16s} {row['policy']:8s} F={row['frames']:5d} ttft={row['ttft_ms']:9.2f} ms "
        f"(floor {row['floor_ms']:.2f}, x{row['ttft_ms'] / row['floor_ms']:.2f})  {ingest}  "
        f"peak={row['peak_kv_bytes'] / 2**20:8.2f} MiB (formula {row['kv_bytes_formula'] / 2**20:8.2f})  "
        f"compress={row['compress_ms']:.0f}/{row['ingest_ms'] or 0:.0f} ms  encode={row['encode_ms']:.1f} ms  "
        f"[{row['fill']}]")


def measure_model(setup: ModelSetup, args: argparse.Namespace, log: Log, model: str) -> ModelTimes:
    """The floor (system + ``budget`` written entries, no compression) and one chunk's encode time."""
    floor, _ = synthetic_ttft(setup, args.budget, args.questions, args.warmup)
    encode = chunk_encode_s(setup, args.chunk_frames)
    log(f"{model}: floor (question over system + {args.budget} entries) {1000 * floor:.2f} ms; "
        f"encode of one {args.chunk_frames}-frame chunk {1000 * encode:.1f} ms")
    return ModelTimes(floor, encode)


# ---- report --------------------------------------------------------------------------------------
TARGETS = dict(floor=1.2, flat=1.1, full=10.0, compress=0.10, kv=0.05)  # issue #18's efficiency targets


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def policy_checks(rows: list[dict], model: str) -> list[dict]:
    """Per bounded policy of ``model``, at its largest streamed frame count: the ratios the targets judge."""
    streamed = [r for r in rows if r["model"] == model and r.get("fill", "stream") in ("stream", None)]
    full = sorted((r for r in rows if r["model"] == model and r["policy"] == "full"), key=lambda r: r["frames"])
    out = []
    for policy in BOUNDED:
        mine = sorted((r for r in streamed if r["policy"] == policy), key=lambda r: r["frames"])
        if not mine:
            continue
        lo, hi = mine[0], mine[-1]
        same = next((r for r in full if r["frames"] == hi["frames"]), None)
        top = full[-1] if full else None
        out.append({
            "policy": policy, "frames": hi["frames"], "first": lo["frames"], "ttft_ms": hi["ttft_ms"],
            "floor": hi["ttft_ms"] / hi["floor_ms"] if hi.get("floor_ms") else None,
            "flat": hi["ttft_ms"] / lo["ttft_ms"] if len(mine) > 1 else None,
            "full_same": same["ttft_ms"] / hi["ttft_ms"] if same else None,
            "full_top": (top["frames"], top["ttft_ms"] / hi["ttft_ms"]) if top else None,
            "compress": hi["compress_ms"] / hi["ingest_ms"] if hi["ingest_ms"] else None,
            "kv": abs(hi["peak_kv_bytes"] - hi["kv_bytes_formula"]) / hi["kv_bytes_formula"],
        })
    return out


def targets(rows: list[dict]) -> list[str]:
    """Issue #18's targets per model, as markdown: a table per model and one line per target."""
    out = []
    t = TARGETS
    for model in sorted({r["model"] for r in rows}):
        checks = policy_checks(rows, model)
        if not checks:
            continue
        out += [f"### {model}", "",
                "| policy | at frames | TTFT / floor | TTFT(F) / TTFT(first F) | full TTFT / this (same F) | "
                "full TTFT / this (full's largest F) | compression / ingest | peak KV off formula |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in checks:
            top = f"{c['full_top'][1]:.1f}x (F={c['full_top'][0]})" if c["full_top"] else "-"
            out.append(f"| {c['policy']} | {c['frames']} | {_fmt(c['floor'])} | {_fmt(c['flat'])} (from {c['first']}) | "
                       f"{_fmt(c['full_same'], '.1f')} | {top} | "
                       f"{_fmt(None if c['compress'] is None else 100 * c['compress'], '.1f')}% | {100 * c['kv']:.2f}% |")
        out.append("")

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"

        with_floor = [c for c in checks if c["floor"] is not None]
        if with_floor:
            best = min(with_floor, key=lambda c: c["floor"])
            out.append(f"- best bounded memory's TTFT / floor: {best['policy']} {best['floor']:.2f} at {best['frames']} "
                       f"frames (target <= {t['floor']}): {verdict(best['floor'] <= t['floor'])}")
        flat = [c for c in checks if c["flat"] is not None]
        for c in flat:
            if c["policy"] == "hermes" or c is min(flat, key=lambda c: c["flat"]):
                note = "" if c["frames"] >= 1024 else f" (the target is at 1,024 frames; this run reached {c['frames']})"
                out.append(f"- {c['policy']}: TTFT at {c['frames']} frames / at {c['first']} = {c['flat']:.2f} "
                           f"(target <= {t['flat']}){note}: {verdict(c['flat'] <= t['flat'])}")
        hermes = next((c for c in checks if c["policy"] == "hermes"), None)
        if hermes and hermes["full_top"]:
            f_full, r = hermes["full_top"]
            note = "" if f_full == hermes["frames"] else f" (full at {f_full} frames vs HERMES at {hermes['frames']})"
            out.append(f"- full-cache TTFT / HERMES TTFT = {r:.1f}x{note} (target >= {t['full']:.0f}x at 1,024 frames): "
                       f"{verdict(r >= t['full'] and f_full >= 1024)}")
        for c in checks:
            if c["compress"] is not None and c["policy"] == "hermes":
                out.append(f"- HERMES compression = {100 * c['compress']:.1f}% of ingest time at {c['frames']} frames "
                           f"(target <= {100 * t['compress']:.0f}%): {verdict(c['compress'] <= t['compress'])}")
        worst = max(checks, key=lambda c: c["kv"])
        out.append(f"- peak KV vs the budget formula: largest deviation {100 * worst['kv']:.2f}% ({worst['policy']}, "
                   f"{worst['frames']} frames; target <= {100 * t['kv']:.0f}%): {verdict(worst['kv'] <= t['kv'])}")
        out.append("")
    return out


def normalize(row: dict) -> dict:
    """A row with exactly :data:`FIELDS` (fields a row was written without are null)."""
    unknown = set(row) - set(FIELDS)
    if unknown:
        raise ValueError(f"row has unknown fields {sorted(unknown)}")
    return {k: row.get(k) for k in FIELDS}


def write_report(rows: list[dict], out_dir: Path, command: str, args: argparse.Namespace,
                 load: str = "") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [normalize(r) for r in rows]
    (out_dir / "streaming_efficiency.json").write_text(json.dumps(rows, indent=1) + "\n")
    md = out_dir / "streaming_efficiency.md"
    notes = ""
    if md.exists():
        old = md.read_text()
        if NOTES_HEADING in old:
            notes = old[old.index(NOTES_HEADING):].rstrip() + "\n"
    lines = [
        "# Streaming efficiency of the memory policies",
        "",
        "Models: tiny random models (real HF classes, 4 layers, hidden 64) and `llava_onevision-smollm2-30L` "
        "(LLaVA-OneVision around SmolLM2-135M's real 30 layers and weights, random small vision tower), all with "
        "the real visual tokens per frame; synthetic frames, "
        f"{args.fps} fps, chunks of {args.chunk_frames} frames, budget {args.budget} visual tokens per layer "
        f"(HERMES: + {args.anchors} anchors, re-index {args.reindex}; uniform: budget // tokens-per-frame frames "
        "re-encoded per question). TTFT: median of the questions asked at F frames (prefill of the question + "
        "first token; uniform includes re-encoding its frames; untimed warm-up question(s) first). Floor: the same "
        "question path on a full cache of exactly system + budget entries written directly (no compression). "
        "Ingest: cumulative wall time of `add_frames` up to F (encode + prefill + compress). Peak KV: largest "
        "cache held, question-time caches included. `kv_bytes_formula`: layers x 2 x kv_heads x head_dim x bytes x "
        "(system + budget [+ anchors] + one chunk), capped by what was streamed (full: everything streamed; "
        "retrieval: the resident window beside its answer cache; uniform: system + its question cache). "
        "`fill` synthetic: a full cache written to the stream's size, no ingest (see the bench's docstring). "
        "Rows of runs made before a column existed show '-' there.",
        "",
        *provenance_md(command, machine_description(args.device) + (f"\n{load}" if load else "")),
        "",
        "| model | policy | frames | budget | TTFT ms | floor ms | TTFT / floor | encode ms | TTFT + encode ms | "
        "ingest fps | peak KV MiB | formula MiB | compress ms | ingest ms | fill |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = r["ttft_ms"] / r["floor_ms"] if r["floor_ms"] else None
        lines.append(
            f"| {r['model']} | {r['policy']} | {r['frames']} | {r['budget'] if r['budget'] is not None else '-'} | "
            f"{r['ttft_ms']:.2f} | {_fmt(r['floor_ms'])} | {_fmt(ratio)} | {_fmt(r['encode_ms'], '.1f')} | "
            f"{_fmt(r['ttft_with_encode_ms'])} | {_fmt(r['ingest_fps'], '.3f')} | {r['peak_kv_bytes'] / 2**20:.2f} | "
            f"{r['kv_bytes_formula'] / 2**20:.2f} | {r['compress_ms']:.0f} | {_fmt(r['ingest_ms'], '.0f')} | "
            f"{r['fill'] or '-'} |"
        )
    lines += ["", "## Targets (issue #18)", "",
              f"Per model, each bounded memory at its largest streamed frame count; thresholds: TTFT <= {TARGETS['floor']}x "
              f"the floor (the best bounded memory), TTFT(1,024) / TTFT(16) <= {TARGETS['flat']}, full-cache TTFT at "
              f"1,024 frames >= {TARGETS['full']:.0f}x the bounded memory's, compression <= "
              f"{100 * TARGETS['compress']:.0f}% of ingest, peak KV within {100 * TARGETS['kv']:.0f}% of the formula.",
              "", *targets(rows)]
    if notes:
        lines += [notes]
    md.write_text("\n".join(lines))
    plot(rows, out_dir / "streaming_efficiency.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        for policy in POLICIES:
            pts = sorted((r["frames"], r["ttft_ms"], r["peak_kv_bytes"], r.get("fill") == "synthetic") for r in rows
                         if r["model"] == model and r["policy"] == policy)
            if not pts:
                continue
            f, ttft, kv, synthetic = zip(*pts, strict=True)
            color = f"C{POLICIES.index(policy)}"  # one colour per policy in every panel
            line = axes[0][col].plot(f, ttft, marker="o", label=policy, color=color)[0]
            axes[1][col].plot(f, [b / 2**20 for b in kv], marker="o", label=policy, color=color)
            for ax, ys in ((axes[0][col], ttft), (axes[1][col], [b / 2**20 for b in kv])):
                hollow = [(x, y) for x, y, s in zip(f, ys, synthetic, strict=True) if s]
                if hollow:
                    ax.scatter(*zip(*hollow, strict=True), s=80, facecolors="white", edgecolors=line.get_color(),
                               zorder=3, label=f"{policy} (synthetic fill)")
        floor = next((r["floor_ms"] for r in rows if r["model"] == model and r.get("floor_ms")), None)
        if floor:
            axes[0][col].axhline(floor, color="black", linestyle="--", linewidth=1, label="floor")
        axes[0][col].set_title(f"{model}: time to first token")
        axes[0][col].set_ylabel("TTFT (ms)")
        axes[1][col].set_title(f"{model}: peak KV cache")
        axes[1][col].set_ylabel("peak KV (MiB)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("frames streamed")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return ""
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench bench_streaming", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["llava_onevision", "qwen2_5_vl"], choices=MODELS)
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--frames", nargs="+", type=int, default=[16, 64, 256, 1024], help="checkpoints (frames)")
    p.add_argument("--budget", type=int, default=None,
                   help="visual tokens per layer (default: 2048 tiny, 4096 with --large, the reference)")
    p.add_argument("--anchors", type=int, default=64, help="HERMES anchor allowance per deep layer")
    p.add_argument("--reindex", default="lazy", choices=["lazy", "eager"], help="HERMES re-indexing mode")
    p.add_argument("--chunk-frames", type=int, default=8)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--questions", type=int, default=11, help="questions per checkpoint (TTFT = median)")
    p.add_argument("--frames-for", nargs="*", default=[], metavar="POLICY=F,F",
                   help="checkpoints of one policy instead of --frames (e.g. hermes=16,32)")
    p.add_argument("--uniform-questions", type=int, default=0,
                   help="questions per checkpoint for uniform, whose each question re-encodes (0: --questions "
                        "and --warmup)")
    p.add_argument("--uniform-warmup", type=int, default=0, help="untimed uniform questions with --uniform-questions")
    p.add_argument("--warmup", type=int, default=1, help="untimed questions before the timed ones")
    p.add_argument("--full-max-frames", type=int, default=0,
                   help="skip streamed full-cache checkpoints above this many frames (0: no cap)")
    p.add_argument("--full-synthetic-frames", nargs="*", type=int, default=[],
                   help="full-cache rows at these frame counts on a cache written directly to the stream's size "
                        "(no ingest; skipped when the KV would not fit in the available memory)")
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
    frames_for = {}
    for item in args.frames_for:
        policy, _, counts = item.partition("=")
        if policy not in POLICIES or not counts:
            p.error(f"--frames-for {item!r}: expected POLICY=F,F with POLICY one of {POLICIES}")
        try:
            frames_for[policy] = [int(c) for c in counts.split(",")]
        except ValueError:
            p.error(f"--frames-for {item!r}: frame counts must be integers")
    args.frames_for = frames_for
    if (min(args.frames) < 1 or args.questions < 1 or args.chunk_frames < 1 or args.uniform_questions < 0
            or any(f < 1 for f in args.full_synthetic_frames) or any(min(f) < 1 for f in frames_for.values())):
        p.error("--frames, --full-synthetic-frames, --questions and --chunk-frames must be positive")
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
        rows = [normalize(r) for r in kept if not (r["model"] in args.models and r["policy"] in args.policies)]
        if args.keep_rows_command:
            command += f"\n# rows of {sorted({(r['model'], r['policy']) for r in rows})} kept from:\n{args.keep_rows_command}"
    load = [f"at start: {load_average()}"]

    def log(msg: str) -> None:
        print(msg, flush=True)

    def order(r: dict) -> tuple:
        return (r["model"], POLICIES.index(r["policy"]), r["frames"], r["fill"] == "synthetic")

    for model in args.models:
        t0 = time.perf_counter()
        setup = build_model(model, args.large, args.device, dtype)
        log(f"{model}: built in {time.perf_counter() - t0:.0f} s; {setup.tokens_per_frame:g} tokens per frame + "
            f"{setup.extra_per_chunk} per chunk")
        times = measure_model(setup, args, log, model)
        for name in args.policies:
            t0 = time.perf_counter()
            rows += run_policy(model, setup, name, args, dtype, times, log)
            if name == "full" and args.full_synthetic_frames:
                rows += run_full_synthetic(model, setup, args, dtype, times, log)
            rows.sort(key=order)
            log(f"{model} {name}: {time.perf_counter() - t0:.0f} s ({load_average()})")
            write_report(rows, args.out_dir, command, args, "; ".join(load))  # partial results survive
    load.append(f"at end: {load_average()}")
    write_report(rows, args.out_dir, command, args, "; ".join(load))
    for line in targets(rows):
        log(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
