"""A streaming session: frames in, answers out, KV memory carried across the whole stream.

The session drives a model adapter: it keeps the frame log, buffers frames into chunks, runs each
chunk through the pooling stage and the language model into the memory, lets the memory policy
compress, and answers questions with its own prefill/decode loop and explicit positions. After a
question the memory returns exactly to its state before it, so the stream goes on.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ..memory.cache import MemoryCache, TokenKind
from ..memory.policy import AttentionProbe, CompressResult, FullCache, MemoryPolicy
from ..models.base import Segment, VisualTokens, VLMAdapter
from ..video.types import VideoClip
from .sparsity import FrameGate, gate_segment

#: a pooling stage: visual tokens of one chunk (+ the chunk's frames) -> visual tokens to keep.
PoolingStage = Callable[[VisualTokens, np.ndarray], VisualTokens]


@dataclass
class StreamConfig:
    """Session settings.

    Attributes:
        chunk_frames: frames per prefill chunk (rounded down to the model's frames-per-group; >= 1 group).
        max_new_tokens: default answer length limit.
        record_logits: keep every forward's logits in ``session.logits_log`` (parity tests, debugging).
    """

    chunk_frames: int = 8
    max_new_tokens: int = 64
    record_logits: bool = False

    def __post_init__(self) -> None:
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationConfig:
    """Decoding settings for :meth:`StreamingSession.ask` (greedy unless ``do_sample``)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


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
        last_frame_time: timestamp (s) of the newest frame in memory, None before any frame.
        question_logits: ``(L_q, V)`` logits over the question prefill when requested.
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


@dataclass
class IngestStats:
    """Totals over a session's ingest so far."""

    frames: int = 0
    chunks: int = 0
    visual_tokens: int = 0
    encode_s: float = 0.0
    prefill_s: float = 0.0
    compress_s: float = 0.0
    peak_kv_bytes: int = 0
    compress_log: list[CompressResult] = field(default_factory=list)
    frames_skipped: int = 0  # frames a gate kept out entirely (they are still in the frame log)


class StreamingSession:
    """Query-agnostic streaming over one video stream with one model adapter."""

    def __init__(
        self,
        adapter: VLMAdapter,
        memory: MemoryPolicy | None = None,
        pooling: PoolingStage | None = None,
        config: StreamConfig | None = None,
        gate: FrameGate | None = None,
    ) -> None:
        self.adapter = adapter
        self.memory = memory or FullCache()
        self.pooling = pooling
        self.gate = gate  # dynamic sparsity after pooling (streaming/sparsity.py)
        self.config = config or StreamConfig()
        group = adapter.frames_per_group
        self.chunk_frames = max(group, self.config.chunk_frames // group * group)
        self.rope = adapter.rope_spec()
        self.memory.check_model(self.rope, adapter.num_layers)
        self.reset()

    # ---- lifecycle ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the stream: empty memory, frame log and statistics."""
        self.cache = MemoryCache(self.adapter.num_layers, self.adapter.pos_dims)
        self.next_position = 0
        self._positions_warned = False
        self.frame_log: list[tuple[int, float]] = []  # (frame id, timestamp) of every ingested frame
        self.stats = IngestStats()
        self.logits_log: list[torch.Tensor] = []
        self._pending_frames: list[np.ndarray] = []
        self._pending_times: list[float] = []
        self._started = False
        # Offline policies (memory.stores_frames): decoded frames kept for question time, T x H x W x 3 bytes.
        self._frame_store: list[np.ndarray] = []
        self._tokens_per_frame: int | None = None
        if self.gate is not None:
            self.gate.reset()

    def start(self) -> None:
        """Prefill the system prompt now rather than with the first frames (idempotent).

        Raises ``ValueError`` when the memory policy cannot run beside this system prompt (for example a
        budget smaller than it), so a caller can check a configuration before streaming anything.
        """
        if not self._started:
            self._start()

    def _start(self) -> None:
        ids = self.adapter.tokenize(self.adapter.prefix_text())
        seg = self.adapter.text_segment(ids, self.next_position, TokenKind.SYSTEM)
        self._run(seg)
        self.memory.setup(self.cache, self.rope, num_system_tokens=len(seg))
        self._started = True

    # ---- the model step -------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, seg: Segment, output_attentions: bool = False):
        logits, attentions = self.adapter.forward(seg.embeds, seg.meta, self.cache, output_attentions)
        self.cache.commit(seg.meta)
        self.next_position = seg.next_position
        if self.config.record_logits:
            self.logits_log.append(logits[0].detach().float().cpu())
        return logits, attentions

    # ---- ingest ---------------------------------------------------------------------------------
    def add_frames(self, frames: np.ndarray | VideoClip, timestamps: np.ndarray | None = None) -> None:
        """Ingest frames ``(T, H, W, 3)`` uint8 with their timestamps (s), chunk by chunk.

        Frames that don't fill a chunk's temporal group wait for the next call (or for ``ask``).
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
        last = self._pending_times[-1] if self._pending_times else (self.frame_log[-1][1] if self.frame_log else None)
        if len(timestamps) and last is not None and timestamps[0] <= last:
            raise ValueError(
                f"add_frames(): timestamps must increase; got {timestamps[0]:.3f}s after {last:.3f}s"
            )
        if len(timestamps) > 1 and np.any(np.diff(timestamps) <= 0):
            raise ValueError("add_frames(): timestamps must be strictly increasing")
        self._pending_frames.extend(frames)
        self._pending_times.extend(timestamps.tolist())
        while len(self._pending_frames) >= self.chunk_frames:
            self._ingest(self.chunk_frames)
        # Whole groups left over are ingested now; only a partial group waits.
        whole = len(self._pending_frames) // self.adapter.frames_per_group * self.adapter.frames_per_group
        if whole:
            self._ingest(whole)

    def flush(self) -> None:
        """Ingest frames still waiting for a full temporal group, padding with the last frame."""
        if not self._pending_frames:
            return
        group = self.adapter.frames_per_group
        missing = (-len(self._pending_frames)) % group
        if missing:
            # Same padding as the HF processor: repeat the last frame; it carries no new time.
            self._pending_frames.extend([self._pending_frames[-1]] * missing)
            step = 1e-6
            self._pending_times.extend(self._pending_times[-1] + step * (i + 1) for i in range(missing))
        self._ingest(len(self._pending_frames), padded=missing)

    def _ingest(self, n: int, padded: int = 0) -> None:
        if not self._started:
            self._start()
        frames = np.stack(self._pending_frames[:n])
        times = np.asarray(self._pending_times[:n])
        del self._pending_frames[:n], self._pending_times[:n]
        first_id = len(self.frame_log)
        real = n - padded
        if self.memory.stores_frames:  # offline baseline: nothing is prefilled until a question
            self._frame_store.extend(frames[:real])
            self.frame_log.extend((first_id + i, float(times[i])) for i in range(real))
            self.stats.frames += real
            return
        t0 = time.perf_counter()
        visual = self.adapter.encode_frames(frames, times, first_id)
        if self.pooling is not None:
            visual = self.pooling(visual, frames)
        keep = self.gate(visual, frames) if self.gate is not None else None
        self.stats.encode_s += time.perf_counter() - t0
        self.add_visual_tokens(visual, times[:real], keep=keep)

    def add_visual_tokens(self, visual: VisualTokens, frame_times: np.ndarray, keep: torch.Tensor | None = None) -> None:
        """Prefill already-encoded (possibly pooled) visual tokens of the next ``len(frame_times)`` frames.

        Used by :meth:`add_frames`, and by offline re-pooling, which never decodes or encodes the video again.
        ``keep`` ``(t, h, w)`` bool: a gate's choice of grid tokens; the others are skipped but keep their
        time and positions (``sparsity.gate_segment``).
        """
        if not self._started:
            self._start()
        first_id = len(self.frame_log)
        t1 = time.perf_counter()
        seg, tokens = self.adapter.visual_segment(visual, self.next_position), visual.num_tokens
        if keep is not None:
            gated = gate_segment(seg, visual, keep, len(frame_times))
            seg, tokens = gated.segment, gated.tokens_kept
            self.stats.frames_skipped += gated.frames_skipped
            if seg is None:  # nothing kept: the chunk's time and positions still pass
                self.next_position = gated.next_position
        if seg is not None:
            self._run(seg)
        self.stats.prefill_s += time.perf_counter() - t1
        self.frame_log.extend((first_id + i, float(t)) for i, t in enumerate(frame_times))
        self.stats.frames += len(frame_times)
        self.stats.chunks += 1
        self.stats.visual_tokens += tokens
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, self.cache.kv_bytes())
        self._compress()
        self._check_positions()

    def _compress(self) -> None:
        if not self.memory.wants_compress(self.cache):
            return
        t0 = time.perf_counter()
        probe = self.probe_attention(self.memory.probe_prompts) if self.memory.probe_prompts else None
        result = self.memory.compress(self.cache, self.rope, probe, self.next_position)
        result.seconds = time.perf_counter() - t0
        if result.next_position is not None:
            self.next_position = result.next_position
        self.stats.compress_s += result.seconds
        self.stats.compress_log.append(result)

    def _check_positions(self) -> None:
        """Warn once when a stream's positions pass the model's limit (policies that never re-index)."""
        limit = getattr(self.rope, "max_position_embeddings", None)
        if limit and self.next_position > limit and not self._positions_warned:
            self._positions_warned = True
            warnings.warn(
                f"stream positions reached {self.next_position}, past the model's max_position_embeddings "
                f"({limit}): memory policy {self.memory.name!r} does not re-index, so answers now use positions "
                "the model was never trained on; use hermes, window, sink or snapkv to keep positions bounded",
                RuntimeWarning,
                stacklevel=3,
            )

    @torch.no_grad()
    def probe_attention(self, prompts: dict[str, str]) -> AttentionProbe:
        """Attention of each pseudo-query prompt to the current memory, then remove the prompt again.

        Returns per prompt a list over layers of ``(seq_len,)`` weights averaged over heads and the
        prompt's tokens.
        """
        length, start = self.cache.physical_length(), self.next_position
        probe = AttentionProbe()
        for name, text in prompts.items():
            seg = self.adapter.text_segment(self.adapter.tokenize(text), start, TokenKind.TEXT)
            with self.adapter.eager_attention():
                _, attentions = self.adapter.forward(seg.embeds, seg.meta, self.cache, output_attentions=True)
            # (1, heads, L_q, L_kv) per layer -> mean over heads and queries, past entries only.
            probe.scores[name] = [a[0, :, :, :length].float().mean(dim=(0, 1)).cpu() for a in attentions]
            for layer in self.cache.layers:  # the forward wrote keys but no metadata: drop them
                layer.keys = layer.keys[..., :length, :]
                layer.values = layer.values[..., :length, :]
        return probe

    # ---- questions ------------------------------------------------------------------------------
    @torch.no_grad()
    def ask(self, question: str, generation: GenerationConfig | None = None, *, return_logits: bool = False) -> Answer:
        """Answer ``question`` from the memory as it is now; the memory is unchanged afterwards."""
        if not question or not question.strip():
            raise ValueError("ask(): the question is empty")
        gen = generation or GenerationConfig(max_new_tokens=self.config.max_new_tokens)
        t0 = time.perf_counter()
        self.flush()
        if not self._started:
            self._start()
        stream_state = (self.cache, self.next_position)
        replayed = self._replay_for_question()
        if replayed is not None:  # offline policy: answer from freshly prefilled frames
            self.cache, self.next_position = replayed
            self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, self.cache.kv_bytes())
        ids = self.adapter.tokenize(self.adapter.question_text(question))
        # Question-time memory (retrieval): a cache built for this question; None answers from the memory as is.
        built = self.memory.question_cache(self.cache, self.rope, self._question_probe(ids), self.next_position)
        if built is not None:
            self.cache, self.next_position = built
            self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, self.cache.kv_bytes())
        length, position = self.cache.physical_length(), self.next_position
        cache_tokens, kv_bytes = length, self.cache.kv_bytes()
        processors = _sampling_processors(gen)
        generator = None
        if gen.do_sample:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(gen.seed if gen.seed is not None else 0)
        eos = set(self.adapter.eos_token_ids)
        out_ids: list[int] = []
        ttft = None
        try:
            logits, _ = self._run(self.adapter.text_segment(ids, position, TokenKind.TEXT))
            q_logits = logits[0].float().cpu() if return_logits else None
            for step in range(gen.max_new_tokens):
                next_id = _pick(logits[0, -1].float(), out_ids, processors, generator)
                if ttft is None:
                    ttft = time.perf_counter() - t0
                if next_id in eos:
                    break
                out_ids.append(next_id)
                if step + 1 == gen.max_new_tokens:
                    break
                seg = self.adapter.text_segment(torch.tensor([next_id]), self.next_position, TokenKind.TEXT)
                logits, _ = self._run(seg)
        finally:
            # The stream continues from the pre-question state.
            self.cache.truncate(length)
            self.next_position = position
            self.cache, self.next_position = stream_state
        return Answer(
            text=self.adapter.tokenizer.decode(out_ids, skip_special_tokens=True),
            token_ids=out_ids,
            ttft_s=ttft if ttft is not None else time.perf_counter() - t0,
            total_s=time.perf_counter() - t0,
            cache_tokens=cache_tokens,
            kv_bytes=kv_bytes,
            visual_tokens_seen=self.stats.visual_tokens,
            frames_seen=self.stats.frames,
            last_frame_time=self.frame_log[-1][1] if self.frame_log else None,
            question_logits=q_logits,
        )

    def _question_probe(self, ids: torch.Tensor) -> Callable[[MemoryCache, int], list[torch.Tensor]]:
        """The :data:`~ppllava_hermes.memory.policy.QuestionProbe` of one question: its tokens ``ids`` ``(L_q,)``
        run over a given cache with eager attention, which is then cut back to its length."""

        @torch.no_grad()
        def probe(cache: MemoryCache, start: int) -> list[torch.Tensor]:
            length = cache.physical_length()
            seg = self.adapter.text_segment(ids, start, TokenKind.TEXT)
            try:
                with self.adapter.eager_attention():
                    _, attentions = self.adapter.forward(seg.embeds, seg.meta, cache, output_attentions=True)
            finally:
                cache.truncate(length)  # the forward wrote keys and values but no metadata
            # (1, heads, L_q, L_kv) per layer -> mean over heads and question tokens, cache entries only.
            return [a[0, :, :, :length].float().mean(dim=(0, 1)).cpu() for a in attentions]

        return probe

    def _replay_for_question(self) -> tuple[MemoryCache, int] | None:
        """For policies that store frames: a fresh cache with the system prompt and the frames they pick."""
        if not self.memory.stores_frames:
            return None
        if self._tokens_per_frame is None and self._frame_store:
            group = self.adapter.frames_per_group
            probe_frames = np.stack(self._frame_store[:1] * group)
            visual = self.adapter.encode_frames(probe_frames, np.arange(group, dtype=np.float64), 0)
            if self.pooling is not None:
                visual = self.pooling(visual, probe_frames)
            self._tokens_per_frame = max(1, visual.num_tokens // group)
        picks = self.memory.question_frames(len(self._frame_store), self._tokens_per_frame or 1) or []
        saved = (self.cache, self.next_position)
        self.cache, self.next_position = MemoryCache(self.adapter.num_layers, self.adapter.pos_dims), 0
        try:
            self._run(self.adapter.text_segment(self.adapter.tokenize(self.adapter.prefix_text()), 0, TokenKind.SYSTEM))
            group = self.adapter.frames_per_group
            for start in range(0, len(picks), self.chunk_frames):
                chunk = picks[start : start + self.chunk_frames]
                frames = np.stack([self._frame_store[i] for i in chunk])
                times = np.asarray([self.frame_log[i][1] for i in chunk], dtype=np.float64)
                missing = (-len(chunk)) % group
                if missing:  # same padding as flush(): repeat the last frame
                    frames = np.concatenate([frames, frames[-1:].repeat(missing, axis=0)])
                    times = np.concatenate([times, times[-1] + 1e-6 * np.arange(1, missing + 1)])
                visual = self.adapter.encode_frames(frames, times, chunk[0])
                if self.pooling is not None:
                    visual = self.pooling(visual, frames)
                self._run(self.adapter.visual_segment(visual, self.next_position))
            return self.cache, self.next_position
        finally:
            self.cache, self.next_position = saved


def _sampling_processors(gen: GenerationConfig) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if gen.do_sample:
        if gen.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(gen.temperature))
        if gen.top_k > 0:
            procs.append(TopKLogitsWarper(gen.top_k))
        if gen.top_p < 1.0:
            procs.append(TopPLogitsWarper(gen.top_p))
    return procs


def _pick(logits: torch.Tensor, prev: list[int], processors: LogitsProcessorList,
          generator: torch.Generator | None) -> int:
    """Greedy (no generator) or sampled next token from ``(V,)`` logits."""
    if generator is None:
        return int(logits.argmax())
    ids = torch.tensor([prev], dtype=torch.long)
    scores = processors(ids, logits.unsqueeze(0))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs[0], 1, generator=generator))
