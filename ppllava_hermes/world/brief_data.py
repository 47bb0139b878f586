"""ShapesWorld data in the brief's three benchmark formats (the ``shapesworld`` data writer).

Registered in :data:`~ppllava_hermes.plugins.DATA_WRITERS` by the plugin; the layout it writes into is
:mod:`ppllava_hermes.evaluation.brief_data`'s. From held-out ``split`` seeds (default: test), disjoint
per benchmark (video indices ``seed``, ``seed + 1000`` and ``seed + 2000`` on), deterministic in its
settings:

* StreamBench: ``videos`` worlds of ``duration`` s, one entry each, whose breakpoints are the world's
  real-time and backward questions (:func:`~.tasks.generate_questions`, open answers: the word is the
  reference answer). Classes, our mapping: real-time questions are SF (simple factual), backward
  questions asked at least :data:`LONG_TERM_S` s after their event LM (long-term memory), other backward
  questions SM (short-term memory); KG, CI and OS have no ShapesWorld counterpart and do not occur.
  ``class_1`` cycles through Ego, WebVideo and Movie; every third entry has no ``video_name`` (as in the
  release).
* MSR-VTT: ``videos`` worlds of ``caption_duration`` s (MSR-VTT clips run 10-30 s), ids ``video7010``
  on (the test split's first id), split "test"; the reference captions are ShapesWorld's caption
  generator (:func:`~.tasks.frame_caption`: "a red circle and a blue square") at five moments spread
  over the clip, repeats dropped, ``sen_id`` numbered across the file.
* EgoSchema: ``videos`` clips, one five-option question each (EgoSchema has five): the latest backward
  colour question of a world of ``duration`` s (colours are the only ShapesWorld answers with five values
  or more), the clip cut at the moment it is asked, so the whole clip is what it is about. q_uids are
  UUIDs derived from the world's name; ``subset_answers.json`` holds the answers of the first half
  (rounded up), the others are the hidden set scored by the submission file.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..evaluation.brief_data import BriefDataConfig, BriefPaths

#: Backward questions asked at least this many seconds after their event are StreamBench's LM class.
LONG_TERM_S = 30.0
#: Video-index offsets of the three benchmarks in the split's seed range (disjoint worlds).
SEED_OFFSETS: dict[str, int] = {"streambench": 0, "msrvtt": 1000, "egoschema": 2000}
#: EgoSchema's option count, and the backward colour questions that can have that many options.
EGOSCHEMA_OPTIONS = 5
EGOSCHEMA_TASK_TYPES: tuple[str, ...] = ("first_appear", "first_leave", "color_change", "past_color")
STREAMBENCH_SOURCES: tuple[str, ...] = ("Ego", "WebVideo", "Movie")
CAPTION_MOMENTS = 5
MSRVTT_FIRST_ID = 7010


def _world(split: str, index: int, duration: float):
    from .generator import WorldConfig, generate_world
    from .tasks import video_seed

    return generate_world(WorldConfig(duration=duration), video_seed(split, index))


def _save(world: Any, path: Path, stop: int | None = None) -> None:
    from .generator import save_mp4

    save_mp4(path, world.frames(0, stop), world.fps)


def _streambench_class(record: Any) -> str:
    if record.task_kind == "realtime":
        return "SF"
    event = record.extra.get("event_time")
    if event is not None and float(record.timestamp) - float(event) >= LONG_TERM_S:
        return "LM"
    return "SM"


def _write_streambench(paths: BriefPaths, cfg: BriefDataConfig) -> int:
    from .tasks import ALL_BACKWARD_TYPES, REALTIME_TYPES, TaskConfig, generate_questions

    tasks = TaskConfig(questions_per_type=cfg.questions_per_type, task_types=REALTIME_TYPES + ALL_BACKWARD_TYPES,
                       mc_fraction=0.0, backward_min_gap=5.0)
    entries, n = [], 0
    for i in range(cfg.videos):
        world = _world(cfg.split, cfg.seed + SEED_OFFSETS["streambench"] + i, cfg.duration)
        source = STREAMBENCH_SOURCES[i % len(STREAMBENCH_SOURCES)]
        video_path = f"{world.name}.mp4"
        records = sorted(generate_questions(world, tasks), key=lambda r: (r.timestamp, r.qid))
        points = [{"time": float(r.timestamp), "question": r.question, "answer": str(r.answer),
                   "class": _streambench_class(r)} for r in records]
        if not points:
            continue
        info: dict[str, Any] = {"class_1": source, "class_2": "shapes", "video_path": video_path}
        if i % 3 != 2:  # the release lacks video_name in about a third of its entries
            info["video_name"] = world.name
        entries.append({"info": info, "breakpoint": points})
        _save(world, paths.streambench_videos / source / video_path)
        n += len(points)
    paths.streambench.parent.mkdir(parents=True, exist_ok=True)
    paths.streambench.write_text(json.dumps(entries, indent=1) + "\n")
    return n


def _write_msrvtt(paths: BriefPaths, cfg: BriefDataConfig) -> int:
    from .tasks import frame_caption

    videos, sentences = [], []
    for i in range(cfg.videos):
        world = _world(cfg.split, cfg.seed + SEED_OFFSETS["msrvtt"] + i, cfg.caption_duration)
        vid = f"video{MSRVTT_FIRST_ID + i}"
        moments = [round(k * (world.n_frames - 1) / (CAPTION_MOMENTS - 1)) for k in range(CAPTION_MOMENTS)]
        captions = list(dict.fromkeys(frame_caption(world, t) for t in moments))
        videos.append({"category": 0, "url": f"shapesworld://{world.name}", "video_id": vid,
                       "start time": 0.0, "end time": float(world.duration), "split": "test",
                       "id": MSRVTT_FIRST_ID + i})
        for caption in captions:
            sentences.append({"caption": caption, "video_id": vid, "sen_id": len(sentences)})
        _save(world, paths.msrvtt_videos / f"{vid}.mp4")
    paths.msrvtt.parent.mkdir(parents=True, exist_ok=True)
    paths.msrvtt.write_text(json.dumps({"info": {"source": "ShapesWorld, written by ppllava_hermes.world."
                                                          "brief_data"}, "videos": videos,
                                        "sentences": sentences}, indent=1) + "\n")
    return len(videos)


def _write_egoschema(paths: BriefPaths, cfg: BriefDataConfig) -> int:
    from .tasks import TaskConfig, generate_questions

    tasks = TaskConfig(task_types=EGOSCHEMA_TASK_TYPES, mc_fraction=1.0, n_options=EGOSCHEMA_OPTIONS,
                       backward_min_gap=5.0)
    questions: list[dict[str, Any]] = []
    answers: dict[str, int] = {}
    index = cfg.seed + SEED_OFFSETS["egoschema"]
    tried = 0
    while len(questions) < cfg.videos:
        if tried >= 20 * cfg.videos:
            raise RuntimeError(f"brief data: only {len(questions)} of {cfg.videos} worlds had a five-option "
                               f"question in {tried} tries")
        world = _world(cfg.split, index + tried, cfg.duration)
        tried += 1
        fit = [r for r in generate_questions(world, tasks) if len(r.options) == EGOSCHEMA_OPTIONS]
        if not fit:
            continue
        record = max(fit, key=lambda r: (r.timestamp, r.qid))
        q_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"shapesworld:{world.name}:{record.task_type}"))
        item: dict[str, Any] = {"q_uid": q_uid, "google_drive_id": "", "question": record.question}
        item.update({f"option {k}": text for k, text in enumerate(record.options)})
        questions.append(item)
        if len(questions) <= math.ceil(cfg.videos / 2):
            answers[q_uid] = int(record.answer)
        _save(world, paths.egoschema_videos / f"{q_uid}.mp4", stop=int(record.extra["t_index"]) + 1)
    paths.egoschema.parent.mkdir(parents=True, exist_ok=True)
    paths.egoschema.write_text(json.dumps(questions, indent=1) + "\n")
    paths.egoschema_answers.write_text(json.dumps(answers, indent=1) + "\n")
    return len(questions)


def write_shapesworld(paths: BriefPaths, cfg: BriefDataConfig) -> dict[str, int]:
    """Render ShapesWorld videos to mp4 and write the three benchmarks' files at ``paths`` (module
    docstring). Returns the record counts."""
    counts = {
        "streambench_questions": _write_streambench(paths, cfg),
        "msrvtt_videos": _write_msrvtt(paths, cfg),
        "egoschema_questions": _write_egoschema(paths, cfg),
    }
    counts["egoschema_known"] = math.ceil(cfg.videos / 2)
    return counts
