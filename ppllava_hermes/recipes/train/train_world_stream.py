"""Stage 2 of the ShapesWorld VLM: teach the language model to read streams and pooled tokens.

    ppllava-hermes train train_world_stream --init runs/vlm_stage1 --out ppllava_hermes/world/checkpoints/vlm  # ~5 min

Stage 1 (``train.train_world``) learns short clips in one video segment. Here the vision tower is
frozen and the language model learns from sequences built exactly as the StreamingSession builds
them (one video segment per chunk, positions from the adapter): several chunks followed by a question
about "now", and short clips whose tokens were pooled (plain average or CLIP-weighted, kernels
(1,2,2) / (2,2,2)), so the shipped model also answers from pooled input. Short unpooled clips stay
in the mixture so stage 1's skill is kept.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ppllava_hermes.evaluation.scoring import score_answer
from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.pooling_stage import PoolingStage
from ppllava_hermes.world.generator import WorldConfig, generate_world
from ppllava_hermes.world.model import answer_text, load_shapesworld_adapter, prompt_for
from ppllava_hermes.world.tasks import TaskConfig, generate_questions, iter_short_clips, video_seed

from . import WorldPoolingStages, run_training

REALTIME = ("color_now", "shape_now", "count_now")
CHUNK = 4  # frames per chunk, as the demo streams


def realtime_examples(split: str, seed_base: int, max_chunks: int = 6, duration: float = 90.0):
    """Endless (frames, record) pairs: up to ``max_chunks`` chunks of frames ending at a realtime question."""
    i = 0
    while True:
        w = generate_world(WorldConfig(duration=duration), video_seed(split, seed_base + i))
        i += 1
        recs = generate_questions(w, TaskConfig(task_types=REALTIME, questions_per_type=4), salt=i)
        for rec in recs:
            t = int(round(rec.timestamp * w.fps))
            k = random.randint(1, max_chunks)
            start = t + 1 - CHUNK * k
            if start < 0:
                k = (t + 1) // CHUNK
                start = t + 1 - CHUNK * k
            if k < 1:
                continue
            frames = np.stack(list(w.frames(start, t + 1)))
            yield frames, np.arange(start, t + 1, dtype=np.float64) / w.fps, rec


class SequenceBuilder:
    """Session-identical sequences (embeds + positions) with the answer appended, for teacher forcing."""

    def __init__(self, adapter, clip_scorer=None) -> None:
        self.adapter = adapter
        self.scorer = clip_scorer
        self.end = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stages = WorldPoolingStages(clip_scorer)

    def build(self, frames: np.ndarray, times: np.ndarray, record, pool: str | None, kernel=(1, 2, 2)):
        ad = self.adapter
        segs = [ad.text_segment(ad.tokenize(ad.prefix_text()), 0, TokenKind.SYSTEM)]
        pos = segs[0].next_position
        for s in range(0, len(frames), CHUNK):
            f, t = frames[s : s + CHUNK], times[s : s + CHUNK]
            visual = ad.encode_frames(f, t, s)
            stage = self.stages.stage(pool, kernel, prompt_for(record))  # pooled against the question
            if stage is not None:
                visual = stage(visual, f)
            seg = ad.visual_segment(visual, pos)
            segs.append(seg)
            pos = seg.next_position
        q = ad.text_segment(ad.tokenize(ad.question_text(prompt_for(record))), pos)
        segs.append(q)
        ans_ids = torch.cat([ad.tokenize(answer_text(record)), torch.tensor([self.end])])
        a = ad.text_segment(ans_ids, q.next_position)
        segs.append(a)
        embeds = torch.cat([s.embeds for s in segs])
        positions = torch.cat([s.meta.positions for s in segs], dim=1)
        labels = torch.full((embeds.shape[0],), -100, dtype=torch.long)
        labels[-len(ans_ids):] = ans_ids
        return embeds, positions, labels


def batch_loss(model, items) -> torch.Tensor:
    width = max(e.shape[0] for e, _, _ in items)
    dim = items[0][0].shape[1]
    emb = torch.zeros(len(items), width, dim)
    pos = torch.zeros(3, len(items), width, dtype=torch.long)
    lab = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for i, (e, p, y) in enumerate(items):
        n = e.shape[0]
        emb[i, :n], pos[:, i, :n], lab[i, :n], mask[i, :n] = e, p, y, 1
    out = model.model.language_model(inputs_embeds=emb, position_ids=pos, attention_mask=mask)
    logits = model.lm_head(out.last_hidden_state)
    # token i predicts label i + 1
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)


@torch.no_grad()
def evaluate(adapter, n: int, split: str = "val", pool: str | None = None, scorer=None,
             kernel=(1, 2, 2)) -> dict:
    """Greedy answers through StreamingSession: short clips (MC + open) and realtime questions."""
    adapter.model.eval()
    stage = None
    if pool is not None:
        pooling = PromptGuidedPooling(PoolingConfig(kernel=kernel, padding="replicate"))
        stage = PoolingStage(pooling, scorer if pool == "clip" else None)
    res: dict[str, list[bool]] = defaultdict(list)
    mc: list[bool] = []

    def judge(ans: str, rec) -> bool:
        return score_answer(rec, ans)

    for frames, rec in iter_short_clips(split, n, seed_base=123):
        if stage is not None and pool == "clip":
            stage.query = prompt_for(rec)  # question known: pool against it
        s = StreamingSession(adapter, pooling=stage, config=StreamConfig(chunk_frames=CHUNK))
        s.add_frames(frames, np.arange(len(frames), dtype=np.float64))
        ok = judge(s.ask(prompt_for(rec), GenerationConfig(max_new_tokens=3)).text, rec)
        res[rec.task_type].append(ok)
        if rec.options:
            mc.append(ok)
    gen = realtime_examples(split, 10**5)
    for _ in range(n):
        frames, times, rec = next(gen)
        if stage is not None and pool == "clip":
            stage.query = prompt_for(rec)
        s = StreamingSession(adapter, pooling=stage, config=StreamConfig(chunk_frames=CHUNK))
        s.add_frames(frames, times)
        res[rec.task_type].append(judge(s.ask(prompt_for(rec), GenerationConfig(max_new_tokens=3)).text, rec))
    return {"short_mc_accuracy": float(np.mean(mc)),
            "per_task_accuracy": {k: float(np.mean(v)) for k, v in sorted(res.items())}, "n": n}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--init", default="ppllava_hermes/world/checkpoints/vlm")
    p.add_argument("--out", default="ppllava_hermes/world/checkpoints/vlm")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=5.0)
    p.add_argument("--final-n", type=int, default=150, help="test questions per kind and pooling mode at the end")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    adapter = load_shapesworld_adapter(args.init)
    model = adapter.model
    scorer = None
    try:
        from ppllava_hermes.pooling.relevance import RelevanceConfig, RelevanceScorer
        from ppllava_hermes.world.clip import load_world_clip

        clip, tok = load_world_clip()
        scorer = RelevanceScorer(clip, tok, config=RelevanceConfig(frames_per_token=2))
    except (FileNotFoundError, ImportError) as err:
        print(f"no ShapesWorld CLIP ({err}); training with average pooling only")
    for prm in model.model.visual.parameters():
        prm.requires_grad_(False)
    params = [q for q in model.parameters() if q.requires_grad]
    builder = SequenceBuilder(adapter, scorer)
    shorts = iter_short_clips("train", args.steps * args.batch_size, seed_base=5 * 10**7)
    streams = realtime_examples("train", 10**4)
    pools = [None, "avg"] + (["clip"] if scorer is not None else [])

    def step_fn(step: int):
        items = []
        for _ in range(args.batch_size):
            pool = random.choice(pools)
            kernel = random.choice([(1, 2, 2), (2, 2, 2)])
            if random.random() < 0.5:
                frames, rec = next(shorts)
                times = np.arange(len(frames), dtype=np.float64)
            else:
                frames, times, rec = next(streams)
            items.append(builder.build(frames, times, rec, pool, kernel))
        return batch_loss(model, items), None

    def on_log(step: int, loss, info, lr: float, minutes: float) -> None:
        print(f"step {step} loss {loss.item():.4f} {minutes:.1f} min", flush=True)

    def validate(step: int) -> dict:
        return {"none": evaluate(adapter, args.eval_n), "avg": evaluate(adapter, args.eval_n, pool="avg")}

    log, step = run_training(step_fn, params, steps=args.steps, lr=args.lr, warmup=50, model=model, start=t0,
                             max_minutes=args.max_minutes, stop_message="stopping at step {step}: time limit",
                             log_every=25, on_log=on_log, eval_every=args.eval_every, evaluate=validate)
    minutes = (time.time() - t0) / 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    stage1 = Path(args.init) / "training_report.json"
    if stage1.exists() and stage1.resolve() != (out / stage1.name).resolve():
        shutil.copyfile(stage1, out / stage1.name)  # the shipped folder keeps both stages' reports
    n = args.final_n
    final = {"none": evaluate(adapter, n, split="test"), "avg": evaluate(adapter, n, split="test", pool="avg")}
    if scorer is not None:
        final["clip"] = evaluate(adapter, n, split="test", pool="clip", scorer=scorer)
    (out / "stream_training_report.json").write_text(json.dumps(
        {"steps": step, "train_minutes": round(minutes, 2), "args": vars(args), "val_log": log, "test": final}, indent=2))
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
