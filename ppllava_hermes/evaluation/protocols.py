"""Evaluation protocols: how a model with a memory and a pooling configuration answers a video's records.

* **Offline** (:func:`run_offline`): the model gets the video up to the question (the whole video, or
  a record's ``[start, end]`` segment, or ``[0, timestamp]`` for a question asked at a moment),
  ``num_frames`` uniform frames or ``fps``; it is encoded once and asked. Records that see the same
  frames share one session (the session's memory returns to its pre-question state after each
  answer). With question-dependent pooling (``pooling="prompt"`` and no standing query) the frames
  are encoded once and re-pooled against each question, PPLLaVA's offline recipe
  (``streaming.offline.OfflineVideoQA``).
* **Streaming** (:func:`run_streaming`): one session per video, fed in time order. A question at
  time ``t`` is asked once every frame with timestamp ``<= t`` is in and before any later frame is:
  ingest continues between questions of the same video. Forward / proactive records (no probes) are
  polled after every ``poll_frames`` new frames from their timestamp on, and answered when the
  model says the event happened ("now" / "yes"); the response time is scored against the record's
  tolerance window (a "now" before it is a false alarm; once it has closed, polling stops: a miss);
  with ``forward_mode="watch"`` they are standing queries instead (``StreamingSession.watch``: a score
  after every chunk, no generation). OVO-Bench forward records are asked at each of their probes' timestamps.
  :func:`run_streaming` checks, at every question, that the session's frame log holds no frame
  after the question's time (``CausalityError`` otherwise).
* **Context window** (``ProtocolConfig.context_window``, the evaluator's ``--context-window``; offline only):
  a question at time ``t`` sees only ``[t - W, t]`` (the start of its own segment if later), not the
  whole prefix. This is StreamingBench's leaderboard setting: its ``scripts/eval.sh`` passes
  ``--context_time`` ("-1 means all context, i.e. (0, query_time); any integer t greater than 0 means
  (query_time - t, query_time)") and its README reports the main table with "60 seconds of context
  preceding the query time", the whole prefix only as "All Context". A question with no time (after the
  whole video) sees the last ``W`` seconds of the video.

Each record gives one :class:`RecordResult`: prediction, correctness, and the cost of the answer
(TTFT, total latency, visual tokens into the LLM, memory entries, KV bytes, process memory,
frames per second). What this module does not know: benchmark files (``loaders``), aggregation,
reports and sharding (``runner`` / ``report``), where frames come from (``frames``).
"""

from __future__ import annotations

import functools
import math
import resource
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import plugins
from ..memory import POLICIES, MemoryPolicy, make_policy
from ..models.base import VLMAdapter
from ..pooling import PoolingConfig, PromptGuidedPooling
from ..streaming import Answer, GenerationConfig, StreamConfig, StreamingSession
from ..streaming.offline import OfflineVideoQA
from ..streaming.pooling_stage import PoolingStage, pool_visual
from ..streaming.timed import CausalityError, check_causal  # noqa: F401 (CausalityError: re-exported)
from ..streaming.uniform import UniformSession
from .frames import VideoSource
from .records import QARecord
from .scoring import normalize_answer, score_answer, score_open

PROTOCOLS = ("offline", "streaming")
FORWARD_MODES: tuple[str, ...] = ("poll", "watch")
POOLING_MODES = ("none", "avg", "prompt")
def prompt_styles() -> tuple[str, ...]:
    """Every ``prompt_style`` accepted: the evaluator's own ("auto", "letters", "plain") and those plugins
    register (``plugins.PROMPT_STYLES``; ShapesWorld: "words")."""
    return ("auto", "letters", *plugins.PROMPT_STYLES.names(), "plain")


# ------------------------------------------------------------------------------------------ configs


@dataclass
class MethodConfig:
    """One configuration under test: a memory policy and a pooling stage.

    Attributes:
        name: label in reports ("hermes+pooling", ...).
        memory: memory policy name (``memory.POLICIES``: full / window / sink / hermes / uniform).
        budget: visual tokens kept per layer (None: the policy's default; ignored by "full").
        pooling: "none", "avg" (3-D average pooling, no query) or "prompt" (PPLLaVA prompt-guided
            pooling: offline, each question re-pools the video; streaming, chunks are pooled against
            ``standing_query`` or a generic prompt, since the question is not known while ingesting).
        kernel: pooling kernel ``(T, H, W)`` over the model's token grid (ref: (2, 3, 3)).
        standing_query: query given before the stream (prompt pooling only).
        memory_kwargs: other fields of the policy's dataclass (e.g. ``{"anchors": 32}``).
    """

    name: str = "full"
    memory: str = "full"
    budget: int | None = None
    pooling: str = "none"
    kernel: tuple[int, int, int] = (2, 3, 3)
    standing_query: str | None = None
    memory_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.memory not in POLICIES:
            raise ValueError(f"configuration {self.name!r}: unknown memory policy {self.memory!r}; "
                             f"choose one of {sorted(POLICIES)}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"configuration {self.name!r}: pooling {self.pooling!r} not in {POOLING_MODES}")
        self.kernel = tuple(int(k) for k in self.kernel)  # type: ignore[assignment]
        if len(self.kernel) != 3 or min(self.kernel) < 1:
            raise ValueError(f"configuration {self.name!r}: kernel {self.kernel} must be three positive ints")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"configuration {self.name!r}: budget must be >= 1, got {self.budget}")
        if self.standing_query is not None and self.pooling != "prompt":
            raise ValueError(f"configuration {self.name!r}: a standing query needs pooling='prompt'")

    @property
    def uses_budget(self) -> bool:
        """Whether the budget changes anything (the full cache keeps everything)."""
        return self.memory != "full"

    @property
    def repools_per_question(self) -> bool:
        """Offline prompt pooling without a standing query pools the video against each question."""
        return self.pooling == "prompt" and self.standing_query is None

    def make_policy(self) -> MemoryPolicy:
        return make_policy(self.memory, budget=self.budget if self.uses_budget else None, **self.memory_kwargs)


@dataclass
class ProtocolConfig:
    """How frames reach the model and how answers are asked.

    Attributes:
        protocol: "offline" or "streaming".
        num_frames: offline: frames sampled uniformly over what the question may see (with ``fps``:
            a cap). Ignored by streaming.
        fps: offline: sample at this rate instead; streaming: the stream's frame rate (None: every
            frame of the video).
        chunk_frames: frames per prefill chunk of the session.
        max_new_tokens: answer length limit (greedy decoding).
        poll_frames: streaming forward questions are polled after this many new frames (None: one
            temporal group of the model, the finest step it sees).
        forward_mode: streaming forward records (no probes): "poll" asks the question again every
            ``poll_frames`` and fires on "now" / "yes" in the generated answer; "watch" registers it as a
            standing query (``StreamingSession.watch``, the model's own watch settings) that decides after
            every chunk and fires on its score; proactive records (content scored too) are then asked
            once when it fires.
        forward_tolerance: seconds a forward answer may come after the event (a record's own
            ``extra["tolerance"]`` wins); proactive records: either side of the ground-truth time.
        use_segments: offline: a record's ``[start, end]`` (else ``[0, timestamp]``) limits what it sees.
        prompt_style: "letters" (options as "A. text" lines, answer with the letter), "words" (the
            ShapesWorld format: options as words, answer with a word), "plain" (question only), or
            "auto" (words for ShapesWorld records, letters otherwise).
        context_window: offline: seconds of video before the question it may see (None: all of it;
            60 is StreamingBench's leaderboard setting, see the module docstring).
    """

    protocol: str = "offline"
    num_frames: int | None = 32
    fps: float | None = None
    chunk_frames: int = 8
    max_new_tokens: int = 16
    poll_frames: int | None = None
    forward_mode: str = "poll"
    forward_tolerance: float = 2.0
    use_segments: bool = True
    prompt_style: str = "auto"
    context_window: float | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} not in {PROTOCOLS}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.protocol == "offline" and self.num_frames is None and self.fps is None:
            raise ValueError("the offline protocol needs num_frames or fps")
        if self.chunk_frames < 1 or self.max_new_tokens < 1:
            raise ValueError("chunk_frames and max_new_tokens must be >= 1")
        if self.poll_frames is not None and self.poll_frames < 1:
            raise ValueError(f"poll_frames must be >= 1, got {self.poll_frames}")
        if self.forward_tolerance < 0:
            raise ValueError(f"forward_tolerance must be >= 0, got {self.forward_tolerance}")
        if self.forward_mode not in FORWARD_MODES:
            raise ValueError(f"forward_mode {self.forward_mode!r} not in {FORWARD_MODES}")
        if self.prompt_style not in prompt_styles():
            raise ValueError(f"prompt_style {self.prompt_style!r} not in {prompt_styles()}")
        if self.context_window is not None:
            if not (math.isfinite(self.context_window) and self.context_window > 0):
                raise ValueError(f"context_window must be a positive number of seconds, got {self.context_window}")
            if self.protocol != "offline":
                raise ValueError("context_window applies to the offline protocol (StreamingBench's leaderboard "
                                 "cuts [t - W, t] and asks offline); a streaming session keeps what its memory keeps")


# ------------------------------------------------------------------------------------------ results


@dataclass
class RecordResult:
    """One record's answer and what it cost.

    Times in seconds, sizes in bytes. ``ttft_s`` counts the work the question triggers (question
    prefill; for offline uniform sampling the re-encoding of its frames; for per-question pooling the
    re-pooling and prefill of the video), not the question-independent ingest (``ingest_s``: decoding
    excluded, encoding + prefill + compression of this video up to the answer).

    Attributes:
        index: position in the evaluated record list (sharded runs merge on it).
        prompt: the text put to the model (the first probe's, for multi-probe records).
        prediction: the model's answer (forward: the firing answer or the last poll's; probes: joined).
        reference: the right answer as text (the option's text for multiple choice).
        correct / score: score is in [0, 1] (probe records: fraction of probes right; correct = all).
        asked_at: stream time (s) the question was asked (offline: the end of what it saw).
        response_time: forward records: stream time of the answer that fired (None: never fired).
        polls: forward records: how many times the question was asked.
        visual_tokens: visual tokens that entered the LLM for this answer (streaming: since the
            stream began; uniform sampling: the memory entries its re-encoded frames made, their
            vision delimiters included).
        memory_tokens: memory entries per layer when the question was asked.
        kv_bytes / peak_kv_bytes: KV bytes at the question / the session's peak up to it.
        rss_bytes / peak_rss_bytes: the process's resident memory at the answer / its peak so far.
        frames_seen: frames the session ingested before the answer.
        stream_seconds: timestamp of the newest frame in memory.
        frames_per_s: frames_seen / ingest_s (0 when nothing was ingested).
        probes: OVO-Bench forward probes ``{"timestamp", "prediction", "answer", "correct"}``.
        error: why the record could not be answered (then ``correct`` is False).
    """

    index: int
    qid: str
    benchmark: str
    video: str
    task_type: str
    task_kind: str
    duration_class: str | None
    prompt: str
    prediction: str
    reference: str
    correct: bool
    score: float
    asked_at: float | None
    response_time: float | None
    polls: int
    ttft_s: float
    total_s: float
    visual_tokens: int
    memory_tokens: int
    kv_bytes: int
    peak_kv_bytes: int
    rss_bytes: int
    peak_rss_bytes: int
    frames_seen: int
    stream_seconds: float | None
    ingest_s: float
    frames_per_s: float
    probes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def process_memory() -> tuple[int, int]:
    """``(rss, peak rss)`` of this process in bytes (psutil when installed; peak from getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
    try:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        rss = peak
    return rss, max(peak, rss)


# ------------------------------------------------------------------------------------ prompts, scores


def format_prompt(record: QARecord, style: str = "auto") -> str:
    """The text asked for a record (see :attr:`ProtocolConfig.prompt_style`).

    "auto" is the record's benchmark's own style when a plugin owns the benchmark (ShapesWorld:
    "words"), else "letters"; a style a plugin registers formats the record itself.
    """
    if style == "auto":
        owned = plugins.BENCHMARKS.get(record.benchmark)
        style = owned.prompt_style if owned is not None else "letters"
    if style == "plain" or not record.options:
        return record.question
    if style != "letters":
        formatter = plugins.PROMPT_STYLES.get(style)
        if formatter is None:
            raise ValueError(f"prompt style {style!r}: no plugin registers it; known: {', '.join(prompt_styles())}")
        return formatter(record)
    letters = "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(record.options))
    return f"{record.question}\n{letters}\nAnswer with the option's letter from the given choices directly."


def reference_text(record: QARecord) -> str:
    if record.options:
        return f"{record.answer_letter}. {record.options[int(record.answer)]}"
    return str(record.answer)


_NEGATIONS = {"no", "not", "nothing", "never", "dont", "doesnt", "didnt", "isnt", "hasnt", "havent", "cannot"}


def says_now(text: str) -> bool:
    """Whether a forward answer reports the event: its first yes/no word is "yes", or (with no yes/no)
    it says "now" with no negation before it ("now", "it happens now"; not "not now", "no")."""
    words = normalize_answer(text).split()
    first = next((w for w in words if w in ("yes", "no")), None)
    if first is not None:
        return first == "yes"
    if "now" not in words:
        return False
    return not any(w in _NEGATIONS for w in words[: words.index("now")])


def forward_window(record: QARecord, default_tolerance: float) -> tuple[float, float] | None:
    """Stream times ``[lo, hi]`` in which a forward answer counts (None: the record gives no time).

    ShapesWorld (``extra["event_time"]``): ``[event, event + tolerance]``, a "now" before the event is
    a false alarm. StreamingBench proactive (``extra["ground_truth_time"]``): ``gt +- tolerance``.
    """
    tol = float(record.extra.get("tolerance", default_tolerance))
    if "event_time" in record.extra:
        t = float(record.extra["event_time"])
        return t, t + tol
    if "ground_truth_time" in record.extra:
        t = float(record.extra["ground_truth_time"])
        return t - tol, t + tol
    return None


# ------------------------------------------------------------------------------------------- engine


class Engine:
    """What the protocols share for one configuration: the adapter, sessions, pooling, prompts, scoring.

    Args:
        adapter: the VLM adapter.
        method: the configuration (memory policy + pooling).
        settings: the protocol settings.
        scorer: a ``RelevanceScorer``, required by ``pooling="prompt"`` (``specs.load_relevance`` builds one).
        judge: optional LLM judge for open answers (``scoring.OpenAIJudge``).
    """

    def __init__(self, adapter: VLMAdapter, method: MethodConfig, settings: ProtocolConfig,
                 scorer: Any = None, judge: Any = None) -> None:
        self.adapter = adapter
        self.method = method
        self.settings = settings
        self.judge = judge
        self.scorer = scorer
        if method.pooling == "prompt" and scorer is None:
            raise ValueError(f"configuration {method.name!r}: prompt pooling needs a relevance scorer "
                             f"(--clip, or a model with its own)")
        self.stream_pooling = self._stream_pooling()
        self.generation = GenerationConfig(max_new_tokens=settings.max_new_tokens)
        self.system_tokens = len(adapter.tokenize(adapter.prefix_text()))
        group = adapter.frames_per_group
        self.poll_frames = settings.poll_frames or group

    def _stream_pooling(self):
        """The question-independent pooling stage (None: no pooling)."""
        if self.method.pooling == "none":
            return None
        pooling = PromptGuidedPooling(PoolingConfig(kernel=self.method.kernel, padding="replicate"))
        if self.method.pooling == "avg":
            return PoolingStage(pooling)
        return PoolingStage(pooling, self.scorer, self.method.standing_query)

    def new_session(self, pooling: Any = "stream") -> StreamingSession:
        return StreamingSession(
            self.adapter,
            memory=self.method.make_policy(),
            pooling=self.stream_pooling if pooling == "stream" else pooling,
            config=StreamConfig(chunk_frames=self.settings.chunk_frames, max_new_tokens=self.settings.max_new_tokens),
        )

    def prompt(self, record: QARecord) -> str:
        return format_prompt(record, self.settings.prompt_style)

    def visual_tokens(self, session: StreamingSession, answer: Answer) -> int:
        """Visual tokens that entered the LLM for this answer."""
        if isinstance(session, UniformSession):  # offline policy: what it re-encoded for the question
            return max(0, answer.cache_tokens - self.system_tokens)
        return answer.visual_tokens_seen

    def result(self, index: int, record: QARecord, session: StreamingSession, answer: Answer | None, *,
               prompt: str, prediction: str, correct: bool, score: float | None = None,
               asked_at: float | None, ingest_s: float, ttft_s: float | None = None,
               total_s: float | None = None, visual_tokens: int | None = None, response_time: float | None = None,
               polls: int = 0, probes: list[dict[str, Any]] | None = None, error: str | None = None) -> RecordResult:
        rss, peak_rss = process_memory()
        frames = answer.frames_seen if answer is not None else session.stats.frames  # pending frames included
        kv = answer.kv_bytes if answer is not None else session.cache.kv_bytes()
        return RecordResult(
            index=index,
            qid=record.qid,
            benchmark=record.benchmark,
            video=record.video,
            task_type=record.task_type,
            task_kind=record.task_kind,
            duration_class=record.duration_class,
            prompt=prompt,
            prediction=prediction,
            reference=reference_text(record),
            correct=bool(correct),
            score=float(correct) if score is None else float(score),
            asked_at=asked_at,
            response_time=response_time,
            polls=polls,
            ttft_s=float(ttft_s if ttft_s is not None else (answer.ttft_s if answer else 0.0)),
            total_s=float(total_s if total_s is not None else (answer.total_s if answer else 0.0)),
            visual_tokens=int(visual_tokens if visual_tokens is not None
                              else (self.visual_tokens(session, answer) if answer else session.stats.visual_tokens)),
            memory_tokens=int(answer.cache_tokens if answer is not None else session.cache.physical_length()),
            kv_bytes=int(kv),
            peak_kv_bytes=int(max(session.stats.peak_kv_bytes, kv)),
            rss_bytes=rss,
            peak_rss_bytes=peak_rss,
            frames_seen=int(frames),
            stream_seconds=answer.last_frame_time if answer is not None else session.last_frame_time,
            ingest_s=float(ingest_s),
            frames_per_s=float(frames / ingest_s) if ingest_s > 0 else 0.0,
            probes=probes or [],
            error=error,
        )


#: Called just before each question: ``(session, record, asked_at)``; tests read the frame log here.
AskHook = Callable[[StreamingSession, QARecord, float], None]
#: Called with each record's result as soon as it is known (the evaluator appends it to its log).
ResultHook = Callable[[RecordResult], None]


def failure_reason(index: int, record: QARecord, err: BaseException | str) -> str:
    """``"record 3 (qid 'q7'): no frame in [50, 60] s"``: a record's failure, in one line."""
    if isinstance(err, BaseException):
        text = " ".join(str(err).split()) or type(err).__name__
        if not isinstance(err, (ValueError, FileNotFoundError, OSError, RuntimeError)):
            text = f"{type(err).__name__}: {text}"
        err = text
    return f"record {index} (qid {record.qid!r}): {err}"


def error_result(index: int, record: QARecord, err: BaseException | str, *, prompt: str = "",
                 asked_at: float | None = None) -> RecordResult:
    """The result of a record that could not be answered: ``error`` names its index, qid and the reason;
    it counts as wrong, with no cost."""
    rss, peak_rss = process_memory()
    return RecordResult(
        index=index, qid=record.qid, benchmark=record.benchmark, video=record.video, task_type=record.task_type,
        task_kind=record.task_kind, duration_class=record.duration_class, prompt=prompt, prediction="",
        reference=reference_text(record), correct=False, score=0.0, asked_at=asked_at, response_time=None,
        polls=0, ttft_s=0.0, total_s=0.0, visual_tokens=0, memory_tokens=0, kv_bytes=0, peak_kv_bytes=0,
        rss_bytes=rss, peak_rss_bytes=peak_rss, frames_seen=0, stream_seconds=None, ingest_s=0.0,
        frames_per_s=0.0, error=failure_reason(index, record, err),
    )


class _Results(list):
    """The results of one video: a list that also hands each result to ``on_result`` as it comes."""

    def __init__(self, on_result: ResultHook | None) -> None:
        super().__init__()
        self.on_result = on_result

    def append(self, result: RecordResult) -> None:  # type: ignore[override]
        super().append(result)
        if self.on_result is not None:
            self.on_result(result)


# ------------------------------------------------------------------------------------------ offline


class QuestionPooledVideo(OfflineVideoQA):
    """``streaming.offline.OfflineVideoQA`` (encode once, re-pool per question), stopping before the
    question: the evaluator needs the session (statistics, frame log), and the relevance model sees
    the question alone while the LLM gets the formatted prompt with its options."""

    def session_for(self, query: str) -> StreamingSession:
        """A fresh session holding the cached video pooled against ``query``."""
        from ..pooling.relevance import VideoPatchFeatures

        session = StreamingSession(self.adapter, memory=self.memory() if callable(self.memory) else None,
                                   config=self.config)
        for chunk in self.chunks:
            weights = None
            if self.scorer is not None:
                feats = VideoPatchFeatures(self.clip_features.features[:, chunk.clip_slice])
                with torch.no_grad():
                    weights = self.scorer.score(query, feats, grid=chunk.visual.grid)
            session.add_visual_tokens(pool_visual(chunk.visual, self.pooling, weights), chunk.frame_times)
        return session


def _offline_window(record: QARecord, settings: ProtocolConfig,
                    duration: Callable[[], float | None] = lambda: None) -> tuple[float | None, float | None]:
    """``(start, end)`` seconds a record sees offline: its segment, else ``[0, timestamp]``, cut to the last
    ``context_window`` seconds (``duration()`` gives the end of a record asked after the whole video)."""
    start, end = (record.start, record.end if record.end is not None else record.timestamp) \
        if settings.use_segments else (None, None)
    window = settings.context_window
    if window is None:
        return start, end
    if end is None:
        end = duration()
        if end is None:
            raise ValueError(f"record {record.qid!r}: --context-window needs the video's duration, which is unknown")
    earliest = float(end) - float(window)
    if earliest > 0 and (start is None or earliest > start):
        start = earliest
    return start, end


def _offline_probes(index: int, record: QARecord, source: VideoSource, engine: Engine,
                    on_ask: AskHook | None) -> RecordResult:
    """OVO-Bench forward record offline: each probe sees the video up to its own time (its last
    ``context_window`` seconds, when set), afresh."""
    settings = engine.settings
    done: list[tuple[dict[str, Any], Answer, bool]] = []
    session = None
    ingest_s = 0.0
    for p in record.extra["probes"]:
        t = float(p["timestamp"])
        start = None if settings.context_window is None else max(0.0, t - settings.context_window)
        clip = source.sample(num_frames=settings.num_frames, fps=settings.fps, start=start, end=t)
        session = engine.new_session()
        t0 = time.perf_counter()
        session.add_frames(clip.frames, clip.timestamps)
        session.flush()
        ingest_s += time.perf_counter() - t0
        if on_ask is not None:
            on_ask(session, record, t)
        answer = session.ask(str(p["question"]), engine.generation)
        done.append((p, answer, score_open(answer.text, str(p["answer"]))))
    return _probe_result(engine, index, record, session, done, ingest_s)


def _probe_result(engine: Engine, index: int, record: QARecord, session: StreamingSession,
                  done: list[tuple[dict[str, Any], Answer, bool]], ingest_s: float) -> RecordResult:
    n_ok = sum(ok for _, _, ok in done)
    return engine.result(
        index, record, session, done[-1][1], prompt=str(done[0][0]["question"]),
        prediction=" | ".join(a.text for _, a, _ in done), correct=n_ok == len(done), score=n_ok / len(done),
        asked_at=float(done[-1][0]["timestamp"]), ingest_s=ingest_s,
        ttft_s=float(np.mean([a.ttft_s for _, a, _ in done])), total_s=float(np.mean([a.total_s for _, a, _ in done])),
        probes=[{"timestamp": float(p["timestamp"]), "prediction": a.text, "answer": str(p["answer"]),
                 "correct": bool(ok)} for p, a, ok in done],
    )


def run_offline(items: Sequence[tuple[int, QARecord]], source: VideoSource, engine: Engine,
                on_ask: AskHook | None = None, on_result: ResultHook | None = None) -> list[RecordResult]:
    """Answer the records of one video offline (see the module docstring).

    A record that cannot be answered (its frames cannot be read, the model fails) gets an error result
    (:func:`error_result`) and the others go on; ``on_result`` receives each result as it comes.
    """
    settings = engine.settings
    groups: dict[tuple[float | None, float | None], list[tuple[int, QARecord]]] = defaultdict(list)
    results: list[RecordResult] = _Results(on_result)
    duration = functools.cache(lambda: source.duration)  # probed once, only if a window needs it
    for index, record in items:
        if record.task_kind == "forward" and not record.extra.get("probes"):
            raise ValueError(f"record {record.qid!r}: a forward question is answered when its event happens; "
                             "it needs the streaming protocol")
        if not record.extra.get("probes"):
            try:
                groups[_offline_window(record, settings, duration)].append((index, record))
            except ValueError as err:
                results.append(error_result(index, record, err))
    for index, record in [item for item in items if item[1].extra.get("probes")]:
        try:
            results.append(_offline_probes(index, record, source, engine, on_ask))
        except Exception as err:  # this record's failure is its result
            results.append(error_result(index, record, err))
    for (start, end), members in groups.items():
        try:  # frames that cannot be read: every record of the window fails, the others go on
            clip = source.sample(num_frames=settings.num_frames, fps=settings.fps, start=start, end=end)
            asked_at = float(end) if end is not None else float(clip.timestamps[-1])
            if engine.method.repools_per_question:
                t0 = time.perf_counter()
                qa = QuestionPooledVideo(
                    engine.adapter, PromptGuidedPooling(PoolingConfig(kernel=engine.method.kernel,
                                                                      padding="replicate")),
                    engine.scorer, memory=engine.method.make_policy, chunk_frames=settings.chunk_frames)
                with torch.no_grad():
                    qa.load(clip.frames, clip.timestamps)
                encode_s = time.perf_counter() - t0
            else:
                session = engine.new_session()
                t0 = time.perf_counter()
                session.add_frames(clip.frames, clip.timestamps)
                session.flush()
                ingest_s = time.perf_counter() - t0
        except Exception as err:
            for index, record in members:
                results.append(error_result(index, record, err, asked_at=end))
            continue
        for index, record in members:
            prompt = engine.prompt(record)
            try:
                if engine.method.repools_per_question:
                    t1 = time.perf_counter()
                    session = qa.session_for(record.question)
                    repool_s = time.perf_counter() - t1
                    if on_ask is not None:
                        on_ask(session, record, asked_at)
                    answer = session.ask(prompt, engine.generation)
                    ok = score_answer(record, answer.text, engine.judge)
                    result = engine.result(
                        index, record, session, answer, prompt=prompt, prediction=answer.text, correct=ok,
                        asked_at=asked_at, ingest_s=encode_s, ttft_s=repool_s + answer.ttft_s,
                        total_s=repool_s + answer.total_s,
                    )
                else:
                    if on_ask is not None:
                        on_ask(session, record, asked_at)
                    answer = session.ask(prompt, engine.generation)
                    ok = score_answer(record, answer.text, engine.judge)
                    result = engine.result(index, record, session, answer, prompt=prompt, prediction=answer.text,
                                           correct=ok, asked_at=asked_at, ingest_s=ingest_s)
            except Exception as err:  # ask() restored the memory: the next record sees what this one saw
                result = error_result(index, record, err, prompt=prompt, asked_at=asked_at)
            results.append(result)
    return list(results)


# ---------------------------------------------------------------------------------------- streaming


@dataclass(order=True)
class _Event:
    time: float
    order: int
    index: int = field(compare=False)
    record: QARecord = field(compare=False)
    kind: str = field(compare=False)  # "ask", "poll" (forward start) or "probe"
    probe: dict[str, Any] | None = field(compare=False, default=None)


@dataclass
class _Forward:
    index: int
    record: QARecord
    prompt: str
    polls: int = 0
    last: Answer | None = None
    watch_id: int | None = None  # forward_mode "watch": the standing query deciding for this record


def _events(items: Sequence[tuple[int, QARecord]]) -> list[_Event]:
    events: list[_Event] = []
    for index, record in items:
        probes = record.extra.get("probes") if record.task_kind == "forward" else None
        if probes:
            for p in probes:
                events.append(_Event(float(p["timestamp"]), len(events), index, record, "probe", p))
        elif record.task_kind == "forward":
            events.append(_Event(record.timestamp or 0.0, len(events), index, record, "poll"))
        else:
            t = math.inf if record.timestamp is None else float(record.timestamp)
            events.append(_Event(t, len(events), index, record, "ask"))
    return sorted(events)


class _StreamingRun:
    """The event loop of :func:`run_streaming`: one video's records through one streaming session.

    Events: each record becomes events in time order (:func:`_events`; equal times keep the order of
    ``items``). An ``ask`` is a question at its timestamp (after the whole video when it has none); a
    ``probe`` is one of an OVO-Bench forward record's timed questions (its result comes with its last
    probe); a ``poll`` starts a forward / proactive record (no probes) at its timestamp. Each kind has its
    handler (:meth:`on_ask`, :meth:`on_probe`, :meth:`on_poll`), dispatched by :meth:`handle`.

    Causality: frames are read in time order and buffered; every event whose time is before a frame's
    is handled before that frame is buffered, and the buffer is fed to the session just before a
    question (:meth:`feed`), so a question at ``t`` sees every frame ``<= t`` and none after it.
    :func:`check_causal` checks this at every question (``CausalityError`` otherwise).

    Forward records, once started, stay *active* until decided. With ``forward_mode == "poll"`` each is
    asked at its start and again after every ``engine.poll_frames`` new frames (:meth:`poll_active`),
    and decided when the model says the event happened (:meth:`poll`); with ``"watch"`` each is a
    standing query (``StreamingSession.watch``) decided by its first firing (:meth:`check_watch`). One
    whose tolerance window has closed is a miss, as is one still active at the end of the stream. The
    stream stops being read once no event is pending and no record is active; events after its last
    frame are handled at the end, at the time of the last frame (or their own, when later).

    Resume: a record in ``known`` gives no result and is not asked, but the stream is fed at its times
    (a known forward record is still polled: its answers decide when the stream is fed), so every other
    answer is what an uninterrupted run had.

    Errors: an event that raises gives its record an error result (:meth:`fail`, once per record: a
    probe record's later probes are skipped) and the loop goes on. When the video cannot be read (or its
    last frames ingested), the records still waiting, pending or active, fail with that reason.
    """

    def __init__(self, items: Sequence[tuple[int, QARecord]], source: VideoSource, engine: Engine,
                 on_ask: AskHook | None = None, on_result: ResultHook | None = None,
                 known: Collection[int] = ()) -> None:
        self.source = source
        self.engine = engine
        self.settings = engine.settings
        self.ask_hook = on_ask  # not ``on_ask``: that name is the handler of "ask" events
        self.known = known
        self.session = engine.new_session()
        self.pending = deque(_events(items))
        self.probe_left: defaultdict[int, int] = defaultdict(int)
        for ev in self.pending:
            if ev.kind == "probe":
                self.probe_left[ev.index] += 1
        self.probe_answers: dict[int, list[tuple[dict[str, Any], Answer, bool]]] = defaultdict(list)
        self.active: list[_Forward] = []
        self.results: list[RecordResult] = _Results(on_result)
        # records already given an error result (probe records have several events)
        self.failed: set[int] = set()
        self.buf_frames: list[np.ndarray] = []
        self.buf_times: list[float] = []
        self.ingest_s = 0.0
        self.now = -math.inf  # time of the newest frame handed to the session

    def feed(self) -> None:
        if self.buf_frames:
            t0 = time.perf_counter()
            try:
                self.session.add_frames(np.stack(self.buf_frames), np.asarray(self.buf_times))
            finally:  # frames that failed to go in are dropped: retrying them would repeat timestamps
                self.ingest_s += time.perf_counter() - t0
                self.buf_frames.clear()
                self.buf_times.clear()

    def ask(self, record: QARecord, prompt: str, t: float) -> Answer:
        self.feed()  # a partial temporal group stays pending: ask() sees it without changing the memory
        check_causal(self.session, t, f"record {record.qid!r}")
        if self.ask_hook is not None:
            self.ask_hook(self.session, record, t)
        return self.session.ask(prompt, self.engine.generation)

    def poll(self, fw: _Forward, t: float) -> bool:
        """forward_mode "poll": ask ``fw`` at ``t``; finish it if the model says the event happened (True)."""
        fw.polls += 1
        fw.last = self.ask(fw.record, fw.prompt, t)
        window = forward_window(fw.record, self.settings.forward_tolerance)
        fired = says_now(fw.last.text) or (
            not fw.record.options and fw.record.extra.get("ground_truth_time") is not None
            and score_open(fw.last.text, str(fw.record.answer))
        )
        if not fired:
            return False
        session = self.session
        rt = session.last_frame_time if session.last_frame_time is not None else t
        ok = window is not None and window[0] - 1e-9 <= rt <= window[1] + 1e-9
        if "ground_truth_time" in fw.record.extra and not fw.record.extra.get("event_time"):
            ok = ok and score_answer(fw.record, fw.last.text, self.engine.judge)  # proactive: content too
        self.finish_forward(fw, ok, rt)
        return True

    def finish_forward(self, fw: _Forward, ok: bool, rt: float | None, error: str | None = None) -> None:
        if fw.index in self.known:
            return
        self.results.append(self.engine.result(
            fw.index, fw.record, self.session, fw.last, prompt=fw.prompt,
            prediction=fw.last.text if fw.last else "", correct=ok, asked_at=fw.record.timestamp,
            ingest_s=self.ingest_s, response_time=rt, polls=fw.polls, error=error,
        ))

    def check_watch(self, fw: _Forward) -> bool:
        """forward_mode "watch": finish ``fw`` if its watch fired; True when done."""
        session = self.session
        w = session.watches[fw.watch_id]
        fw.polls = w.decisions
        if not w.fired:
            return False
        rt = w.fired[0].time
        window = forward_window(fw.record, self.settings.forward_tolerance)
        if window is not None and rt > window[1] + 1e-9:  # it fired only after the window had closed: a miss
            session.unwatch(fw.watch_id)
            self.finish_forward(fw, False, None)
            return True
        ok = window is not None and window[0] - 1e-9 <= rt <= window[1] + 1e-9
        if "ground_truth_time" in fw.record.extra and not fw.record.extra.get("event_time"):
            fw.last = self.ask(fw.record, fw.prompt, rt)  # proactive: the content is scored too
            ok = ok and score_answer(fw.record, fw.last.text, self.engine.judge)
        elif fw.last is None:
            fw.last = Answer(text=w.fired[0].text, token_ids=[], ttft_s=0.0, total_s=0.0,
                             cache_tokens=session.cache.physical_length(), kv_bytes=session.cache.kv_bytes(),
                             visual_tokens_seen=session.stats.visual_tokens, frames_seen=session.stats.frames,
                             last_frame_time=rt)
        session.unwatch(fw.watch_id)
        self.finish_forward(fw, ok, rt)
        return True

    def handle(self, ev: _Event, t: float) -> None:
        """Handle one event at ``t`` with its kind's handler; if it raises, that is its record's result."""
        try:
            if ev.kind == "poll":
                self.on_poll(ev, t)
            elif ev.index in self.known:  # answered before: fed as if asked, not asked
                self.feed()
            elif ev.kind == "probe":
                self.on_probe(ev, t)
            else:
                self.on_ask(ev, t)
        except Exception as err:  # ask() restored the memory: the stream goes on
            self.fail(ev.index, ev.record, err, t)

    def on_poll(self, ev: _Event, t: float) -> None:
        """A forward record starts: a standing query ("watch"), or asked now and active until it fires."""
        fw = _Forward(ev.index, ev.record, self.engine.prompt(ev.record))
        if self.settings.forward_mode == "watch":
            self.feed()  # decisions start with the chunks after the question's time
            fw.watch_id = self.session.watch(ev.record.question)
            self.active.append(fw)
        elif not self.poll(fw, t):
            self.active.append(fw)

    def on_probe(self, ev: _Event, t: float) -> None:
        """One probe of a forward record with probes; its last one gives the record's result."""
        if ev.index in self.failed:
            return
        p = ev.probe or {}
        answer = self.ask(ev.record, str(p["question"]), t)
        self.probe_answers[ev.index].append((p, answer, score_open(answer.text, str(p["answer"]))))
        self.probe_left[ev.index] -= 1
        if self.probe_left[ev.index] == 0:
            self.results.append(_probe_result(self.engine, ev.index, ev.record, self.session,
                                              self.probe_answers.pop(ev.index), self.ingest_s))

    def on_ask(self, ev: _Event, t: float) -> None:
        """A question asked once, at ``t``."""
        record = ev.record
        prompt = self.engine.prompt(record)
        answer = self.ask(record, prompt, t)
        ok = score_answer(record, answer.text, self.engine.judge)
        self.results.append(self.engine.result(ev.index, record, self.session, answer, prompt=prompt,
                                               prediction=answer.text, correct=ok, asked_at=t,
                                               ingest_s=self.ingest_s))

    def fail(self, index: int, record: QARecord, err: BaseException | str, t: float | None) -> None:
        if index not in self.failed and index not in self.known:
            self.failed.add(index)
            self.probe_answers.pop(index, None)
            self.results.append(error_result(index, record, err, asked_at=t))

    def poll_active(self) -> None:
        """Decide the active forward records at the newest frame: fired, window closed, or polled again."""
        t = self.now
        session = self.session
        if self.settings.forward_mode == "watch":
            self.feed()  # every whole chunk in: its decisions are made
        for fw in list(self.active):
            window = forward_window(fw.record, self.settings.forward_tolerance)
            if fw.watch_id is not None and fw.watch_id in session.watches and self.check_watch(fw):
                self.active.remove(fw)
                continue
            if window is not None and t > window[1] + 1e-9:
                if fw.watch_id is not None and fw.watch_id in session.watches:
                    session.unwatch(fw.watch_id)
                self.finish_forward(fw, False, None)  # the window has closed: a miss, whatever comes later
                self.active.remove(fw)
                continue
            if fw.watch_id is not None:
                continue
            try:
                fired = self.poll(fw, t)
            except Exception as err:
                self.fail(fw.index, fw.record, err, t)
                fired = True
            if fired:
                self.active.remove(fw)

    def run(self) -> list[RecordResult]:
        """Read the stream frame by frame, handling events and polls on the way, then the end of it."""
        settings, pending, active = self.settings, self.pending, self.active
        since_poll = 0
        broken: str | None = None  # why the video could not be read (or ingested) to its end
        stream = None
        try:
            stream = self.source.stream(fps=settings.fps, chunk_frames=settings.chunk_frames)
            for clip in stream:
                for frame, t in zip(clip.frames, clip.timestamps, strict=True):
                    t = float(t)
                    # Every frame up to a question's time is in before it is asked, and no later one.
                    while pending and pending[0].time < t:
                        ev = pending.popleft()
                        self.handle(ev, ev.time)
                    if not pending and not active:
                        break
                    self.buf_frames.append(frame)
                    self.buf_times.append(t)
                    self.now = t
                    since_poll += 1
                    if active and since_poll >= self.engine.poll_frames:
                        since_poll = 0
                        self.poll_active()
                    elif not active:
                        since_poll = 0
                else:
                    continue
                break  # nothing left to ask: stop reading the stream
        except Exception as err:  # the video: the records still waiting fail with its reason
            where = f" after {self.now:.2f}s" if math.isfinite(self.now) else ""
            broken = f"the video could not be read{where}: {' '.join(str(err).split()) or type(err).__name__}"
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        if broken is None:
            try:
                self.feed()
            except Exception as err:
                reason = " ".join(str(err).split()) or type(err).__name__
                broken = f"the last frames could not be ingested: {reason}"
        if broken is not None:
            for ev in pending:
                self.fail(ev.index, ev.record, broken, None)
            for fw in active:
                self.fail(fw.index, fw.record, broken, None)
            return list(self.results)
        if active and since_poll:
            self.poll_active()
        while pending:  # questions after the end of the stream
            ev = pending.popleft()
            end = self.now if math.isfinite(self.now) else 0.0  # no frame at all: asked at the start
            self.handle(ev, max(end, ev.time) if math.isfinite(ev.time) else end)
        for fw in active:  # never fired: a miss
            self.finish_forward(fw, False, None)
        return list(self.results)


def run_streaming(items: Sequence[tuple[int, QARecord]], source: VideoSource, engine: Engine,
                  on_ask: AskHook | None = None, on_result: ResultHook | None = None,
                  known: Collection[int] = ()) -> list[RecordResult]:
    """Answer the records of one video through one streaming session (see the module docstring).

    ``known``: indices among ``items`` answered before (an interrupted run being resumed). They give no
    result and are not asked; the stream is still fed at their times, so the memory, and with it every
    other answer, is what an uninterrupted run had (a known forward record is still polled, since its
    answers decide when the stream is fed).

    A record whose question fails (the model raises, its frames cannot be ingested) gets an error result
    (:func:`error_result`) and the stream goes on; when the video cannot be read any further, the records
    still waiting get one. ``on_result`` receives each result as it comes. The event loop itself:
    :class:`_StreamingRun`.
    """
    return _StreamingRun(items, source, engine, on_ask=on_ask, on_result=on_result, known=known).run()
