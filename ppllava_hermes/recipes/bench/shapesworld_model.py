"""Measure the shipped ShapesWorld models and write ``docs/results/shapesworld_model.json`` (+ .md).

    ppllava-hermes bench shapesworld_model

Short-clip accuracy is measured through the library's StreamingSession (full context, greedy answers)
on held-out test-split clips; the demo is run with its defaults (HERMES memory + prompt-guided pooling);
CLIP retrieval and training times come from the reports the training scripts wrote beside the
checkpoints.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from ppllava_hermes.world.model import CLIP_DIR, VLM_DIR, load_shapesworld_adapter


def _mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=400, help="held-out test clips for short-clip accuracy")
    p.add_argument("--out", default="docs/results/shapesworld_model.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ppllava_hermes.world.demo import demo

    from ..train.train_world import evaluate

    adapter = load_shapesworld_adapter()
    short = evaluate(adapter, args.clips, split="test")
    demo_res = demo(argparse.Namespace(minutes=3.0, seed=7, questions=12, model=None, memory="hermes", budget=None,
                                       pool="prompt", quiet=True))
    clip_report = json.loads((CLIP_DIR / "clip_report.json").read_text())
    vlm_report = json.loads((VLM_DIR / "training_report.json").read_text())
    stream_path = VLM_DIR / "stream_training_report.json"
    stream_report = json.loads(stream_path.read_text()) if stream_path.exists() else {"train_minutes": 0.0}
    clip_minutes = float(clip_report.get("train_minutes", clip_report.get("train_wall_minutes", 0.0)))
    row = {
        "short_mc_accuracy": round(short["short_mc_accuracy"], 4),
        "per_task_accuracy": {k: round(v, 4) for k, v in short["per_task_accuracy"].items()},
        "clip_text_to_region_top1": clip_report["clip_text_to_region_top1"],
        "train_minutes": round(vlm_report["train_minutes"] + stream_report["train_minutes"] + clip_minutes, 2),
        "checkpoint_mb": round(_mb(VLM_DIR) + _mb(CLIP_DIR), 2),
        "demo_seconds": round(demo_res["seconds"], 1),
        "demo_accuracy": round(demo_res["accuracy"], 4),
        "details": {
            "short_clips": args.clips,
            "short_open_and_mc_accuracy": round(short["short_accuracy"], 4),
            "vlm_train_minutes": vlm_report["train_minutes"],
            "vlm_stream_train_minutes": stream_report["train_minutes"],
            "clip_train_minutes": clip_minutes,
            "demo_questions": demo_res["n"],
            "demo_per_kind": demo_res["per_kind"],
            "command": "ppllava-hermes bench shapesworld_model " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {args.threads}",
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    lines = ["# ShapesWorld models", "", f"Command: `{row['details']['command'].strip()}`", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in row.items() if k not in ("details", "per_task_accuracy")]
    lines += [f"| accuracy: {k} | {v} |" for k, v in row["per_task_accuracy"].items()]
    lines += [
        "",
        f"Short-clip accuracy: {args.clips} held-out test clips (multiple choice and open answers alternate; "
        "`short_mc_accuracy` counts the multiple-choice ones), greedy answers through the StreamingSession "
        "with full context. Demo: `ppllava-hermes demo` defaults (3-minute video, seed 7, HERMES memory, "
        "prompt-guided pooling); `demo_seconds` is its streaming time, model loading excluded.",
        "",
        "Training (2 CPU cores, nothing else running; minutes as measured by each script):",
        "",
        f"    ppllava-hermes train train_clip --out ppllava_hermes/world/checkpoints/clip   # {clip_minutes} min",
        f"    ppllava-hermes train train_world --out runs/vlm_stage1   # {vlm_report['train_minutes']} min "
        "(stage 0: vision tower on dense token labels; stage 1: answers + token loss)",
        "    ppllava-hermes train train_world_stream --init runs/vlm_stage1 --out ppllava_hermes/world/checkpoints/vlm"
        f"   # {stream_report['train_minutes']} min (streams and pooled input)",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
