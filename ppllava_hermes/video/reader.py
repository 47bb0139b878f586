"""Whole-file access: :func:`probe` a video, :func:`read_video` sampled frames into one :class:`VideoClip`.

Knows: local video files. Every file is vetted with PyAV first (exists, non-empty, has a video stream
with at least one decodable frame) so decord never sees garbage it could hang on; frames then come
from decord when available, else from PyAV. Rotated videos (display matrix) come out upright.
Does not know: URLs, devices and image folders (see :mod:`.sources`), resizing, or models.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from . import _decord, _pyav
from .errors import VideoError, VideoNotFoundError, describe_exception
from .sampling import Sampling
from .types import VideoClip

logger = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]
BACKENDS = ("auto", "decord", "pyav")


@dataclass(frozen=True)
class VideoInfo:
    """What a file holds, from its headers and first frame.

    Attributes:
        path: the file as given.
        num_frames: frame count from the header, or counted from packets when the header has none.
        fps: average frame rate (frames/s).
        duration: seconds.
        width, height: size of the frames as returned, i.e. after rotation.
        rotation: counter-clockwise degrees (0, 90, 180, 270) the display matrix asks for; frames
            returned by this package are already rotated by it.
        backend: what ``read_video(path, backend="auto")`` tries first ("decord" or "pyav").
        codec: FFmpeg codec name, e.g. "h264".
    """

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int = 0
    backend: str = "pyav"
    codec: str = ""

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not (math.isfinite(self.fps) and self.fps >= 0):
            raise ValueError(f"fps must be finite and >= 0, got {self.fps}")
        if not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"duration must be finite and >= 0, got {self.duration}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"width and height must be >= 1, got {self.width}x{self.height}")
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270, got {self.rotation}")
        if self.backend not in ("decord", "pyav"):
            raise ValueError(f"backend must be 'decord' or 'pyav', got {self.backend!r}")


@dataclass(frozen=True)
class _Probed:
    info: VideoInfo
    time_base: Fraction | None  # None for streams without pts


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_file(path: str | os.PathLike[str]) -> str:
    """``path`` as a string after the checks that need no decoder; raises :class:`VideoError`."""
    src = os.fspath(path)
    if "://" in src:
        raise VideoError(src, "not a local file; stream_video() reads URLs and devices")
    p = Path(src)
    if not p.exists():
        raise VideoNotFoundError(src)
    if p.is_dir():
        raise VideoError(src, "not a video file (it is a directory; stream_video() reads image folders)")
    if p.is_file() and p.stat().st_size == 0:
        raise VideoError(src, "empty file (0 bytes)")
    return src


def _probe(path: str | os.PathLike[str]) -> _Probed:
    src = check_file(path)
    try:
        return _probe_container(src)
    except VideoError:
        raise
    except Exception as exc:  # whatever PyAV raises on odd files must not escape raw
        raise VideoError(src, f"cannot read video headers ({describe_exception(exc)})") from None


def _probe_container(src: str) -> _Probed:
    with _pyav.open_input(src) as container:
        stream = _pyav.video_stream(container, src)
        header_frames = int(stream.frames or 0)
        counted, has_pts, first = 0, False, None
        lo, hi = None, None  # pts range, for the rate when the whole file is read anyway
        for packet in _pyav.demux_packets(container, stream, src, None):
            if packet.size > 0:
                counted += 1
                if packet.pts is not None:
                    has_pts = True
                    lo = packet.pts if lo is None else min(lo, packet.pts)
                    hi = packet.pts if hi is None else max(hi, packet.pts)
            if first is None:
                try:
                    decoded = stream.decode(packet)
                except Exception:  # a damaged first packet: try the next ones
                    decoded = []
                first = decoded[0] if decoded else None
            if first is not None and header_frames > 0:
                break  # the header has the count; no need to read the whole file
        if counted == 0:
            raise VideoError(src, "no video frames (the video stream is empty)")
        if first is None:
            raise VideoError(src, f"no decodable video frames ({counted} packets, none decoded)")
        num_frames = header_frames if header_frames > 0 else counted
        rotation = 90 * _pyav.quarter_turns(first.rotation, src)
        rate = stream.average_rate if has_pts else stream.guessed_rate
        rate = rate or stream.guessed_rate or stream.average_rate
        if header_frames <= 0 and counted > 1 and hi is not None and hi > lo and stream.time_base:
            # every packet was read, so the rate can be measured; it replaces the stream's rate only
            # when that is far off (elementary streams get FFmpeg's default 25), since millisecond
            # pts (mkv) make the measurement itself slightly off
            measured = Fraction(counted - 1) / ((hi - lo) * Fraction(stream.time_base))
            if not rate or abs(rate / measured - 1) > 0.05:
                rate = measured
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = num_frames / float(rate) if rate else 0.0
        fps = float(rate) if rate else (num_frames / duration if duration > 0 else 0.0)
        h, w = first.height, first.width
        usable_decord = _decord.import_decord() is not None and rotation == 0
        info = VideoInfo(
            path=src,
            num_frames=num_frames,
            fps=fps,
            duration=duration,
            width=h if rotation in (90, 270) else w,
            height=w if rotation in (90, 270) else h,
            rotation=rotation,
            backend="decord" if usable_decord else "pyav",
            codec=stream.codec_context.name,
        )
        time_base = Fraction(stream.time_base) if has_pts and stream.time_base else None
        return _Probed(info=info, time_base=time_base)


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a file's headers and first frame; raises :class:`VideoError` for anything unreadable."""
    return _probe(path).info


def plan_decord(probed: _Probed, backend: str) -> bool:
    """Whether to try decord for this file; raises when ``backend="decord"`` cannot be honoured."""
    if backend == "pyav":
        return False
    if _decord.import_decord() is None:
        if backend == "decord":
            raise ImportError(
                "backend='decord' was requested but decord is not installed (pip install decord)"
            )
        return False
    if probed.info.rotation:
        if backend == "decord":
            raise VideoError(
                probed.info.path,
                f"decord cannot decode rotated videos (rotation {probed.info.rotation} degrees) correctly; "
                "use backend='auto' or 'pyav', which return upright frames",
            )
        return False
    return True


def read_video(
    path: str | os.PathLike[str],
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    backend: Backend = "auto",
) -> VideoClip:
    """Decode a local video file into one clip.

    Args:
        path: a video file.
        fps: sample at this rate: for each point of the grid ``t0 + j / fps`` the nearest frame.
        num_frames: instead of ``fps``, this many frames spread uniformly over the video.
        max_frames: cap on the number of frames; more are thinned uniformly (works with ``fps`` or alone).
        backend: "auto" tries decord and falls back to PyAV when decord is missing, the video is
            rotated, or decord fails on the file; "decord" or "pyav" force one library.

    Returns:
        :class:`VideoClip` with frames ``(T, H, W, 3)`` uint8 RGB (upright) and timestamps ``(T,)``
        float64 seconds from the container's pts, relative to the stream start.

    Raises:
        VideoError: the file is missing, empty, not a video, has no video frames, or its selected frames
            are all undecodable. Frames that cannot be decoded while others can are skipped with a
            :class:`~ppllava_hermes.video.errors.VideoDecodeWarning`.
        ValueError: bad arguments. ImportError: ``backend="decord"`` without decord installed.
    """
    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames)
    check_backend(backend)
    probed = _probe(path)
    src = probed.info.path
    if plan_decord(probed, backend):
        try:
            return _read_decord(probed, sampling)
        except _decord.DecordFailed as exc:
            if backend == "decord":
                raise VideoError(src, decord_failure(exc)) from None
            logger.info("video %r: decord failed (%s); decoding with PyAV", src, exc)
    return _read_pyav(probed, sampling)


class _Frames:
    """Preallocated ``(K, H, W, 3)`` output, so a read never holds the frames twice."""

    def __init__(self, src: str, wanted: int, hw: tuple[int, int]) -> None:
        self.src, self.hw = src, hw
        self.frames = np.empty((wanted, *hw, 3), dtype=np.uint8)
        self.stamps = np.empty(wanted, dtype=np.float64)
        self.n = 0

    def add(self, frame: np.ndarray, ts: float) -> None:
        if frame.shape[:2] != self.hw:
            raise VideoError(
                self.src, f"frame size changed mid-video ({frame.shape[1]}x{frame.shape[0]} at {ts:.3f} s)"
            )
        self.frames[self.n], self.stamps[self.n] = frame, ts
        self.n += 1

    def clip(self) -> VideoClip:
        wanted = len(self.frames)
        if wanted and not self.n:
            raise VideoError(self.src, f"none of the {wanted} selected frames could be decoded")
        _pyav.warn_skipped(self.src, wanted - self.n, wanted, stacklevel=5)
        if self.n < wanted:  # copy, so the unused tail of the buffer is freed
            return VideoClip(self.frames[: self.n].copy(), self.stamps[: self.n].copy(), self.src)
        return VideoClip(self.frames, self.stamps, self.src)


def decord_failure(exc: _decord.DecordFailed) -> str:
    return f"decord failed ({exc}); backend='auto' or 'pyav' decode it with PyAV and skip damaged frames"


def _read_decord(probed: _Probed, sampling: Sampling) -> VideoClip:
    info = probed.info
    reader = _decord.open_reader(info.path)
    ts = _decord.reader_timestamps(reader, probed.time_base)
    valid = _increasing(ts)
    chosen = valid[sampling.indices(ts[valid])]
    out = _Frames(info.path, len(chosen), (info.height, info.width))
    for i, frame in _decord.fetch(reader, chosen, shape=out.hw):
        out.add(frame, float(ts[i]))
    return out.clip()


def _increasing(ts: np.ndarray) -> np.ndarray:
    """Indices of the frames whose timestamp is after every earlier one (drops duplicates/reorders)."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    running = np.maximum.accumulate(np.concatenate([[-np.inf], ts[:-1]]))
    return np.flatnonzero(ts > running)


def _read_pyav(probed: _Probed, sampling: Sampling) -> VideoClip:
    info = probed.info
    src = info.path
    # pass 1: packets only, to know every frame's time before choosing (cheap: no decoding)
    with _pyav.open_input(src) as container:
        stream = _pyav.video_stream(container, src)
        keys, timeline = _pyav.index_keys(container, stream, src)
    ts = np.array([timeline.seconds(int(k)) for k in keys], dtype=np.float64)
    valid = _increasing(ts)
    chosen = valid[sampling.indices(ts[valid])]
    wanted = {int(keys[i]) for i in chosen}
    last_key = int(keys[chosen[-1]]) if len(chosen) else None
    # pass 2: decode in order, convert only the chosen frames
    out = _Frames(src, len(chosen), (info.height, info.width))
    stats = _pyav.DecodeStats()
    with _pyav.open_input(src) as container:
        stream = _pyav.video_stream(container, src)
        try:
            for key, t, frame in _pyav.decoded_frames(container, stream, src, stats, timeline=timeline):
                if key in wanted:
                    out.add(_pyav.to_rgb(frame, src), t)
                if key == last_key:
                    break  # frames come out in presentation order: nothing chosen remains
        except VideoError:
            raise
        except Exception as exc:  # anything PyAV raises that the decode loop did not anticipate
            raise VideoError(src, f"decoding failed ({describe_exception(exc)})") from None
    return out.clip()
