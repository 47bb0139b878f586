"""Fine-tune prompt-guided pooling on video instruction data (SFT), with accelerate.

    ppllava-hermes train finetune_pooling --model shapesworld --clip shapesworld \\
        --train-data shapesworld:6000 --eval-data shapesworld:300 --pool-kernel 2,2,2 --out runs/sft

    accelerate launch [--config_file fsdp.yaml] -m train.finetune_pooling --model /ckpt/Qwen2.5-VL-7B-Instruct \\
        --clip /ckpt/clip-vit-large-patch14 --train-data llava_video_178k.json --video-root /data/videos \\
        --eval-data val.json --batch-size 4 --grad-accum 8 --mixed-precision bf16 --out runs/sft-7b

The LLM and the vision tower are frozen by default; the pooling (learnable tau, window bias and the
pooled-token adapter) and the CLIP long-prompt extension's position tail train, optionally with the
projector (``--train-projector``) or LoRA on the LLM (``--lora-rank``). Each example is the sequence
the streaming session builds at question time (``ppllava_hermes.training.sequence``), the loss the
answer tokens' cross-entropy. PPLLaVA ref: lr 2e-5, cosine, warmup 0.03 (the defaults here); the
ShapesWorld pooling has a few thousand parameters and uses a larger lr (see docs/results/training.md).

The loop is plain accelerate: gradient accumulation, mixed precision, ``save_state`` / ``load_state``
checkpoints (only trained tensors of the model are written, plus optimizer, scheduler, RNG and the
step), evaluation on a held-out split (answer-token loss, and accuracy through the streaming session),
logging to ``train_log.csv`` and tensorboard. Data errors are reported with file and line and skipped
or fatal (``--on-data-error``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import get_scheduler

from ppllava_hermes.training import (
    DataErrorLog,
    DataWarning,
    FrameSampling,
    PooledVideoLM,
    ShapesWorldDataset,
    VideoQADataset,
    VideoQAExample,
    apply_trainable,
    collate_video_batch,
    evaluate_accuracy,
    evaluate_loss,
    load_instruction_file,
    save_trained,
    shapesworld_examples,
    trainable_state_dict,
)
from ppllava_hermes.training.build import add_model_arguments, build_model

CSV_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "eval_loss", "eval_accuracy", "visual_tokens",
              "data_errors", "seconds"]


# ---- data ----------------------------------------------------------------------------------------
def parse_data_spec(spec: str, default_split: str) -> tuple[str, str, int] | tuple[str, str]:
    """``shapesworld:N[:split[:seed_base]]`` or a file path."""
    if spec.startswith("shapesworld:"):
        parts = spec.split(":")
        n = int(parts[1])
        split = parts[2] if len(parts) > 2 else default_split
        seed = int(parts[3]) if len(parts) > 3 else 0
        return ("shapesworld", split, n, seed)
    return ("file", spec)


class _Concat(Dataset):
    def __init__(self, parts: list[Dataset]) -> None:
        self.parts = parts
        self.offsets = []
        total = 0
        for p in parts:
            self.offsets.append(total)
            total += len(p)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int):
        for part, off in zip(reversed(self.parts), reversed(self.offsets), strict=True):
            if index >= off:
                return part[index - off]
        raise IndexError(index)


def build_train_dataset(specs: list[str], args: argparse.Namespace, errors: DataErrorLog) -> Dataset:
    sampling = FrameSampling(num_frames=args.num_frames) if args.fps is None else FrameSampling(
        num_frames=None, fps=args.fps, max_frames=args.max_frames)
    parts: list[Dataset] = []
    for spec in specs:
        parsed = parse_data_spec(spec, "train")
        if parsed[0] == "shapesworld":
            _, split, n, seed = parsed
            parts.append(ShapesWorldDataset(split, n, seed_base=seed, mc_fraction=args.mc_fraction))
        else:
            examples = load_instruction_file(parsed[1], errors, video_root=args.video_root)
            if not examples:
                raise ValueError(f"{parsed[1]}: no usable example ({errors.summary()})")
            parts.append(VideoQADataset(examples, errors, sampling))
    return parts[0] if len(parts) == 1 else _Concat(parts)


def build_eval_examples(specs: list[str], args: argparse.Namespace, errors: DataErrorLog) -> list[VideoQAExample]:
    """Held-out examples with frames loaded (ShapesWorld: the test split's seeds, disjoint from train)."""
    sampling = FrameSampling(num_frames=args.num_frames) if args.fps is None else FrameSampling(
        num_frames=None, fps=args.fps, max_frames=args.max_frames)
    out: list[VideoQAExample] = []
    for spec in specs:
        parsed = parse_data_spec(spec, "test")
        if parsed[0] == "shapesworld":
            _, split, n, seed = parsed
            out.extend(shapesworld_examples(split, n, seed_base=seed, mc_fraction=args.mc_fraction))
        else:
            ds = VideoQADataset(load_instruction_file(parsed[1], errors, video_root=args.video_root), errors, sampling)
            out.extend(ex for ex in (ds[i] for i in range(len(ds))) if ex is not None)
    return out


class SFTCollator:
    """Examples -> one batch (one row per example); unreadable examples (None, already reported) are
    dropped and counted; an all-bad batch becomes None, which the loop skips and counts."""

    def __init__(self, adapter) -> None:
        self.adapter = adapter
        self.dropped = 0

    def __call__(self, items: list[VideoQAExample | None]) -> dict | None:
        good = [ex for ex in items if ex is not None]
        self.dropped += len(items) - len(good)
        if not good:
            return None
        return collate_video_batch(
            self.adapter, [ex.video_input() for ex in good], [ex.question for ex in good],
            [ex.clip_query for ex in good], [(i, ex.answer) for i, ex in enumerate(good)],
        )


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch (``epoch`` is set by the loop, so a resumed run replays the same
    order and skips the batches it already consumed)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


@dataclass
class TrainState:
    """Loop counters saved with every checkpoint (``accelerator.register_for_checkpointing``)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_batches: int = 0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


@dataclass
class TrainResult:
    """What :func:`main` returns (for tests and programmatic use)."""

    model: PooledVideoLM
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    summary: dict


# ---- checkpoints ---------------------------------------------------------------------------------
def _install_checkpoint_hooks(accelerator: Accelerator, model: PooledVideoLM) -> None:
    """Save only the trained tensors of the model (a 7B VLM is not rewritten at every checkpoint) and
    load them back strictly: every saved tensor must be found, every trained one present."""

    def keys() -> set[str]:
        return set(trainable_state_dict(model))

    def save_hook(models, weights, output_dir):
        for w in weights:
            wanted = keys()
            for k in list(w):
                if k.removeprefix("module.") not in wanted:
                    del w[k]

    def load_hook(models, input_dir):
        from safetensors.torch import load_file

        path = Path(input_dir) / "model.safetensors"
        if not path.is_file():
            return  # let accelerate load what it wrote (e.g. DeepSpeed / FSDP sharded states)
        state = {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
        target = accelerator.unwrap_model(models[0])
        missing = keys() - set(state)
        unexpected = set(state) - set(target.state_dict())
        if missing or unexpected:
            raise KeyError(f"checkpoint {input_dir}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        target.load_state_dict(state, strict=False)
        models.pop(0)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resolve_resume(spec: str | None, out: Path) -> Path | None:
    if spec is None:
        return None
    if spec == "latest":
        found = _checkpoints(out / "checkpoints")
        return found[-1] if found else None
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume-from {spec!r}: no such checkpoint folder")
    return path


# ---- logging -------------------------------------------------------------------------------------
class CsvLog:
    """``train_log.csv`` (main process only); a resumed run drops rows after the restored step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step is not None and path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, CSV_FIELDS).writerow({k: row.get(k, "") for k in CSV_FIELDS})


# ---- results -------------------------------------------------------------------------------------
def write_results(path: str | Path, key: str, section: dict) -> None:
    """Merge ``{key: section}`` into the JSON file ``path`` (other sections are kept)."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def sft_results(summary: dict, argv: list[str] | None) -> dict:
    """The ``sft`` section of docs/results/training.json."""
    before, after = summary.get("before") or {}, summary.get("after") or {}
    return {
        "steps": summary["steps"],
        "pooled_accuracy_before": before.get("eval_accuracy"),
        "pooled_accuracy_after": after.get("eval_accuracy"),
        "budget": {"visual_tokens_per_video": after.get("visual_tokens"),
                   "unpooled_visual_tokens_per_video": (summary.get("unpooled") or {}).get("visual_tokens"),
                   "pool_kernel": summary.get("pool_kernel")},
        "unpooled_accuracy": (summary.get("unpooled") or {}).get("accuracy"),
        "per_task_before": before.get("per_task"),
        "per_task_after": after.get("per_task"),
        "eval_loss_before": before.get("eval_loss"),
        "eval_loss_after": after.get("eval_loss"),
        "n_eval": summary.get("n_eval"),
        "trainable_parameters": summary["trainable_parameters"],
        "minutes": summary["minutes"],
        "command": "ppllava-hermes train finetune_pooling " + " ".join(argv or sys.argv[1:]),
    }


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arguments(p)
    d = p.add_argument_group("data")
    d.add_argument("--train-data", action="append", required=True,
                   help="instruction JSON / JSONL file, or shapesworld:N[:split[:seed_base]] (repeatable)")
    d.add_argument("--eval-data", action="append", default=[],
                   help="held-out data, same forms (ShapesWorld default split: test)")
    d.add_argument("--video-root", default=None, help="folder relative video paths resolve against")
    d.add_argument("--num-frames", type=int, default=8, help="frames sampled uniformly per video file")
    d.add_argument("--fps", type=float, default=None, help="sample video files at this rate instead")
    d.add_argument("--max-frames", type=int, default=64, help="cap with --fps")
    d.add_argument("--mc-fraction", type=float, default=0.5, help="ShapesWorld multiple-choice share")
    d.add_argument("--on-data-error", choices=["skip", "fail"], default="skip",
                   help="bad records: warn with file:line and skip (counted), or stop")
    o = p.add_argument_group("optimisation")
    o.add_argument("--max-steps", type=int, default=1000, help="optimizer steps")
    o.add_argument("--batch-size", type=int, default=8, help="examples per device per micro-batch")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    o.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (ref 2e-5)")
    o.add_argument("--lr-scheduler", default="cosine", help="transformers scheduler name (ref cosine)")
    o.add_argument("--warmup-ratio", type=float, default=0.03, help="(ref 0.03)")
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--max-grad-norm", type=float, default=1.0)
    o.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None,
                   help="override the launcher's setting (default: `accelerate launch --mixed_precision` / "
                        "`accelerate config`, else no)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    o.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="run folder: checkpoints/, final/, train_log.csv, tensorboard/")
    r.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0 = only at the end)")
    r.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    r.add_argument("--resume-from", default=None, help="a checkpoint folder, or 'latest' in --out")
    r.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0 = only before/after)")
    r.add_argument("--eval-accuracy", action=argparse.BooleanOptionalAction, default=True,
                   help="also generate answers through the streaming session and score them")
    r.add_argument("--max-new-tokens", type=int, default=8)
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--report-to", choices=["tensorboard", "none"], default="tensorboard")
    r.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this long")
    r.add_argument("--eval-unpooled", action="store_true",
                   help="also measure accuracy without pooling (the full token budget), for reference")
    r.add_argument("--write-results", default=None,
                   help="merge an 'sft' section into this JSON file (docs/results/training.json)")
    args = p.parse_args(argv)
    if args.max_steps < 1 or args.batch_size < 1 or args.grad_accum < 1:
        p.error("--max-steps, --batch-size and --grad-accum must be >= 1")
    if not 0 <= args.warmup_ratio < 1:
        p.error("--warmup-ratio must be in [0, 1)")
    return args


def _evaluate(accelerator: Accelerator, model, eval_examples: list[VideoQAExample], collate: SFTCollator,
              args: argparse.Namespace) -> dict:
    if not eval_examples:
        return {}
    unwrapped = accelerator.unwrap_model(model)
    batches = (collate(eval_examples[i : i + args.batch_size]) for i in range(0, len(eval_examples), args.batch_size))
    with accelerator.autocast():
        res = {"eval_loss": evaluate_loss(unwrapped, batches)}
        if args.eval_accuracy:
            acc = evaluate_accuracy(unwrapped, eval_examples, max_new_tokens=args.max_new_tokens)
            res.update(eval_accuracy=acc.accuracy, visual_tokens=acc.visual_tokens, per_task=acc.per_task)
    return res


def build_accelerator(args: argparse.Namespace, out: Path) -> Accelerator:
    """The run's ``Accelerator``. Mixed precision is passed only when ``--mixed-precision`` is given, so
    ``accelerate launch --mixed_precision bf16`` (``ACCELERATE_MIXED_PRECISION``) and ``accelerate config``
    take effect otherwise; accelerate's own default is "no"."""
    precision = {} if args.mixed_precision is None else {"mixed_precision": args.mixed_precision}
    return Accelerator(
        gradient_accumulation_steps=args.grad_accum,
        log_with="tensorboard" if args.report_to == "tensorboard" else None, project_dir=str(out),
        # pooling extras are unused where nothing is pooled (kernel 1,1,1): let DDP tolerate it
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **precision,
    )


def main(argv: list[str] | None = None) -> TrainResult:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    resume = resolve_resume(args.resume_from, out)
    accelerator = build_accelerator(args, out)
    set_seed(args.seed)
    errors = DataErrorLog(args.on_data_error)
    t0 = time.time()

    built = build_model(args)
    model = built.model
    trainable = apply_trainable(model, built.trainable)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator.print(f"trainable: {n_trainable} parameters in {len(trainable)} tensors "
                      f"({', '.join(sorted({n.split('.')[0] for n in trainable}))})")

    train_ds = build_train_dataset(args.train_data, args, errors)
    eval_examples = build_eval_examples(args.eval_data, args, errors)
    collate = SFTCollator(model.adapter)
    sampler = EpochSampler(len(train_ds), args.seed)
    loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=args.num_workers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)
    # accelerate steps a prepared scheduler once per process per optimizer step
    scheduler = get_scheduler(args.lr_scheduler, optimizer,
                              num_warmup_steps=math.ceil(args.warmup_ratio * args.max_steps) * accelerator.num_processes,
                              num_training_steps=args.max_steps * accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    _install_checkpoint_hooks(accelerator, accelerator.unwrap_model(model))

    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"resumed from {resume} at step {state.step} (epoch {state.epoch}, "
                          f"batch {state.batch_in_epoch})")
    csv_log = CsvLog(out / "train_log.csv", accelerator.is_main_process, state.step if resume else None)
    if args.report_to == "tensorboard":
        config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
        accelerator.init_trackers("tensorboard", config=config)

    def log(row: dict) -> None:
        row = {**row, "step": state.step, "epoch": state.epoch, "data_errors": errors.count + collate.dropped,
               "seconds": round(time.time() - t0, 1)}
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        accelerator.log(scalars, step=state.step)
        csv_log.write(row)
        state.history.append({k: v for k, v in row.items() if k != "per_task"})

    def save_checkpoint() -> None:
        path = out / "checkpoints" / f"step_{state.step}"
        accelerator.save_state(str(path))
        if accelerator.is_main_process and args.save_total_limit > 0:
            for old in _checkpoints(out / "checkpoints")[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

    before = None
    if state.step == 0 and eval_examples:
        before = _evaluate(accelerator, model, eval_examples, collate, args)
        log(before)
        accelerator.print(f"before training: {json.dumps({k: v for k, v in before.items() if k != 'per_task'})}")

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    stop = state.step >= args.max_steps
    window_loss, window_n = 0.0, 0
    while not stop:
        sampler.epoch = state.epoch
        epoch_loader = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
        for batch in epoch_loader:
            state.batch_in_epoch += 1
            if batch is None:  # every example of the batch was bad (reported)
                state.skipped_batches += 1
                continue
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += float(loss.detach())
            window_n += 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            timed_out = args.max_minutes is not None and (time.time() - t0) / 60 > args.max_minutes
            last = state.step >= args.max_steps or timed_out
            if state.step % args.log_every == 0 or last:
                log({"loss": window_loss / max(window_n, 1), "lr": scheduler.get_last_lr()[0],
                     "grad_norm": float(grad_norm) if grad_norm is not None else ""})
                window_loss, window_n = 0.0, 0
            if args.eval_every and state.step % args.eval_every == 0 and not last and eval_examples:
                log(_evaluate(accelerator, model, eval_examples, collate, args))
            if (args.save_every and state.step % args.save_every == 0) or last:
                save_checkpoint()
            if last:
                if timed_out:
                    accelerator.print(f"stopping at step {state.step}: --max-minutes {args.max_minutes}")
                stop = True
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0

    after = _evaluate(accelerator, model, eval_examples, collate, args) if eval_examples else {}
    if after:
        log(after)
    unwrapped = accelerator.unwrap_model(model)
    unpooled = None
    if args.eval_unpooled and eval_examples:
        unwrapped.pool = False
        try:
            unpooled = evaluate_accuracy(unwrapped, eval_examples, max_new_tokens=args.max_new_tokens).to_dict()
        finally:
            unwrapped.pool = True
    summary = {
        "steps": state.step,
        "trainable_parameters": n_trainable,
        "data_errors": errors.count + collate.dropped,
        "data_error_examples": errors.errors[:20],
        "skipped_batches": state.skipped_batches,
        "n_eval": len(eval_examples),
        "pool_kernel": list(unwrapped.pooling.config.kernel or ()),
        "minutes": round((time.time() - t0) / 60, 2),
        "mixed_precision": str(accelerator.mixed_precision),
        "before": before,
        "after": after,
        "unpooled": unpooled,
        "args": {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v))
                 for k, v in vars(args).items()},
    }
    if accelerator.is_main_process:
        save_trained(unwrapped, out / "final", built.trainable)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if args.write_results:
            write_results(args.write_results, "sft", sft_results(summary, argv))
        if errors.count:
            warnings.warn(f"{errors.summary()} (see summary.json)", DataWarning, stacklevel=1)
    accelerator.end_training()
    accelerator.print(json.dumps({k: v for k, v in summary.items() if k not in ("args", "data_error_examples")},
                                 default=str))
    return TrainResult(unwrapped, optimizer, scheduler, state, summary)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
