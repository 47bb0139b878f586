"""Prompt guidance earns its place: pooled token quality at equal token counts on ShapesWorld.

    ppllava-hermes bench pooling_quality                       # docs/results/pooling_quality.{json,md,png}
    ppllava-hermes bench pooling_quality --quick --out /tmp/x  # a smoke run (a few questions, 2-step fine-tune)

PPLLaVA's claim: pooling guided by the prompt keeps what the question needs better than plain pooling
at the same number of visual tokens. This benchmark measures it.

Specification.

* Model: the shipped ShapesWorld VLM (``--model``: another checkpoint folder of the same kind) and, as
  the relevance model of prompt-guided pooling, the shipped ShapesWorld CLIP, given the question alone
  (question-only text into CLIP, as the library does).
* Questions: held-out test seeds only, questions that name one object of a scene that holds several
  (at least 2 objects where the question is asked); every question passes the independent checker
  (:func:`verify_record`).

  - ``short_clips``: 4-frame clips ``iter_short_clip_worlds("test", ...)`` (clip seeds of the test
    split), short types that name an object (``color`` "What colour is the triangle in this clip?",
    ``shape`` "What shape is the red object ...?", ``direction`` "Which direction is the circle moving
    ...?"; ``count`` names none and is left out), the first ``--clips`` of them with >= 2 objects.
  - ``streams``: test worlds ``video_seed("test", STREAM_SEED_BASE + i)`` of ``STREAM_SECONDS`` s at
    1 fps with realtime questions that name one object (``color_now``, ``shape_now``), the question at
    the end of the stream: the video is the frames up to the question's frame (8-24 frames, a multiple
    of the 4-frame chunk so every chunk has 2 whole temporal groups), the first ``--streams`` such
    questions with >= 2 objects on screen.
* Answering: the training recipes' evaluation path (:func:`generate_answer`): the video is encoded
  chunk by chunk as the session does (chunks of 4 frames = 2 temporal groups of 2 frames, each a 4 x 4
  token grid), each chunk's tokens are pooled (prompt-guided pooling scores them against the question,
  i.e. the question is the standing query every chunk is pooled against), prefilled into a
  :class:`StreamingSession`, and the session answers greedily (at most 3 tokens). Multiple choice
  (about half; 4 options) is scored by the option the answer names, open answers by the word.
* Compression levels (kernels of non-overlapping windows on each chunk's ``(2, 4, 4)`` grid):
  ``(1, 2, 2)`` = 4 tokens per temporal group (the kernel the VLM and the demo use), ``(2, 2, 2)``
  = 2 (the kernel of the shipped SFT run, ``docs/results/training.json``) and ``(1, 4, 4)`` = 1 (one
  token per temporal group: a window spanning the whole frame). ``tokens_per_group`` = visual tokens the
  LLM gets / temporal groups of the video; ``none`` (no pooling, 16) is the reference row.
* Poolings at each level, all with the same number of visual tokens per question (asserted):
  ``avg`` plain 3-D average pooling (``PromptGuidedPooling`` without weights); ``uniform_drop``
  keep the window-centre token of each window (:class:`UniformDrop`, every ``kt*kh*kw``-th token);
  ``prompt`` prompt-guided pooling, untrained (``PromptGuidedPooling`` with CLIP relevance weights,
  tau 0.01, the reference setting); ``prompt_finetuned`` prompt-guided pooling fine-tuned by
  ``ppllava-hermes train finetune_pooling`` at that level's kernel (learned tau, window bias,
  pooled-token adapter and the CLIP long-prompt tail; the LLM, the vision tower and CLIP's weights
  frozen) on ``--finetune-clips`` train-split clips for ``--finetune-steps`` steps with the settings of
  the shipped SFT run, at the levels ``--finetune-kernels`` (default: the strongest only, to keep the
  run within ~10 minutes on 2 CPU cores); ``--finetune-steps 0`` leaves the row out. The fine-tuned
  folders go to ``--details`` (``--reuse-finetuned`` loads them instead of training again).
* Statistics: ``ci95`` = ``{"accuracy": [lo, hi], "vs_avg": [lo, hi]}``, 95% percentile bootstrap
  intervals (``--bootstrap`` resamples of the row's questions) of the accuracy and of the paired
  difference against ``avg`` at the same level on the same questions (null for ``avg`` and ``none``).
* Results: ``pooling_quality.json`` = ``{"command", "machine", "seconds", "rows"}``, rows ``{"pooling",
  "tokens_per_group", "split", "n", "accuracy", "ci95"}``; ``pooling_quality.md`` the command, the
  machine, the table, the goal check (at the strongest level prompt-guided >= 5 points above average
  pooling) and per-type accuracy; ``pooling_quality.png`` accuracy against tokens per group per pooling
  and split. Per-question outcomes go to ``--details``/``outcomes.json`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppllava_hermes.recipes.bench import machine_description, provenance_md
from ppllava_hermes.recipes.bench.memory_recall import bootstrap_ci

Triple = tuple[int, int, int]

ROW_FIELDS = ("pooling", "tokens_per_group", "split", "n", "accuracy", "ci95")
LEVELS: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2), (1, 4, 4))
POOLINGS = ("avg", "uniform_drop", "prompt", "prompt_finetuned")
SPLITS = ("short_clips", "streams")
CLIP_TYPES = ("color", "shape", "direction")  # short types that name one object
STREAM_TYPES = ("color_now", "shape_now")  # realtime types that name one object
CHUNK = 4  # frames per session chunk (2 temporal groups), as the ShapesWorld recipes stream
GRID_TOKENS = 16  # the ShapesWorld VLM's tokens per temporal group (a 4 x 4 grid)
STREAM_SEED_BASE = 9000  # test-split video indices of this benchmark's streams
STREAM_SECONDS = 24.0
MIN_OBJECTS = 2
GOAL_POINTS = 5.0


def tokens_per_group(kernel: Triple) -> int:
    """Visual tokens per temporal group after pooling with ``kernel`` (non-overlapping windows)."""
    size = kernel[0] * kernel[1] * kernel[2]
    if GRID_TOKENS % size:
        raise ValueError(f"kernel {kernel} does not divide the {GRID_TOKENS} tokens of a temporal group")
    return GRID_TOKENS // size


def kernel_arg(text: str) -> Triple:
    parts = tuple(int(x) for x in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"kernel {text!r}: expected t,h,w")
    return parts  # type: ignore[return-value]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench pooling_quality", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/results", help="folder for pooling_quality.json / .md / .png")
    p.add_argument("--details", default="runs/pooling_quality", help="fine-tuned folders and per-question outcomes")
    p.add_argument("--model", default=None, help="ShapesWorld checkpoint folder (default: the shipped one)")
    p.add_argument("--clips", type=int, default=300, help="short-clip questions (default 300)")
    p.add_argument("--streams", type=int, default=120, help="stream questions (default 120; 0: no stream split)")
    p.add_argument("--finetune-steps", type=int, default=150, help="fine-tuning steps per level (0: no fine-tuned row)")
    p.add_argument("--finetune-clips", type=int, default=1200, help="train-split clips to fine-tune on (default 1200)")
    p.add_argument("--finetune-batch", type=int, default=16, help="fine-tuning batch size (default 16)")
    p.add_argument("--finetune-kernels", default="1,4,4",
                   help="levels to fine-tune at, kernels t,h,w separated by ';' (default 1,4,4: the strongest)")
    p.add_argument("--reuse-finetuned", action="store_true",
                   help="load the fine-tuned folders of an earlier run from --details instead of training")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 12 clips, 4 stream questions, a 2-step fine-tune on 8 clips, 200 resamples")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.streams, args.bootstrap = 12, 4, 200
        args.finetune_steps, args.finetune_clips, args.finetune_batch = min(args.finetune_steps, 2), 8, 4
    args.finetune_levels = [kernel_arg(k) for k in args.finetune_kernels.split(";") if k.strip()]
    unknown = [k for k in args.finetune_levels if k not in LEVELS]
    if unknown:
        p.error(f"--finetune-kernels {unknown}: not a level of this benchmark {list(LEVELS)}")
    return args


# ---------------------------------------------------------------------------------------------------
# (1) questions


@dataclass
class Item:
    """One question: its example (video, question, CLIP query, answer) and where it comes from."""

    split: str
    example: Any  # training.data.VideoQAExample
    n_objects: int


def _example(rec, frames: np.ndarray):
    from ppllava_hermes.training.data import VideoQAExample
    from ppllava_hermes.world.model import prompt_for

    return VideoQAExample(
        video=rec.qid, question=prompt_for(rec), clip_query=rec.question,
        answer=rec.options[rec.answer] if rec.options else str(rec.answer), source="shapesworld:test",
        options=list(rec.options), answer_index=int(rec.answer) if rec.options else None,
        task_type=rec.task_type, frames=frames, timestamps=np.arange(len(frames), dtype=np.float64),
    )


def _checked(world, rec) -> None:
    from ppllava_hermes.world.tasks import check_record

    problems = check_record(world, rec)
    if problems:
        raise RuntimeError(f"{rec.qid}: fails the independent check: {problems}")


def build_clips(n: int) -> list[Item]:
    """The first ``n`` test-split short clips with >= 2 objects whose question names one of them."""
    from ppllava_hermes.world.tasks import iter_short_clip_worlds

    out: list[Item] = []
    block = max(4 * n, 16)
    start = 0
    while len(out) < n:
        for w, frames, rec in iter_short_clip_worlds("test", block, CHUNK, seed_base=start, task_types=CLIP_TYPES):
            k = len(w.states(0))
            if rec.task_type in CLIP_TYPES and k >= MIN_OBJECTS:
                _checked(w, rec)
                out.append(Item("short_clips", _example(rec, frames), k))
                if len(out) == n:
                    break
        start += block
    return out


def build_streams(n: int) -> list[Item]:
    """The first ``n`` realtime questions naming one of >= 2 visible objects, each at the end of its stream."""
    from ppllava_hermes.world.generator import WorldConfig, generate_world
    from ppllava_hermes.world.tasks import TaskConfig, generate_questions, video_seed

    tc = TaskConfig(task_types=STREAM_TYPES, questions_per_type=6)
    out: list[Item] = []
    i = 0
    while len(out) < n:
        w = generate_world(WorldConfig(duration=STREAM_SECONDS), video_seed("test", STREAM_SEED_BASE + i))
        i += 1
        seen: set[tuple[str, int]] = set()
        for rec in generate_questions(w, tc):
            k = int(rec.extra["t_index"])
            if (k + 1) % CHUNK or k + 1 < 2 * CHUNK or (rec.task_type, k) in seen:
                continue
            if len(w.states(k)) < MIN_OBJECTS:
                continue
            seen.add((rec.task_type, k))
            _checked(w, rec)
            out.append(Item("streams", _example(rec, np.stack(list(w.frames(0, k + 1)))), len(w.states(k))))
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------------------------------------------
# (2) poolings and answers


@dataclass
class Outcome:
    """One question answered by one pooling at one level."""

    qid: str
    split: str
    task_type: str
    pooling: str
    kernel: Triple | None
    visual_tokens: int
    groups: int
    answer: str
    correct: bool


def finetune(kernel: Triple, args: argparse.Namespace) -> Path:
    """Fine-tune prompt-guided pooling at ``kernel`` (the shipped SFT run's settings); its trained folder."""
    from ppllava_hermes.recipes.train import finetune_pooling

    out = Path(args.details) / f"finetune_{'x'.join(map(str, kernel))}"
    final = out / "final"
    if args.reuse_finetuned and (final / "training_config.json").is_file():
        return final
    finetune_pooling.main([
        "--model", args.model or "shapesworld", "--clip", "shapesworld",
        "--train-data", f"shapesworld:{args.finetune_clips}", "--pool-kernel", ",".join(map(str, kernel)),
        "--chunk-frames", str(CHUNK), "--batch-size", str(args.finetune_batch),
        "--max-steps", str(args.finetune_steps), "--lr", "3e-3", "--cache-features", "--threads", str(args.threads),
        "--log-every", "10", "--report-to", "none", "--save-every", "0", "--no-eval-accuracy", "--out", str(out),
    ])
    return final


def make_model(adapter, pooling: str, kernel: Triple | None, scorer: Any, scorer_factory: Callable[[], Any],
               finetuned: Path | None = None):
    """The :class:`PooledVideoLM` of one pooling at one level (``kernel`` None: no pooling); ``scorer`` is
    the untrained prompt pooling's relevance model (shared), ``scorer_factory`` gives the fine-tuned one
    its own copy (fine-tuning extends CLIP's text positions in place)."""
    from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling, UniformDrop
    from ppllava_hermes.training.model import PooledVideoLM
    from ppllava_hermes.training.trainable import load_trained

    if kernel is None:
        return PooledVideoLM(adapter, PromptGuidedPooling(), None, chunk_frames=CHUNK, pool=False).eval()
    if pooling == "uniform_drop":
        return PooledVideoLM(adapter, UniformDrop(kernel), None, chunk_frames=CHUNK).eval()  # type: ignore[arg-type]
    base = PromptGuidedPooling(PoolingConfig(kernel=kernel, padding="replicate"))
    if pooling == "avg":
        return PooledVideoLM(adapter, base, None, chunk_frames=CHUNK).eval()
    if pooling == "prompt":
        return PooledVideoLM(adapter, base, scorer, chunk_frames=CHUNK).eval()
    model = PooledVideoLM(adapter, base, scorer_factory(), chunk_frames=CHUNK)
    if pooling == "prompt_finetuned":
        if finetuned is None:
            raise ValueError("prompt_finetuned needs a fine-tuned folder")
        load_trained(model, finetuned)  # extends this model's own CLIP copy, replaces the pooling
        if tuple(model.pooling.config.kernel) != kernel:
            raise ValueError(f"{finetuned}: kernel {model.pooling.config.kernel}, expected {kernel}")
    return model.eval()


def answer_all(model, items: list[Item], pooling: str, kernel: Triple | None, frames_per_group: int) -> list[Outcome]:
    from ppllava_hermes.training.evaluation import generate_answer, is_correct

    outs = []
    for it in items:
        text, n_tokens = generate_answer(model, it.example, max_new_tokens=3)
        groups = -(-len(it.example.frames) // frames_per_group)
        outs.append(Outcome(it.example.video, it.split, it.example.task_type, pooling, kernel, int(n_tokens), groups,
                            text, bool(is_correct(text, it.example))))
    return outs


def check_token_counts(outcomes: list[Outcome]) -> None:
    """Every pooling at a level gives each question the same number of visual tokens, the level's count."""
    by: dict[tuple[str, Triple | None], set[int]] = defaultdict(set)
    for o in outcomes:
        by[(o.qid, o.kernel)].add(o.visual_tokens)
        expected = GRID_TOKENS * o.groups if o.kernel is None else tokens_per_group(o.kernel) * o.groups
        assert o.visual_tokens == expected, f"{o.qid} {o.pooling} {o.kernel}: {o.visual_tokens} tokens, expected {expected}"
    bad = {k: v for k, v in by.items() if len(v) != 1}
    assert not bad, f"poolings at a level disagree on token counts: {bad}"


# ---------------------------------------------------------------------------------------------------
# (3) rows, report, plot


def make_rows(outcomes: list[Outcome], n_boot: int) -> list[dict]:
    """One row per (split, level, pooling); paired against ``avg`` at the same level by question id."""
    groups: dict[tuple[str, Triple | None, str], dict[str, bool]] = defaultdict(dict)
    for o in outcomes:
        groups[(o.split, o.kernel, o.pooling)][o.qid] = o.correct
    rows = []
    for (split, kernel, pooling), answers in groups.items():
        qids = sorted(answers)
        acc = np.array([answers[q] for q in qids], dtype=np.float64)
        ci: dict[str, list[float] | None] = {"accuracy": bootstrap_ci(acc, n_boot), "vs_avg": None}
        ref = groups.get((split, kernel, "avg"))
        if pooling not in ("avg", "none") and ref is not None:
            ci["vs_avg"] = bootstrap_ci(acc - np.array([ref[q] for q in qids], dtype=np.float64), n_boot)
        rows.append({"pooling": pooling, "tokens_per_group": GRID_TOKENS if kernel is None else tokens_per_group(kernel),
                     "split": split, "n": len(qids), "accuracy": round(float(acc.mean()), 4), "ci95": ci})
    order = {p: i for i, p in enumerate(("none", *POOLINGS))}
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), -r["tokens_per_group"], order[r["pooling"]]))
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(c: list[float] | None, signed: bool = False) -> str:
    if c is None:
        return "-"
    return f"[{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]" if signed else f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def goal_lines(rows: list[dict]) -> list[str]:
    """At the strongest compression: prompt-guided (each variant) minus average pooling, per split."""
    lowest = min(r["tokens_per_group"] for r in rows)
    lines = ["| split | pooling | tokens / group | accuracy | avg | difference (points) | paired 95% CI | "
             f"goal >= +{GOAL_POINTS:.0f} |", "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for split in SPLITS:
        avg = next((r for r in rows if (r["split"], r["pooling"], r["tokens_per_group"]) == (split, "avg", lowest)), None)
        for pooling in ("prompt", "prompt_finetuned"):
            r = next((x for x in rows if (x["split"], x["pooling"], x["tokens_per_group"]) == (split, pooling, lowest)),
                     None)
            if r is None or avg is None:
                continue
            d = 100 * (r["accuracy"] - avg["accuracy"])
            lo = 100 * r["ci95"]["vs_avg"][0]
            verdict = ("met, interval above +5" if lo >= GOAL_POINTS else "met (point estimate)") if d >= GOAL_POINTS \
                else "not met"
            lines.append(f"| {split} | {pooling} | {lowest:g} | {_pct(r['accuracy'])} | {_pct(avg['accuracy'])} | "
                         f"{d:+.1f} | {_ci(r['ci95']['vs_avg'], True)} | {verdict} |")
    return lines


def per_type_lines(outcomes: list[Outcome]) -> list[str]:
    cells: dict[tuple[str, str, Triple | None, str], list[bool]] = defaultdict(list)
    for o in outcomes:
        cells[(o.split, o.task_type, o.kernel, o.pooling)].append(o.correct)
    runs = list(dict.fromkeys((o.split, o.kernel, o.pooling) for o in outcomes))
    lines = []
    for split in SPLITS:
        types = sorted({o.task_type for o in outcomes if o.split == split})
        if not types:
            continue
        lines += [f"`{split}` (accuracy %, n):", "",
                  "| tokens / group | pooling | " + " | ".join(types) + " |",
                  "| ---: | --- | " + " | ".join("---:" for _ in types) + " |"]
        for s, kernel, pooling in runs:
            if s != split:
                continue
            tpg = GRID_TOKENS if kernel is None else tokens_per_group(kernel)
            vals = [cells.get((split, t, kernel, pooling), []) for t in types]
            lines.append(f"| {tpg:g} | {pooling} | "
                         + " | ".join(f"{100 * np.mean(v):.1f} ({len(v)})" if v else "-" for v in vals) + " |")
        lines.append("")
    return lines


def markdown(rows: list[dict], outcomes: list[Outcome], args: argparse.Namespace, command: str, machine: str,
             seconds: float, notes: dict) -> str:
    lines = [
        "# Prompt guidance at equal token counts (ShapesWorld)",
        "",
        "Does prompt-guided pooling keep what the question needs better than plain pooling at the same number of "
        "visual tokens? Spec: `ppllava_hermes/recipes/bench/pooling_quality.py`.",
        "",
        *provenance_md(command, machine, title=f"Command ({seconds / 60:.1f} minutes, fine-tuning included):"),
        "",
        f"Model: {notes['model']}; relevance model: the shipped ShapesWorld CLIP, given the question alone.",
        "",
        f"Questions (held-out test seeds; each names one object of a scene with >= {MIN_OBJECTS} objects; every one "
        f"passes the independent checker): **short_clips** {notes['n_clips']} 4-frame clips (colour / shape / "
        f"direction of a named object; {notes['clip_objects']}); **streams** {notes['n_streams']} realtime questions "
        f"(colour / shape of a named object now) at the end of {notes['stream_frames']} streams at 1 fps "
        f"({notes['stream_objects']}). About half are multiple choice (4 options, chance 25%); the others are open "
        "(one word).",
        "",
        "Each video is encoded in 4-frame chunks (2 temporal groups of a 4 x 4 token grid each), every chunk's tokens "
        "are pooled (prompt-guided: against the question) and prefilled into a `StreamingSession`, which answers "
        "greedily. Levels: kernel (1,2,2) = 4 tokens per temporal group (the VLM's usual kernel), (2,2,2) = 2, "
        "(1,4,4) = 1 (one token per group: a window over the whole frame). At each level every pooling gives each "
        "question exactly the same number of visual tokens (checked). `avg` = plain 3-D average pooling; "
        "`uniform_drop` = keep the window-centre token of each window; `prompt` = prompt-guided pooling, untrained "
        "(tau 0.01); `prompt_finetuned` = prompt-guided pooling fine-tuned at that level's kernel "
        f"({notes['finetune']}); `none` = no pooling (16 tokens per group), for reference.",
        "",
        "Accuracy in %, 95% bootstrap intervals over questions; `vs avg` = paired difference against average pooling "
        "at the same level on the same questions, in points.",
        "",
        "## Goal: at the strongest compression, prompt-guided >= 5 points above average pooling",
        "",
        *goal_lines(rows),
        "",
        "## All rows",
        "",
        "| split | tokens / group | pooling | n | accuracy | 95% CI | vs avg | vs avg 95% CI |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        avg = next((x for x in rows if (x["split"], x["tokens_per_group"], x["pooling"])
                    == (r["split"], r["tokens_per_group"], "avg")), None)
        diff = "-" if avg is None or r["ci95"]["vs_avg"] is None else f"{100 * (r['accuracy'] - avg['accuracy']):+.1f}"
        lines.append(f"| {r['split']} | {r['tokens_per_group']:g} | {r['pooling']} | {r['n']} | {_pct(r['accuracy'])} "
                     f"| {_ci(r['ci95']['accuracy'])} | {diff} | {_ci(r['ci95']['vs_avg'], True)} |")
    lines += ["", "## Per question type", "", *per_type_lines(outcomes),
              "![accuracy against tokens per group](pooling_quality.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against tokens per temporal group, one line per pooling, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in SPLITS if any(r["split"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for j, pooling in enumerate(POOLINGS):
            pts = sorted(((r["tokens_per_group"], r) for r in rows if (r["split"], r["pooling"]) == (split, pooling)),
                         key=lambda p: p[0])
            if not pts:
                continue
            xs = [x * 2 ** (0.04 * (j - 1.5)) for x, _ in pts]  # side by side, so the intervals stay readable
            ys = [100 * r["accuracy"] for _, r in pts]
            err = [[100 * (r["accuracy"] - r["ci95"]["accuracy"][0]) for _, r in pts],
                   [100 * (r["ci95"]["accuracy"][1] - r["accuracy"]) for _, r in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=pooling)
        none = next((r for r in rows if (r["split"], r["pooling"]) == (split, "none")), None)
        if none is not None:
            ax.axhline(100 * none["accuracy"], color="black", linestyle="--", linewidth=0.8,
                       label=f"none ({GRID_TOKENS} tokens / group)")
        ax.axhline(25, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4])
        ax.set_xticklabels(["1", "2", "4"])
        ax.invert_xaxis()
        ax.set_ylim(0, 100)
        ax.set_xlabel("visual tokens per temporal group (stronger compression to the right)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{split}: questions that name one of several objects")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _objects(items: list[Item]) -> str:
    counts: dict[int, int] = defaultdict(int)
    for it in items:
        counts[it.n_objects] += 1
    return ", ".join(f"{n} with {k} objects" for k, n in sorted(counts.items()))


# ---------------------------------------------------------------------------------------------------
# (4) main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ppllava_hermes.recipes.train.train_world_memory import world_scorer
    from ppllava_hermes.world.model import VLM_DIR, load_shapesworld_adapter

    torch.set_num_threads(args.threads)
    t0 = time.time()

    def say(text: str) -> None:
        print(f"[{(time.time() - t0) / 60:5.1f} min] {text}", flush=True)

    finetuned: dict[Triple, Path] = {}
    if args.finetune_steps > 0:
        for kernel in args.finetune_levels:
            finetuned[kernel] = finetune(kernel, args)
            say(f"fine-tuned pooling at {kernel}: {finetuned[kernel]}")
    torch.set_num_threads(args.threads)
    adapter = load_shapesworld_adapter(args.model)
    adapter.model.eval()

    def scorer_factory():
        scorer = world_scorer(adapter)
        if scorer is None:
            raise RuntimeError("prompt-guided pooling needs the shipped ShapesWorld CLIP (and the [clip] extra)")
        return scorer

    scorer = scorer_factory()
    items = build_clips(args.clips) + (build_streams(args.streams) if args.streams > 0 else [])
    say(f"{len(items)} questions")
    cache: dict = {}  # frozen VLM / CLIP encodings shared by every model (keyed by model identity)
    configs: list[tuple[str, Triple | None]] = [("none", None)]
    configs += [(p, k) for k in LEVELS for p in POOLINGS if p != "prompt_finetuned" or k in finetuned]
    outcomes: list[Outcome] = []
    for pooling, kernel in configs:
        t = time.time()
        model = make_model(adapter, pooling, kernel, scorer, scorer_factory, finetuned.get(kernel) if kernel else None)
        model.feature_cache = cache
        outs = answer_all(model, items, pooling, kernel, adapter.frames_per_group)
        outcomes += outs
        acc = {s: np.mean([o.correct for o in outs if o.split == s]) for s in SPLITS if any(o.split == s for o in outs)}
        say(f"{pooling:16} {kernel!s:10} " + "  ".join(f"{s} {100 * a:5.1f}%" for s, a in acc.items())
            + f"  ({time.time() - t:.0f} s)")
    check_token_counts(outcomes)
    rows = make_rows(outcomes, args.bootstrap)
    seconds = time.time() - t0
    command = "ppllava-hermes bench pooling_quality " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    machine = machine_description("cpu")
    clips = [it for it in items if it.split == "short_clips"]
    streams = [it for it in items if it.split == "streams"]
    ft = (f"`finetune_pooling`, {args.finetune_steps} steps of {args.finetune_batch} on {args.finetune_clips} "
          f"train-split clips, lr 3e-3, at kernel(s) {', '.join(str(k) for k in finetuned)} only"
          if finetuned else "not run")
    notes = {
        "model": f"the ShapesWorld checkpoint {args.model or VLM_DIR.relative_to(VLM_DIR.parents[3])}",
        "n_clips": len(clips), "n_streams": len(streams), "clip_objects": _objects(clips),
        "stream_objects": _objects(streams),
        "stream_frames": (f"{min(len(it.example.frames) for it in streams)}-"
                          f"{max(len(it.example.frames) for it in streams)}-frame") if streams else "no",
        "finetune": ft,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pooling_quality.json").write_text(json.dumps(
        {"command": command, "machine": machine, "seconds": round(seconds, 1), "rows": rows}, indent=1) + "\n")
    (out / "pooling_quality.md").write_text(markdown(rows, outcomes, args, command, machine, seconds, notes))
    plot(rows, out / "pooling_quality.png")
    details = Path(args.details)
    details.mkdir(parents=True, exist_ok=True)
    (details / "outcomes.json").write_text(json.dumps([asdict(o) for o in outcomes]))
    say(f"wrote {out / 'pooling_quality.json'} ({len(rows)} rows), .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
