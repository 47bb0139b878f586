"""The teacher-forced training sequence: exactly what the streaming session builds at question time.

A session prefills the system prefix, then one visual segment per chunk of frames (pooled or not),
then at question time the question text and, while decoding, the answer tokens one by one. The
sequence here is the same run of segments, with the same positions (the adapter's own rule, M-RoPE
for Qwen2.5-VL, 1-D for LLaVA-OneVision) and the same chunking of the frames (:func:`chunk_spans`
follows ``StreamingSession.add_frames`` + ``flush``), followed by the answer tokens, so one
forward pass with no cache gives the logits the session would see while generating that answer.

Functions, from frames to hidden states:

* :func:`chunk_spans` / :func:`encode_chunks`: frames -> the session's chunks -> ``VisualTokens``
  (optionally with gradients through the projector);
* :func:`context_sequence`: prefix + visual segments + question -> :class:`TokenSequence` (embeds, meta);
* :func:`append_text`: + answer tokens;
* :func:`stack_sequences`: right-padded batch ``(B, L, D)`` and the language model's ``position_ids``;
* :func:`run_language_model`: ``(B, L, D)`` hidden states, no cache.

It knows nothing of pooling's internals, CLIP, datasets, optimisers or TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..memory.cache import TokenKind, TokenMeta
from ..models.base import VisualTokens, VLMAdapter
from ..streaming.chunks import chunk_spans, span_frames
from .data import VideoInput


@dataclass
class EncodedChunk:
    """A chunk's visual tokens with the frames CLIP scores and the real frames' times.

    Attributes:
        visual: the VLM's visual tokens of the chunk (grid ``(t, h, w, D)``).
        frames: ``(F, H, W, 3)`` uint8 frames of the chunk, padding included (as the VLM saw them).
        frame_times: ``(F - pad,)`` timestamps of the real frames (what the session logs).
    """

    visual: VisualTokens
    frames: np.ndarray
    frame_times: np.ndarray


def _encode_fn(adapter: VLMAdapter, grad: bool):
    if not grad:
        return adapter.encode_frames
    # Adapters encode under torch.no_grad() (inference); the undecorated function keeps the graph so a
    # trainable projector gets gradients. The frozen tower records no graph (no input requires grad).
    raw = getattr(type(adapter).encode_frames, "__wrapped__", None)
    if raw is None:
        raise TypeError(f"{type(adapter).__name__}.encode_frames has no gradient-enabled form")
    return lambda frames, times, first: raw(adapter, frames, times, first)


def encode_chunks(adapter: VLMAdapter, video: VideoInput, chunk_frames: int, grad: bool = False,
                  cache: dict | None = None) -> list[EncodedChunk]:
    """Encode a video chunk by chunk as the session does (frame ids from 0, last group padded).

    Without ``grad`` the result is memoised in ``cache`` (default ``video.cache``; keyed by the VLM and the
    chunk size), so chosen / rejected rows and a DPO reference model share one encoding.
    """
    cache = video.cache if cache is None else cache
    key = ("vlm", id(adapter.model), chunk_frames)
    if not grad and key in cache:
        return cache[key]
    encode = _encode_fn(adapter, grad)
    out = []
    for span in chunk_spans(len(video.frames), chunk_frames, adapter.frames_per_group):
        frames, times = span_frames(video.frames, video.timestamps, span)
        visual = encode(frames, times, span.start)
        out.append(EncodedChunk(visual, frames, times[: len(times) - span.pad]))
    if not grad:
        cache[key] = out
    return out


@dataclass
class TokenSequence:
    """A run of segments ready for the language model (batch 1).

    Attributes:
        embeds: ``(L, D)`` input embeddings.
        meta: positions ``(pos_dims, L)``, frame ids and kinds of the tokens.
        next_position: the position the next token would get.
    """

    embeds: torch.Tensor
    meta: TokenMeta
    next_position: int

    def __len__(self) -> int:
        return self.embeds.shape[0]


def _cat_meta(metas: list[TokenMeta]) -> TokenMeta:
    return TokenMeta(
        positions=torch.cat([m.positions for m in metas], dim=1),
        frame_ids=torch.cat([m.frame_ids for m in metas]),
        kinds=torch.cat([m.kinds for m in metas]),
    )


def context_sequence(adapter: VLMAdapter, prefix_ids: torch.Tensor, visuals: list[VisualTokens],
                     question_ids: torch.Tensor) -> TokenSequence:
    """System prefix, one visual segment per chunk, then the question (``question_text(q)`` ids).

    Args:
        prefix_ids: ``(Lp,)`` ids of ``adapter.prefix_text()``.
        visuals: the chunks' (pooled) visual tokens, in stream order.
        question_ids: ``(Lq,)`` ids of ``adapter.question_text(question)``.
    """
    segs = [adapter.text_segment(prefix_ids, 0, TokenKind.SYSTEM)]
    for visual in visuals:
        segs.append(adapter.visual_segment(visual, segs[-1].next_position))
    segs.append(adapter.text_segment(question_ids, segs[-1].next_position, TokenKind.TEXT))
    embeds = torch.cat([s.embeds for s in segs], dim=0)
    return TokenSequence(embeds, _cat_meta([s.meta for s in segs]), segs[-1].next_position)


def append_text(adapter: VLMAdapter, seq: TokenSequence, ids: torch.Tensor) -> TokenSequence:
    """``seq`` followed by text tokens ``ids`` ``(La,)`` (answer tokens, as the session decodes them)."""
    seg = adapter.text_segment(ids, seq.next_position, TokenKind.TEXT)
    return TokenSequence(torch.cat([seq.embeds, seg.embeds.to(seq.embeds.dtype)]), _cat_meta([seq.meta, seg.meta]),
                    seg.next_position)


def stack_sequences(adapter: VLMAdapter, seqs: list[TokenSequence], length: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences into one batch.

    Returns:
        ``inputs_embeds`` ``(B, L, D)`` (zeros after each sequence) and ``position_ids`` as the language
        model takes them for a batch (``(3, B, L)`` for M-RoPE, ``(B, L)`` for 1-D RoPE); padded
        positions continue each sequence's own count. Right padding needs no attention mask: causal
        attention never lets a real token see the padding after it.
    """
    length = max(len(s) for s in seqs) if length is None else length
    if length < max(len(s) for s in seqs):
        raise ValueError(f"length {length} is shorter than the longest sequence ({max(len(s) for s in seqs)})")
    rows, positions = [], []
    for s in seqs:
        pad = length - len(s)
        rows.append(torch.cat([s.embeds, s.embeds.new_zeros(pad, s.embeds.shape[1])]) if pad else s.embeds)
        extra = torch.arange(s.next_position, s.next_position + pad, dtype=torch.long)
        pos = torch.cat([s.meta.positions, extra.unsqueeze(0).expand(s.meta.positions.shape[0], -1)], dim=1)
        meta = TokenMeta(pos, torch.full((length,), -1, dtype=torch.long),
                         torch.full((length,), int(TokenKind.TEXT), dtype=torch.long))
        positions.append(adapter.lm_positions(meta))  # batch 1: (3, 1, L) or (1, L)
    return torch.stack(rows), torch.cat(positions, dim=-2)


def run_language_model(adapter: VLMAdapter, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Hidden states ``(B, L, D)`` of the language model (no cache, causal), before the LM head."""
    out = adapter.language_model(
        inputs_embeds=inputs_embeds.to(adapter.dtype),
        position_ids=position_ids.to(adapter.device),
        use_cache=False,
    )
    return out.last_hidden_state
