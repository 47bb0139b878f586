"""A streaming session: frames in, answers out, KV memory carried across the whole stream.

The video half on top of the KV engine (:mod:`.engine`, which knows nothing of frames): the session keeps
the frame log, buffers frames into chunks of whole temporal groups, runs each chunk through encode ->
pool -> gate (:meth:`StreamingSession.encode_chunk`, the one place that composition lives) and hands the
segment to the engine, which prefills it, lets the memory policy compress, and answers questions inside a
rollback. After a question the memory returns exactly to its state before it, so the stream goes on.

Frames that do not fill a temporal group wait. A question asked then sees them: the partial group is
padded (the HF processor's rule: repeat the last frame, +1 us each) and prefilled *inside the question's
rollback*, and the lone frames stay pending, so what the memory holds never depends on when questions
were asked. :meth:`StreamingSession.flush` pads and ingests for good (the end of a stream).

Standing queries (:meth:`StreamingSession.watch`, specified in :mod:`.watch`) decide after every ingested
chunk, inside the same rollback, and emit :class:`~.watch.WatchEvent` objects when they fire.

A session built with the offline uniform baseline (``memory.uniform.UniformSampling``) is a
:class:`~.uniform.UniformSession`: it stores frames and re-encodes a sample of them per question.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..memory.cache import MemoryCache
from ..memory.policy import AttentionProbe, MemoryPolicy
from ..models.base import VisualTokens, VLMAdapter
from ..video.types import VideoClip
from .chunks import PoolingStage, encode_pooled, group_chunk_frames, pad_to_group, resize_frames
from .engine import EngineStats, GenerationConfig, KVEngine
from .sparsity import FrameGate, gate_segment
from .watch import Watch, WatchConfig, WatchEvent, first_token_ids

__all__ = ["Answer", "GenerationConfig", "IngestStats", "PoolingStage", "StreamConfig", "StreamingSession",
           "WatchConfig", "WatchEvent"]


@dataclass
class StreamConfig:
    """Session settings.

    Attributes:
        chunk_frames: frames per prefill chunk (rounded down to the model's frames-per-group; >= 1 group).
        max_new_tokens: default answer length limit.
        record_logits: keep every forward's logits in ``session.logits_log`` (parity tests, debugging).
        fused_watch: the first watch decides inside the chunk's own forward (``KVEngine.prefill_and_peek``:
            no second pass, on the memory before compression) where the policy answers from the memory
            as it is; False: every decision is a separate pass on the compressed memory (bit-exact).
    """

    chunk_frames: int = 8
    max_new_tokens: int = 64
    record_logits: bool = False
    fused_watch: bool = True

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Answer:
    """An answer with the cost of producing it.

    Attributes:
        text: decoded answer (special tokens removed).
        token_ids: generated ids (without the stop token).
        ttft_s: seconds from the call to the first token (question prefill + first sampling).
        total_s: seconds for the whole answer.
        cache_tokens: memory entries per layer when the question was asked.
        kv_bytes: bytes of keys and values held when the question was asked.
        visual_tokens_seen: visual tokens that entered the LLM since the stream began.
        frames_seen: frames ingested before the question.
        last_frame_time: timestamp (s) of the newest frame the question saw, None before any frame.
        question_logits: ``(L_q, V)`` logits over the question prefill when requested.
        question_cache_s: seconds spent building a question-time cache (offline replay, retrieval),
            inside ``ttft_s``.
    """

    text: str
    token_ids: list[int]
    ttft_s: float
    total_s: float
    cache_tokens: int
    kv_bytes: int
    visual_tokens_seen: int
    frames_seen: int
    last_frame_time: float | None
    question_logits: torch.Tensor | None = None
    question_cache_s: float = 0.0


@dataclass
class IngestStats(EngineStats):
    """Totals over a session's ingest so far: the engine's (prefill, compress, peak KV) and the video's."""

    frames: int = 0
    chunks: int = 0
    visual_tokens: int = 0
    encode_s: float = 0.0
    frames_skipped: int = 0  # frames a gate kept out entirely (they are still in the frame log)
    watch_s: float = 0.0  # seconds in watch decisions (and the text of the events that fired)
    watch_decisions: int = 0  # decisions made, over all watches



class StreamingSession:
    """Query-agnostic streaming over one video stream with one model adapter, on a :class:`KVEngine`.

    ``StreamingSession(adapter, memory=UniformSampling(...))`` returns a :class:`~.uniform.UniformSession`
    (the offline baseline: nothing streams into the memory), so every caller builds sessions one way.
    """

    def __new__(cls, adapter: VLMAdapter = None, memory: MemoryPolicy | None = None, *args, **kwargs):
        from ..memory.uniform import UniformSampling

        if cls is StreamingSession and isinstance(memory, UniformSampling):
            from .uniform import UniformSession

            cls = UniformSession
        return super().__new__(cls)

    def __init__(
        self,
        adapter: VLMAdapter,
        memory: MemoryPolicy | None = None,
        pooling: PoolingStage | None = None,
        config: StreamConfig | None = None,
        gate: FrameGate | None = None,
    ) -> None:
        self.adapter = adapter
        self.pooling = pooling
        self.gate = gate  # dynamic sparsity after pooling (streaming/sparsity.py)
        self.config = config or StreamConfig()
        self.chunk_frames = group_chunk_frames(self.config.chunk_frames, adapter.frames_per_group)
        self.engine = KVEngine(adapter, memory, record_logits=self.config.record_logits)
        self.memory = self.engine.memory
        self.watches: dict[int, Watch] = {}
        self._next_watch_id = 0
        self.reset()

    # ---- the engine's state, read through the session ---------------------------------------------
    @property
    def cache(self) -> MemoryCache:
        return self.engine.cache

    @property
    def next_position(self) -> int:
        return self.engine.next_position

    @next_position.setter
    def next_position(self, value: int) -> None:
        self.engine.next_position = value

    @property
    def rope(self):
        return self.engine.rope

    @rope.setter
    def rope(self, value) -> None:
        self.engine.rope = value

    @property
    def logits_log(self) -> list[torch.Tensor]:
        return self.engine.logits_log

    @property
    def seen_times(self) -> list[float]:
        """Timestamps (s) of every frame handed to the session: ingested, then pending (what a question sees)."""
        return [t for _, t in self.frame_log] + list(self._pending_times)

    @property
    def last_frame_time(self) -> float | None:
        """Timestamp (s) of the newest frame handed to the session, pending ones included."""
        if self._pending_times:
            return self._pending_times[-1]
        return self.frame_log[-1][1] if self.frame_log else None

    @property
    def started(self) -> bool:
        """Whether the system prompt is in the memory."""
        return self.engine.started

    # ---- lifecycle ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream: empty memory, frame log and statistics."""
        self.stats = IngestStats()
        self.engine.reset(self.stats)
        self.frame_log: list[tuple[int, float]] = []  # (frame id, timestamp) of every ingested frame
        self._pending_frames: list[np.ndarray] = []
        self._pending_times: list[float] = []
        if self.gate is not None:
            self.gate.reset()
        self._events: list[WatchEvent] = []
        self._resize_warned = False
        for w in getattr(self, "watches", {}).values():  # watches stay registered, their state is the stream's
            w.armed, w.last_fired, w.decisions, w.scores, w.fired = True, None, 0, [], []

    def start(self) -> None:
        """Prefill the system prompt now rather than with the first frames (idempotent).

        Raises ``ValueError`` when the memory policy cannot run beside this system prompt (for example a
        budget smaller than it), so a caller can check a configuration before streaming anything.
        """
        self.engine.start(self.adapter.prefix_text())

    # ---- ingest ---------------------------------------------------------------------------------
    def add_frames(self, frames: np.ndarray | VideoClip, timestamps: np.ndarray | None = None) -> None:
        """Ingest frames ``(T, H, W, 3)`` uint8 with their timestamps (s), chunk by chunk.

        Frames that don't fill a chunk's temporal group wait for the next call (or for ``flush``). Every
        frame size may change at any time (see :meth:`_check_frame_sizes` for the rule inside a temporal
        group). Raises ``ValueError`` on bad input, before anything is ingested.
        """
        if isinstance(frames, VideoClip):
            frames, timestamps = frames.frames, frames.timestamps
        frames = np.asarray(frames)
        if timestamps is None:
            raise ValueError("add_frames(): timestamps are required (seconds, one per frame)")
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"add_frames(): frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        if len(timestamps) != len(frames):
            raise ValueError(f"add_frames(): {len(frames)} frames but {len(timestamps)} timestamps")
        if len(timestamps) and not np.all(np.isfinite(timestamps)):
            bad = timestamps[~np.isfinite(timestamps)][0]
            raise ValueError(f"add_frames(): timestamps must be finite seconds, got {bad}")
        last = self._pending_times[-1] if self._pending_times else (self.frame_log[-1][1] if self.frame_log else None)
        if len(timestamps) and last is not None and timestamps[0] <= last:
            raise ValueError(
                f"add_frames(): timestamps must increase; got {timestamps[0]:.3f}s after {last:.3f}s"
            )
        if len(timestamps) > 1 and np.any(np.diff(timestamps) <= 0):
            raise ValueError("add_frames(): timestamps must be strictly increasing")
        self._check_frame_sizes(frames, float(timestamps[0]) if len(timestamps) else 0.0)
        self._pending_frames.extend(frames)
        self._pending_times.extend(timestamps.tolist())
        while len(self._pending_frames) >= self.chunk_frames:
            self._ingest(self.chunk_frames)
        # Whole groups left over are ingested now; only a partial group waits.
        whole = len(self._pending_frames) // self.adapter.frames_per_group * self.adapter.frames_per_group
        if whole:
            self._ingest(whole)

    def _check_frame_sizes(self, frames: np.ndarray, first_time: float) -> None:
        """The size rule: a temporal group is one tensor, so its frames share a size. When frames of a new
        size arrive while a partial group waits, the waiting frames (fewer than one group, the old size's
        last) are resized to the new size, with one warning per stream; whole groups already ingested keep
        their size, and from then on every chunk is encoded at the size it has."""
        pending = self._pending_frames
        if not len(frames) or not pending or pending[0].shape[:2] == frames.shape[1:3]:
            return
        old, new = pending[0].shape[:2], frames.shape[1:3]
        if not self._resize_warned:
            self._resize_warned = True
            warnings.warn(f"add_frames(): frame size changed from {old[1]}x{old[0]} to {new[1]}x{new[0]} at "
                          f"{first_time:.3f}s inside a temporal group: the {len(pending)} waiting frame(s) were "
                          f"resized to {new[1]}x{new[0]}", RuntimeWarning, stacklevel=3)
        self._pending_frames = list(resize_frames(np.stack(pending), new))

    def flush(self) -> None:
        """Ingest frames still waiting for a full temporal group, padding with the last frame (end of stream)."""
        if not self._pending_frames:
            return
        frames, times, padded = pad_to_group(np.stack(self._pending_frames), np.asarray(self._pending_times),
                                             self.adapter.frames_per_group)
        self._pending_frames, self._pending_times = [], []
        self._ingest_frames(frames, times, padded)

    def _ingest(self, n: int) -> None:
        frames = np.stack(self._pending_frames[:n])
        times = np.asarray(self._pending_times[:n])
        del self._pending_frames[:n], self._pending_times[:n]
        self._ingest_frames(frames, times, 0)

    def _ingest_frames(self, frames: np.ndarray, times: np.ndarray, padded: int) -> None:
        self.start()
        first_id = len(self.frame_log)
        real = len(frames) - padded
        visual, keep = self.encode_chunk(frames, times, first_id)
        first = next(iter(self.watches.values()), None)
        fused = first is not None and self.config.fused_watch and self.engine.answers_from_memory
        peek = self.add_visual_tokens(visual, times[:real], keep=keep,
                                      peek_ids=first.prompt_ids if fused else None)
        if self.watches:
            self._decide(float(times[real - 1]), {first.watch_id: peek} if peek is not None else {})

    def encode_chunk(self, frames: np.ndarray, times: np.ndarray, first_id: int,
                     gate: bool = True) -> tuple[VisualTokens, torch.Tensor | None]:
        """encode -> pool -> gate for one chunk of whole groups; returns the tokens and the gate's choice."""
        t0 = time.perf_counter()
        visual = encode_pooled(self.adapter, frames, times, first_id, self.pooling)
        keep = self.gate(visual, frames) if (gate and self.gate is not None) else None
        self.stats.encode_s += time.perf_counter() - t0
        return visual, keep

    def add_visual_tokens(self, visual: VisualTokens, frame_times: np.ndarray, keep: torch.Tensor | None = None,
                          peek_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """Prefill already-encoded (possibly pooled) visual tokens of the next ``len(frame_times)`` frames.

        Used by :meth:`add_frames`, and by offline re-pooling, which never decodes or encodes the video again.
        ``keep`` ``(t, h, w)`` bool: a gate's choice of grid tokens; the others are skipped but keep their
        time and positions (``sparsity.gate_segment``). ``peek_ids`` ``(L,)``: text run in the same forward
        after the chunk and dropped (a fused watch decision); returns its ``(V,)`` next-token logits, or None.
        """
        peek = None
        self.start()
        first_id = len(self.frame_log)
        seg, tokens = self.adapter.visual_segment(visual, self.engine.next_position), visual.num_tokens
        if keep is not None:
            gated = gate_segment(seg, visual, keep, len(frame_times))
            seg, tokens = gated.segment, gated.tokens_kept
            self.stats.frames_skipped += gated.frames_skipped
            if seg is None:  # nothing kept: the chunk's time and positions still pass
                self.engine.skip_to(gated.next_position)
        if seg is not None and peek_ids is not None:
            ahead = self.adapter.text_segment(peek_ids, seg.next_position)
            _, peek = self.engine.prefill_and_peek(seg, ahead)
        elif seg is not None:
            self.engine.prefill(seg, logits="none")
        self.frame_log.extend((first_id + i, float(t)) for i, t in enumerate(frame_times))
        self.stats.frames += len(frame_times)
        self.stats.chunks += 1
        self.stats.visual_tokens += tokens
        self.engine.compress()
        return peek

    @torch.no_grad()
    def probe_attention(self, prompts: dict[str, str]) -> AttentionProbe:
        """Attention of each pseudo-query prompt to the current memory; the memory is unchanged.

        Returns per prompt a list over layers of ``(seq_len,)`` weights averaged over heads and the
        prompt's tokens.
        """
        return self.engine.probe(prompts)

    # ---- standing queries -----------------------------------------------------------------------
    def watch(self, query: str, config: WatchConfig | None = None,
              callback: Callable[[WatchEvent], None] | None = None) -> int:
        """Register a standing query; it decides after every chunk ingested from now on (see :mod:`.watch`).
        ``config`` defaults to the adapter's own ``watch_config``, else :class:`WatchConfig`'s defaults.
        Returns its id (for :meth:`unwatch`)."""
        if not query or not query.strip():
            raise ValueError("watch(): the query is empty")
        config = config or self.adapter.watch_config or WatchConfig()
        unk = getattr(self.adapter.tokenizer, "unk_token_id", None)
        pos = first_token_ids(self.adapter.tokenize, config.positive, "positive", unk)
        neg = first_token_ids(self.adapter.tokenize, config.negative, "negative", unk)
        if set(pos) & set(neg):
            raise ValueError(f"watch: positive {config.positive} and negative {config.negative} words share a "
                             "first token in this tokenizer; pick words that differ in their first token")
        prompt = self.adapter.question_text(config.template.format(query=query.strip()))
        wid = self._next_watch_id
        self._next_watch_id += 1
        self.watches[wid] = Watch(wid, query.strip(), config, callback, self.adapter.tokenize(prompt), pos, neg)
        return wid

    def unwatch(self, watch_id: int) -> None:
        """Remove a watch (``ValueError`` for an unknown id)."""
        if watch_id not in self.watches:
            raise ValueError(f"unwatch(): no watch {watch_id!r} (active: {sorted(self.watches)})")
        del self.watches[watch_id]

    def events(self) -> list[WatchEvent]:
        """The events fired since the last call, oldest first (the queue is emptied)."""
        out, self._events = self._events, []
        return out

    @torch.no_grad()
    def _decide(self, now: float, peeked: dict[int, torch.Tensor]) -> None:
        """Every watch's decision after a chunk (``peeked``: logits a fused forward already gave); the memory
        is unchanged."""
        t0 = time.perf_counter()
        try:
            for w in list(self.watches.values()):
                logits = peeked.get(w.watch_id)
                score = w.score(logits if logits is not None else self.engine.next_token_logits(w.prompt_ids))
                self.stats.watch_decisions += 1
                if not w.should_fire(now, score):
                    continue
                if w.config.text_tokens:
                    ids = self.engine.generate(w.prompt_ids, GenerationConfig(max_new_tokens=w.config.text_tokens)).token_ids
                else:
                    ids = w.positive_ids[:1]
                text = self.adapter.tokenizer.decode(ids, skip_special_tokens=True).strip()
                event = WatchEvent(w.watch_id, w.query, now, text, round(score, 6))
                w.fired.append(event)
                self._events.append(event)
                if w.callback is not None:
                    w.callback(event)
        finally:
            self.stats.watch_s += time.perf_counter() - t0

    # ---- questions ------------------------------------------------------------------------------
    @torch.no_grad()
    def ask(self, question: str, generation: GenerationConfig | None = None, *, return_logits: bool = False,
            on_token: Callable[[int], None] | None = None) -> Answer:
        """Answer ``question`` from the memory as it is now (pending frames included); the memory, the
        pending frames and the statistics of the stream are unchanged afterwards. ``on_token`` receives each
        generated id as it is chosen (a streamed answer)."""
        if not question or not question.strip():
            raise ValueError("ask(): the question is empty")
        gen = generation or GenerationConfig(max_new_tokens=self.config.max_new_tokens)
        t0 = time.perf_counter()
        self.start()
        ids = self.adapter.tokenize(self.adapter.question_text(question))
        frames_seen, last_time = self.stats.frames + len(self._pending_frames), self.last_frame_time
        with self.engine.rollback():
            self._prefill_pending_for_question()
            out = self.engine.generate(ids, gen, t0=t0, return_logits=return_logits,
                                       question_cache=self._question_replay(), on_token=on_token)
        return Answer(
            text=self.adapter.tokenizer.decode(out.token_ids, skip_special_tokens=True),
            token_ids=out.token_ids,
            ttft_s=out.ttft_s,
            total_s=out.total_s,
            cache_tokens=out.cache_tokens,
            kv_bytes=out.kv_bytes,
            visual_tokens_seen=self.stats.visual_tokens,
            frames_seen=frames_seen,
            last_frame_time=last_time,
            question_logits=out.question_logits,
            question_cache_s=out.question_cache_s,
        )

    def _prefill_pending_for_question(self) -> None:
        """Inside a question's rollback: the partial temporal group goes in padded, for this question only
        (the stream keeps it pending)."""
        if not self._pending_frames:
            return
        frames, times, _ = pad_to_group(np.stack(self._pending_frames), np.asarray(self._pending_times),
                                        self.adapter.frames_per_group)
        encode_s = self.stats.encode_s
        visual, _ = self.encode_chunk(frames, times, len(self.frame_log), gate=False)
        self.stats.encode_s = encode_s  # question-time work is not ingest
        self.engine.prefill(self.adapter.visual_segment(visual, self.engine.next_position), logits="none")

    def _question_replay(self) -> Callable[[], tuple[MemoryCache, int] | None] | None:
        """A builder of the cache a question is answered from instead of the memory (None: the memory)."""
        return None
