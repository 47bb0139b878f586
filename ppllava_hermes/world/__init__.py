"""ShapesWorld: a procedurally generated video world of moving coloured shapes, with questions.

Small models trained on a CPU reach real, measurable accuracy here, where no pretrained VLM weights
are available. ``generator`` builds seeded worlds (event log + per-frame object states; frames are
rendered on demand, mp4 on request); ``tasks`` asks short / backward / realtime / forward questions as
:class:`~ppllava_hermes.evaluation.records.QARecord`, checks them, and builds seed-disjoint splits, a
short-clip training set and region captions.
"""

from .generator import (
    COLORS,
    DIRECTIONS,
    EVENT_KINDS,
    PALETTE,
    SHAPES,
    Event,
    ObjectState,
    Track,
    World,
    WorldConfig,
    generate_world,
    save_mp4,
)
from .tasks import (
    BENCHMARK,
    SPLITS,
    TASK_KIND_OF,
    TASK_TYPES,
    Split,
    TaskConfig,
    check_record,
    clip_seed,
    frame_caption,
    generate_questions,
    iter_short_clips,
    make_split,
    region_captions,
    short_clip_dataset,
    split_of_seed,
    verify_record,
    verify_records,
    video_seed,
    world_for_record,
)

__all__ = [
    "BENCHMARK",
    "COLORS",
    "DIRECTIONS",
    "EVENT_KINDS",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "TASK_KIND_OF",
    "TASK_TYPES",
    "Event",
    "ObjectState",
    "Split",
    "TaskConfig",
    "Track",
    "World",
    "WorldConfig",
    "check_record",
    "clip_seed",
    "frame_caption",
    "generate_questions",
    "generate_world",
    "iter_short_clips",
    "make_split",
    "region_captions",
    "save_mp4",
    "short_clip_dataset",
    "split_of_seed",
    "verify_record",
    "verify_records",
    "video_seed",
    "world_for_record",
]
