"""Preference-tune prompt-guided pooling with DPO (TRL's DPOTrainer) on video preference data.

    ppllava-hermes train dpo --model shapesworld --clip shapesworld --init runs/sft/final \\
        --train-data shapesworld:2000 --eval-data shapesworld:200 --out runs/dpo

    accelerate launch -m train.dpo --model /ckpt/Qwen2.5-VL-7B-Instruct --clip /ckpt/clip-vit-large-patch14 \\
        --init runs/sft-7b/final --train-data prefs.jsonl --video-root /data/videos --eval-data prefs_val.jsonl \\
        --batch-size 2 --grad-accum 16 --mixed-precision bf16 --out runs/dpo-7b

Data: rows ``{"prompt", "chosen", "rejected", "video"}`` (JSON array or JSON Lines; videos read through
the project's reader), or ``shapesworld:N``: ShapesWorld multiple-choice clips whose chosen answer is
the right option and rejected answer another option (a plausible wrong one). The pooling sees the
question (question-only text into CLIP). PPLLaVA ref: beta 0.1, lr 5e-6, sigmoid loss (the defaults).

The model is ``ppllava_hermes.integrations.trl_video.VideoDPOModel`` (what trains: as in
``train.finetune_pooling``, by default the pooling and the CLIP text tail); the reference shares the
frozen VLM and holds frozen copies of the pooling and CLIP. Before and after training the script
measures the eval reward margin (TRL's ``rewards/margins``) and answer accuracy through the streaming
session. Logs: ``train_log.csv`` and tensorboard (``runs/``); checkpoints: ``checkpoint-N/`` (TRL/Trainer layout,
trained tensors only); the trained folder: ``final/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig

from ppllava_hermes.integrations.trl_video import (
    VideoDPOModel,
    VideoDPOTrainer,
    VideoPreferenceCollator,
    checkpointing_kwargs,
    make_video_loader,
    preference_rows,
    reference_model,
)
from ppllava_hermes.training import (
    DataErrorLog,
    FrameSampling,
    VideoQAExample,
    apply_trainable,
    evaluate_accuracy,
    load_instruction_file,
    save_trained,
    shapesworld_examples,
)
from ppllava_hermes.training.build import add_model_arguments, build_model

from .finetune_pooling import write_results

LOG_FIELDS = ["step", "epoch", "loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies",
              "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "eval_loss",
              "eval_rewards/margins", "eval_rewards/accuracies"]


def load_pairs(spec: str, args: argparse.Namespace, errors: DataErrorLog, default_split: str) -> list[VideoQAExample]:
    """Preference examples of ``spec``: a file, or ``shapesworld:N[:split[:seed_base]]`` (multiple choice)."""
    if spec.startswith("shapesworld:"):
        parts = spec.split(":")
        split = parts[2] if len(parts) > 2 else default_split
        seed = int(parts[3]) if len(parts) > 3 else 0
        return shapesworld_examples(split, int(parts[1]), seed_base=seed, mc_fraction=1.0)
    examples = load_instruction_file(spec, errors, video_root=args.video_root)
    no_pair = [ex for ex in examples if ex.rejected is None]
    for ex in no_pair:
        errors.report(ex.source, ex.line, "record has no 'rejected' answer (not a preference pair)")
    return [ex for ex in examples if ex.rejected is not None]


def accuracy_examples(spec: str, args: argparse.Namespace, errors: DataErrorLog) -> list[VideoQAExample]:
    """Held-out questions for accuracy (ShapesWorld: the test split, as in finetune_pooling)."""
    if spec.startswith("shapesworld:"):
        parts = spec.split(":")
        split = parts[2] if len(parts) > 2 else "test"
        seed = int(parts[3]) if len(parts) > 3 else 0
        return shapesworld_examples(split, int(parts[1]), seed_base=seed, mc_fraction=args.mc_fraction)
    from ppllava_hermes.training import VideoQADataset

    ds = VideoQADataset(load_instruction_file(spec, errors, video_root=args.video_root), errors,
                        FrameSampling(num_frames=args.num_frames))
    return [ex for ex in (ds[i] for i in range(len(ds))) if ex is not None]


class CsvLogCallback(TrainerCallback):
    """Append every Trainer log (train and eval) to ``train_log.csv`` on the main process; a resumed run
    first drops the rows logged after its checkpoint, so the file reads as one run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.is_file() or state.global_step == 0:
            return
        with self.path.open() as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= state.global_step]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({"step": state.global_step, **logs})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(p)
    d = p.add_argument_group("data")
    d.add_argument("--train-data", action="append", required=True,
                   help="preference JSON / JSONL file, or shapesworld:N[:split[:seed_base]] (repeatable)")
    d.add_argument("--eval-data", default=None, help="held-out preference pairs (reward margins), same forms")
    d.add_argument("--accuracy-data", default=None,
                   help="held-out questions for answer accuracy (default: shapesworld:N of --eval-data's N, "
                        "test split; for files: the --eval-data file)")
    d.add_argument("--video-root", default=None)
    d.add_argument("--num-frames", type=int, default=8)
    d.add_argument("--mc-fraction", type=float, default=0.5, help="ShapesWorld accuracy set's multiple-choice share")
    d.add_argument("--on-data-error", choices=["skip", "fail"], default="skip")
    o = p.add_argument_group("optimisation")
    o.add_argument("--beta", type=float, default=0.1, help="(ref 0.1)")
    o.add_argument("--loss-type", default="sigmoid",
                   help="TRL DPO loss(es), comma-separated, e.g. 'sigmoid,sft' (ref sigmoid)")
    o.add_argument("--loss-weights", default=None, help="comma-separated weights of --loss-type's losses")
    o.add_argument("--lr", type=float, default=5e-6, help="(ref 5e-6)")
    o.add_argument("--lr-scheduler", default="cosine")
    o.add_argument("--warmup-ratio", type=float, default=0.03)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--max-steps", type=int, default=500)
    o.add_argument("--batch-size", type=int, default=8, help="preference pairs per device per micro-batch")
    o.add_argument("--grad-accum", type=int, default=1)
    o.add_argument("--max-grad-norm", type=float, default=1.0)
    o.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=None)
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True)
    r.add_argument("--save-every", type=int, default=250)
    r.add_argument("--save-total-limit", type=int, default=2)
    r.add_argument("--resume-from", default=None, help="a checkpoint-N folder, or 'latest' in --out")
    r.add_argument("--eval-every", type=int, default=0, help="eval margins every N steps (0 = before/after)")
    r.add_argument("--logging-steps", type=int, default=10)
    r.add_argument("--report-to", choices=["tensorboard", "none"], default="tensorboard")
    r.add_argument("--eval-accuracy", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--max-new-tokens", type=int, default=8)
    r.add_argument("--write-results", default=None,
                   help="merge a 'dpo' section into this JSON file (docs/results/training.json)")
    args = p.parse_args(argv)
    if args.max_steps < 1 or args.batch_size < 1 or args.grad_accum < 1:
        p.error("--max-steps, --batch-size and --grad-accum must be >= 1")
    return args


def dpo_results(summary: dict, argv: list[str] | None) -> dict:
    """The ``dpo`` section of docs/results/training.json (eval-set margins: before training the policy is
    the reference, so the start margin is 0 by construction; train-log margins are given too)."""
    before, after = summary.get("before") or {}, summary.get("after") or {}
    acc_before, acc_after = before.get("accuracy") or {}, after.get("accuracy") or {}
    return {
        "steps": summary["steps"],
        "reward_margin_start": before.get("eval_rewards/margins"),
        "reward_margin_end": after.get("eval_rewards/margins"),
        "reward_accuracy_start": before.get("eval_rewards/accuracies"),
        "reward_accuracy_end": after.get("eval_rewards/accuracies"),
        "train_margin_first_log": summary.get("train_margin_first_log"),
        "train_margin_last_log": summary.get("train_margin_last_log"),
        "accuracy_before": acc_before.get("accuracy"),
        "accuracy_after": acc_after.get("accuracy"),
        "per_task_before": acc_before.get("per_task"),
        "per_task_after": acc_after.get("per_task"),
        "n_accuracy": acc_after.get("n"),
        "visual_tokens_per_video": acc_after.get("visual_tokens"),
        "minutes": summary["minutes"],
        "command": "ppllava-hermes train dpo " + " ".join(argv or sys.argv[1:]),
    }


@dataclass
class DPOResult:
    """What :func:`main` returns (for tests and programmatic use)."""

    trainer: VideoDPOTrainer
    policy: VideoDPOModel
    summary: dict


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> DPOResult:
    """Run DPO; ``callbacks`` are extra ``transformers`` Trainer callbacks (programmatic use)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.time()
    errors = DataErrorLog(args.on_data_error)

    built = build_model(args)
    core = built.model
    names = apply_trainable(core, built.trainable)
    policy = VideoDPOModel(core, built.trainable)
    ref = reference_model(policy)
    print(f"trainable: {sum(p.numel() for p in core.parameters() if p.requires_grad)} parameters in "
          f"{len(names)} tensors")

    train_ex = [ex for spec in args.train_data for ex in load_pairs(spec, args, errors, "train")]
    eval_ex = load_pairs(args.eval_data, args, errors, "test") if args.eval_data else []
    train_rows, store = preference_rows(train_ex)
    eval_rows, eval_store = preference_rows(eval_ex)
    if not train_rows:
        raise ValueError(f"no preference pair to train on ({errors.summary()})")
    store.update(eval_store)
    sampling = FrameSampling(num_frames=args.num_frames)
    collator = VideoPreferenceCollator(core.adapter, make_video_loader(store, sampling), errors)

    config = DPOConfig(
        output_dir=str(out), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler, warmup_steps=args.warmup_ratio,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, beta=args.beta, loss_type=args.loss_type.split(","),
        loss_weights=[float(w) for w in args.loss_weights.split(",")] if args.loss_weights else None,
        bf16=args.mixed_precision == "bf16", fp16=args.mixed_precision == "fp16", seed=args.seed,
        logging_steps=args.logging_steps, save_strategy="steps", save_steps=args.save_every or args.max_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy="steps" if (args.eval_every and eval_rows) else "no", eval_steps=args.eval_every or None,
        report_to=[] if args.report_to == "none" else [args.report_to],  # tensorboard: <out>/runs/
        remove_unused_columns=False, **checkpointing_kwargs(DPOConfig, False), max_length=None, prediction_loss_only=True,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=True,
    )
    trainer = VideoDPOTrainer(
        model=policy, ref_model=ref, args=config, data_collator=collator,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=core.adapter.tokenizer,
        callbacks=[CsvLogCallback(out / "train_log.csv"), *(callbacks or [])],
    )

    acc_spec = args.accuracy_data or (
        f"shapesworld:{args.eval_data.split(':')[1]}" if args.eval_data and args.eval_data.startswith("shapesworld:")
        else args.eval_data)
    acc_examples = accuracy_examples(acc_spec, args, errors) if (acc_spec and args.eval_accuracy) else []

    resume = args.resume_from
    if resume == "latest":
        resume = True
    if not resume and trainer.is_world_process_zero():
        (out / "train_log.csv").unlink(missing_ok=True)  # a fresh run starts a fresh log
    before: dict = {}
    if not resume:
        if eval_rows:
            before.update(trainer.evaluate())
        if acc_examples:
            before["accuracy"] = evaluate_accuracy(core, acc_examples, args.max_new_tokens).to_dict()
    train_out = trainer.train(resume_from_checkpoint=resume)
    after: dict = {}
    if eval_rows:
        after.update(trainer.evaluate())
    if acc_examples:
        after["accuracy"] = evaluate_accuracy(core, acc_examples, args.max_new_tokens).to_dict()

    train_logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    summary = {
        "steps": trainer.state.global_step,
        "train_loss": train_out.training_loss,
        "train_margin_first_log": train_logs[0]["rewards/margins"] if train_logs else None,
        "train_margin_last_log": train_logs[-1]["rewards/margins"] if train_logs else None,
        "before": before,
        "after": after,
        "data_errors": errors.count,
        "data_error_examples": errors.errors[:20],
        "minutes": round((time.time() - t0) / 60, 2),
        "args": {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v))
                 for k, v in vars(args).items()},
    }
    if trainer.is_world_process_zero():
        save_trained(core, out / "final", built.trainable)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if args.write_results:
            write_results(args.write_results, "dpo", dpo_results(summary, argv))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("args", "data_error_examples")}, default=str))
    return DPOResult(trainer, policy, summary)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
