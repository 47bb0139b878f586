"""The evaluation runner: records in, per-record results out, for one configuration or a comparison.

``run_eval(EvalConfig(...))`` loads the benchmark's records (or takes them), resolves each video's
frames, runs the chosen protocol video by video with a progress bar, and returns an :class:`EvalRun`
(per-record :class:`~.protocols.RecordResult` s, with accuracy and cost). ``run_comparison`` runs
several configurations (full context, uniform-N, recent window, StreamingLLM, HERMES, retrieval,
pooling, HERMES + pooling: :data:`CONFIGURATIONS`) at several budgets on the same records and model.

Sharding (``accelerate launch``): records are split by video across processes (a video's stream
must stay in one process), each process answers its shard, and the main process merges the
results by record index (:func:`shard_items`, :func:`merge_results`, :func:`gather_results`).

What this module does not know: how a protocol feeds a session (``protocols``), file formats of
results and plots (``report``), the command line (``command``).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..plugins import BENCHMARKS
from .frames import SOURCE_MODES, SourceResolver, parse_max_pixels
from .loaders import canonical_name, load_benchmark
from .protocols import (
    PROTOCOLS,
    AskHook,
    Engine,
    MethodConfig,
    ProtocolConfig,
    RecordResult,
    ResultHook,
    error_result,
    prompt_styles,
    run_offline,
    run_streaming,
)
from .records import TASK_KINDS, QARecord

#: Configuration presets: name -> MethodConfig fields. "pooling" presets take ``EvalConfig.pool_mode``.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "full": {"memory": "full"},  # full context: every visual token stays in the KV cache
    "uniform": {"memory": "uniform"},  # offline uniform-N: re-encode N sampled frames per question
    "window": {"memory": "window"},  # recent window (SimpleStream)
    "sink": {"memory": "sink"},  # StreamingLLM: attention sinks + recent window
    "hermes": {"memory": "hermes"},  # hierarchical KV memory
    "retrieval": {"memory": "retrieval"},  # recent window + host store retrieved by the question (ReKV-style)
    "pooling": {"memory": "full", "pooling": True},  # PPLLaVA pooling, full cache
    "hermes+pooling": {"memory": "hermes", "pooling": True},
}
ALIASES = {"streamingllm": "sink", "recent": "window", "simplestream": "window", "full-context": "full",
           "hermes_pooling": "hermes+pooling", "ppllava": "pooling"}


def resolve_configuration(name: str) -> tuple[str, dict[str, Any]]:
    """``(canonical name, preset fields)``; ``uniform-N`` is uniform sampling of N frames per question."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key.startswith("uniform-"):
        try:
            n = int(key.split("-", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"configuration {name!r}: expected uniform-N with N >= 1 frames")
        return key, {"memory": "uniform", "memory_kwargs": {"frames": n}, "fixed": True}
    if key not in CONFIGURATIONS:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGURATIONS)}, uniform-N "
                         f"(aliases: {', '.join(ALIASES)})")
    return key, dict(CONFIGURATIONS[key])


@dataclass
class EvalConfig:
    """One evaluation run: a benchmark, a protocol, a configuration and a model.

    Attributes:
        benchmark: a loader name (``loaders.BENCHMARKS``) or a plugin's (``plugins.BENCHMARKS``: "shapesworld").
        annotations: the benchmark's annotation file (ShapesWorld: a JSON list of records written by
            :func:`save_records`; None generates ``world_videos`` videos of ``world_duration`` s).
        videos: folder that the records' video paths are relative to.
        answers: separate answers file (EgoSchema, ActivityNet-QA); subset: StreamingBench / VCGBench.
        model: a model spec (``specs.load_model``: checkpoint folder, hub id, or a registered name).
        protocol: "offline" or "streaming".
        config: configuration name (:data:`CONFIGURATIONS`, aliases, "uniform-N").
        memory: memory policy overriding the configuration's; budget: visual tokens per layer.
        pool_mode: pooling of the pooling configurations: "avg" or "prompt" (needs a relevance model).
        pool_kernel: pooling kernel (T, H, W) over the model's token grid.
        num_frames / fps: offline frames (uniform N, or a rate); streaming: fps of the stream.
        chunk_frames / max_new_tokens / poll_frames / forward_mode / forward_tolerance / prompt_style: see
            ProtocolConfig.
        limit: evaluate the first N records (after the task-kind filter).
        task_kinds: keep only these task kinds (empty: all).
        frame_source: "auto", "world" or "file" (see ``frames.SourceResolver``).
        clip: relevance spec for prompt pooling (``specs.load_relevance``; None: the model's own, an
            error for a model that has none).
        standing_query: streaming prompt pooling against this query.
        judge: score open answers with the LLM judge configured by PPLLAVA_JUDGE_* variables.
        device: torch device.
        world_*: ShapesWorld generation when no annotations are given.
        context_window: offline: seconds before the question it sees (StreamingBench's leaderboard: 60; see
            ``protocols``); None: the whole prefix.
        max_pixels: pixels per frame at most (``frames.fit_pixels``; an int, or a ``frames.PIXEL_PRESETS``
            name); None: frames as stored.
    """

    benchmark: str = "shapesworld"
    annotations: str | None = None
    videos: str | None = None
    answers: str | None = None
    subset: str | None = None
    model: str = "tiny-qwen2.5-vl"
    protocol: str = "offline"
    config: str = "full"
    memory: str | None = None
    budget: int | None = None
    pool_mode: str = "avg"
    pool_kernel: tuple[int, int, int] = (2, 3, 3)
    num_frames: int | None = 32
    fps: float | None = None
    chunk_frames: int = 8
    max_new_tokens: int = 16
    poll_frames: int | None = None
    forward_mode: str = "poll"
    forward_tolerance: float = 2.0
    prompt_style: str = "auto"
    limit: int | None = None
    task_kinds: tuple[str, ...] = ()
    frame_source: str = "auto"
    clip: str | None = None
    standing_query: str | None = None
    judge: bool = False
    device: str | None = None
    world_videos: int = 2
    world_duration: float = 60.0
    world_split: str = "test"
    world_seed: int = 0
    context_window: float | None = None
    max_pixels: int | str | None = None

    def __post_init__(self) -> None:
        self.config, _ = resolve_configuration(self.config)
        self.max_pixels = parse_max_pixels(self.max_pixels)
        if self.benchmark.lower() in BENCHMARKS:  # a plugin's benchmark (ShapesWorld): no file needed
            self.benchmark = BENCHMARKS.canonical(self.benchmark.lower())
        else:
            self.benchmark = canonical_name(self.benchmark)
            if self.annotations is None:
                raise ValueError(f"benchmark {self.benchmark!r} needs an annotation file")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} not in {PROTOCOLS}")
        if self.pool_mode not in ("avg", "prompt"):
            raise ValueError(f"pool_mode {self.pool_mode!r} not in ('avg', 'prompt')")
        if self.prompt_style not in prompt_styles():
            raise ValueError(f"prompt_style {self.prompt_style!r} not in {prompt_styles()}")
        if self.frame_source not in SOURCE_MODES:
            raise ValueError(f"frame_source {self.frame_source!r} not in {SOURCE_MODES}")
        self.task_kinds = tuple(self.task_kinds)
        bad = set(self.task_kinds) - set(TASK_KINDS)
        if bad:
            raise ValueError(f"task_kinds {sorted(bad)} not in {TASK_KINDS}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.world_videos < 1 or self.world_duration <= 0:
            raise ValueError("world_videos must be >= 1 and world_duration > 0")
        self.pool_kernel = tuple(int(k) for k in self.pool_kernel)  # type: ignore[assignment]
        self.method()  # validates memory / budget / pooling together
        self.protocol_config()

    @property
    def label(self) -> str:
        """"hermes@256": the configuration and, where it applies, the budget."""
        return self.config if self.budget is None or not self.method().uses_budget else f"{self.config}@{self.budget}"

    def method(self) -> MethodConfig:
        _, preset = resolve_configuration(self.config)
        pooling = self.pool_mode if preset.pop("pooling", False) else "none"
        fixed = preset.pop("fixed", False)  # uniform-N: the frame count is the setting, not the budget
        memory = self.memory or preset.pop("memory")
        preset.pop("memory", None)
        return MethodConfig(
            name=self.config, memory=memory, budget=None if fixed else self.budget, pooling=pooling,
            kernel=self.pool_kernel, standing_query=self.standing_query if pooling == "prompt" else None,
            memory_kwargs=preset.get("memory_kwargs", {}),
        )

    def protocol_config(self) -> ProtocolConfig:
        return ProtocolConfig(
            protocol=self.protocol, num_frames=self.num_frames, fps=self.fps, chunk_frames=self.chunk_frames,
            max_new_tokens=self.max_new_tokens, poll_frames=self.poll_frames, forward_mode=self.forward_mode,
            forward_tolerance=self.forward_tolerance, prompt_style=self.prompt_style,
            context_window=self.context_window,
        )


@dataclass
class EvalRun:
    """Results of one configuration on one set of records.

    Attributes:
        config: the run's settings; method: the configuration it resolved to.
        results: one per evaluated record (merged over shards), in record order.
        skipped: records the loader could not read ``{"index", "qid", "reason"}``.
        seconds: wall time of the run (this process).
        split: optional label of the record set ("short", "long", "streaming"), for reports.
    """

    config: EvalConfig
    method: MethodConfig
    results: list[RecordResult]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    split: str | None = None

    @property
    def accuracy(self) -> float:
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0


# ------------------------------------------------------------------------------------------- models


def build_model_adapter(model: str, device: str | None = None):
    """The adapter of a ``--model`` spec (``specs.load_model``); ``specs.SpecError`` on a bad spec."""
    from ..specs import load_model

    return load_model(model, device=device)


def build_scorer(config: EvalConfig, adapter) -> Any:
    """The relevance model for prompt pooling (None when no configuration needs one): ``config.clip``,
    else the model's own; ``specs.SpecError`` naming ``--clip`` when the model has none."""
    if config.method().pooling != "prompt":
        return None
    from ..specs import load_relevance, relevance_spec

    spec = relevance_spec(config.model, config.clip, needs="--pool-mode prompt")
    return load_relevance(spec, frames_per_token=adapter.frames_per_group)


# ------------------------------------------------------------------------------------------ records


def save_records(records: Iterable[QARecord], path: str | Path) -> Path:
    """Write records as a JSON list (the "shapesworld" annotation format of :func:`load_records`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in records], indent=1))
    return path


def load_records_json(path: str | Path) -> list[QARecord]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return [QARecord(**item) for item in data]


def load_records(config: EvalConfig) -> tuple[list[QARecord], list[dict[str, Any]], list[Any]]:
    """``(records, skipped, videos)`` for a config: a plugin's benchmark loads its own (ShapesWorld: its
    annotation file or a generated split, whose worlds come back as ``videos``), others their annotation file."""
    owned = BENCHMARKS.get(config.benchmark)
    if owned is not None:
        return owned.load(config)
    kw = {k: v for k, v in (("answers_path", config.answers), ("subset", config.subset)) if v is not None}
    loaded = load_benchmark(config.benchmark, config.annotations, config.videos, **kw)
    skipped = [asdict(s) for s in loaded.skipped]
    return loaded.records, skipped, []


def select(records: Sequence[QARecord], config: EvalConfig) -> list[QARecord]:
    """The records a config evaluates: its task kinds, then its limit."""
    out = [r for r in records if not config.task_kinds or r.task_kind in config.task_kinds]
    return out[: config.limit] if config.limit is not None else out


# ----------------------------------------------------------------------------------------- sharding


def shard_items(items: Sequence[tuple[int, QARecord]], rank: int, world_size: int) -> list[tuple[int, QARecord]]:
    """This process's share: whole videos, dealt round-robin in order of first appearance."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size} processes")
    videos: dict[str, int] = {}
    for _, record in items:
        videos.setdefault(record.video, len(videos))
    return [(i, r) for i, r in items if videos[r.video] % world_size == rank]


def merge_results(parts: Iterable[Sequence[RecordResult]], expected: int | None = None) -> list[RecordResult]:
    """Results of all shards in record order; raises ``ValueError`` on a duplicate or missing index."""
    merged = sorted((r for part in parts for r in part), key=lambda r: r.index)
    indices = [r.index for r in merged]
    if len(set(indices)) != len(indices):
        raise ValueError("merge_results: a record was answered by more than one shard")
    if expected is not None and len(merged) != expected:
        raise ValueError(f"merge_results: {len(merged)} results for {expected} records")
    return merged


def _accelerator_backend_available() -> bool:
    """Whether accelerate would start a device process group here (NCCL, XCCL, HCCL, ...).

    ``accelerate launch --cpu`` (``ACCELERATE_USE_CPU``) asks for CPU processes even where a device is
    present. Apple's MPS has no process group backend in accelerate: it counts as no accelerator.
    """
    from accelerate import utils as accel_utils
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return False
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("is_npu_available", "is_mlu_available", "is_musa_available", "is_sdaa_available",
                 "is_hpu_available", "is_neuron_available"):
        check = getattr(accel_utils, name, None)
        if check is not None and check():
            return True
    xpu, xccl = getattr(accel_utils, "is_xpu_available", None), getattr(accel_utils, "is_xccl_available", None)
    return bool(xpu is not None and xpu() and (xccl is None or xccl()))


def process_shard() -> tuple[int, int]:
    """``(process index, number of processes)`` under ``accelerate launch`` / ``torchrun``; ``(0, 1)`` otherwise.

    On a host without an accelerator the process group is created with ``PartialState(cpu=True)``
    (gloo): without it accelerate sees no distributed setup, every process reports itself as the only
    one, and each answers every record. Raises ``RuntimeError`` when the launcher's ``WORLD_SIZE``
    and the process group disagree, rather than evaluating every record in every process.
    """
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if expected <= 1:
        return 0, 1
    from accelerate import PartialState

    state = PartialState(cpu=not _accelerator_backend_available())
    if state.num_processes != expected:
        raise RuntimeError(
            f"WORLD_SIZE is {expected} but accelerate set up {state.num_processes} process(es) "
            f"({state.distributed_type}): launch with `accelerate launch` or `torchrun`"
        )
    return state.process_index, state.num_processes


def gather_results(results: list[RecordResult], world_size: int) -> list[RecordResult]:
    """Every process's results, on every process (accelerate's ``gather_object``)."""
    if world_size <= 1:
        return results
    from accelerate.utils import gather_object

    return list(gather_object(results))


# -------------------------------------------------------------------------------------------- runs


def run_eval(config: EvalConfig, *, records: Sequence[QARecord] | None = None, adapter: Any = None,
             scorer: Any = None, worlds: Iterable[Any] = (), skipped: Sequence[dict[str, Any]] = (),
             shard: tuple[int, int] | None = None, gather: Callable[[list[RecordResult], int], list] | None = None,
             progress: bool = True, on_ask: AskHook | None = None, split: str | None = None,
             done: Iterable[RecordResult] = (), on_result: ResultHook | None = None) -> EvalRun:
    """Evaluate one configuration.

    Each record's failure (its video missing, unreadable or too short, an exception in the model) is
    that record's result (``RecordResult.error`` names its index, qid and the reason) and the run goes
    on. Results already known (``done``, e.g. read back from an interrupted run's log) are not asked
    again; the run's results are the same as if they had been answered now.

    Args:
        config: what to run.
        records: records to evaluate (default: loaded or generated from ``config``).
        adapter / scorer: already built model adapter and relevance model (default: built from config).
        worlds: ShapesWorld worlds already generated, so frames render without regenerating.
        shard: ``(rank, world_size)``: answer only this process's videos (default: accelerate's,
            or everything); the results are then gathered with ``gather`` (default
            :func:`gather_results`) and merged. Pass ``gather=lambda r, n: r`` to keep the shard's own.
        progress: show a tqdm progress bar (records answered).
        on_ask: called before each question with ``(session, record, asked_at)``.
        split: label stored on the run (reports group by it).
        done: results of this configuration answered before (by record index; other shards' are ignored).
        on_result: called with each new result as soon as it is known (the command appends it to its log).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    worlds = list(worlds)
    if records is None:
        records, loaded_skipped, generated = load_records(config)
        skipped = list(skipped) + loaded_skipped
        worlds += generated
    chosen = select(records, config)
    skipped = list(skipped)
    if config.protocol == "offline":  # "tell me when ..." has no answer at one moment
        skipped += [{"index": None, "qid": r.qid, "reason": "forward question: needs the streaming protocol"}
                    for r in chosen if r.task_kind == "forward" and not r.extra.get("probes")]
        chosen = [r for r in chosen if r.task_kind != "forward" or r.extra.get("probes")]
    items = list(enumerate(chosen))
    rank, world_size = shard if shard is not None else process_shard()
    mine = shard_items(items, rank, world_size)
    adapter = adapter if adapter is not None else build_model_adapter(config.model, config.device)
    method = config.method()
    if scorer is None and method.pooling == "prompt":
        scorer = build_scorer(config, adapter)
    judge = None
    if config.judge:
        from .scoring import OpenAIJudge

        judge = OpenAIJudge.from_env()
        if judge is None:
            raise ValueError("--judge needs PPLLAVA_JUDGE_BASE_URL and PPLLAVA_JUDGE_MODEL")
    engine = Engine(adapter, method, config.protocol_config(), scorer=scorer, judge=judge)
    resolver = SourceResolver(config.videos, config.frame_source, worlds, max_pixels=config.max_pixels)
    run = run_offline if config.protocol == "offline" else run_streaming
    by_video: dict[str, list[tuple[int, QARecord]]] = defaultdict(list)
    for index, record in mine:
        by_video[record.video].append((index, record))
    known = {r.index: r for r in done}
    results: list[RecordResult] = [known[i] for i, _ in mine if i in known]
    bar = tqdm(total=len(mine), initial=len(results), desc=config.label, unit="q", disable=not progress,
               leave=False)
    try:
        for video_items in by_video.values():
            todo = [(i, r) for i, r in video_items if i not in known]
            if not todo:
                continue
            answered: dict[int, RecordResult] = {}

            def keep(result: RecordResult, answered: dict[int, RecordResult] = answered) -> None:
                answered[result.index] = result
                bar.update(1)
                if on_result is not None:
                    on_result(result)

            try:
                if config.protocol == "streaming" and len(todo) < len(video_items):
                    # the stream is fed as before at the known records' times: the same memory, the same answers
                    run_streaming(video_items, resolver(todo[0][1]), engine, on_ask=on_ask, on_result=keep,
                                  known={i for i, _ in video_items if i in known})
                else:
                    run(todo, resolver(todo[0][1]), engine, on_ask=on_ask, on_result=keep)
            except Exception as err:  # the video as a whole (missing, unreadable): its records' result
                for index, record in todo:
                    if index not in answered:
                        keep(error_result(index, record, err))
            for index, record in todo:  # every record has exactly one result
                if index not in answered:
                    keep(error_result(index, record, "the protocol gave no result"))
            results.extend(answered[i] for i, _ in todo)
    finally:
        bar.close()
    if world_size > 1:
        results = (gather or gather_results)(results, world_size)
    # A real gather brings every shard's results: then all records must be there exactly once.
    results = merge_results([results], expected=len(items) if world_size == 1 or gather is None else None)
    return EvalRun(config=config, method=method, results=results, skipped=skipped,
                   seconds=time.perf_counter() - t0, split=split)


def check_engine(engine: Engine) -> None:
    """A configuration the model cannot run at all (a budget below the system prompt, positions that do not
    fit) is the run's error, raised before any record, not every record's: ``ValueError``."""
    try:
        engine.new_session().start()
    except ValueError as err:
        raise ValueError(f"configuration {engine.method.name!r}: {err}") from None


def comparison_configs(base: EvalConfig, configs: Sequence[str], budgets: Sequence[int | None]) -> list[EvalConfig]:
    """One EvalConfig per (configuration, budget); configurations the budget does not change
    (full context, pooling, uniform-N) appear once."""
    from dataclasses import replace

    out: list[EvalConfig] = []
    budgets = list(budgets) or [base.budget]
    for name in configs:
        first = replace(base, config=name, budget=budgets[0])
        if not first.method().uses_budget or first.method().budget is None and first.config.startswith("uniform-"):
            out.append(replace(first, budget=None))
            continue
        out.extend(replace(base, config=name, budget=b) for b in budgets)
    return out


def run_comparison(base: EvalConfig, configs: Sequence[str], budgets: Sequence[int | None], *,
                   records: Sequence[QARecord] | None = None, adapter: Any = None, scorer: Any = None,
                   worlds: Iterable[Any] = (), progress: bool = True, split: str | None = None,
                   shard: tuple[int, int] | None = None, on_run: Callable[[EvalRun], None] | None = None,
                   done: dict[str, list[RecordResult]] | None = None,
                   on_result: Callable[[str, RecordResult], None] | None = None) -> list[EvalRun]:
    """Run several configurations at several budgets on the same records with one model.

    ``done`` maps a run's label (``EvalConfig.label``) to results answered before (not asked again);
    ``on_result(label, result)`` gets each new result as it comes (see :func:`run_eval`)."""
    worlds = list(worlds)
    skipped: list[dict[str, Any]] = []
    if records is None:
        records, skipped, generated = load_records(base)
        worlds += generated
    adapter = adapter if adapter is not None else build_model_adapter(base.model, base.device)
    runs = []
    planned = comparison_configs(base, configs, budgets)
    for cfg in planned:  # every configuration checked against the model before the first record
        if scorer is None and cfg.method().pooling == "prompt":
            scorer = build_scorer(cfg, adapter)
        check_engine(Engine(adapter, cfg.method(), cfg.protocol_config(), scorer=scorer))
    for cfg in planned:
        label = cfg.label
        hook = None if on_result is None else (lambda r, label=label: on_result(label, r))
        run = run_eval(cfg, records=records, adapter=adapter, scorer=scorer, worlds=worlds, skipped=skipped,
                       progress=progress, split=split, shard=shard, done=(done or {}).get(label, ()),
                       on_result=hook)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return runs


RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RecordResult))
