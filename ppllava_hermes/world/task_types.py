"""ShapesWorld task types, their kinds and answer vocabularies, split seed ranges, and the task settings.

Shared by the question generator (:mod:`.questions`), the independent checker (:mod:`.checker`) and the
datasets (:mod:`.datasets`); :mod:`.tasks` is the overview. Imports nothing of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .generator import DIRECTIONS, WorldConfig

BENCHMARK = "shapesworld"
SHORT_TYPES: tuple[str, ...] = ("color", "shape", "count", "direction")
BACKWARD_TYPES: tuple[str, ...] = ("first_appear", "first_leave", "color_change", "collision")
REALTIME_TYPES: tuple[str, ...] = ("color_now", "shape_now", "count_now")
FORWARD_TYPES: tuple[str, ...] = ("when_leave", "when_color_change", "when_appear")
#: backward questions about an object that has left (pure recall: nothing present shows the answer)
MEMORY_TYPES: tuple[str, ...] = ("past_color", "past_shape")
ALL_BACKWARD_TYPES: tuple[str, ...] = BACKWARD_TYPES + MEMORY_TYPES
# new types go at the end: a type's index seeds its questions, so older types keep theirs
TASK_TYPES: tuple[str, ...] = SHORT_TYPES + BACKWARD_TYPES + REALTIME_TYPES + FORWARD_TYPES + MEMORY_TYPES
TASK_KIND_OF: dict[str, str] = {
    **dict.fromkeys(SHORT_TYPES, "short"),
    **dict.fromkeys(ALL_BACKWARD_TYPES, "backward"),
    **dict.fromkeys(REALTIME_TYPES, "realtime"),
    **dict.fromkeys(FORWARD_TYPES, "forward"),
}
FORWARD_ANSWER = "now"

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SEED_BASE: dict[str, int] = {"train": 0, "val": 10**9, "test": 2 * 10**9}
SPLIT_SEED_SPAN = 10**9
_VIDEO_SPAN = SPLIT_SEED_SPAN // 2  # first half of a split's range: long videos; second half: clips
CLIP_ATTEMPTS = 8  # seeds per short-clip index (see clip_seed)


@dataclass
class TaskConfig:
    """How questions are drawn from a world.

    Attributes:
        questions_per_type: questions tried per task type per video (fewer when not askable).
        task_types: which of :data:`TASK_TYPES` to ask.
        mc_fraction: probability that a (non-forward) question is multiple choice.
        n_options: options per multiple-choice question (fewer when the vocabulary is smaller).
        clip_frames: frames in a short clip.
        backward_min_gap: seconds between a backward question's event and the question.
        forward_min_lead: seconds between a forward question and its event.
        forward_tolerance: seconds after the event in which "now" still counts.
        max_tries: candidate moments examined per question before giving up.
    """

    questions_per_type: int = 1
    task_types: tuple[str, ...] = TASK_TYPES
    mc_fraction: float = 0.5
    n_options: int = 4
    clip_frames: int = 4
    backward_min_gap: float = 10.0
    forward_min_lead: float = 3.0
    forward_tolerance: float = 2.0
    max_tries: int = 200

    def __post_init__(self) -> None:
        self.task_types = tuple(self.task_types)
        unknown = set(self.task_types) - set(TASK_TYPES)
        if unknown:
            raise ValueError(f"unknown task types {sorted(unknown)}; known: {TASK_TYPES}")
        if self.questions_per_type < 0:
            raise ValueError(f"questions_per_type={self.questions_per_type} must be >= 0")
        if not 0.0 <= self.mc_fraction <= 1.0:
            raise ValueError(f"mc_fraction={self.mc_fraction} must be in [0, 1]")
        if self.n_options < 2:
            raise ValueError(f"n_options={self.n_options} must be >= 2")
        if self.clip_frames < 2:
            raise ValueError(f"clip_frames={self.clip_frames} must be >= 2 (direction needs motion)")
        if self.backward_min_gap < 0 or self.forward_min_lead < 0 or self.forward_tolerance < 0:
            raise ValueError("backward_min_gap, forward_min_lead and forward_tolerance must be >= 0")
        if self.max_tries < 1:
            raise ValueError(f"max_tries={self.max_tries} must be >= 1")


def count_vocab(config: WorldConfig) -> tuple[str, ...]:
    """Possible count answers: "0" .. str(max(max_objects, 3)) (at least 4 values, for 4 options)."""
    return tuple(str(i) for i in range(max(config.max_objects, 3) + 1))


def answer_vocab(config: WorldConfig, answer_type: str) -> tuple[str, ...]:
    """Vocabulary of an answer type: "color", "shape", "direction" or "count"."""
    if answer_type == "color":
        return config.colors
    if answer_type == "shape":
        return config.shapes
    if answer_type == "direction":
        return DIRECTIONS
    if answer_type == "count":
        return count_vocab(config)
    raise ValueError(f"unknown answer type {answer_type!r}")
