"""Offline question answering with prompt-guided pooling: the question is known before the video is read.

The video is decoded and encoded once (the VLM's visual tokens per chunk, and the CLIP patch features);
each question then re-scores relevance from the cached CLIP features, re-pools the cached visual
tokens and prefills a fresh memory: no video decoding or vision encoding per question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..memory.policy import MemoryPolicy
from ..models.base import VisualTokens, VLMAdapter
from ..pooling import PromptGuidedPooling
from .chunks import encode_pooled, group_chunk_frames, pad_to_group
from .pooling_stage import pool_visual
from .session import Answer, GenerationConfig, StreamConfig, StreamingSession


@dataclass
class _Chunk:
    visual: VisualTokens
    frame_times: np.ndarray
    clip_slice: slice


class OfflineVideoQA:
    """Encode once, pool per question.

    Args:
        adapter: the VLM adapter.
        pooling: the pooling module (kernel/stride/tau).
        scorer: a ``RelevanceScorer`` (None: plain average pooling, question-independent).
        memory: a factory returning a fresh memory policy per question (None: full cache).
        chunk_frames: frames per chunk (the temporal kernel should divide the chunk's groups).
    """

    def __init__(self, adapter: VLMAdapter, pooling: PromptGuidedPooling, scorer=None,
                 memory=None, chunk_frames: int = 8) -> None:
        self.adapter = adapter
        self.pooling = pooling
        self.scorer = scorer
        self.memory = memory
        self.config = StreamConfig(chunk_frames=chunk_frames)
        self.chunks: list[_Chunk] = []
        self.clip_features = None
        self.encode_calls = 0

    def load(self, frames: np.ndarray, timestamps: np.ndarray) -> None:
        """Decode-free from here on: ``frames`` ``(T, H, W, 3)`` uint8 are encoded once and cached."""
        frames = np.asarray(frames)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if len(frames) == 0:
            raise ValueError("OfflineVideoQA.load(): no frames")
        # The whole video is known: pad it once, then cut it into chunks of whole groups.
        frames, timestamps, padded = pad_to_group(frames, timestamps, self.adapter.frames_per_group)
        real = len(frames) - padded
        step = group_chunk_frames(self.config.chunk_frames, self.adapter.frames_per_group)
        self.chunks = []
        for start in range(0, len(frames), step):
            stop = min(start + step, len(frames))
            visual = encode_pooled(self.adapter, frames[start:stop], timestamps[start:stop], start)
            self.encode_calls += 1
            self.chunks.append(_Chunk(visual, timestamps[start : min(stop, real)], slice(start, stop)))
        self.clip_features = self.scorer.encode_video(frames) if self.scorer is not None else None

    def ask(self, question: str, generation: GenerationConfig | None = None) -> Answer:
        """Pool every chunk against ``question`` and answer from a fresh memory."""
        if not self.chunks:
            raise ValueError("OfflineVideoQA.ask(): call load() with the video first")
        if not question or not question.strip():
            raise ValueError("ask(): the question is empty")
        memory: MemoryPolicy | None = self.memory() if callable(self.memory) else None
        session = StreamingSession(self.adapter, memory=memory, config=self.config)
        for chunk in self.chunks:
            weights = None
            if self.scorer is not None:
                from ..pooling.relevance import VideoPatchFeatures

                feats = VideoPatchFeatures(self.clip_features.features[:, chunk.clip_slice])
                weights = self.scorer.score(question, feats, grid=chunk.visual.grid)
            session.add_visual_tokens(pool_visual(chunk.visual, self.pooling, weights), chunk.frame_times)
        return session.ask(question, generation)
