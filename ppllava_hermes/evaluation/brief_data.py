"""The brief's three benchmarks as files: their folder layout, and data written in their formats.

No real StreamBench, MSR-VTT or EgoSchema video is reachable here, so the brief suite
(:mod:`.suite`) can run end to end on generated videos and annotation files written in each
benchmark's released format by a *data writer* (:data:`~ppllava_hermes.plugins.DATA_WRITERS`;
ShapesWorld registers ``shapesworld``: ``ppllava_hermes/world/brief_data.py`` says what it writes);
the same suite reads the real files laid out the same way.

**Layout** (:func:`brief_paths`; ``ROOT`` is ``--data``)::

    ROOT/streambench/streaming_bench_v0.3.json      StreamBench v0.3 (StreamChat)
    ROOT/streambench/<class_1>/<video_path>          its videos (Ego/, WebVideo/, Movie/)
    ROOT/msrvtt/test_videodatainfo.json              MSR-VTT captions
    ROOT/msrvtt/videos/<video_id>.mp4                its test videos (the release's TestVideo/ folder)
    ROOT/egoschema/questions.json                    EgoSchema questions (all of them)
    ROOT/egoschema/subset_answers.json               the public answers (the 500 of the release)
    ROOT/egoschema/videos/<q_uid>.mp4                its clips
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BriefPaths:
    """Where the three benchmarks' files are under one data folder (see the module docstring)."""

    root: Path
    streambench: Path
    streambench_videos: Path
    msrvtt: Path
    msrvtt_videos: Path
    egoschema: Path
    egoschema_answers: Path
    egoschema_videos: Path

    def missing(self, benchmarks: tuple[str, ...] = ("streambench", "msrvtt_caption", "egoschema")) -> list[Path]:
        """The annotation files of ``benchmarks`` that do not exist."""
        need = {"streambench": [self.streambench], "msrvtt_caption": [self.msrvtt],
                "egoschema": [self.egoschema, self.egoschema_answers]}
        return [p for b in benchmarks for p in need[b] if not p.is_file()]


def brief_paths(root: str | Path) -> BriefPaths:
    """The layout of the module docstring under ``root``."""
    root = Path(root)
    return BriefPaths(
        root=root,
        streambench=root / "streambench" / "streaming_bench_v0.3.json",
        streambench_videos=root / "streambench",
        msrvtt=root / "msrvtt" / "test_videodatainfo.json",
        msrvtt_videos=root / "msrvtt" / "videos",
        egoschema=root / "egoschema" / "questions.json",
        egoschema_answers=root / "egoschema" / "subset_answers.json",
        egoschema_videos=root / "egoschema" / "videos",
    )


@dataclass
class BriefDataConfig:
    """How much data :func:`write_brief_data` writes (the writer decides what; ShapesWorld's is generated).

    Attributes:
        videos: videos per benchmark (StreamBench streams, MSR-VTT clips, EgoSchema questions).
        duration: seconds of a StreamBench world (and of the world an EgoSchema clip is cut from).
        caption_duration: seconds of an MSR-VTT clip.
        seed: first video index of the split (each benchmark its own range after it).
        split: seed range ("train", "val", "test").
        questions_per_type: StreamBench questions tried per task type per world.
    """

    videos: int = 6
    duration: float = 60.0
    caption_duration: float = 20.0
    seed: int = 0
    split: str = "test"
    questions_per_type: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.videos, bool) or not isinstance(self.videos, int) or self.videos < 1:
            raise ValueError(f"brief data: videos must be a positive integer, got {self.videos!r}")
        for name in ("duration", "caption_duration"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 10):
                raise ValueError(f"brief data: {name} must be at least 10 seconds, got {value!r}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"brief data: split {self.split!r} not in ('train', 'val', 'test')")
        if self.seed < 0 or self.questions_per_type < 1:
            raise ValueError("brief data: seed must be >= 0 and questions_per_type >= 1")


@dataclass
class BriefData:
    """What :func:`write_brief_data` wrote: the paths and how many records of each benchmark."""

    paths: BriefPaths
    config: BriefDataConfig
    counts: dict[str, int] = field(default_factory=dict)
    source: str = "shapesworld"

    def describe(self) -> dict[str, Any]:
        """Plain values for a report: the settings, the counts, the folder."""
        from dataclasses import asdict

        return {"source": self.source, "root": str(self.paths.root), "settings": asdict(self.config),
                "counts": dict(self.counts)}


def write_brief_data(root: str | Path, config: BriefDataConfig | None = None, source: str = "shapesworld") -> BriefData:
    """Write the three benchmarks' files under ``root`` with the data writer ``source`` (files already there
    are replaced). Returns the paths and the record counts."""
    from ..plugins import DATA_WRITERS

    writer = DATA_WRITERS.get(source)
    if writer is None:
        raise ValueError(f"brief data: no data writer named {source!r} (known: {sorted(DATA_WRITERS.names())})")
    cfg = config or BriefDataConfig()
    paths = brief_paths(root)
    return BriefData(paths, cfg, dict(writer(paths, cfg)), source=source)
