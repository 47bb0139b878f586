"""Chunks of frames and the encode -> pool composition, in one place for every path.

Streaming ingest, the offline replay, offline question answering, the evaluation protocols and training
all turn frames into the visual tokens the language model sees the same way:

- :func:`pad_to_group`: a chunk must hold whole temporal groups (Qwen2.5-VL: frame pairs). A partial group
  is padded the way the HF video processor pads: the last frame repeated, each copy :data:`PAD_STEP_S`
  later, so it carries no new time.
- :func:`chunk_spans` / :func:`span_frames`: the chunks the session prefills for frames added at once and
  then a question (full chunks, the remaining whole groups, a padded partial group); training and the
  offline paths plan with it so that they see exactly what the session sees.
- :func:`encode_pooled`: the adapter's vision encoder on one chunk, then the pooling stage if there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import VisualTokens, VLMAdapter

#: seconds between a partial group's last frame and each padding copy of it.
PAD_STEP_S = 1e-6

#: a pooling stage: visual tokens of one chunk (+ the chunk's frames ``(T, H, W, 3)``) -> visual tokens to keep.
PoolingStage = Callable[[VisualTokens, np.ndarray], VisualTokens]


def group_chunk_frames(chunk_frames: int, frames_per_group: int) -> int:
    """Frames per chunk rounded down to whole temporal groups, at least one group."""
    return max(frames_per_group, chunk_frames // frames_per_group * frames_per_group)


def pad_to_group(frames: np.ndarray, times: np.ndarray, frames_per_group: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(T, H, W, 3)`` frames and ``(T,)`` times padded to a multiple of the group; returns the padding count."""
    missing = (-len(frames)) % frames_per_group
    if missing:
        frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
        times = np.concatenate([np.asarray(times, dtype=np.float64),
                                times[-1] + PAD_STEP_S * np.arange(1, missing + 1)])
    return frames, np.asarray(times, dtype=np.float64), missing


@dataclass
class ChunkSpan:
    """One session chunk: frames ``[start, stop)`` of the video, plus ``pad`` repeats of the last frame."""

    start: int
    stop: int
    pad: int = 0


def chunk_spans(num_frames: int, chunk_frames: int, frames_per_group: int) -> list[ChunkSpan]:
    """The chunks ``StreamingSession`` prefills for ``num_frames`` frames added at once and then a question.

    Full chunks of ``chunk_frames`` (rounded down to whole groups), then the remaining whole groups as
    one chunk, then a partial group padded with the last frame (what a question, or ``flush``, sees).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    step = group_chunk_frames(chunk_frames, frames_per_group)
    spans, i = [], 0
    while num_frames - i >= step:
        spans.append(ChunkSpan(i, i + step))
        i += step
    whole = (num_frames - i) // frames_per_group * frames_per_group
    if whole:
        spans.append(ChunkSpan(i, i + whole))
        i += whole
    if i < num_frames:
        spans.append(ChunkSpan(i, num_frames, pad=frames_per_group - (num_frames - i)))
    return spans


def span_frames(frames: np.ndarray, times: np.ndarray, span: ChunkSpan) -> tuple[np.ndarray, np.ndarray]:
    """The frames ``(F, H, W, 3)`` and times ``(F,)`` of one span, its padding included."""
    f, t = frames[span.start : span.stop], np.asarray(times[span.start : span.stop], dtype=np.float64)
    if span.pad:
        f, t, _ = pad_to_group(f, t, (span.stop - span.start) + span.pad)
    return f, t


def encode_pooled(adapter: VLMAdapter, frames: np.ndarray, times: np.ndarray, first_frame_id: int,
                  pooling: PoolingStage | None = None) -> VisualTokens:
    """Visual tokens of one chunk (whole groups: pad with :func:`pad_to_group` first), pooled if asked."""
    visual = adapter.encode_frames(frames, np.asarray(times, dtype=np.float64), first_frame_id)
    return pooling(visual, frames) if pooling is not None else visual


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames resized to ``size`` ``(H', W')`` (bilinear, antialiased), uint8."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
