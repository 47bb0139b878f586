"""Frames for evaluation: where a record's video comes from, sampled offline or streamed in chunks.

What this module knows: three kinds of source behind one small interface (:class:`VideoSource`):

* :class:`FileSource`: a video file (or image folder) read through the project's video reader
  (``ppllava_hermes.video``: decord with a PyAV fallback);
* :class:`ArraySource`: frames already in memory;
* :class:`WorldSource`: a generated ShapesWorld world, whose frames are rendered on demand (no mp4
  round trip: the pixels are exactly the generator's).

:class:`SourceResolver` picks the source of a record: ShapesWorld records render from their world
(``world_for_record``, or worlds handed in, e.g. a ``Split``'s) unless ``mode="file"``, which writes
the world's mp4 when it is missing and reads it back through the reader. Everything else is a file.

What it does not know: models, sessions, protocols, scoring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..video.sampling import fps_indices, uniform_indices
from ..video.types import VideoClip
from .records import QARecord

SOURCE_MODES = ("auto", "world", "file")


class VideoSource(Protocol):
    """Frames of one video: a sampled window (offline) or consecutive chunks (streaming)."""

    name: str

    @property
    def duration(self) -> float | None:
        """Seconds covered by the video (None when unknown)."""

    def sample(self, *, num_frames: int | None, fps: float | None, start: float | None = None,
               end: float | None = None) -> VideoClip:
        """Frames with ``start <= t <= end`` (seconds), ``num_frames`` spread uniformly or at ``fps``."""

    def stream(self, *, fps: float | None, chunk_frames: int) -> Iterator[VideoClip]:
        """The whole video as consecutive chunks of at most ``chunk_frames`` frames, at ``fps``
        (None: every frame)."""


def _window(times: np.ndarray, start: float | None, end: float | None) -> np.ndarray:
    """Indices of ``times`` inside ``[start, end]`` (a small tolerance for float frame times)."""
    lo = -math.inf if start is None else start - 1e-6
    hi = math.inf if end is None else end + 1e-6
    return np.flatnonzero((times >= lo) & (times <= hi))


def _pick(times: np.ndarray, num_frames: int | None, fps: float | None) -> np.ndarray:
    """Positions into ``times`` (already a window) to keep: uniform ``num_frames``, or ``fps``, or all."""
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    if fps is not None:
        picked = fps_indices(times, fps)
        if num_frames is not None and len(picked) > num_frames:  # fps with a cap: thin uniformly
            picked = picked[uniform_indices(len(picked), num_frames)]
        return np.asarray(picked, dtype=np.int64)
    if num_frames is not None and num_frames < len(times):
        return np.asarray(uniform_indices(len(times), num_frames), dtype=np.int64)
    return np.arange(len(times))


def _chunks(frames: Iterable[tuple[float, np.ndarray]], chunk_frames: int, source: str) -> Iterator[VideoClip]:
    buf: list[np.ndarray] = []
    times: list[float] = []
    for t, frame in frames:
        buf.append(frame)
        times.append(t)
        if len(buf) == chunk_frames:
            yield VideoClip(np.stack(buf), np.asarray(times), source)
            buf, times = [], []
    if buf:
        yield VideoClip(np.stack(buf), np.asarray(times), source)


@dataclass
class WorldSource:
    """A ShapesWorld world as a video: frames rendered on demand, ``t = index / world.fps``."""

    world: object  # ppllava_hermes.world.generator.World (not imported: world/ imports evaluation/)

    @property
    def name(self) -> str:
        return str(self.world.name)

    @property
    def duration(self) -> float | None:
        return float(self.world.duration)

    def sample(self, *, num_frames: int | None, fps: float | None, start: float | None = None,
               end: float | None = None) -> VideoClip:
        times = self.world.timestamps()
        window = _window(times, start, end)
        if len(window) == 0:
            raise ValueError(f"{self.name}: no frame in [{start}, {end}] s")
        idx = window[_pick(times[window], num_frames, fps)]
        frames = np.stack([self.world.render(int(i)) for i in idx])
        return VideoClip(frames, times[idx], self.name)

    def stream(self, *, fps: float | None, chunk_frames: int) -> Iterator[VideoClip]:
        times = self.world.timestamps()
        idx = np.arange(len(times)) if fps is None else np.asarray(fps_indices(times, fps))
        return _chunks(((float(times[i]), self.world.render(int(i))) for i in idx), chunk_frames, self.name)


@dataclass
class ArraySource:
    """Frames already in memory (a :class:`VideoClip`), e.g. from a camera or a test."""

    clip: VideoClip

    @property
    def name(self) -> str:
        return self.clip.source or "frames"

    @property
    def duration(self) -> float | None:
        return float(self.clip.timestamps[-1]) if len(self.clip) else 0.0

    def sample(self, *, num_frames: int | None, fps: float | None, start: float | None = None,
               end: float | None = None) -> VideoClip:
        times = self.clip.timestamps
        window = _window(times, start, end)
        if len(window) == 0:
            raise ValueError(f"{self.name}: no frame in [{start}, {end}] s")
        idx = window[_pick(times[window], num_frames, fps)]
        return VideoClip(self.clip.frames[idx], times[idx], self.name)

    def stream(self, *, fps: float | None, chunk_frames: int) -> Iterator[VideoClip]:
        times = self.clip.timestamps
        idx = np.arange(len(times)) if fps is None else np.asarray(fps_indices(times, fps))
        return _chunks(((float(times[i]), self.clip.frames[i]) for i in idx), chunk_frames, self.name)


@dataclass
class FileSource:
    """A video file (or image folder) read through ``ppllava_hermes.video``."""

    path: str

    @property
    def name(self) -> str:
        return self.path

    @property
    def duration(self) -> float | None:
        from ..video import probe

        if Path(self.path).is_dir():
            return None
        return probe(self.path).duration

    def sample(self, *, num_frames: int | None, fps: float | None, start: float | None = None,
               end: float | None = None) -> VideoClip:
        from ..video import read_video, stream_video

        if start is None and end is None and Path(self.path).is_file():
            return read_video(self.path, fps=fps, num_frames=None if fps else num_frames,
                              max_frames=num_frames if fps else None)
        # A segment: decode up to its end (no further), then pick inside it.
        kept: list[tuple[float, np.ndarray]] = []
        for clip in stream_video(self.path, chunk_frames=64, fps=fps):
            for t, frame in zip(clip.timestamps, clip.frames, strict=True):
                if end is not None and t > end + 1e-6:
                    break
                if start is None or t >= start - 1e-6:
                    kept.append((float(t), frame))
            else:
                continue
            break
        if not kept:
            raise ValueError(f"{self.path}: no frame in [{start}, {end}] s")
        times = np.asarray([t for t, _ in kept])
        idx = _pick(times, num_frames, None)
        return VideoClip(np.stack([kept[i][1] for i in idx]), times[idx], self.path)

    def stream(self, *, fps: float | None, chunk_frames: int) -> Iterator[VideoClip]:
        from ..video import stream_video

        return stream_video(self.path, chunk_frames=chunk_frames, fps=fps)


class SourceResolver:
    """The :class:`VideoSource` of a record.

    Args:
        video_dir: folder that relative ``record.video`` paths are resolved against.
        mode: "auto" (ShapesWorld records render from their world, others read their file), "world"
            (ShapesWorld records must render), "file" (everything through the video reader; a missing
            ShapesWorld mp4 is written first, under ``video_dir`` or ``mp4_dir``).
        worlds: worlds already generated (e.g. ``Split.worlds``), looked up by seed before regenerating.
        mp4_dir: where missing ShapesWorld mp4s are written in "file" mode (default: ``video_dir``).
    """

    def __init__(self, video_dir: str | Path | None = None, mode: str = "auto", worlds: Iterable[object] = (),
                 mp4_dir: str | Path | None = None) -> None:
        if mode not in SOURCE_MODES:
            raise ValueError(f"frame source mode {mode!r} not in {SOURCE_MODES}")
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.mode = mode
        self._worlds = {int(w.seed): w for w in worlds}
        self.mp4_dir = Path(mp4_dir) if mp4_dir is not None else self.video_dir

    def world(self, record: QARecord):
        """The ShapesWorld world of a record (cached by seed)."""
        seed = int(record.extra["seed"])
        if seed not in self._worlds:
            from ..world.tasks import world_for_record

            self._worlds[seed] = world_for_record(record)
        return self._worlds[seed]

    def path(self, record: QARecord) -> Path:
        p = Path(record.video)
        if not p.is_absolute() and self.video_dir is not None:
            p = self.video_dir / p
        return p

    def __call__(self, record: QARecord) -> VideoSource:
        is_world = record.benchmark == "shapesworld" and "seed" in record.extra and "config" in record.extra
        if self.mode == "world" and not is_world:
            raise ValueError(f"record {record.qid!r}: frame source 'world' needs a ShapesWorld record")
        if is_world and self.mode != "file":
            return WorldSource(self.world(record))
        path = self.path(record)
        if is_world and not path.exists():
            if self.mp4_dir is None:
                raise ValueError(f"record {record.qid!r}: no video at {str(path)!r} and no folder to write it to")
            path = self.mp4_dir / Path(record.video).name if Path(record.video).is_absolute() else self.mp4_dir / record.video
            if not path.exists():
                self.world(record).save_mp4(path)
        return FileSource(str(path))
