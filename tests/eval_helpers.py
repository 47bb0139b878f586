"""Shared pieces of the evaluator tests: a tiny model, short ShapesWorld videos, scripted answers."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ppllava_hermes.evaluation.records import QARecord
from ppllava_hermes.streaming import Answer, StreamingSession
from ppllava_hermes.video.types import VideoClip
from ppllava_hermes.world import TaskConfig, make_split

from .helpers import tiny_adapter

# Questions of every kind fit in 20 s with these gaps.
TASKS = TaskConfig(questions_per_type=2, backward_min_gap=4.0, forward_min_lead=2.0)


@functools.cache
def adapter():
    """One tiny random Qwen2.5-VL for the module (112x112 ShapesWorld frames: 16 tokens per frame pair)."""
    return tiny_adapter("qwen2_5_vl")


@functools.cache
def split(n_videos: int = 1, duration: float = 20.0):
    """Test-split videos from index 1 on (video 1 of 16-20 s has questions of every kind)."""
    return make_split("test", n_videos, duration, seed_base=1, task_config=TASKS)


def clip(n: int = 20, size: int = 56, fps: float = 1.0) -> VideoClip:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return VideoClip(frames, np.arange(n, dtype=np.float64) / fps, "random")


def record(qid: str, t: float | None, kind: str = "realtime", **kw) -> QARecord:
    base = dict(benchmark="test", qid=qid, video="v.mp4", question=f"What is shown ({qid})?",
                options=["red", "blue", "green"], answer=1, task_type="color", task_kind=kind, timestamp=t)
    base.update(kw)
    return QARecord(**base)


def scripted_ask(reply: Callable[[StreamingSession, str], str]):
    """A replacement for ``StreamingSession.ask`` whose text is ``reply(session, question)``; the rest
    of the Answer (memory size, frames seen) is the session's real state."""

    def ask(self: StreamingSession, question: str, generation=None, *, return_logits: bool = False) -> Answer:
        self.flush()
        return Answer(
            text=reply(self, question), token_ids=[], ttft_s=1e-3, total_s=2e-3,
            cache_tokens=self.cache.physical_length(), kv_bytes=self.cache.kv_bytes(),
            visual_tokens_seen=self.stats.visual_tokens, frames_seen=self.stats.frames,
            last_frame_time=self.frame_log[-1][1] if self.frame_log else None,
        )

    return ask
