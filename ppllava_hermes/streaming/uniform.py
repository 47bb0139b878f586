"""The offline uniform baseline as a session: frames are stored, and each question re-encodes a sample.

The classic offline video-LLM recipe measured against the streaming memories: nothing streams into the
KV memory (it holds the system prompt only); the session keeps every decoded frame (``T x H x W x 3``
uint8 bytes, :attr:`UniformSession.stored_frame_bytes`), and a question prefills, on a scratch engine
(a full cache the stream's engine never sees), the frames :class:`~ppllava_hermes.memory.uniform.UniformSampling`
picks from everything seen so far (pending frames included), chunk by chunk with the stream's pooling,
then answers from it. Its TTFT therefore grows with the frames sampled, not with the stream.

Built by ``StreamingSession(adapter, memory=UniformSampling(...))`` (the base class dispatches), so
callers build sessions one way. Standing queries are refused: a decision per chunk would replay the
video each time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..memory.cache import MemoryCache
from .chunks import encode_pooled, pad_to_group
from .engine import KVEngine
from .session import StreamingSession
from .watch import WatchConfig, WatchEvent


class UniformSession(StreamingSession):
    """A :class:`StreamingSession` whose memory is :class:`~ppllava_hermes.memory.uniform.UniformSampling`."""

    def reset(self) -> None:
        super().reset()
        self._frame_store: list[np.ndarray] = []  # every ingested frame, (H, W, 3) uint8
        self._tokens_per_frame: int | None = None

    @property
    def stored_frame_bytes(self) -> int:
        """Bytes of decoded frames kept for question time."""
        return sum(f.nbytes for f in self._frame_store)

    def _ingest_frames(self, frames: np.ndarray, times: np.ndarray, padded: int) -> None:
        """Store the chunk's real frames (a padded copy is never stored); nothing is prefilled."""
        self.start()
        first_id = len(self.frame_log)
        real = len(frames) - padded
        self._frame_store.extend(frames[:real])
        self.frame_log.extend((first_id + i, float(times[i])) for i in range(real))
        self.stats.frames += real

    def watch(self, query: str, config: WatchConfig | None = None,
              callback: Callable[[WatchEvent], None] | None = None) -> int:
        raise ValueError(f"watch(): memory policy {self.memory.name!r} builds its cache per question from "
                         "stored frames; a decision per chunk would replay the video each time")

    def _prefill_pending_for_question(self) -> None:
        """Pending frames are sampled with the stored ones (:meth:`_replay`), not prefilled into the memory."""

    def _question_replay(self) -> Callable[[], tuple[MemoryCache, int] | None]:
        return self._replay

    def _replay(self) -> tuple[MemoryCache, int] | None:
        """A fresh cache with the system prompt and the sampled frames; None before any frame."""
        store = self._frame_store + list(self._pending_frames)
        times_all = [t for _, t in self.frame_log] + list(self._pending_times)
        if not store:
            return None
        group = self.adapter.frames_per_group
        if self._tokens_per_frame is None:
            probe_frames = np.stack(store[:1] * group)
            visual = encode_pooled(self.adapter, probe_frames, np.arange(group, dtype=np.float64), 0, self.pooling)
            self._tokens_per_frame = max(1, visual.num_tokens // group)
        picks = self.memory.question_frames(len(store), self._tokens_per_frame)
        scratch = KVEngine(self.adapter)
        scratch.start(self.adapter.prefix_text())
        for start in range(0, len(picks), self.chunk_frames):
            chunk = picks[start : start + self.chunk_frames]
            frames, times, _ = pad_to_group(np.stack([store[i] for i in chunk]),
                                            np.asarray([times_all[i] for i in chunk]), group)
            visual = encode_pooled(self.adapter, frames, times, chunk[0], self.pooling)
            scratch.prefill(self.adapter.visual_segment(visual, scratch.next_position), logits="none")
        return scratch.cache, scratch.next_position
