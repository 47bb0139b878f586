"""``ppllava-hermes demo``: stream a generated ShapesWorld video through the shipped model with pooling and
HERMES memory, ask timed questions, print each answer beside the truth, end with the accuracy.

A standing query (``--watch``, default "Tell me when a new shape appears.") decides after every chunk;
each alert is printed as it fires, beside the world's own event log: right when a shape appeared within
the last chunk and the tolerance before it, a false alarm otherwise.

Everything runs through the library's real paths: the video is written as an mp4 and read back by the
video reader; frames go through the adapter, the pooling stage and the memory policy of a
StreamingSession; questions are asked when the stream reaches their time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from ..evaluation.records import QARecord
from ..evaluation.scoring import score_answer
from ..specs import (
    POOL_MODES,
    SpecError,
    build_policy,
    load_model,
    load_relevance,
    model_note,
    policy_names,
    positive_float,
    positive_int,
)
from ..streaming import GenerationConfig, StreamConfig, StreamingSession, WatchEvent
from ..streaming.timed import TimedQuestion, run_timed_questions
from ..video import stream_video
from .generator import WorldConfig, generate_world
from .model import has_shipped_model, load_shapesworld_adapter, prompt_for
from .tasks import TaskConfig, generate_questions

#: question types the demo asks: about now, and about the past (answers checked against the event log).
DEMO_TYPES = ("color_now", "shape_now", "count_now", "first_appear", "color_change")
CHUNK_FRAMES = 4
DEFAULT_BUDGET = 256  # visual tokens per layer: about 15 chunks of 16 tokens at 1 fps
DEFAULT_WATCH = "Tell me when a new shape appears."
WATCH_TOLERANCE_S = 2.0  # an alert may come this long after the chunk that shows the event (the forward tasks')


def pick_questions(records: list[QARecord], n: int) -> list[QARecord]:
    """Up to ``n`` questions spread over the video, cycling through the types, one per moment."""
    by_type: dict[str, list[QARecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.timestamp or 0.0):
        by_type[r.task_type].append(r)
    picked: list[QARecord] = []
    times: set[float] = set()
    while len(picked) < n and any(by_type.values()):
        for t in DEMO_TYPES:
            if by_type[t] and len(picked) < n:
                r = by_type[t].pop(0)
                if r.timestamp not in times:
                    picked.append(r)
                    times.add(r.timestamp)
    return sorted(picked, key=lambda r: r.timestamp or 0.0)


def is_correct(answer: str, record: QARecord) -> bool:
    return score_answer(record, answer)


def truth(record: QARecord) -> str:
    return record.options[record.answer] if record.options else str(record.answer)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``ppllava-hermes demo``."""
    p.add_argument("--minutes", type=positive_float, default=3.0,
                   help="length of the generated video, > 0 (default 3)")
    p.add_argument("--seed", type=int, default=7, help="world seed (default 7)")
    p.add_argument("--questions", type=positive_int, default=12, help="how many timed questions, >= 1 (default 12)")
    p.add_argument("--model", default=None, help="default: the shipped ShapesWorld model, else a tiny random one")
    p.add_argument("--memory", default="hermes", choices=list(policy_names()))
    p.add_argument("--budget", type=positive_int, default=None,
                   help=f"visual tokens kept per layer, >= 1 (default {DEFAULT_BUDGET})")
    p.add_argument("--pool", default="prompt", choices=list(POOL_MODES))
    p.add_argument("--watch", default=DEFAULT_WATCH,
                   help=f"a standing query decided after every chunk (default {DEFAULT_WATCH!r}; '' for none)")
    p.add_argument("--quiet", action="store_true")


def _build(spec: str):
    note = model_note(spec)
    if note:
        print(f"note: {note}")
    return load_model(spec)


def _load(args: argparse.Namespace):
    if args.model:
        return _build(args.model), args.model.split(":", 1)[0] != "shapesworld"  # a ShapesWorld checkpoint: trained
    if has_shipped_model():
        return load_shapesworld_adapter(), False
    print("note: no trained ShapesWorld model is shipped in this build.")
    return _build("tiny-qwen2.5-vl"), True


def _pooling(args: argparse.Namespace, adapter):
    from ..pooling import PoolingConfig, PromptGuidedPooling
    from ..streaming.pooling_stage import PoolingStage

    if args.pool == "none":
        return None, "none"
    pooling = PromptGuidedPooling(PoolingConfig(kernel=(1, 2, 2), padding="replicate"))
    if args.pool == "prompt":
        try:
            scorer = load_relevance("shapesworld", frames_per_token=adapter.frames_per_group)
            # a standing query given at session start: every chunk is pooled against it
            return PoolingStage(pooling, scorer, "a coloured shape"), "prompt-guided (1,2,2), query 'a coloured shape'"
        except SpecError:
            print("note: no ShapesWorld CLIP shipped; pooling by plain averaging instead")
    return PoolingStage(pooling), "average (1,2,2)"


def run_demo(args: argparse.Namespace) -> int:
    """The CLI entry: run the demo and return the exit code."""
    demo(args)
    return 0


def demo(args: argparse.Namespace) -> dict:
    """Run the demo; returns ``{"accuracy", "n", "seconds", "per_kind"}``."""
    t_start = time.perf_counter()
    world = generate_world(WorldConfig(duration=args.minutes * 60.0, fps=1.0), args.seed)
    records = generate_questions(world, TaskConfig(task_types=DEMO_TYPES, questions_per_type=args.questions))
    chosen = pick_questions(records, args.questions)
    adapter, random_model = _load(args)
    stage, pool_desc = _pooling(args, adapter)
    budget = DEFAULT_BUDGET if args.budget is None else args.budget
    policy = build_policy(args.memory, budget if args.memory != "full" else None)
    session = StreamingSession(adapter, memory=policy, pooling=stage, config=StreamConfig(chunk_frames=CHUNK_FRAMES))
    print(f"ShapesWorld demo: {args.minutes:g} min video (seed {args.seed}, {world.n_frames} frames at 1 fps), "
          f"{len(chosen)} timed questions; memory {args.memory} (budget {budget} visual tokens/layer), "
          f"pooling {pool_desc}")
    score: dict[str, list[bool]] = defaultdict(list)

    def report(q: TimedQuestion, ans) -> None:
        rec: QARecord = q.payload
        ok = is_correct(ans.text, rec)
        score[rec.task_kind].append(ok)
        mark = "right" if ok else "WRONG"
        print(f"[{q.time:6.1f}s] {rec.question}  ({rec.task_kind})\n"
              f"          model: {ans.text.strip()!r:12} truth: {truth(rec)!r:12} {mark}   "
              f"TTFT {ans.ttft_s * 1000:6.1f} ms   KV {ans.kv_bytes / 1024:7.1f} KiB ({ans.cache_tokens} entries/layer)")

    appears = [e.time for e in world.events if e.kind == "appear" and e.t_index > 0]
    alerts: list[bool] = []
    chunk_s = CHUNK_FRAMES / world.fps

    def alert(ev: WatchEvent) -> None:
        # the decision saw frames up to ev.time: an appearance in this chunk or the tolerance before it is right
        hit = [t for t in appears if ev.time - chunk_s - WATCH_TOLERANCE_S < t <= ev.time]
        alerts.append(bool(hit))
        what = f"a shape appeared at {hit[-1]:.0f}s  right" if hit else "no shape appeared just before  FALSE ALARM"
        print(f"[{ev.time:6.1f}s] ALERT {ev.query!r}: {ev.text!r} (score {ev.score:.2f})  truth: {what}")

    if args.watch:
        session.watch(args.watch, callback=alert)
    with tempfile.TemporaryDirectory() as tmp:
        path = world.save_mp4(Path(tmp) / f"shapesworld_{args.seed}.mp4")
        clips = stream_video(path, chunk_frames=CHUNK_FRAMES)
        questions = [TimedQuestion(float(r.timestamp), prompt_for(r), r) for r in chosen]
        run_timed_questions(session, clips, questions, GenerationConfig(max_new_tokens=3), on_answer=report)
    total = [x for v in score.values() for x in v]
    st = session.stats
    print(f"\naccuracy {sum(total)}/{len(total)} = {100 * sum(total) / max(1, len(total)):.0f}%  "
          + "  ".join(f"{k}: {sum(v)}/{len(v)}" for k, v in sorted(score.items())))
    print(f"{st.frames} frames, {st.visual_tokens} visual tokens into the LLM, peak KV {st.peak_kv_bytes / 1024:.1f} KiB, "
          f"compression {st.compress_s:.2f}s of {st.encode_s + st.prefill_s + st.compress_s:.2f}s ingest; "
          f"demo took {time.perf_counter() - t_start:.1f}s")
    if args.watch:
        caught = sum(any(t <= a.time <= t + chunk_s + WATCH_TOLERANCE_S for a in session.watches[0].fired)
                     for t in appears if t <= st.frames / world.fps)
        print(f"watch {args.watch!r}: {len(alerts)} alerts, {sum(alerts)} right; {caught} of {len(appears)} "
              f"appearances reported; decisions {st.watch_s * 1000 / max(1, st.chunks):.1f} ms per chunk")
    if random_model:
        print("(random model: accuracy near chance is expected)")
    return {"accuracy": sum(total) / max(1, len(total)), "n": len(total), "alerts": len(alerts),
            "alerts_right": sum(alerts),
            "seconds": time.perf_counter() - t_start,
            "per_kind": {k: sum(v) / len(v) for k, v in sorted(score.items())}}
