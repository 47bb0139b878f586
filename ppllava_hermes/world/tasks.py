"""ShapesWorld questions as :class:`~ppllava_hermes.evaluation.records.QARecord` (benchmark "shapesworld").

What this module knows: how to ask questions about a generated :class:`~.generator.World` whose
answers follow from its object states and event log, how to check such a question independently
(:func:`verify_record`), the train/val/test seed ranges (:func:`make_split`), a fast in-memory
short-clip dataset for training (:func:`short_clip_dataset`) and region captions for a tiny CLIP
(:func:`region_captions`). It knows nothing about models or scoring.

Task types (``task_kind`` / ``task_type``; "colour" in question text, "color" in names):

* short (a clip of ``clip_frames`` frames, ``start``/``end`` in seconds, ``timestamp = end``):
  ``color`` "What colour is the triangle in this clip?", ``shape`` "What shape is the red object in
  this clip?", ``count`` "How many shapes are in this clip?", ``direction`` "Which direction is the
  circle moving in this clip?".
* backward (asked at least ``backward_min_gap`` s after the event): ``first_appear`` "What colour was
  the first shape to appear after the video started?" (or "What shape was ..."), ``first_leave``
  "Which shape left the scene first?" (or "What colour was the first shape to leave the scene?"),
  ``color_change`` "What colour did the square change to?" (or "... the red square ..."),
  ``collision`` "Which shape did the cross bump into?"; memory recall of an object that has left
  (:data:`MEMORY_TYPES`): ``past_color`` "What colour was the circle in the video?" and ``past_shape``
  "What shape was the red object in the video?", asked only when exactly one object of that shape
  (of that colour) has been seen up to the question, it kept its colour all its life and it left at
  least ``backward_min_gap`` s before (``extra["event_time"]``: the first frame without it), so the
  answer is in the past frames and in no present one.
* realtime (``timestamp`` = the moment asked about): ``color_now`` "What colour is the circle now?",
  ``shape_now`` "What shape is the blue object now?", ``count_now`` "How many shapes are visible now?".
* forward (open answer ``"now"``): ``when_leave`` "Tell me when the blue circle leaves the scene.",
  ``when_color_change`` "Tell me when the square changes colour.", ``when_appear`` "Tell me when a new
  shape appears.".

Forward protocol: the question is posed at ``timestamp``; the model then sees the stream frame by
frame and may answer at any later frame time. The first response containing "now" counts as correct
iff its time ``t`` satisfies ``event_time <= t <= event_time + extra["tolerance"]``; a "now" before
``event_time`` is a false alarm (wrong), none by the tolerance is a miss (wrong).
``extra["event_time"]`` is the time of the first frame that shows the event (the object is gone, the
new colour or the new object is drawn); ``extra["event"]`` describes it.

Answers: multiple choice has up to 4 options drawn from the answer's vocabulary (colours of the
world, its shapes, the 4 directions, counts ``0..max(max_objects, 3)``), the right one at a
seeded-uniform position; open answers are the word or the number as text. Ambiguity guards: a shape
or colour names exactly one object; realtime and short questions only use frames where every present
object is fully inside the frame; short-clip attributes are constant over the clip.

Every record carries ``extra["seed"]`` and ``extra["config"]``, so :func:`world_for_record` rebuilds
its world; ``extra["t_index"]`` is the frame at which it is asked.

Seed ranges (disjoint by construction): split ``s`` owns ``[base_s, base_s + 10**9)`` with
``base_train = 0``, ``base_val = 10**9``, ``base_test = 2 * 10**9``; long videos from
:func:`make_split` use the first half of the range (``video_seed``), clips from
:func:`short_clip_dataset` the second, in blocks of :data:`CLIP_ATTEMPTS` seeds per clip (``clip_seed``).
"""

# The parts (this module is their overview and keeps every public name importable from here):
# task_types (types, kinds, vocabularies, seed ranges, TaskConfig), questions (generation),
# checker (independent verification: imports nothing of questions), datasets (splits, clips, captions).
from __future__ import annotations

from .checker import (  # noqa: F401
    check_record,
    verify_record,
    verify_records,
    world_for_record,
)
from .datasets import (  # noqa: F401
    Split,
    clip_seed,
    clip_world_config,
    frame_caption,
    iter_short_clip_worlds,
    iter_short_clips,
    make_split,
    region_captions,
    short_clip_dataset,
    split_of_seed,
    video_seed,
)
from .questions import (  # noqa: F401
    generate_questions,
)
from .task_types import (  # noqa: F401
    ALL_BACKWARD_TYPES,
    BACKWARD_TYPES,
    BENCHMARK,
    CLIP_ATTEMPTS,
    FORWARD_ANSWER,
    FORWARD_TYPES,
    MEMORY_TYPES,
    REALTIME_TYPES,
    SHORT_TYPES,
    SPLIT_SEED_BASE,
    SPLIT_SEED_SPAN,
    SPLITS,
    TASK_KIND_OF,
    TASK_TYPES,
    TaskConfig,
    answer_vocab,
    count_vocab,
)

__all__ = [
    "ALL_BACKWARD_TYPES",
    "BACKWARD_TYPES",
    "BENCHMARK",
    "CLIP_ATTEMPTS",
    "FORWARD_ANSWER",
    "FORWARD_TYPES",
    "MEMORY_TYPES",
    "REALTIME_TYPES",
    "SHORT_TYPES",
    "SPLITS",
    "SPLIT_SEED_BASE",
    "SPLIT_SEED_SPAN",
    "Split",
    "TASK_KIND_OF",
    "TASK_TYPES",
    "TaskConfig",
    "answer_vocab",
    "check_record",
    "clip_seed",
    "clip_world_config",
    "count_vocab",
    "frame_caption",
    "generate_questions",
    "iter_short_clip_worlds",
    "iter_short_clips",
    "make_split",
    "region_captions",
    "short_clip_dataset",
    "split_of_seed",
    "verify_record",
    "verify_records",
    "video_seed",
    "world_for_record",
]
