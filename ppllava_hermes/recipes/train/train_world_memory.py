"""Stage 3 of the ShapesWorld VLM: answer about the past of long streams (backward questions).

    ppllava-hermes train train_world_memory --init ppllava_hermes/world/checkpoints/vlm --out runs/vlm_memory

Specification.

* Starts from a stage-2 checkpoint (``train_world_stream``); the vision tower stays frozen, the
  language model (embeddings, layers, head) is trained. Cost on 2 CPU cores: 5-15 s per step alone,
  about 45 s when other jobs share the cores; ``--max-minutes`` bounds the run and the learning rate
  follows the larger of the step and time fractions, so a slow machine still ends the schedule.
* Training streams: train-split worlds (``video_seed("train", 2 * 10**7 + i)``, never repeated) of
  ``--min-seconds`` .. ``--max-seconds`` (1-4 minutes) at 1 fps. Each stream carries the questions
  :func:`generate_questions` asks about it: every backward type (first to appear / leave, colour
  change, collision, and the recall types ``past_color`` / ``past_shape``) and every realtime type,
  ``--questions-per-type`` each, at question times drawn by the task builders (event ages from
  ``backward_min_gap`` = 10 s up to the whole stream).
* Exactly the session's sequences: :func:`plan_session` replays what ``run_timed_questions`` and
  ``StreamingSession`` do with 4-frame clips (chunks of ``chunk_frames`` = 4; a question splits the
  clip at its time; a partial temporal group goes in padded with a copy of its last frame for that
  question only, the stream keeping it pending, as ``StreamingSession.ask`` does since the KV-engine
  change; the shipped stage-3 checkpoint was trained before that change, when the padded group stayed
  in the stream); each chunk is encoded by the adapter, pooled by the same :class:`PoolingStage` the session would use
  (none, 3-D average (1,2,2), or the shipped CLIP against the standing query "a coloured shape"),
  wrapped by ``adapter.visual_segment`` at the session's positions; each question is
  ``adapter.question_text(prompt_for(record))`` at the position the session would give it, followed
  by the answer word and ``<|im_end|>``.
* Packing: all questions of a stream share one forward pass. A 4-D boolean attention mask lets each
  question see the system prompt and the chunks ingested before it (and itself, causally), and lets
  no stream token see any question, which is the session's memory restore after ``ask``. Short
  4-frame clips (``iter_short_clips``, half multiple choice; pooled none / average / CLIP on the
  question, kernels (1,2,2) and (2,2,2), as stage 2) are packed as further independent documents into
  the rows, so the short-clip skill is kept. ``tests/test_world_memory_training.py`` checks that the
  packed logits equal the session's own question logits (1e-4, every pooling mode).
* Loss: cross-entropy on the answer word and its end token, mean over the batch's answer tokens.
* At the end: the checkpoint is written to ``--out`` (with the earlier stages' reports), the training
  log to ``memory_training_report.json``, and the checkpoint is evaluated through the real
  :class:`StreamingSession` (full cache, chunk 4, no pooling and CLIP pooling) on held-out test streams (``video_seed("test", 3000 + i)``) and test short clips; the
  results are added to that report (``--eval-only`` runs this evaluation alone on ``--init``).

* Stage 4 (``--watch-streams N``): each step also streams N worlds chunked as watches run (``WATCH_CHUNK``
  = 2 frames), carrying the labelled decisions of their forward questions (:func:`watch_decisions`: the
  forward question as the prompt, ``now`` at the chunk ends in ``[event_time, event_time + tolerance]``,
  ``no`` before, ``--watch-negatives`` kept: the three just before the event and random earlier ones) and one
  backward / realtime question of each type; a ``now`` counts ``--watch-now-weight`` times in the loss. The
  packed decision logits equal ``StreamingSession.watch``'s scores (tested). The shipped checkpoint is stage 4,
  made by two runs (the first stopped by hand; its log is ``watch_training_stage4a_log.json``)::

      ppllava-hermes train train_world_memory --init <stage 3> --out runs/vlm_watch --steps 500 \
          --watch-streams 1 --lr 5e-4 --warmup 15 --seed 1 --max-minutes 50        # stopped at step 135
      ppllava-hermes train train_world_memory --init runs/vlm_watch --out runs/vlm_watch2 --steps 320 \
          --watch-streams 2 --watch-per-type 3 --watch-negatives 4 --watch-now-weight 3 --lr 5e-4 \
          --warmup 5 --seed 2 --max-minutes 45                                       # 209 steps, 45.1 min

* Stage 5 (``--binding-shorts N --binding-warmup W``): the stage-4 model answered "what shape is the <colour>
  object?" at chance among the objects present (short test clips: 99% with one object, 51-55% with two, 33-36%
  with three), although a linear probe on its frozen vision tokens reads each token's shape at 97%: the
  language model had not learned to bind a colour to a shape (about one such clip per step in stages 3-4).
  The first ``W`` steps train on :data:`BINDING_WARMUP_CLIPS` binding clips (2-3 objects, "shape" questions,
  unpooled) and the ``--shorts`` short clips only, about a second each; every later step adds ``N`` binding
  clips to the stage-4 mixture. The command of the stage-5 run::

      ppllava-hermes train train_world_memory --init <stage 4> --out runs/vlm_s5 --steps 260 \
          --binding-warmup 100 --streams 2 --watch-streams 1 --watch-per-type 3 --watch-negatives 4 \
          --watch-now-weight 3 --binding-shorts 16 --shorts-seed-base 62000000 --lr 4e-4 --warmup 5 \
          --seed 3 --max-minutes 42 --log-every 10

Hyperparameters are ours (no reference exists for this world): AdamW lr 8e-4, weight decay 0.01,
warm-up then cosine (:func:`lr_factor`), 2 streams + 8 short clips per step, gradient clip 1.0.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ppllava_hermes.evaluation.records import QARecord
from ppllava_hermes.evaluation.scoring import score_answer
from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.models.base import VisualTokens
from ppllava_hermes.models.qwen2_5_vl import seconds_per_group
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession
from ppllava_hermes.streaming.pooling_stage import PoolingStage
from ppllava_hermes.streaming.timed import TimedQuestion, run_timed_questions
from ppllava_hermes.video.types import VideoClip
from ppllava_hermes.world.generator import World, WorldConfig, generate_world
from ppllava_hermes.world.model import answer_text, load_shapesworld_adapter, prompt_for
from ppllava_hermes.world.tasks import (
    ALL_BACKWARD_TYPES,
    FORWARD_TYPES,
    REALTIME_TYPES,
    TaskConfig,
    generate_questions,
    iter_short_clips,
    video_seed,
)

from . import WorldPoolingStages, run_training

CHUNK = 4  # frames per clip and per chunk, as the demo and the memory benchmark stream (ours)
WATCH_CHUNK = 2  # frames per chunk when watches decide: one temporal group, a decision every 2 s at 1 fps (ours)
WATCH_POSITIVE, WATCH_NEGATIVE = "now", "no"  # the ShapesWorld watch's answer words (world.model.WATCH)
STANDING_QUERY = "a coloured shape"  # the demo's standing query for CLIP pooling while streaming
STREAM_TYPES = ALL_BACKWARD_TYPES + REALTIME_TYPES
BINDING_WARMUP_CLIPS = 24  # binding clips per warm-up step, beside the --shorts short clips (ours)
BINDING_OBJECTS = (0.0, 0.6, 0.4)  # stage 5's binding clips: 2 or 3 objects, never 1 (ours)
TRAIN_SEED_BASE = 2 * 10**7  # train-split video indices of this stage (disjoint from stages 1-2)
TEST_SEED_BASE = 3000  # test-split video indices of the final evaluation


# ---------------------------------------------------------------------------------------------------
# (1) the session's chunk plan


def plan_session(
    n_frames: int, question_times: Sequence[float], fps: float = 1.0, *, clip_frames: int = CHUNK,
    chunk_frames: int = CHUNK, group: int = 2,
) -> tuple[list[list[tuple[int, float]]], list[int], list[list[tuple[int, float]] | None]]:
    """What ``run_timed_questions`` + ``StreamingSession`` prefill for clips of ``clip_frames`` frames.

    Returns ``(chunks, asks, extras)``: ``chunks[c]`` the ``(frame index, timestamp)`` pairs of the c-th
    chunk the stream prefills; ``asks[j]`` the number of chunks in memory when question ``j`` (in the
    given order) is answered; ``extras[j]`` the partial group that question also sees, padded with copies
    of its last frame (``+1e-6`` s each, as ``streaming.chunks.pad_to_group``), prefilled for that question
    only (the stream keeps those frames pending), or None.
    """
    pending: list[tuple[int, float]] = []
    chunks: list[list[tuple[int, float]]] = []
    asks = [0] * len(question_times)
    extras: list[list[tuple[int, float]] | None] = [None] * len(question_times)

    def add(idx: range) -> None:
        pending.extend((i, i / fps) for i in idx)
        while len(pending) >= chunk_frames:
            chunks.append(pending[:chunk_frames])
            del pending[:chunk_frames]
        whole = len(pending) // group * group
        if whole:
            chunks.append(pending[:whole])
            del pending[:whole]

    def ask(j: int) -> None:
        asks[j] = len(chunks)
        if pending:
            missing = (-len(pending)) % group
            last_i, last_t = pending[-1]
            extras[j] = pending + [(last_i, last_t + 1e-6 * (m + 1)) for m in range(missing)]

    order = sorted(range(len(question_times)), key=lambda j: question_times[j])
    for s in range(0, n_frames, clip_frames):
        idx = range(s, min(n_frames, s + clip_frames))
        last_time = idx[-1] / fps
        start = 0
        while order and question_times[order[0]] < last_time:
            j = order.pop(0)
            stop = sum(i / fps <= question_times[j] for i in idx)
            if stop > start:
                add(idx[start:stop])
                start = stop
            ask(j)
        if start < len(idx):
            add(idx[start:])
    if pending:  # run_timed_questions flushes the stream's last frames before late questions
        missing = (-len(pending)) % group
        last_i, last_t = pending[-1]
        chunks.append(pending + [(last_i, last_t + 1e-6 * (m + 1)) for m in range(missing)])
        pending.clear()
    for j in order:
        ask(j)
    return chunks, asks, extras


# ---------------------------------------------------------------------------------------------------
# (2) documents: a prefix (system + chunks) and question blocks that each see part of it


@dataclass
class Document:
    """One session's tokens: ``prefix`` segments' embeds ``(P, D)`` / positions ``(3, P)``, and blocks.

    ``cut[c]``: prefix length after ``c`` chunks; a block is ``(embeds (Lb, D), positions (3, Lb),
    sees (prefix tokens visible), targets (Lb,) long, -100 where nothing is predicted, task_type)``.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    blocks: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.embeds.shape[0] + sum(b[0].shape[0] for b in self.blocks)


def world_scorer(adapter, on_missing=None):
    """The shipped ShapesWorld CLIP as the relevance scorer of ``adapter``'s groups, or None when no CLIP is shipped
    or the ``[clip]`` extra is missing (``on_missing(error)`` hears why)."""
    try:
        from ppllava_hermes.streaming.pooling_stage import load_scorer

        return load_scorer(None, frames_per_token=adapter.frames_per_group)
    except (FileNotFoundError, ImportError) as err:
        if on_missing is not None:
            on_missing(err)
        return None


class DocumentBuilder:
    """Builds session-identical documents for the ShapesWorld adapter (pooling stages as the session's)."""

    def __init__(self, adapter, scorer=None) -> None:
        self.adapter = adapter
        self.scorer = scorer
        self.end = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stages = WorldPoolingStages(scorer, STANDING_QUERY)

    def stage(self, pool: str | None, kernel=(1, 2, 2), query: str | None = None) -> PoolingStage | None:
        """The session's pooling stage for a mode: None, "avg", or "clip" (against ``query``, default the
        standing query)."""
        return self.stages.stage(pool, kernel, query)

    def encode_chunks(self, frames: np.ndarray, chunks: list[list[tuple[int, float]]],
                      stage: PoolingStage | None) -> list[VisualTokens]:
        """Visual tokens of each chunk; the tower runs once over all chunks (it attends within a group)."""
        ad = self.adapter
        flat = [i for c in chunks for i, _ in c]
        feats = ad.encode_frames(frames[flat], np.arange(len(flat), dtype=np.float64), 0).features
        out, g, first_id = [], 0, 0
        for c in chunks:
            t = len(c) // ad.frames_per_group
            times = np.asarray([x for _, x in c], dtype=np.float64)
            visual = VisualTokens(
                features=feats[g : g + t], suffix=feats.new_zeros(0, feats.shape[-1]),
                group_times=torch.as_tensor(times[:: ad.frames_per_group][:t]),
                group_frame_ids=first_id + torch.arange(t, dtype=torch.long) * ad.frames_per_group,
                seconds_per_group=seconds_per_group(times, ad.frames_per_group))
            if stage is not None:
                visual = stage(visual, frames[[i for i, _ in c]])
            out.append(visual)
            g += t
            first_id += len({i for i, _ in c})  # the session's frame log counts real frames only
        return out

    def document(self, frames: np.ndarray, chunks, asks: list[int], extras, records: list[QARecord],
                 stage: PoolingStage | None) -> Document:
        """``plan_session``'s ``(chunks, asks, extras)`` for ``records`` (in that order) as one document."""
        ad = self.adapter
        sys = ad.text_segment(ad.tokenize(ad.prefix_text()), 0, TokenKind.SYSTEM)
        embeds, positions = [sys.embeds], [sys.meta.positions]
        cut, pos_after = [len(sys.embeds)], [sys.next_position]
        extra_chunks = [x for x in extras if x is not None]
        visuals = self.encode_chunks(frames, list(chunks) + extra_chunks, stage)
        extra_visual = iter(visuals[len(chunks):])
        for visual in visuals[: len(chunks)]:
            seg = ad.visual_segment(visual, pos_after[-1])
            embeds.append(seg.embeds)
            positions.append(seg.meta.positions)
            cut.append(cut[-1] + seg.embeds.shape[0])
            pos_after.append(seg.next_position)
        doc = Document(torch.cat(embeds), torch.cat(positions, dim=1))
        for rec, c, extra in zip(records, asks, extras, strict=True):
            q = ad.tokenize(ad.question_text(prompt_for(rec)))
            a = torch.cat([ad.tokenize(answer_text(rec)), torch.tensor([self.end])])
            ids = torch.cat([q, a])
            pos = pos_after[c]
            parts_e, parts_p = [], []
            if extra is not None:  # the pending partial group, for this question only
                vseg = ad.visual_segment(next(extra_visual), pos)
                parts_e.append(vseg.embeds)
                parts_p.append(vseg.meta.positions)
                pos = vseg.next_position
            seg = ad.text_segment(ids, pos)
            lead = sum(e.shape[0] for e in parts_e)
            targets = torch.full((lead + len(ids),), -100, dtype=torch.long)
            targets[lead + len(q) - 1 : lead + len(ids) - 1] = a  # token i predicts token i + 1
            doc.blocks.append((torch.cat([*parts_e, seg.embeds]), torch.cat([*parts_p, seg.meta.positions], dim=1),
                               cut[c], targets, rec.task_type))
        return doc

    def stream_document(self, world: World, records: list[QARecord], stage: PoolingStage | None,
                        chunk: int = CHUNK) -> Document:
        """All ``records`` of one world, asked at their times in one session streaming clips of ``chunk``."""
        records = sorted(records, key=lambda r: float(r.timestamp))
        last = max(int(round(r.timestamp * world.fps)) for r in records)
        n = min(world.n_frames, (last // chunk + 1) * chunk)  # frames after the last question add nothing
        frames = np.stack(list(world.frames(0, n)))
        plan = plan_session(n, [float(r.timestamp) for r in records], world.fps, clip_frames=chunk, chunk_frames=chunk)
        return self.document(frames, *plan, records, stage)

    def clip_document(self, frames: np.ndarray, record: QARecord, stage: PoolingStage | None) -> Document:
        """A short clip: one session with the clip's frames, then its question."""
        return self.document(frames, *plan_session(len(frames), [float(len(frames))], 1.0), [record], stage)


# ---------------------------------------------------------------------------------------------------
# (3) packing into rows with a 4-D mask


def pack(rows: list[list[Document]]) -> dict[str, torch.Tensor]:
    """Rows of documents -> ``inputs_embeds (B, T, D)``, ``position_ids (3, B, T)``, ``attention_mask
    (B, 1, T, T)`` bool (True: may attend), ``targets (B, T)`` and ``types`` (the task type per target)."""
    width = max(sum(len(d) for d in row) for row in rows)
    dim = rows[0][0].embeds.shape[1]
    emb = torch.zeros(len(rows), width, dim)
    pos = torch.zeros(3, len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), 1, width, width, dtype=torch.bool)
    tgt = torch.full((len(rows), width), -100, dtype=torch.long)
    types: list[tuple[int, int, str]] = []
    idx = torch.arange(width)
    mask[:, 0, idx, idx] = True  # padding attends to itself only (no empty softmax rows)
    parts_e: list[list[torch.Tensor]] = [[] for _ in rows]
    for b, row in enumerate(rows):
        o = 0
        for d in row:
            p = d.embeds.shape[0]
            parts_e[b].append(d.embeds)
            pos[:, b, o : o + p] = d.positions
            mask[b, 0, o : o + p, o : o + p] = torch.ones(p, p, dtype=torch.bool).tril()
            q0 = o + p
            for e, ps, sees, t, tt in d.blocks:
                n = e.shape[0]
                parts_e[b].append(e)
                pos[:, b, q0 : q0 + n] = ps
                mask[b, 0, q0 : q0 + n, o : o + sees] = True
                mask[b, 0, q0 : q0 + n, q0 : q0 + n] = torch.ones(n, n, dtype=torch.bool).tril()
                tgt[b, q0 : q0 + n] = t
                types.append((b, q0 + int(torch.nonzero(t >= 0)[0]), tt))  # the answer word's target
                q0 += n
            o = q0
    # embeddings carry gradients (text embeddings are trained): stack instead of writing in place
    emb = torch.stack([torch.cat(parts + [emb.new_zeros(width - sum(x.shape[0] for x in parts), dim)])
                       for parts in parts_e])
    return {"inputs_embeds": emb, "position_ids": pos, "attention_mask": mask, "targets": tgt, "types": types}


def packed_logits(model, batch: dict) -> torch.Tensor:
    """``(B, T, V)`` logits of a packed batch."""
    out = model.model.language_model(inputs_embeds=batch["inputs_embeds"], position_ids=batch["position_ids"],
                                     attention_mask=batch["attention_mask"])
    return model.lm_head(out.last_hidden_state)


def packed_loss(model, batch: dict, weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, list[bool]]]:
    """Answer-token CE (a weighted mean: the answer word of a task type in ``weights`` counts that many
    times, every other answer token once) and, per task type, whether the answer word's argmax was right."""
    out = model.model.language_model(inputs_embeds=batch["inputs_embeds"], position_ids=batch["position_ids"],
                                     attention_mask=batch["attention_mask"])
    keep = batch["targets"] >= 0
    logits = model.lm_head(out.last_hidden_state[keep])
    flat = {(b, t): i for i, (b, t) in enumerate(torch.nonzero(keep).tolist())}
    w = torch.ones(logits.shape[0])
    for b, t, tt in batch["types"]:
        w[flat[(b, t)]] = (weights or {}).get(tt, 1.0)
    loss = (F.cross_entropy(logits, batch["targets"][keep], reduction="none") * w).sum() / w.sum()
    right: dict[str, list[bool]] = defaultdict(list)
    pred = logits.argmax(-1)
    for b, t, tt in batch["types"]:
        right[tt].append(bool(pred[flat[(b, t)]] == batch["targets"][b, t]))
    return loss, right


# ---------------------------------------------------------------------------------------------------
# (4) data streams


def stream_records(world: World, salt: int, per_type: int) -> list[QARecord]:
    tc = TaskConfig(task_types=STREAM_TYPES, questions_per_type=per_type, backward_min_gap=10.0)
    return generate_questions(world, tc, salt=salt)


def chunk_end_times(n_frames: int, fps: float, chunk_frames: int) -> list[float]:
    """Stream time of the last frame of each whole chunk: the moments a session's watches decide."""
    return [(s + chunk_frames - 1) / fps for s in range(0, n_frames - chunk_frames + 1, chunk_frames)]


def watch_decisions(world: World, rec: QARecord, *, chunk_frames: int = WATCH_CHUNK, max_negatives: int = 6,
                    rng: random.Random | None = None) -> list[QARecord]:
    """The decisions a session watching ``rec.question`` (a forward record) from ``rec.timestamp`` makes,
    labelled as the forward protocol scores them: ``WATCH_POSITIVE`` at the chunk ends in
    ``[event_time, event_time + tolerance]``, ``WATCH_NEGATIVE`` before ``event_time`` (at most
    ``max_negatives``: the three just before the event, the hardest, and random earlier ones); decisions
    after the window are not asked (a watch that fired has reported its event).
    """
    rng = rng or random.Random(0)
    e, tol = float(rec.extra["event_time"]), float(rec.extra["tolerance"])
    ends = [t for t in chunk_end_times(world.n_frames, world.fps, chunk_frames) if t > float(rec.timestamp)]
    pos = [t for t in ends if e <= t <= e + tol]
    neg = [t for t in ends if t < e]
    neg = neg[-3:] + rng.sample(neg[:-3], min(len(neg[:-3]), max(0, max_negatives - 3)))

    def decision(t: float, word: str) -> QARecord:
        return QARecord(benchmark="shapesworld", qid=f"{rec.qid}@{t:g}", video=rec.video, question=rec.question,
                        answer=word, task_type=f"watch_{word}", task_kind="forward", timestamp=t)

    return [decision(t, WATCH_POSITIVE) for t in pos] + [decision(t, WATCH_NEGATIVE) for t in sorted(neg)]


def watch_records(world: World, salt: int, per_type: int, rng: random.Random, negatives: int = 6) -> list[QARecord]:
    """A watch stream's records: the labelled decisions of its forward questions, and its own backward and
    realtime questions (so those are also learnt on the watch chunking)."""
    tc = TaskConfig(task_types=FORWARD_TYPES, questions_per_type=per_type)
    out = [d for rec in generate_questions(world, tc, salt=salt)
           for d in watch_decisions(world, rec, rng=rng, max_negatives=negatives)]
    return out + stream_records(world, salt, 1) if out else []


def training_streams(seed: int, min_s: float, max_s: float, per_type: int,
                     records=None) -> Iterator[tuple[World, list]]:
    """Endless (world, records) of the train split, each world new; durations uniform in [min_s, max_s].
    ``records(world, i)`` makes a world's records (default: :func:`stream_records` with ``per_type``)."""
    rng = random.Random(seed)
    i = 0
    while True:
        duration = float(rng.randint(int(min_s), int(max_s)))
        w = generate_world(WorldConfig(duration=duration), video_seed("train", TRAIN_SEED_BASE + seed * 10**5 + i))
        i += 1
        recs = records(w, i) if records is not None else stream_records(w, i, per_type)
        if recs:
            yield w, recs


def fill_rows(rows: list[list[Document]], shorts: list[Document]) -> None:
    """Put each short document into the currently shortest row (keeps the padded width low)."""
    for d in sorted(shorts, key=len, reverse=True):
        min(rows, key=lambda r: sum(len(x) for x in r)).append(d)


# ---------------------------------------------------------------------------------------------------
# (5) evaluation through the real session


def judge(text: str, rec: QARecord) -> bool:
    return score_answer(rec, text)


def test_streams(n: int, seed_base: int = TEST_SEED_BASE, per_type: int = 2) -> list[tuple[World, list[QARecord]]]:
    """``n`` held-out test worlds of 1-4 minutes (durations cycle 60, 120, 180, 240 s) with their questions."""
    out = []
    for i in range(n):
        w = generate_world(WorldConfig(duration=60.0 * (1 + i % 4)), video_seed("test", seed_base + i))
        recs = stream_records(w, 0, per_type)
        if recs:
            out.append((w, recs))
    return out


def world_clips(world: World, clip_frames: int = CHUNK) -> Iterator[VideoClip]:
    for s in range(0, world.n_frames, clip_frames):
        yield world.clip(s, s + clip_frames)


@torch.no_grad()
def evaluate_streams(adapter, streams, stage: PoolingStage | None = None) -> dict[str, list[bool]]:
    """Per task type, right/wrong of each question, answered by a full-cache session at its time."""
    adapter.model.eval()
    res: dict[str, list[bool]] = defaultdict(list)
    for w, recs in streams:
        session = StreamingSession(adapter, pooling=stage, config=StreamConfig(chunk_frames=CHUNK))
        qs = [TimedQuestion(float(r.timestamp), prompt_for(r), r) for r in recs]
        for q, ans in run_timed_questions(session, world_clips(w), qs, GenerationConfig(max_new_tokens=3)):
            res[q.payload.task_type].append(judge(ans.text, q.payload))
    return res


@torch.no_grad()
def evaluate_short(adapter, n: int, split: str = "test", stage: PoolingStage | None = None) -> dict[str, list[bool]]:
    """Short test clips (the stage-1 test set): per task type and ``"mc"`` (multiple choice only)."""
    adapter.model.eval()
    res: dict[str, list[bool]] = defaultdict(list)
    session = StreamingSession(adapter, pooling=stage, config=StreamConfig(chunk_frames=CHUNK))
    for frames, rec in iter_short_clips(split, n):
        session.reset()
        session.add_frames(frames, np.arange(len(frames), dtype=np.float64))
        ok = judge(session.ask(prompt_for(rec), GenerationConfig(max_new_tokens=3)).text, rec)
        res[rec.task_type].append(ok)
        if rec.options:
            res["mc"].append(ok)
    return res


def summarize(res: dict[str, list[bool]]) -> dict:
    from ppllava_hermes.world.tasks import TASK_KIND_OF

    kinds: dict[str, list[bool]] = defaultdict(list)
    for tt, v in res.items():
        if tt in TASK_KIND_OF:
            kinds[TASK_KIND_OF[tt]] += v
    return {"per_type": {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for k, v in sorted(res.items())},
            "per_kind": {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)} for k, v in sorted(kinds.items())}}


def final_evaluation(adapter, scorer, n_streams: int, n_clips: int) -> dict:
    builder = DocumentBuilder(adapter, scorer)
    streams = test_streams(n_streams)
    out = {"streams_full": summarize(evaluate_streams(adapter, streams)),
           "short_full": summarize(evaluate_short(adapter, n_clips))}
    out["short_full"]["short_mc_accuracy"] = out["short_full"]["per_type"]["mc"]["accuracy"]
    if scorer is not None:
        out["streams_clip_pooled"] = summarize(evaluate_streams(adapter, streams, builder.stage("clip")))
    return out


# ---------------------------------------------------------------------------------------------------
# (6) training


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes train train_world_memory", description=__doc__.split("\n")[0])
    p.add_argument("--init", default="ppllava_hermes/world/checkpoints/vlm", help="stage-2 checkpoint to start from")
    p.add_argument("--out", default="runs/vlm_memory", help="where the checkpoint and its report go")
    p.add_argument("--steps", type=int, default=180, help="optimizer steps (the schedule's length)")
    p.add_argument("--streams", type=int, default=2, help="streams per step (ours)")
    p.add_argument("--shorts", type=int, default=8, help="short clips per step (ours)")
    p.add_argument("--watch-streams", type=int, default=0,
                   help="streams per step with labelled watch decisions, chunked as watches run (stage 4; ours: 1)")
    p.add_argument("--watch-per-type", type=int, default=2, help="forward questions per type per watch stream (ours)")
    p.add_argument("--watch-negatives", type=int, default=6, help="'no' decisions kept per forward question (ours)")
    p.add_argument("--watch-now-weight", type=float, default=1.0,
                   help="loss weight of a 'now' decision against 1 for every other answer (ours: 3 in stage 4)")
    p.add_argument("--binding-warmup", type=int, default=0,
                   help="first steps on binding and short clips only (stage 5: 100; counted in --steps; ours)")
    p.add_argument("--shorts-seed-base", type=int, default=None,
                   help="first clip index of the short clips (default 60M + seed * 1M, valid for seeds 0-2)")
    p.add_argument("--binding-shorts", type=int, default=0,
                   help="extra short clips per step asking the shape of a named colour among 2-3 objects (stage 5; ours)")
    p.add_argument("--questions-per-type", type=int, default=5, help="questions per task type per stream (ours)")
    p.add_argument("--min-seconds", type=float, default=60.0)
    p.add_argument("--max-seconds", type=float, default=240.0)
    p.add_argument("--lr", type=float, default=8e-4, help="AdamW learning rate (ours)")
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--pool-probs", default="0.6,0.25,0.15", help="probabilities of no / average / CLIP pooling per stream")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=50.0, help="stop training after this long")
    p.add_argument("--save-every", type=int, default=20, help="write the checkpoint every this many steps")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--final-streams", type=int, default=40, help="held-out test streams in the final evaluation")
    p.add_argument("--final-clips", type=int, default=300, help="held-out short test clips in the final evaluation")
    p.add_argument("--eval-only", action="store_true",
                   help="no training: evaluate --init as the final evaluation does, into --out/memory_eval_report.json")
    return p.parse_args(argv)


def lr_factor(step: int, warmup: int, steps: int, time_fraction: float) -> float:
    """Linear warm-up, then a cosine to 0 over the run; progress is the larger of the step fraction and
    the fraction of ``--max-minutes`` used, so a slower (shared) machine still ends at a low rate."""
    progress = min(1.0, max(step / steps, time_fraction))
    return min(1.0, step / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * progress))


def save(adapter, init: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    for name in ("training_report.json", "stream_training_report.json"):  # earlier stages' reports travel along
        src = init / name
        if src.exists() and src.resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    adapter = load_shapesworld_adapter(args.init)
    model = adapter.model
    scorer = world_scorer(adapter, lambda err: print(f"no ShapesWorld CLIP ({err}): streams are pooled by averaging "
                                                     "instead"))
    if args.eval_only:
        t1 = time.time()
        final = final_evaluation(adapter, scorer, args.final_streams, args.final_clips)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "memory_eval_report.json").write_text(json.dumps(
            {"checkpoint": args.init, "eval_minutes": round((time.time() - t1) / 60, 2), "args": vars(args),
             "test": final}, indent=2))
        print(json.dumps(final, indent=2), flush=True)
        return
    for prm in model.model.visual.parameters():
        prm.requires_grad_(False)
    params = [q for q in model.parameters() if q.requires_grad]
    builder = DocumentBuilder(adapter, scorer)
    streams = training_streams(args.seed, args.min_seconds, args.max_seconds, args.questions_per_type)
    watch = training_streams(args.seed + 1, args.min_seconds, args.max_seconds, args.questions_per_type,
                             records=lambda w, i: watch_records(w, i, args.watch_per_type, random.Random(i),
                                                                args.watch_negatives))
    # clip indices stop at 62.5M: seeds 0-2 keep their blocks of 1M, later seeds name a block themselves
    base = 6 * 10**7 + args.seed * 10**6 if args.shorts_seed_base is None else args.shorts_seed_base
    shorts = iter_short_clips("train", 10**6, seed_base=base)
    binding = iter_short_clips("train", 10**6, seed_base=5 * 10**7 + args.seed * 10**6, task_types=("shape",),
                               object_weights=BINDING_OBJECTS)
    probs = [float(x) for x in args.pool_probs.split(",")]
    modes = [None, "avg", "clip" if scorer is not None else "avg"]
    log: list[dict] = []
    window: dict[str, list[bool]] = defaultdict(list)  # answers right since the last log line, per task type
    losses: list[float] = []
    out = Path(args.out)

    def step_fn(step: int):
        warm = step <= args.binding_warmup  # the first steps: binding clips + short clips only (seconds each)
        rows: list[list[Document]] = [[] for _ in range(4)] if warm else []
        for _ in range(0 if warm else args.streams):
            w, recs = next(streams)
            stage = builder.stage(random.choices(modes, probs)[0])
            rows.append([builder.stream_document(w, recs, stage)])
        for _ in range(0 if warm else args.watch_streams):
            w, recs = next(watch)
            stage = builder.stage(random.choices(modes, probs)[0])
            rows.append([builder.stream_document(w, recs, stage, chunk=WATCH_CHUNK)])
        docs = []
        for _ in range(args.shorts):
            frames, rec = next(shorts)
            mode = random.choice([None, "avg", modes[2]])
            stage = builder.stage(mode, random.choice([(1, 2, 2), (2, 2, 2)]), query=prompt_for(rec))
            docs.append(builder.clip_document(frames, rec, stage))
        for _ in range(BINDING_WARMUP_CLIPS if warm else args.binding_shorts):  # unpooled: the LM's to learn
            frames, rec = next(binding)
            docs.append(builder.clip_document(frames, rec, None))
        fill_rows(rows, docs)
        batch = pack(rows)
        loss, right = packed_loss(model, batch, {"watch_now": args.watch_now_weight})
        losses.append(loss.item())
        for k, v in right.items():
            window[k] += v
        return loss, int(batch["inputs_embeds"].shape[1])  # info: the batch's padded width, for the log

    def on_log(step: int, loss, width: int, lr: float, minutes: float) -> None:
        acc = {k: round(float(np.mean(v)), 3) for k, v in sorted(window.items())}
        entry = {"step": step, "minutes": round(minutes, 2), "loss": round(float(np.mean(losses)), 4),
                 "train_answer_accuracy": acc, "width": width}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        window.clear()
        losses.clear()

    def lr_at(step: int) -> float:
        return args.lr * lr_factor(step, args.warmup, args.steps, (time.time() - t0) / 60 / args.max_minutes)

    def after_step(step: int) -> None:
        if step % args.save_every == 0:
            save(adapter, Path(args.init), out)

    _, step = run_training(step_fn, params, steps=args.steps, lr=args.lr, warmup=args.warmup, model=model, start=t0,
                           max_minutes=args.max_minutes, log_every=args.log_every, on_log=on_log, lr_at=lr_at,
                           after_step=after_step)
    minutes = (time.time() - t0) / 60
    model.eval()
    save(adapter, Path(args.init), out)
    print(f"trained {step} steps in {minutes:.1f} min; evaluating", flush=True)
    report = {"steps": step, "train_minutes": round(minutes, 2), "args": vars(args), "log": log}
    (out / "memory_training_report.json").write_text(json.dumps(report, indent=2))  # kept if the evaluation stops
    t1 = time.time()
    report["test"] = final_evaluation(adapter, scorer, args.final_streams, args.final_clips)
    report["eval_minutes"] = round((time.time() - t1) / 60, 2)
    (out / "memory_training_report.json").write_text(json.dumps(report, indent=2))
    final = report["test"]
    print(json.dumps(final, indent=2), flush=True)


if __name__ == "__main__":
    main()
