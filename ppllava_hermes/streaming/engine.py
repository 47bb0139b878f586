"""The KV engine: one language model over a :class:`MemoryCache` that a memory policy keeps bounded.

It knows nothing of frames, pooling or video: it takes :class:`~ppllava_hermes.models.base.Segment`s
(input embeddings + explicit positions + token kinds) from whoever drives it (the video session, the
text-LM benchmark) and offers five operations:

- :meth:`KVEngine.start` prefills the system prompt and lets the policy see how long it is.
- :meth:`KVEngine.prefill` runs the language model on one segment and commits its metadata. It is atomic:
  if the forward raises (out of memory, Ctrl-C inside a layer), every layer is cut back to its length
  before the call and the positions are unchanged, so the engine stays usable.
- :meth:`KVEngine.rollback` is a context manager: whatever is prefilled inside it, and any cache swapped in
  for the duration (a question-time cache), is gone on exit, normal or not; the memory is then bit-exactly
  what it was.
- :meth:`KVEngine.compress` lets the policy act, with the attention probe it asks for (only the prompts
  and layers the policy reads, all prompts in one forward, with the model's own attention implementation:
  ``models/probe.py``), on every ``compress_every``-th chunk that finds the memory over budget; it is the
  one place policy time is measured.
- :meth:`KVEngine.generate` answers: an optional question-time cache from the policy
  (``MemoryPolicy.question_cache``), the question prefill, then greedy or sampled decoding, all inside a
  rollback. :meth:`KVEngine.next_token_logits` is its first step alone (a watch's decision).

``next_position`` (where the next token's positions start) is tracked here and nowhere else.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ..memory.cache import MemoryCache, TokenKind, TokenMeta
from ..memory.policy import AttentionProbe, CompressResult, FullCache, MemoryPolicy
from ..models.probe import PROBE_METHODS, probe_attention

if TYPE_CHECKING:
    from ..models.base import LMAdapter, Segment


@dataclass
class GenerationConfig:
    """Decoding settings for :meth:`KVEngine.generate` (greedy unless ``do_sample``)."""

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
class EngineStats:
    """Totals of the engine's own work (the video session extends them with ingest counts).

    Attributes:
        prefill_s: seconds in :meth:`KVEngine.prefill` outside questions and probes.
        compress_s: seconds in :meth:`KVEngine.compress`, its probe included.
        peak_kv_bytes: the most key/value bytes held at once, question-time caches included.
        compress_log: one :class:`CompressResult` per compression.
    """

    prefill_s: float = 0.0
    compress_s: float = 0.0
    peak_kv_bytes: int = 0
    compress_log: list[CompressResult] = field(default_factory=list)


@dataclass
class Generation:
    """What :meth:`KVEngine.generate` produced, with its cost.

    Attributes:
        token_ids: generated ids (without the stop token).
        ttft_s: seconds from ``t0`` (the caller's start) to the first token.
        total_s: seconds from ``t0`` to the end.
        cache_tokens: entries per layer the question was prefilled on.
        kv_bytes: key/value bytes the question was answered from.
        question_cache_s: seconds the policy spent building a question-time cache (inside ``ttft_s``).
        question_logits: ``(L_q, V)`` float logits of the question prefill, when requested.
    """

    token_ids: list[int]
    ttft_s: float
    total_s: float
    cache_tokens: int
    kv_bytes: int
    question_cache_s: float = 0.0
    question_logits: torch.Tensor | None = None


class KVEngine:
    """One language model (an :class:`~ppllava_hermes.models.base.LMAdapter`) over a bounded KV memory.

    ``probe_method`` is how probe attention is computed (``models/probe.py``): ``"auto"`` (default: from
    the probe tokens' captured queries, with the model's own attention implementation, where that is
    tested equal to eager; eager elsewhere), ``"queries"`` or ``"eager"`` (the reference: one eager forward
    per prompt with ``output_attentions``). It may be changed between calls.
    """

    def __init__(self, lm: LMAdapter, memory: MemoryPolicy | None = None, *, record_logits: bool = False,
                 stats: EngineStats | None = None, probe_method: str = "auto") -> None:
        if probe_method not in PROBE_METHODS:
            raise ValueError(f"probe_method must be one of {PROBE_METHODS}, got {probe_method!r}")
        self.lm = lm
        self.memory = memory or FullCache()
        self.record_logits = record_logits
        self.probe_method = probe_method
        self._prompt_ids: dict[str, torch.Tensor] = {}
        self.rope = lm.rope_spec()
        self.memory.check_model(self.rope, lm.num_layers)
        self.reset(stats)

    def reset(self, stats: EngineStats | None = None) -> None:
        """Empty memory, positions at 0, fresh statistics (``stats`` lets a caller share its own object)."""
        self.cache = MemoryCache(self.lm.num_layers, self.lm.pos_dims)
        self.next_position = 0
        self.stats = stats if stats is not None else EngineStats()
        self.logits_log: list[torch.Tensor] = []
        self.started = False
        self._positions_warned = False
        self._rollback_depth = 0
        self._stream_cache = self.cache
        self._chunks_over_budget = 0  # chunks since the last compression that found the memory over budget

    # ---- the model step -------------------------------------------------------------------------
    def start(self, system_text: str) -> int:
        """Prefill the system prompt (once) and set the policy up; returns its length in tokens."""
        if self.started:
            return 0
        seg = self.lm.text_segment(self.lm.tokenize(system_text), self.next_position, TokenKind.SYSTEM)
        length, position = self.cache.physical_length(), self.next_position
        self.prefill(seg, logits="none")
        try:
            self.memory.setup(self.cache, self.rope, num_system_tokens=len(seg))
        except BaseException:  # a configuration the policy refuses: the engine stays unstarted and empty
            self.cache.truncate(length)
            self.next_position = position
            raise
        self.started = True
        return len(seg)

    @torch.no_grad()
    def prefill(self, seg: Segment, output_attentions: bool = False, logits: str = "all"):
        """Run the model on ``seg`` at its positions; returns ``(logits, attentions or None)``.

        ``logits``: "all" ``(1, L, V)``, "last" ``(1, 1, V)`` or "none" (None; a chunk being streamed needs
        no LM head); with ``record_logits`` every position's are computed (and logged) whatever is asked.
        Keys, values and metadata go into the memory and ``next_position`` moves to ``seg.next_position``;
        on an exception nothing does.
        """
        out, attentions, _ = self._prefill(seg, output_attentions, None, logits)
        return out, attentions

    @torch.no_grad()
    def prefill_and_peek(self, seg: Segment, ahead: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prefill` ``seg`` and, in the same forward, run ``ahead`` (text after it) without keeping it.

        Returns ``(logits (1, L, V) of seg (None unless ``record_logits``), (V,) float logits after ahead's
        last token)``. What the memory
        keeps is ``seg`` alone (equal to a plain prefill up to float rounding: the forward's matmuls are a few
        rows longer), and ``ahead``'s tokens see the memory with ``seg`` in it, before the policy compresses.
        A watch's decision at the price of a few more tokens in the chunk's forward, with no second pass.
        """
        logits, _, peek = self._prefill(seg, False, ahead, "last")
        return logits, peek

    def _prefill(self, seg: Segment, output_attentions: bool, ahead: Segment | None, want: str):
        length = self.cache.physical_length()
        embeds, meta = seg.embeds, seg.meta
        if ahead is not None:
            embeds = torch.cat([seg.embeds, ahead.embeds])
            meta = TokenMeta(torch.cat([seg.meta.positions, ahead.meta.positions], dim=1),
                             torch.cat([seg.meta.frame_ids, ahead.meta.frame_ids]),
                             torch.cat([seg.meta.kinds, ahead.meta.kinds]))
        t0 = time.perf_counter()
        try:
            logits, attentions = self.lm.forward(embeds, meta, self.cache, output_attentions,
                                                 logits="all" if self.record_logits else want)
            peek = None
            if ahead is not None:  # keep seg only: ahead's keys go, its last logits stay
                self.cache.truncate(length + len(seg))
                peek = logits[0, -1].float()
                logits = logits[:, : len(seg)] if self.record_logits else None
            self.cache.commit(seg.meta)
        except BaseException:
            self.cache.truncate(length)  # layers the forward reached hold keys without metadata
            raise
        self.next_position = seg.next_position
        if self._rollback_depth == 0:
            self.stats.prefill_s += time.perf_counter() - t0
            self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, self.cache.kv_bytes())
        if self.record_logits:
            self.logits_log.append(logits[0].detach().float().cpu())
        return logits, attentions, peek

    def skip_to(self, next_position: int) -> None:
        """Let positions pass without tokens (a chunk a gate kept out entirely)."""
        self.next_position = next_position

    @contextlib.contextmanager
    def rollback(self) -> Iterator[None]:
        """Everything prefilled inside (and any cache swapped in) is undone on exit."""
        cache, length, position = self.cache, self.cache.physical_length(), self.next_position
        if self._rollback_depth == 0:
            self._stream_cache = cache  # what stays resident while a question-time cache is in use
        self._rollback_depth += 1
        try:
            yield
        finally:
            self._rollback_depth -= 1
            cache.truncate(length)
            self.cache, self.next_position = cache, position

    def use_cache(self, cache: MemoryCache, next_position: int) -> None:
        """Answer from ``cache`` until the enclosing :meth:`rollback` ends (question-time caches)."""
        if self._rollback_depth == 0:
            raise RuntimeError("use_cache() outside rollback(): the stream's memory would be lost")
        self.cache, self.next_position = cache, next_position
        self._note_question_bytes(cache)

    @property
    def answers_from_memory(self) -> bool:
        """Whether questions are answered from the memory as it is (the policy builds no question cache),
        so that text run right after a segment (:meth:`prefill_and_peek`) sees what a question would."""
        return type(self.memory).question_cache is MemoryPolicy.question_cache

    def enter_question_cache(self, ids: torch.Tensor) -> bool:
        """Ask the policy's ``question_cache`` hook for a cache built for question ``ids`` ``(L,)`` (retrieval)
        and answer from it until the enclosing :meth:`rollback` ends; returns whether one was built."""
        built = self.memory.question_cache(self.cache, self.rope,
                                           lambda c, start: self.attention_over(c, ids, start), self.next_position)
        if built is not None:
            self.use_cache(*built)
        return built is not None

    def _note_question_bytes(self, cache: MemoryCache, extra_tokens: int = 0) -> None:
        """Peak KV at question time: ``cache`` (with ``extra_tokens`` more entries per layer, a probe's keys
        during its forward) plus the stream's own memory, which stays resident beside it."""
        resident = self._stream_cache.kv_bytes() if cache is not self._stream_cache else 0
        held, length = cache.kv_bytes(), cache.physical_length()
        if extra_tokens and length:
            held += held // length * extra_tokens  # every entry of a layer takes the same bytes
        self.stats.peak_kv_bytes = max(self.stats.peak_kv_bytes, held + resident)

    # ---- probes and compression -----------------------------------------------------------------
    @torch.no_grad()
    def attention_over(self, cache: MemoryCache, ids: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Attention of text ``ids`` ``(L,)`` prefilled at ``start`` over ``cache``, which is then cut back.

        Returns one ``(len(cache),)`` float CPU tensor per layer: the weight each entry received, averaged
        over heads and the prompt's tokens. No metadata is committed.
        """
        seg = self.lm.text_segment(ids, start, TokenKind.TEXT)
        if self._rollback_depth and cache is not self.cache:  # a question-time scoring cache
            # The probe's keys sit beside it for one forward; counted as the eager path did.
            self._note_question_bytes(cache, extra_tokens=len(seg))
        return probe_attention(self.lm, cache, [seg], method=self.probe_method)[0]  # type: ignore[return-value]

    @torch.no_grad()
    def probe(self, prompts: dict[str, str], layers: dict[str, list[int]] | None = None) -> AttentionProbe:
        """Attention of each pseudo-query prompt to the current memory; the memory is unchanged.

        ``layers``: per prompt, the layers wanted (a prompt absent from it: every layer); the others come
        back as None. All prompts run at the next position, in one forward where the attention
        implementation takes a mask (``models/probe.py``).
        """
        names = list(prompts)
        segs = [self.lm.text_segment(self._tokens(prompts[n]), self.next_position, TokenKind.TEXT) for n in names]
        wanted = [None if layers is None or n not in layers else layers[n] for n in names]
        rows = probe_attention(self.lm, self.cache, segs, wanted, method=self.probe_method)
        return AttentionProbe(scores=dict(zip(names, rows, strict=True)))

    def _tokens(self, text: str) -> torch.Tensor:
        """``(L,)`` ids of a probe prompt (tokenized once: the same prompts run after every chunk)."""
        if text not in self._prompt_ids:
            self._prompt_ids[text] = self.lm.tokenize(text)
        return self._prompt_ids[text]

    def compress(self) -> CompressResult | None:
        """Let the policy shrink the memory (None when it has nothing to do); timed here only.

        Called after every chunk. The policy acts on every ``memory.compress_every``-th call that finds the
        memory over its budget (1: every such call), after a probe of only the prompts and layers its
        ``probe_layers`` names (none: no probe). It also warns, once per stream, when positions pass the
        model's limit.
        """
        if not self.memory.wants_compress(self.cache):
            self._check_positions()
            return None
        self._chunks_over_budget += 1
        if self._chunks_over_budget < max(1, int(getattr(self.memory, "compress_every", 1))):
            self._check_positions()
            return None
        self._chunks_over_budget = 0
        t0 = time.perf_counter()
        layers = self.memory.probe_layers(self.lm.num_layers) if self.memory.probe_prompts else {}
        prompts = {n: t for n, t in self.memory.probe_prompts.items() if layers.get(n)}
        probe = self.probe(prompts, layers) if prompts else None
        result = self.memory.compress(self.cache, self.rope, probe, self.next_position)
        result.seconds = time.perf_counter() - t0
        if result.next_position is not None:
            self.next_position = result.next_position
        self.stats.compress_s += result.seconds
        self.stats.compress_log.append(result)
        self._check_positions()
        return result

    def _check_positions(self) -> None:
        """Warn once when positions pass the model's limit (policies that never re-index)."""
        limit = getattr(self.rope, "max_position_embeddings", None)
        if limit and self.next_position > limit and not self._positions_warned:
            self._positions_warned = True
            warnings.warn(
                f"stream positions reached {self.next_position}, past the model's max_position_embeddings "
                f"({limit}): memory policy {self.memory.name!r} does not re-index, so answers now use positions "
                "the model was never trained on; use hermes, window, sink or snapkv to keep positions bounded",
                RuntimeWarning,
                stacklevel=4,
            )

    # ---- answers --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, ids: torch.Tensor, gen: GenerationConfig, *, t0: float | None = None,
                 return_logits: bool = False,
                 question_cache: Callable[[], tuple[MemoryCache, int] | None] | None = None,
                 on_token: Callable[[int], None] | None = None) -> Generation:
        """Answer text ``ids`` ``(L,)`` from the memory as it is now; the memory is unchanged afterwards.

        Args:
            t0: the caller's start time (``time.perf_counter()``), so TTFT covers its own preparation.
            question_cache: builds a cache to answer from instead (an offline replay); the policy's own
                ``question_cache`` hook (retrieval) is asked after it.
            on_token: called with each generated id as it is chosen (streamed answers).
        """
        t0 = time.perf_counter() if t0 is None else t0
        with self.rollback():
            t_cache = time.perf_counter()
            built = question_cache() if question_cache is not None else None
            if built is not None:
                self.use_cache(*built)
            self.enter_question_cache(ids)
            cache_s = time.perf_counter() - t_cache
            cache_tokens, kv_bytes = self.cache.physical_length(), self.cache.kv_bytes()
            out_ids, ttft, q_logits = self._decode(ids, gen, t0, return_logits, on_token)
        return Generation(token_ids=out_ids, ttft_s=ttft, total_s=time.perf_counter() - t0,
                          cache_tokens=cache_tokens, kv_bytes=kv_bytes, question_cache_s=cache_s,
                          question_logits=q_logits)

    @torch.no_grad()
    def next_token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """``(V,)`` float logits of the token after text ``ids`` ``(L,)``, prefilled as a question is (the
        policy's question-time cache included); the memory is unchanged afterwards. A watch's decision."""
        with self.rollback():
            self.enter_question_cache(ids)
            logits, _ = self.prefill(self.lm.text_segment(ids, self.next_position, TokenKind.TEXT), logits="last")
        return logits[0, -1].float()

    def _decode(self, ids: torch.Tensor, gen: GenerationConfig, t0: float, return_logits: bool,
                on_token: Callable[[int], None] | None = None):
        processors = _sampling_processors(gen)
        generator = None
        if gen.do_sample:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(gen.seed if gen.seed is not None else 0)
        eos = set(self.lm.eos_token_ids)
        out_ids: list[int] = []
        ttft = None
        logits, _ = self.prefill(self.lm.text_segment(ids, self.next_position, TokenKind.TEXT),
                                 logits="all" if return_logits else "last")
        q_logits = logits[0].float().cpu() if return_logits else None
        for step in range(gen.max_new_tokens):
            next_id = _pick(logits[0, -1].float(), out_ids, processors, generator)
            if ttft is None:
                ttft = time.perf_counter() - t0
            if next_id in eos:
                break
            out_ids.append(next_id)
            if on_token is not None:
                on_token(next_id)
            if step + 1 == gen.max_new_tokens:
                break
            seg = self.lm.text_segment(torch.tensor([next_id]), self.next_position, TokenKind.TEXT)
            logits, _ = self.prefill(seg)
        return out_ids, (ttft if ttft is not None else time.perf_counter() - t0), q_logits


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
