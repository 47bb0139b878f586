"""Train the ShapesWorld CLIP (``ppllava_hermes.world.clip``) contrastively on the CPU, reproducibly.

    ppllava-hermes train train_clip --out ppllava_hermes/world/checkpoints/clip

Data are generated on the fly from train-split seeds only (short-clip worlds and long videos, one
frame per world, never repeating a world); evaluation uses test-split seeds. Each step has two parts:

* Regions: ``--regions-per-caption`` crops for every one of the 24 captions "a <colour> <shape>"
  (crop = the object's box plus a random margin, resized to 112x112). Image-to-text is a 24-way
  cross-entropy over the canonical captions (exactly one positive, so no false negatives);
  text-to-image runs over the canonical captions plus ``--variants`` partial prompts ("the triangle",
  "What shape is the red object now?", ...) with a multi-positive InfoNCE (every crop with the named
  attribute is a positive). All logits use the model's learned ``logit_scale``.
* Patches: ``--frames`` full frames. Each patch is covered by objects (from the drawn shape masks);
  patch-to-text is a soft-target cross-entropy over the 24 captions plus "background" (targets: the
  covered fractions); text-to-patch is, for every object's caption and a variant prompt, a
  cross-entropy of the softmax over the frame's 64 patches (the relevance softmax RelevanceScorer
  computes) against the coverage of the matching objects. This is what makes the relevance map peak
  on the named object, so prompt-guided pooling keeps it.

Evaluation (``<out>/clip_report.json``, also printed), on test-split long videos (default
``WorldConfig``, frames every ``--eval-frame-step`` frames, regions of fully visible objects, crop =
box plus 20 % margin): see :func:`evaluate`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ppllava_hermes.pooling.relevance import RelevanceScorer
from ppllava_hermes.pooling.text_extension import text_context_length, tokenize_prompts
from ppllava_hermes.world.clip import (
    BACKGROUND_CAPTION,
    WEIGHTS_FILE,
    build_world_clip,
    image_mean_std,
    model_config,
    patch_features,
    save_world_clip,
)
from ppllava_hermes.world.generator import (
    COLORS,
    SHAPES,
    ObjectState,
    World,
    WorldConfig,
    _draw_shape,  # the generator's own drawing, so masks match the rendered pixels exactly
    generate_world,
)
from ppllava_hermes.world.tasks import clip_seed, clip_world_config, region_captions, video_seed

CAPTIONS: tuple[str, ...] = tuple(f"a {c} {s}" for c in COLORS for s in SHAPES)  # class = 4 * colour + shape
N_CLASSES = len(CAPTIONS)
SIZE = 112
PATCH = 14
EVAL_MARGIN = 0.2

# partial prompts: ("shape" | "color", template); positives are all objects with that attribute
VARIANTS: tuple[tuple[str, str], ...] = (
    ("shape", "a {shape}"),
    ("shape", "the {shape}"),
    ("shape", "What colour is the {shape} in this clip?"),
    ("shape", "What colour is the {shape} now?"),
    ("shape", "Which direction is the {shape} moving in this clip?"),
    ("shape", "Tell me when the {shape} changes colour."),
    ("color", "a {color} object"),
    ("color", "the {color} shape"),
    ("color", "What shape is the {color} object in this clip?"),
    ("color", "What shape is the {color} object now?"),
)


def caption_class(color: str, shape: str) -> int:
    return COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)


def variant_text(rng: np.random.Generator, color: str, shape: str) -> tuple[str, str, str]:
    """A random partial prompt about an object: ``(text, attribute kind, attribute value)``."""
    kind, template = VARIANTS[int(rng.integers(len(VARIANTS)))]
    value = shape if kind == "shape" else color
    return template.format(shape=shape, color=color), kind, value


# ---------------------------------------------------------------------------------------------------
# data


@dataclass
class Frame:
    """One rendered frame: ``pixels`` ``(112, 112, 3)`` uint8, its objects, and their label map."""

    pixels: np.ndarray
    states: list[ObjectState]
    world: World
    t_index: int

    def coverage(self) -> np.ndarray:
        """``(64, len(states))`` fraction of each 14x14 patch's pixels covered by each object's shape."""
        label = Image.new("L", (SIZE, SIZE), 0)
        draw = ImageDraw.Draw(label)
        for k, s in enumerate(self.states):
            _draw_shape(draw, s.shape, s.x, s.y, s.radius, k + 1)  # shapes never overlap
        lab = np.asarray(label)
        g = SIZE // PATCH
        onehot = lab[..., None] == np.arange(1, len(self.states) + 1)  # (H, W, K)
        cov = onehot.reshape(g, PATCH, g, PATCH, -1).mean(axis=(1, 3))  # (g, g, K)
        return cov.reshape(g * g, -1)


def train_frames(seed: int, frames_per_video: int = 4) -> Iterator[Frame]:
    """Endless train-split frames: short-clip worlds (1-3 whole objects; one frame each) alternating with
    long-video worlds (default config: colour changes, objects partly outside the frame;
    ``frames_per_video`` random frames each, which keeps world generation off the profile)."""
    rng = np.random.default_rng([seed, 0xC11F])
    i = 0
    while True:
        n_obj = int(rng.integers(1, 4))
        world = generate_world(clip_world_config(n_obj, 2), clip_seed("train", i))
        t = int(rng.integers(world.n_frames))
        yield Frame(world.render(t), world.states(t), world, t)
        world = generate_world(WorldConfig(duration=60.0), video_seed("train", i))
        for t in sorted(rng.choice(world.n_frames, size=frames_per_video, replace=False).tolist()):
            yield Frame(world.render(t), world.states(t), world, t)
        i += 1


def crop_region(pixels: np.ndarray, box: Sequence[int], margin: Sequence[float]) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1) grown by ``margin`` (left, top, right, bottom; fractions of the box
    size), clipped to the frame, resized to ``(112, 112, 3)`` uint8 (bilinear)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    H, W = pixels.shape[:2]
    cx0 = max(0, int(round(x0 - margin[0] * w)))
    cy0 = max(0, int(round(y0 - margin[1] * h)))
    cx1 = min(W, int(round(x1 + margin[2] * w)))
    cy1 = min(H, int(round(y1 + margin[3] * h)))
    img = Image.fromarray(pixels[cy0:cy1, cx0:cx1])
    return np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR))


class RegionBank:
    """Per-caption queues of region crops from :func:`train_frames`, to draw caption-balanced batches."""

    def __init__(self, frames: Iterator[Frame], rng: np.random.Generator, max_queue: int = 32) -> None:
        self.frames = frames
        self.max_queue = max_queue
        self.rng = rng
        self.queues: list[list[np.ndarray]] = [[] for _ in range(N_CLASSES)]

    def _fill(self, need: int) -> None:
        while min(len(q) for q in self.queues) < need:
            f = next(self.frames)
            for box, caption in region_captions(f.world, f.t_index):
                margin = self.rng.uniform(0.0, 0.4, size=4)
                queue = self.queues[CAPTIONS.index(caption)]
                if len(queue) < self.max_queue:  # bounded: frequent captions must not pile up
                    queue.append(crop_region(f.pixels, box, margin))

    def batch(self, per_caption: int) -> tuple[np.ndarray, np.ndarray]:
        """``(24 * per_caption, 112, 112, 3)`` uint8 crops and their ``(24 * per_caption,)`` classes."""
        self._fill(per_caption)
        crops, classes = [], []
        for c, q in enumerate(self.queues):
            crops.extend(q[:per_caption])
            del q[:per_caption]
            classes.extend([c] * per_caption)
        return np.stack(crops), np.asarray(classes)


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(N, 112, 112, 3)`` uint8 -> ``(N, 3, 112, 112)`` float, CLIP-normalised (as RelevanceScorer)."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------------
# losses


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(sum of softmax over the row's positives)``; rows without one skipped.

    Args:
        logits: ``(R, C)``; positive: ``(R, C)`` bool.
    """
    keep = positive.any(dim=1)
    logp = logits[keep].log_softmax(dim=1)
    return -torch.logsumexp(logp.masked_fill(~positive[keep], -math.inf), dim=1).mean()


@dataclass
class StepTexts:
    """Unique prompt strings of one step, so the text tower runs once per string."""

    texts: list[str]

    def index(self, text: str) -> int:
        try:
            return self.texts.index(text)
        except ValueError:
            self.texts.append(text)
            return len(self.texts) - 1


def training_step(
    model: torch.nn.Module,
    tokenizer,
    bank: RegionBank,
    frames: Iterator[Frame],
    rng: np.random.Generator,
    args: argparse.Namespace,
    mean_std: tuple[Sequence[float], Sequence[float]],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one step (regions + patches) and its parts."""
    texts = StepTexts(list(CAPTIONS) + [BACKGROUND_CAPTION])  # indices 0..23: captions, 24: background
    colors = np.array([c // len(SHAPES) for c in range(N_CLASSES)])
    shapes = np.array([c % len(SHAPES) for c in range(N_CLASSES)])

    # region part
    crops, classes = bank.batch(args.regions_per_caption)
    variant_rows = []  # (text index, kind, value index)
    for _ in range(args.variants):
        c = int(rng.integers(N_CLASSES))
        text, kind, value = variant_text(rng, COLORS[colors[c]], SHAPES[shapes[c]])
        variant_rows.append((texts.index(text), kind, (SHAPES if kind == "shape" else COLORS).index(value)))

    # patch part
    full = [next(frames) for _ in range(args.frames)]
    patch_targets, t2p = [], []  # t2p: (frame, text index, (64,) target)
    for fi, f in enumerate(full):
        cov = f.coverage()  # (64, K)
        target = np.zeros((cov.shape[0], N_CLASSES + 1), dtype=np.float32)
        for k, s in enumerate(f.states):
            target[:, caption_class(s.color, s.shape)] += cov[:, k]
        target[:, N_CLASSES] = 1.0 - target[:, :N_CLASSES].sum(axis=1)
        patch_targets.append(target)
        for s in f.states:
            prompts = [(f"a {s.color} {s.shape}", "full", None)]
            text, kind, value = variant_text(rng, s.color, s.shape)
            prompts.append((text, kind, value))
            for text, kind, value in prompts:
                match = [
                    k
                    for k, o in enumerate(f.states)
                    if (kind == "full" and (o.color, o.shape) == (s.color, s.shape))
                    or (kind == "shape" and o.shape == value)
                    or (kind == "color" and o.color == value)
                ]
                mass = cov[:, match].sum(axis=1)
                if mass.sum() >= 0.5:  # at least half a patch of the object is in view
                    t2p.append((fi, texts.index(text), mass / mass.sum()))

    mean, std = mean_std
    ids, _ = tokenize_prompts(tokenizer, texts.texts, text_context_length(model))
    text = F.normalize(model.encode_text(ids), dim=-1)  # (n_texts, E)
    pixels = normalise(np.concatenate([crops, np.stack([f.pixels for f in full])]), mean, std)
    raw = patch_features(model, pixels)  # (N, 8, 8, E), unnormalised
    n_reg = len(crops)
    region = F.normalize(raw[:n_reg].mean(dim=(1, 2)), dim=-1)  # (R, E): = encode_image (avg pooling)
    patches = F.normalize(raw[n_reg:], dim=-1)  # the unit vectors RelevanceScorer scores
    scale = model.logit_scale.exp()

    cls = torch.from_numpy(classes)
    logits = scale * region @ text.T  # (R, n_texts)
    loss_i2t = F.cross_entropy(logits[:, :N_CLASSES], cls)
    t_idx = list(range(N_CLASSES)) + [r[0] for r in variant_rows]
    pos = torch.zeros(len(t_idx), n_reg, dtype=torch.bool)
    pos[:N_CLASSES] = cls[None, :] == torch.arange(N_CLASSES)[:, None]
    for j, (_, kind, v) in enumerate(variant_rows):
        attr = shapes[classes] if kind == "shape" else colors[classes]
        pos[N_CLASSES + j] = torch.from_numpy(attr == v)
    loss_t2i = multi_positive_nce(logits.T[t_idx], pos)

    grid = patches.flatten(1, 2)  # (F, 64, E)
    p_logits = scale * grid @ text[: N_CLASSES + 1].T  # (F, 64, 25)
    p_target = torch.from_numpy(np.stack(patch_targets))
    loss_p2t = -(p_target * p_logits.log_softmax(dim=-1)).sum(-1).mean()
    fi = torch.tensor([r[0] for r in t2p])
    ti = torch.tensor([r[1] for r in t2p])
    tgt = torch.from_numpy(np.stack([r[2] for r in t2p]).astype(np.float32))  # (Q, 64)
    q_logits = scale * torch.einsum("qpe,qe->qp", grid[fi], text[ti])
    loss_t2p = -(tgt * q_logits.log_softmax(dim=-1)).sum(-1).mean()

    loss = loss_i2t + loss_t2i + args.patch_weight * (loss_p2t + loss_t2p)
    parts = {
        "i2t": loss_i2t.item(),
        "t2i": loss_t2i.item(),
        "p2t": loss_p2t.item(),
        "t2p": loss_t2p.item(),
        "scale": scale.item(),
    }
    return loss, parts


# ---------------------------------------------------------------------------------------------------
# evaluation


def heldout_frames(n_videos: int, frame_step: int, duration: float = 120.0) -> Iterator[Frame]:
    """Test-split frames: videos ``video_seed("test", i)`` of the default config, every ``frame_step``."""
    for i in range(n_videos):
        world = generate_world(WorldConfig(duration=duration), video_seed("test", i))
        for t in range(0, world.n_frames, frame_step):
            yield Frame(world.render(t), world.states(t), world, t)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokenizer,
    n_pools: int = 20,
    frame_step: int = 10,
    max_videos: int = 200,
    patch_frames: int = 200,
    seed: int = 0,
) -> dict[str, object]:
    """Retrieval and patch-relevance accuracy on held-out (test-split) frames.

    Protocol:
      * regions: fully visible objects of test frames (:func:`heldout_frames`, video by video until
        every caption has ``n_pools`` regions), crop = box + 20 % margin, resized to 112x112, embedded
        by ``model.encode_image``; captions embedded by the text tower (both L2-normalised).
      * text-to-region top-1: ``n_pools`` candidate pools of 24 regions, one per caption (pool ``p``
        takes the ``p``-th region of each caption in a seeded random order; chance 1/24); for each
        caption of each pool, is the pool's best-scoring region the one with that caption.
      * region-to-text top-1: every pooled region against the 24 captions (chance 1/24).
      * patch relevance (``RelevanceScorer.similarity`` on the 8x8 patch grid) on the first
        ``patch_frames`` test frames: for each fully visible object whose caption is unique in its
        frame, is the highest-similarity patch's centre inside the object's box
        (``patch_relevance_hit_rate``; ``..._multi_object``: only frames with >= 2 objects present,
        where the map must pick the right one); the same with a question about the object's shape
        ("What colour is the <shape> now?", shape unique in the frame: ``question_patch_hit_rate``);
        and the relevance weight (``RelevanceScorer.score``, softmax over the frame's patches) on
        patches whose centre is inside the box (``relevance_mass_in_box``), beside the fraction of
        patches that are (``box_patch_fraction``, what uniform weights would give).
    """
    model.eval()
    scorer = RelevanceScorer(model, tokenizer)
    rng = np.random.default_rng([seed, 0xE7A1])
    buckets: list[list[np.ndarray]] = [[] for _ in range(N_CLASSES)]
    frames: list[Frame] = []
    n_frames = 0
    for f in heldout_frames(max_videos, frame_step):
        n_frames += 1
        if len(frames) < patch_frames:
            frames.append(f)
        for box, caption in region_captions(f.world, f.t_index):
            buckets[CAPTIONS.index(caption)].append(crop_region(f.pixels, box, [EVAL_MARGIN] * 4))
        if min(map(len, buckets)) >= n_pools and len(frames) >= patch_frames:
            break
    pools = min(n_pools, min(map(len, buckets)))
    if pools < 1:
        raise RuntimeError("held-out frames gave no region for some caption: raise max_videos")
    order = [rng.permutation(len(b))[:pools] for b in buckets]
    crops = np.stack([buckets[c][int(order[c][p])] for p in range(pools) for c in range(N_CLASSES)])
    classes = np.tile(np.arange(N_CLASSES), pools)

    text = scorer.encode_text(list(CAPTIONS))  # (24, E)
    image = F.normalize(model.encode_image(scorer.preprocess(crops)), dim=-1)  # (P * 24, E)
    sim = image @ text.T  # (P * 24, 24)
    r2t = (sim.argmax(dim=1).numpy() == classes).mean()
    per_pool = sim.view(pools, N_CLASSES, N_CLASSES)  # (pool, region = caption order, caption)
    t2r = (per_pool.argmax(dim=1) == torch.arange(N_CLASSES)).float().mean().item()

    g = SIZE // PATCH
    centres = np.arange(g) * PATCH + PATCH / 2
    hits, q_hits, multi_hits, mass, area = [], [], [], [], []
    for f in frames:
        objs = [s for s in f.states if s.fully_visible(SIZE, SIZE)]
        if not objs:
            continue
        video = scorer.encode_video(f.pixels[None])
        caps = [
            (s, f"a {s.color} {s.shape}")
            for s in objs
            if sum((o.color, o.shape) == (s.color, s.shape) for o in f.states) == 1
        ]
        qs = [
            (s, f"What colour is the {s.shape} now?")
            for s in objs
            if sum(o.shape == s.shape for o in f.states) == 1
        ]
        multi = len(f.states) >= 2
        for items, out in ((caps, hits), (qs, q_hits)):
            if not items:
                continue
            prompts = [p for _, p in items]
            sims = scorer.similarity(prompts, video)[:, 0].flatten(1)  # (n, 64)
            weights = scorer.score(prompts, video)[:, 0].flatten(1)
            for (s, _), row, w in zip(items, sims, weights, strict=True):
                x0, y0, x1, y1 = s.bbox(SIZE, SIZE)
                inside = ((centres[:, None] >= y0) & (centres[:, None] < y1)) & (
                    (centres[None, :] >= x0) & (centres[None, :] < x1)
                )
                inside = torch.from_numpy(inside.reshape(-1))
                hit = bool(inside[int(row.argmax())])
                out.append(hit)
                if out is hits and multi:
                    multi_hits.append(hit)
                if out is hits:
                    mass.append(float(w[inside].sum()))
                    area.append(float(inside.float().mean()))
    return {
        "clip_text_to_region_top1": round(float(t2r), 4),
        "clip_region_to_text_top1": round(float(r2t), 4),
        "patch_relevance_hit_rate": round(float(np.mean(hits)), 4) if hits else None,
        "patch_relevance_hit_rate_multi_object": round(float(np.mean(multi_hits)), 4) if multi_hits else None,
        "question_patch_hit_rate": round(float(np.mean(q_hits)), 4) if q_hits else None,
        "relevance_mass_in_box": round(float(np.mean(mass)), 4) if mass else None,
        "box_patch_fraction": round(float(np.mean(area)), 4) if area else None,
        "n_pools": pools,
        "n_text_queries": pools * N_CLASSES,
        "n_regions": int(len(crops)),
        "n_heldout_frames": n_frames,
        "n_patch_queries": len(hits),
        "n_patch_queries_multi_object": len(multi_hits),
        "n_question_queries": len(q_hits),
        "split": "test",
        "protocol": (
            "test-split long videos (default WorldConfig, 120 s at 1 fps), a frame every "
            f"{frame_step} s; regions = fully visible objects, crop = box + {EVAL_MARGIN:.0%} margin -> 112x112; "
            f"text-to-region: {pools} pools of 24 regions with distinct captions, top-1 of each caption "
            "in its pool (chance 1/24); region-to-text: top-1 among the 24 captions; patch relevance: "
            "argmax patch of RelevanceScorer.similarity inside the object's box (captions unique in "
            "the frame)"
        ),
    }


# ---------------------------------------------------------------------------------------------------
# main


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup then cosine decay to 5 % of ``--lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="ppllava_hermes/world/checkpoints/clip")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--regions-per-caption", type=int, default=2, help="crops per caption per step")
    p.add_argument("--variants", type=int, default=12, help="partial prompts per step (text-to-region)")
    p.add_argument("--frames", type=int, default=12, help="full frames per step (patch losses)")
    p.add_argument("--patch-weight", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-pools", type=int, default=20, help="text-to-region pools of 24 (final eval)")
    p.add_argument("--eval-patch-frames", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation (smoke runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Train, save to ``--out``, evaluate; returns the report (also written to ``<out>/clip_report.json``)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0, cpu0 = time.time(), time.process_time()
    model, tokenizer = build_world_clip(seed=args.seed)
    config = model_config(tokenizer)
    mean_std = image_mean_std(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ShapesWorld CLIP: {n_params / 1e6:.3f} M parameters, vocabulary {tokenizer.vocab_size}")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    rng = np.random.default_rng([args.seed, 0x7EA7])
    frames = train_frames(args.seed)
    bank = RegionBank(train_frames(args.seed + 1), rng)
    model.train()
    running: dict[str, float] = {}
    last_loss = float("nan")
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss, parts = training_step(model, tokenizer, bank, frames, rng, args, mean_std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the temperature
        last_loss = loss.item()
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"loss {last_loss} at step {step}")
        for k, v in {"loss": last_loss, **parts}.items():
            running[k] = running.get(k, 0.0) + v
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = (step % args.log_every) + 1
            msg = " ".join(f"{k} {v / n:.3f}" for k, v in running.items())
            print(f"step {step + 1}/{args.steps} {msg} ({(time.time() - t0) / 60:.1f} min)", flush=True)
            running = {}
    train_minutes = (time.time() - t0) / 60
    cpu_minutes = (time.process_time() - cpu0) / 60  # wall time depends on what else shares the cores
    model.eval()
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    save_world_clip(model, tokenizer, out, config, extra={"training": settings})
    report: dict[str, object] = {
        "train_minutes": round(train_minutes, 2),
        "train_cpu_minutes": round(cpu_minutes, 2),
        "threads": args.threads,
        "steps": args.steps,
        "final_loss": round(last_loss, 4),
        "checkpoint_mb": round((out / WEIGHTS_FILE).stat().st_size / 2**20, 3),
        "parameters": n_params,
        "command": "ppllava-hermes train train_clip " + " ".join(argv if argv is not None else []),
    }
    if not args.no_eval:
        t1 = time.time()
        report.update(
            evaluate(model, tokenizer, n_pools=args.eval_pools, patch_frames=args.eval_patch_frames, seed=args.seed)
        )
        report["eval_minutes"] = round((time.time() - t1) / 60, 2)
    (out / "clip_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
