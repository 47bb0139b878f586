"""Learned DMC: retrofit the ShapesWorld VLM to decide, per visual token, "append" or "merge".

    ppllava-hermes train train_dmc --init ppllava_hermes/world/checkpoints/vlm --target-cr 2 --out runs/dmc/cr2

Based on "Dynamic Memory Compression" (Nawrot et al., arXiv 2403.09636), adapted to a streaming VLM:

- The decision: one key dimension per KV head (``--dim``, ref: the last), before rotation, becomes
  the decision logit: ``alpha = sigmoid(mean_heads k[..., dim] - offset)``, one decision per token and
  layer shared by the layer's heads (the memory holds dense per-layer tensors). The query dimensions
  paired with it by the rotary embedding are ramped to zero over ``--zero-steps`` (DMC's first stage)
  and stay zero, so the dimension no longer enters attention. Its projection row trains as a separate
  parameter at ``--alpha-lr`` (weights start at zero: every token starts at the same logit).
- The merge: a visual token merges into the newest older token at the same place of the grid (the
  memory's ``match="temporal"``), as a running mean ``acc = alpha * acc + x``, ``c = alpha * c + 1``,
  keys moved to the newest member's position (accumulated before rotation, rotated after).
- Training with the session's chunking: tokens attend to their own chunk as it was prefilled, and
  to earlier chunks as the memory holds them after the merges decided so far: accumulated keys and
  values, and an additive ``log(1 - alpha_next)`` on an entry its successor merged away (DMC's
  attention-mask relaxation). ``alpha`` is a Gumbel-sigmoid (logistic noise, temperature ``--tau``).
- The loss: the answer's cross-entropy plus ``--cr-weight * |prior - mean hard decision|``
  (straight-through; ``--one-sided``: ``relu(prior - ...)`` as ref DMC), with ``prior = 1 - 1 / cr``
  and ``cr`` ramped from 1 to ``--target-cr`` after the zeroing stage (ref DMC). The decision logit
  starts at ``--init-logit`` (ref: ``-offset``; a short retrofit needs a nearer start).

Sequences are built exactly as ``train.train_world_stream`` builds them (the adapter's segments,
one per chunk of 4 frames, the question and the answer) from ShapesWorld streams with static stretches
(``--static-fraction``) and short clips. The output folder holds the model (the query dimensions
zeroed, the decision row in ``k_proj``) and ``dmc.json`` with ``dim`` and ``offset`` for
``memory.merge.KeyDimDecider``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ppllava_hermes.memory.cache import TokenKind
from ppllava_hermes.memory.rope import angles
from ppllava_hermes.streaming.sparsity import grid_offset
from ppllava_hermes.world.generator import WorldConfig, generate_world
from ppllava_hermes.world.model import answer_text, load_shapesworld_adapter, prompt_for
from ppllava_hermes.world.tasks import TaskConfig, generate_questions, iter_short_clips, video_seed

from .train_world_stream import CHUNK, REALTIME

ATTENTION_NAME = "ppllava_dmc_train"


# ------------------------------------------------------------------------------------------ sequences
@dataclass
class DMCSequence:
    """One teacher-forced sequence with what the merge needs per token (``N`` tokens).

    Attributes:
        embeds: ``(N, D)``; positions ``(3, N)``; labels ``(N,)`` (-100 outside the answer).
        chunk: ``(N,)`` long: -1 system, ``c`` for the c-th visual chunk, C for the question and answer.
        pred: ``(N,)`` long: the token it would merge into (same grid place, previous group), -1 none.
        depth: ``(N,)`` long: the token's group index in the stream (-1 for non-grid tokens).
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    chunk: torch.Tensor
    pred: torch.Tensor
    depth: torch.Tensor


def build_sequence(adapter, frames: np.ndarray, times: np.ndarray, record, end_id: int) -> DMCSequence:
    """The session's segments for ``frames`` + question + answer (as ``SequenceBuilder.build``), with merge metadata."""
    ad = adapter
    segs = [ad.text_segment(ad.tokenize(ad.prefix_text()), 0, TokenKind.SYSTEM)]
    chunk = [torch.full((len(segs[0]),), -1, dtype=torch.long)]
    pred, depth = [torch.full((len(segs[0]),), -1, dtype=torch.long)], [torch.full((len(segs[0]),), -1, dtype=torch.long)]
    pos, start, group = segs[0].next_position, len(segs[0]), 0
    last_place: dict[tuple[int, int], int] = {}
    for c, s in enumerate(range(0, len(frames), CHUNK)):
        with torch.no_grad():
            visual = ad.encode_frames(frames[s : s + CHUNK], times[s : s + CHUNK], s)
        seg = ad.visual_segment(visual, pos)
        t, h, w = visual.grid
        off = start + grid_offset(seg, visual)
        p = torch.full((len(seg),), -1, dtype=torch.long)
        d = torch.full((len(seg),), -1, dtype=torch.long)
        for g in range(t):
            for r in range(h):
                for q in range(w):
                    i = off + (g * h + r) * w + q
                    p[i - start] = last_place.get((r, q), -1)
                    d[i - start] = group + g
                    last_place[(r, q)] = i
        group += t
        segs.append(seg)
        chunk.append(torch.full((len(seg),), c, dtype=torch.long))
        pred.append(p)
        depth.append(d)
        pos, start = seg.next_position, start + len(seg)
    n_chunks = len(segs) - 1
    q = ad.text_segment(ad.tokenize(ad.question_text(prompt_for(record))), pos)
    ans_ids = torch.cat([ad.tokenize(answer_text(record)), torch.tensor([end_id])])
    a = ad.text_segment(ans_ids, q.next_position)
    for text in (q, a):
        segs.append(text)
        chunk.append(torch.full((len(text),), n_chunks, dtype=torch.long))
        pred.append(torch.full((len(text),), -1, dtype=torch.long))
        depth.append(torch.full((len(text),), -1, dtype=torch.long))
    embeds = torch.cat([s.embeds for s in segs]).detach()
    labels = torch.full((embeds.shape[0],), -100, dtype=torch.long)
    labels[-len(ans_ids):] = ans_ids
    return DMCSequence(embeds, torch.cat([s.meta.positions for s in segs], dim=1), labels,
                       torch.cat(chunk), torch.cat(pred), torch.cat(depth))


def stream_examples(split: str, seed_base: int, static_fraction: float, max_chunks: int = 6,
                    duration: float = 90.0) -> Iterator[tuple[np.ndarray, np.ndarray, object]]:
    """Endless ``(frames, times, record)``: up to ``max_chunks`` chunks ending at a realtime question
    (``train_world_stream.realtime_examples`` on worlds with static stretches)."""
    i = 0
    while True:
        cfg = WorldConfig(duration=duration, static_fraction=static_fraction, static_segment=12.0)
        w = generate_world(cfg, video_seed(split, seed_base + i))
        i += 1
        for rec in generate_questions(w, TaskConfig(task_types=REALTIME, questions_per_type=4), salt=i):
            t = int(round(rec.timestamp * w.fps))
            k = random.randint(1, max_chunks)
            k = min(k, (t + 1) // CHUNK)
            if k < 1:
                continue
            start = t + 1 - CHUNK * k
            yield np.stack(list(w.frames(start, t + 1))), np.arange(start, t + 1, dtype=np.float64) / w.fps, rec


# ------------------------------------------------------------------------------------------ the model
@dataclass
class DMCState:
    """What the training attention reads for the current batch (set by :func:`dmc_batch`).

    Attributes:
        positions: ``(3, B, N)``; chunk / pred / depth: ``(B, N)``; valid: ``(B, N)`` bool.
        logits: per layer, ``(B, N)`` decision logits written by the key-projection hook.
        decisions: per layer, straight-through hard decisions over merge candidates (for the prior).
        tau: Gumbel-sigmoid temperature; noise: add logistic noise (training); hard: use 0/1 decisions.
    """

    positions: torch.Tensor
    chunk: torch.Tensor
    pred: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    tau: float = 0.5
    noise: bool = True
    hard: bool = False
    eps: float = 1e-6
    logits: dict[int, torch.Tensor] = field(default_factory=dict)
    decisions: list[torch.Tensor] = field(default_factory=list)


_STATE: ContextVar[DMCState | None] = ContextVar("ppllava_dmc_state", default=None)


class DMCRetrofit:
    """Hooks that repurpose one key dimension per KV head and silence its query partners.

    ``alpha_weight (L, H_kv, hidden)`` / ``alpha_bias (L, H_kv)`` produce the decision dimension of
    ``k_proj``'s output; ``q_scale`` multiplies the paired query dimensions (1 -> 0 in stage one).
    :meth:`bake` writes both into the model's weights, after which no hook is needed.
    """

    def __init__(self, model, rope, dim: int = -1, offset: float = 5.0, init_logit: float | None = None) -> None:
        self.lm = model.model.language_model
        cfg = self.lm.config
        self.rope, self.offset = rope, offset
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.dim = dim % self.head_dim
        half = self.head_dim // 2
        self.pair = [self.dim, (self.dim + half) % self.head_dim]  # rotate_half pairs j with j +- D/2
        self.kv_heads, self.q_heads = cfg.num_key_value_heads, cfg.num_attention_heads
        layers = list(self.lm.layers)
        self.alpha_weight = torch.nn.Parameter(torch.zeros(len(layers), self.kv_heads, cfg.hidden_size))
        # The decision starts at logit ``init_logit`` (None: -offset, ref DMC), the same for every token.
        start = 0.0 if init_logit is None else offset + init_logit
        self.alpha_bias = torch.nn.Parameter(torch.full((len(layers), self.kv_heads), start))
        self.q_scale = 1.0
        self._handles = []
        for i, layer in enumerate(layers):
            self._handles.append(layer.self_attn.k_proj.register_forward_hook(self._k_hook(i)))
            self._handles.append(layer.self_attn.q_proj.register_forward_hook(self._q_hook()))

    def _k_hook(self, i: int):
        def hook(module, inputs, out):
            x = inputs[0]
            alpha_raw = torch.einsum("bnd,hd->bnh", x, self.alpha_weight[i]) + self.alpha_bias[i]  # (B, N, H_kv)
            out = out.view(*out.shape[:-1], self.kv_heads, self.head_dim).clone()
            out[..., self.dim] = alpha_raw
            state = _STATE.get()
            if state is not None:
                state.logits[i] = alpha_raw.mean(dim=-1) - self.offset
            return out.flatten(-2)
        return hook

    def _q_hook(self):
        def hook(module, inputs, out):
            if self.q_scale == 1.0:
                return out
            out = out.view(*out.shape[:-1], self.q_heads, self.head_dim).clone()
            out[..., self.pair] = out[..., self.pair] * self.q_scale
            return out.flatten(-2)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def bake(self) -> None:
        """Write the decision rows into ``k_proj`` and zero the paired query rows; remove the hooks."""
        for i, layer in enumerate(self.lm.layers):
            k, q = layer.self_attn.k_proj, layer.self_attn.q_proj
            for h in range(self.kv_heads):
                row = h * self.head_dim + self.dim
                k.weight[row] = self.alpha_weight[i, h]
                k.bias[row] = self.alpha_bias[i, h]
            for h in range(self.q_heads):
                for j in self.pair:
                    q.weight[h * self.head_dim + j] = 0.0
                    if q.bias is not None:
                        q.bias[h * self.head_dim + j] = 0.0
        self.remove()


def _turn(x: torch.Tensor, positions: torch.Tensor, rope) -> torch.Tensor:
    """Rotate ``x (B, H, N, D)`` by ``positions (3, B, N)`` (may be negative), no attention scaling."""
    b, _, n, d = x.shape
    theta = angles(positions.reshape(positions.shape[0], -1), rope).view(b, 1, n, d // 2)
    cos = torch.cos(theta).to(x.dtype)
    sin = torch.sin(theta).to(x.dtype)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def dmc_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs):
    """Attention over the memory as the streaming session would hold it (see the module docstring)."""
    state = _STATE.get()
    rope = _ROPE.get()
    layer = module.layer_idx
    b, _, n, _ = key.shape
    pred, depth, chunk = state.pred, state.depth, state.chunk
    cand = pred >= 0
    logits = state.logits[layer]
    if state.hard:
        alpha = (logits > 0).to(key.dtype)
    else:
        noisy = logits
        if state.noise:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            noisy = logits + torch.log(u) - torch.log1p(-u)
        alpha = torch.sigmoid(noisy / state.tau)
    alpha = alpha * cand
    probs = torch.sigmoid(logits)
    state.decisions.append(((probs > 0.5).to(probs.dtype) - probs.detach() + probs)[cand])

    # Running means along each place's chain, before rotation; then rotated at the newest member.
    k_pre = _turn(key, -state.positions, rope)
    acc_k, acc_v = k_pre, value
    cnt = torch.ones(b, n, dtype=key.dtype, device=key.device)
    gather = pred.clamp(min=0)
    for d in range(1, int(depth.max()) + 1):
        at = (depth == d) & cand
        if not bool(at.any()):
            continue
        a = alpha * at
        idx = gather[:, None, :, None].expand_as(acc_k)
        acc_k = torch.where(at[:, None, :, None], a[:, None, :, None] * acc_k.gather(2, idx) + k_pre, acc_k)
        acc_v = torch.where(at[:, None, :, None], a[:, None, :, None] * acc_v.gather(2, idx) + value, acc_v)
        cnt = torch.where(at, a * cnt.gather(1, gather) + 1.0, cnt)
    k_acc = _turn(acc_k / cnt[:, None, :, None], state.positions, rope)
    v_acc = acc_v / cnt[:, None, :, None]

    groups = query.shape[1] // key.shape[1]
    k_raw, v_raw = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    k_acc, v_acc = k_acc.repeat_interleave(groups, 1), v_acc.repeat_interleave(groups, 1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    same = (chunk[:, :, None] == chunk[:, None, :])[:, None]  # (B, 1, Nq, Nk)
    scores = torch.where(same, query @ k_raw.transpose(-1, -2), query @ k_acc.transpose(-1, -2)) * scale
    # An entry its successor merged away (in a chunk before the query's) fades by log(1 - alpha_next).
    succ = torch.full_like(pred, -1)
    rows = torch.arange(b)[:, None].expand_as(pred)
    succ[rows[cand], pred[cand]] = torch.arange(n).expand_as(pred)[cand]
    has_succ = succ >= 0
    alpha_next = torch.where(has_succ, alpha.gather(1, succ.clamp(min=0)), torch.zeros_like(alpha))
    chunk_next = torch.where(has_succ, chunk.gather(1, succ.clamp(min=0)), torch.full_like(chunk, 1 << 30))
    fade = torch.log((1 - alpha_next).clamp(min=state.eps))
    merged_before = chunk_next[:, None, :] < chunk[:, :, None]  # (B, Nq, Nk)
    bias = torch.where(merged_before, fade[:, None, :], torch.zeros_like(scores[:, 0]))
    causal = torch.ones(n, n, dtype=torch.bool, device=key.device).tril()
    allowed = causal[None] & state.valid[:, None, :]
    bias = bias.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores + bias[:, None], dim=-1)
    out = (weights * same) @ v_raw + (weights * ~same) @ v_acc
    return out.transpose(1, 2).contiguous(), None


_ROPE: ContextVar[object | None] = ContextVar("ppllava_dmc_rope", default=None)


@contextlib.contextmanager
def dmc_batch(model, rope, state: DMCState) -> Iterator[DMCState]:
    """Run the language model with the DMC training attention for one batch."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, dmc_attention)
    config = model.model.language_model.config
    previous = config._attn_implementation
    tokens = (_STATE.set(state), _ROPE.set(rope))
    config._attn_implementation = ATTENTION_NAME
    try:
        yield state
    finally:
        config._attn_implementation = previous
        _STATE.reset(tokens[0])
        _ROPE.reset(tokens[1])


def collate(items: list[DMCSequence]) -> dict[str, torch.Tensor]:
    """Right-padded batch of sequences."""
    width = max(it.embeds.shape[0] for it in items)
    b, dim = len(items), items[0].embeds.shape[1]
    out = {
        "embeds": torch.zeros(b, width, dim),
        "positions": torch.zeros(3, b, width, dtype=torch.long),
        "labels": torch.full((b, width), -100, dtype=torch.long),
        "chunk": torch.full((b, width), 1 << 20, dtype=torch.long),
        "pred": torch.full((b, width), -1, dtype=torch.long),
        "depth": torch.full((b, width), -1, dtype=torch.long),
        "valid": torch.zeros(b, width, dtype=torch.bool),
    }
    for i, it in enumerate(items):
        n = it.embeds.shape[0]
        out["embeds"][i, :n] = it.embeds
        out["positions"][:, i, :n] = it.positions
        out["labels"][i, :n] = it.labels
        out["chunk"][i, :n] = it.chunk
        out["pred"][i, :n] = it.pred
        out["depth"][i, :n] = it.depth
        out["valid"][i, :n] = True
    return out


def forward(model, rope, batch: dict[str, torch.Tensor], *, tau: float = 0.5, noise: bool = True,
            hard: bool = False) -> tuple[torch.Tensor, DMCState]:
    """Logits ``(B, N, V)`` of the batch under the DMC attention, and the state (decisions per layer)."""
    state = DMCState(batch["positions"], batch["chunk"], batch["pred"], batch["depth"], batch["valid"],
                     tau=tau, noise=noise, hard=hard)
    with dmc_batch(model, rope, state):
        out = model.model.language_model(inputs_embeds=batch["embeds"], position_ids=batch["positions"])
    return model.lm_head(out.last_hidden_state), state


def dmc_loss(logits: torch.Tensor, labels: torch.Tensor, state: DMCState, prior: float,
             weight: float, two_sided: bool = True) -> tuple[torch.Tensor, float, float]:
    """``(loss, answer cross-entropy, merged fraction of candidates)``: CE + weight * the prior's gap.

    The gap is ``relu(prior - mean decision)`` (ref DMC: merging more than asked is free) or, two-sided
    (ours), ``|prior - mean decision|``, which holds the ratio at its target.
    """
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    decisions = torch.cat(state.decisions) if state.decisions else torch.zeros(1)
    rate = decisions.mean()
    gap = (prior - rate).abs() if two_sided else (prior - rate).clamp(min=0)
    return ce + weight * gap, ce.item(), rate.item()


# ------------------------------------------------------------------------------------------ training
def tiny_adapter(seed: int = 0):
    """A random ShapesWorld-architecture model, small enough for tests (``--tiny``)."""
    from ppllava_hermes.models.qwen2_5_vl import Qwen2_5_VLAdapter, default_video_processor
    from ppllava_hermes.world.generator import COLORS, DIRECTIONS, SHAPES
    from ppllava_hermes.world.model import SYSTEM_PROMPT, build_model, build_tokenizer

    corpus = [SYSTEM_PROMPT, "what colour shape is the now how many shapes are visible object in this clip moving "
              "which direction options", " ".join(COLORS + SHAPES + DIRECTIONS), " ".join(map(str, range(10)))]
    tok = build_tokenizer(corpus)
    model = build_model(tok, hidden=32, layers=2, vision_hidden=32, seed=seed).eval()
    return Qwen2_5_VLAdapter(model, tok, default_video_processor(model.config), system_prompt=SYSTEM_PROMPT)


def schedule(step: int, steps: int, zero_steps: int, target_cr: float, ramp_fraction: float = 1.0) -> tuple[float, float]:
    """``(q_scale, prior)`` at ``step``: the query dimensions fade out first, then the ratio ramps up over
    ``ramp_fraction`` of the remaining steps and holds."""
    q_scale = max(0.0, 1.0 - step / zero_steps) if zero_steps > 0 else 0.0
    ramp = (step - zero_steps) / max(1.0, ramp_fraction * (steps - zero_steps))
    cr = 1.0 + (target_cr - 1.0) * min(1.0, max(0.0, ramp))
    return q_scale, 1.0 - 1.0 / cr


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="ppllava-hermes train train_dmc", description=__doc__.split("\n")[0])
    p.add_argument("--init", default="ppllava_hermes/world/checkpoints/vlm", help="the ShapesWorld checkpoint")
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead of --init (tests)")
    p.add_argument("--out", default="runs/dmc/cr2", help="output folder (model + dmc.json)")
    p.add_argument("--target-cr", type=float, default=2.0, help="compression ratio the prior ramps to (default 2)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--zero-steps", type=int, default=50, help="steps over which the query partners fade to 0")
    p.add_argument("--ramp-fraction", type=float, default=0.7,
                   help="share of the steps after zeroing over which the ratio ramps (ref DMC: 1); then it holds")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="language model learning rate")
    p.add_argument("--alpha-lr", type=float, default=1e-2, help="learning rate of the decision rows")
    p.add_argument("--cr-weight", type=float, default=2.0, help="weight of the compression prior")
    p.add_argument("--one-sided", action="store_true",
                   help="prior as in ref DMC (only too little merging is penalised); default: two-sided")
    p.add_argument("--tau", type=float, default=0.5, help="Gumbel-sigmoid temperature")
    p.add_argument("--dim", type=int, default=-1, help="repurposed key dimension (ref: the last)")
    p.add_argument("--offset", type=float, default=5.0, help="alpha = sigmoid(k[dim] - offset) (ref: 5)")
    p.add_argument("--init-logit", type=float, default=-2.0,
                   help="initial decision logit (ref DMC: -offset; ours -2: a short run must reach the prior)")
    p.add_argument("--static-fraction", type=float, default=0.5, help="static share of the training streams")
    p.add_argument("--short-fraction", type=float, default=0.3, help="share of short clips in a batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=20.0)
    args = p.parse_args(argv)
    if args.target_cr < 1:
        p.error("--target-cr must be >= 1")

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    adapter = tiny_adapter(args.seed) if args.tiny else load_shapesworld_adapter(args.init)
    model = adapter.model
    rope = adapter.rope_spec()
    retro = DMCRetrofit(model, rope, dim=args.dim, offset=args.offset, init_logit=args.init_logit)
    for prm in model.model.visual.parameters():
        prm.requires_grad_(False)
    lm_params = [q for n, q in model.named_parameters() if q.requires_grad and not n.startswith("model.visual")]
    opt = torch.optim.AdamW([{"params": lm_params, "lr": args.lr, "weight_decay": 0.01},
                             {"params": [retro.alpha_weight, retro.alpha_bias], "lr": args.alpha_lr, "weight_decay": 0.0}])
    end_id = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
    streams = stream_examples("train", 3 * 10**4, args.static_fraction)
    shorts = iter_short_clips("train", 10**7, seed_base=4 * 10**7)
    log = []
    step = 0
    for step in range(1, args.steps + 1):
        retro.q_scale, prior = schedule(step, args.steps, args.zero_steps, args.target_cr, args.ramp_fraction)
        items = []
        for _ in range(args.batch_size):
            if random.random() < args.short_fraction:
                frames, rec = next(shorts)
                times = np.arange(len(frames), dtype=np.float64)
            else:
                frames, times, rec = next(streams)
            items.append(build_sequence(adapter, frames, times, rec, end_id))
        batch = collate(items)
        model.train()
        logits, state = forward(model, rope, batch, tau=args.tau)
        loss, ce, rate = dmc_loss(logits, batch["labels"], state, prior, args.cr_weight, two_sided=not args.one_sided)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm_params + [retro.alpha_weight, retro.alpha_bias], 1.0)
        opt.step()
        entry = {"step": step, "loss": round(loss.item(), 4), "ce": round(ce, 4), "merge_rate": round(rate, 3),
                 "prior": round(prior, 3), "q_scale": round(retro.q_scale, 3)}
        log.append(entry)
        if step % 10 == 0 or step == 1:
            print(json.dumps(entry), f"{(time.time() - t0) / 60:.1f} min", flush=True)
        if (time.time() - t0) / 60 > args.max_minutes:
            print(f"stopping at step {step}: time limit")
            break
    retro.q_scale = 0.0
    retro.bake()
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    report = {"dim": retro.dim, "offset": args.offset, "target_cr": args.target_cr, "steps": step,
              "train_minutes": round((time.time() - t0) / 60, 2), "args": vars(args), "log": log[-20:],
              "final_merge_rate": log[-1]["merge_rate"] if log else None}
    (out / "dmc.json").write_text(json.dumps(report, indent=2))
    print(f"saved {out} ({report['train_minutes']} min)")
    return report


if __name__ == "__main__":
    main()
