"""Whole-file access: :func:`probe` a video, :func:`read_video` sampled frames into one :class:`VideoClip`.

Knows: local video files. Every file is vetted with PyAV first (exists, non-empty, has a video stream
with at least one decodable frame), so no decoder ever sees garbage it could hang on, and each file's
frames are indexed from its packets (pts and keyframes, no decoding), which fixes the frames chosen
and their exact timestamps whatever decoder then fetches them. Decoders:

* ``"torchcodec"`` (what ``backend="auto"`` uses when torchcodec imports and loads its FFmpeg
  libraries): seeks by time to each chosen frame, resizes inside FFmpeg, a few frames per call;
* ``"pyav"`` (the fallback, with one :class:`~ppllava_hermes.video.errors.VideoBackendWarning` per
  process saying why): seeks to the keyframe before each chosen frame and decodes forward to it, and
  skips frames it cannot decode with a :class:`~ppllava_hermes.video.errors.VideoDecodeWarning`;
* ``"decord"``: only when asked for by name and installed (not a dependency).

When torchcodec fails on a file under ``"auto"``, PyAV decodes it. Rotated videos (display matrix)
come out upright. ``max_side`` shrinks frames right after each is decoded, so at most one small batch
of full-resolution frames exists at a time.

Truncated MP4/MOV files (see :mod:`._mp4`): one whose index comes first is read as the shorter video
its whole frames make (the half frame it ends with is left out of the index): :func:`probe` reports
where the frames end next to what the header declared, :func:`read_video` (and ``stream_video``)
warn once with a :class:`~ppllava_hermes.video.errors.VideoTruncatedWarning`, and ``"auto"``
decodes it with PyAV, which stops cleanly at the cut. One whose index is missing or cut is a
:class:`~ppllava_hermes.video.errors.VideoError` saying so.
Does not know: URLs, devices and image folders (see :mod:`.sources`), or model preprocessing.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from . import _decord, _mp4, _pyav, _torchcodec
from .errors import VideoError, VideoNotFoundError, VideoTruncatedWarning, describe_exception
from .sampling import Sampling
from .sizing import check_max_side, fit_size
from .types import VideoClip

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torchcodec", "pyav", "decord"]
BACKENDS = ("auto", "torchcodec", "pyav", "decord")
DECODERS = ("torchcodec", "pyav", "decord")


@dataclass(frozen=True)
class VideoInfo:
    """What a file holds, from its headers and first frame.

    Attributes:
        path: the file as given.
        num_frames: frame count from the header, or counted from packets when the header has none or
            the file is truncated.
        fps: average frame rate (frames/s).
        duration: seconds; for a truncated file, where its frames end (the last whole frame's time
            plus one frame period).
        width, height: size of the frames as returned, i.e. after rotation.
        rotation: counter-clockwise degrees (0, 90, 180, 270) the display matrix asks for; frames
            returned by this package are already rotated by it.
        backend: what ``read_video(path, backend="auto")`` tries first ("torchcodec" or "pyav"; "decord"
            is accepted for infos built by callers); "pyav" for a truncated file.
        codec: FFmpeg codec name, e.g. "h264".
        declared_frames, declared_duration: set only for a truncated file (:attr:`truncated`): what
            its header declares (``declared_frames`` stays ``None`` when the header has no count).

    A file is truncated when it is an MP4/MOV that ends inside one of its boxes and its whole frames
    end before what its header declares. Telling that costs no more than reading box headers; only
    then is the file read to its end (packets, no decoding) to find where the frames stop, as for a
    container whose header has no frame count. Other containers are not checked for truncation.
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
    declared_frames: int | None = None
    declared_duration: float | None = None

    @property
    def truncated(self) -> bool:
        """Whether the file was cut short: its frames end before what its header declares."""
        return self.declared_duration is not None

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
        if self.backend not in DECODERS:
            raise ValueError(f"backend must be one of {DECODERS}, got {self.backend!r}")
        if self.declared_duration is not None and not (
            math.isfinite(self.declared_duration) and self.declared_duration >= self.duration
        ):
            raise ValueError(
                f"declared_duration must be finite and >= duration ({self.duration}), got {self.declared_duration}"
            )
        if self.declared_frames is not None and self.declared_frames < self.num_frames:
            raise ValueError(
                f"declared_frames must be >= num_frames ({self.num_frames}), got {self.declared_frames}"
            )


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
        # an index cut off mid-way leaves FFmpeg with no stream or no frames: say what happened instead
        reason = _mp4.open_failure(src)
        if reason is None:
            raise
        raise VideoError(src, reason) from None
    except Exception as exc:  # whatever PyAV raises on odd files must not escape raw
        raise VideoError(src, f"cannot read video headers ({describe_exception(exc)})") from None


def _probe_container(src: str) -> _Probed:
    with _pyav.open_input(src) as container:
        stream = _pyav.video_stream(container, src)
        header_frames = int(stream.frames or 0)
        # an MP4 that ends inside a box was cut short and its header may promise frames it no longer
        # holds: read every packet, as for a header without a count, to know where the frames end
        layout = _mp4.layout(src)
        cut = layout is not None and layout.cut is not None
        file_size = layout.size if cut else None
        counted, has_pts, first = 0, False, None
        lo, hi = None, None  # pts range, for the rate when the whole file is read anyway
        for packet in _pyav.demux_packets(container, stream, src, None):
            if packet.size > 0 and not _pyav.cut_off(packet, file_size):
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
            if first is not None and header_frames > 0 and not cut:
                break  # the header has the count; no need to read the whole file
        if counted == 0 and cut:
            raise VideoError(
                src,
                f"truncated: no whole video frame (the file ends at {layout.size} bytes, inside its "
                f"{layout.cut!r} box)",
            )
        if counted == 0:
            raise VideoError(src, "no video frames (the video stream is empty)")
        if first is None:
            raise VideoError(src, f"no decodable video frames ({counted} packets, none decoded)")
        num_frames = header_frames if header_frames > 0 and not cut else counted
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
        declared_frames = declared_duration = None
        if cut:
            start = stream.start_time if stream.start_time is not None else lo
            end = _frames_end(counted, start, hi, Fraction(stream.time_base) if stream.time_base else None, fps)
            if counted < header_frames or (end is not None and end < duration - 0.5 / (fps or 1.0)):
                declared_frames = header_frames if header_frames >= counted else None
                declared_duration = duration
                duration = min(duration, end) if end is not None else duration
                num_frames = counted
            else:  # only something after the video was cut off: the header is right
                num_frames = header_frames or counted
        h, w = first.height, first.width
        time_base = Fraction(stream.time_base) if has_pts and stream.time_base else None
        torchcodec_ok = _torchcodec.import_torchcodec() is not None and time_base is not None
        usable_torchcodec = torchcodec_ok and declared_duration is None  # truncated: see plan_backend
        info = VideoInfo(
            path=src,
            num_frames=num_frames,
            fps=fps,
            duration=duration,
            width=h if rotation in (90, 270) else w,
            height=w if rotation in (90, 270) else h,
            rotation=rotation,
            backend="torchcodec" if usable_torchcodec else "pyav",
            codec=stream.codec_context.name,
            declared_frames=declared_frames,
            declared_duration=declared_duration,
        )
        return _Probed(info=info, time_base=time_base)


def _frames_end(
    counted: int, start: int | None, last: int | None, time_base: Fraction | None, fps: float
) -> float | None:
    """Seconds where ``counted`` whole frames end: the last one's time (pts ``last``, t = 0 at pts
    ``start``) plus one frame period, or ``counted`` periods without pts; ``None`` if unknown."""
    period = 1.0 / fps if fps > 0 else 0.0
    if last is not None and start is not None and time_base:
        return max(0.0, float((last - start) * time_base)) + period
    return counted * period if period else None


def warn_truncated(info: VideoInfo, *, stacklevel: int = 3) -> None:
    """The one :class:`VideoTruncatedWarning` for a truncated file, saying where its frames end (else nothing)."""
    if info.declared_duration is None:
        return
    frames = f", {info.num_frames} of {info.declared_frames} frames" if info.declared_frames else ""
    warnings.warn(
        f"video {info.path!r}: truncated: frames end at {info.duration:.1f} s of a declared "
        f"{info.declared_duration:.1f} s{frames}; nothing after that can be read",
        VideoTruncatedWarning,
        stacklevel=stacklevel,
    )


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a file's headers and first frame; raises :class:`VideoError` for anything unreadable.

    A truncated file is not an error: its info describes the frames it holds (see :class:`VideoInfo`),
    without a warning (``read_video`` and ``stream_video`` warn when they read it).
    """
    return _probe(path).info


def plan_backend(probed: _Probed, backend: str) -> str:
    """The decoder to try first for this file ("torchcodec", "decord" or "pyav").

    Raises:
        ImportError: a named backend is not installed or cannot load.
        VideoError: a named backend cannot decode this file correctly.
    """
    info = probed.info
    if backend == "pyav":
        return "pyav"
    if backend == "decord":
        if _decord.import_decord() is None:
            raise ImportError(
                "backend='decord' was requested but decord is not installed (pip install decord)"
            )
        if info.rotation:
            raise VideoError(
                info.path,
                f"decord cannot decode rotated videos (rotation {info.rotation} degrees) correctly; "
                "use backend='auto', 'torchcodec' or 'pyav', which return upright frames",
            )
        return "decord"
    if _torchcodec.import_torchcodec() is None:
        if backend == "torchcodec":
            raise ImportError(f"backend='torchcodec' was requested but {_torchcodec.unavailable_reason()}")
        _torchcodec.warn_fallback_once()
        return "pyav"
    if probed.time_base is None:
        if backend == "torchcodec":
            raise VideoError(
                info.path, "torchcodec cannot locate frames of a stream without timestamps; use 'auto' or 'pyav'"
            )
        return "pyav"
    if info.truncated and backend == "auto":
        return "pyav"  # torchcodec fails on the half frame a truncated file ends with, PyAV stops before it
    return "torchcodec"


def read_video(
    path: str | os.PathLike[str],
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    backend: Backend = "auto",
) -> VideoClip:
    """Decode a local video file into one clip.

    Args:
        path: a video file.
        fps: sample at this rate: for each point of the grid ``t0 + j / fps`` the nearest frame.
        num_frames: instead of ``fps``, this many frames spread uniformly over the video.
        max_frames: cap on the number of frames; more are thinned uniformly (works with ``fps`` or alone).
        max_side: shrink frames (aspect kept, never enlarged) so the longer side is at most this many
            pixels, right after each frame is decoded; ``None`` keeps the stored resolution.
        backend: "auto" uses torchcodec when it imports and loads (else PyAV, warning once why) and falls
            back to PyAV when torchcodec fails on the file; "torchcodec", "pyav" or "decord" force one.

    Returns:
        :class:`VideoClip` with frames ``(T, H, W, 3)`` uint8 RGB (upright) and timestamps ``(T,)``
        float64 seconds from the container's pts, relative to the stream start. Every backend picks
        the same frames and gives them bit-identical timestamps.

    Raises:
        VideoError: the file is missing, empty, not a video, has no video frames, or its selected frames
            are all undecodable. Frames that PyAV cannot decode while others can are skipped with a
            :class:`~ppllava_hermes.video.errors.VideoDecodeWarning`.
        ValueError: bad arguments. ImportError: a named backend is not installed.
    """
    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames)
    max_side = check_max_side(max_side)
    check_backend(backend)
    probed = _probe(path)
    src = probed.info.path
    warn_truncated(probed.info)
    size = fit_size(probed.info.height, probed.info.width, max_side)
    plan = plan_backend(probed, backend)
    if plan == "decord":
        try:
            return _read_decord(probed, sampling, size)
        except _decord.DecordFailed as exc:
            raise VideoError(src, decord_failure(exc)) from None
    index = file_index(src)
    chosen = choose(index, sampling)
    if plan == "torchcodec":
        try:
            return _read_torchcodec(probed, index, chosen, size)
        except _torchcodec.TorchcodecFailed as exc:
            if backend == "torchcodec":
                raise VideoError(src, torchcodec_failure(exc)) from None
            logger.info("video %r: torchcodec failed (%s); decoding with PyAV", src, exc)
    return _read_pyav(probed, index, chosen, size)


@dataclass(frozen=True)
class FileIndex:
    """A file's frames from its packets: :class:`~._pyav.StreamIndex`, seconds and the usable positions."""

    stream: _pyav.StreamIndex
    seconds: np.ndarray  # (T,) float64, per key
    valid: np.ndarray  # positions whose time is after every earlier one (drops duplicates/reorders)


def file_index(src: str) -> FileIndex:
    """Index a (vetted) file with PyAV from packets alone; raises :class:`VideoError` on failure."""
    try:
        with _pyav.open_input(src) as container:
            stream = _pyav.video_stream(container, src)
            index = _pyav.index_stream(container, stream, src, os.path.getsize(src))
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(src, f"cannot index frames ({describe_exception(exc)})") from None
    ts = index.seconds()
    return FileIndex(index, ts, _increasing(ts))


def choose(index: FileIndex, sampling: Sampling) -> np.ndarray:
    """Positions into ``index`` picked by ``sampling`` (``(K,)`` int64, increasing)."""
    return index.valid[sampling.indices(index.seconds[index.valid])]


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


def torchcodec_failure(exc: _torchcodec.TorchcodecFailed) -> str:
    return f"torchcodec failed ({exc}); backend='auto' or 'pyav' decode it with PyAV and skip damaged frames"


def _read_decord(probed: _Probed, sampling: Sampling, size: tuple[int, int]) -> VideoClip:
    info = probed.info
    reader = _decord.open_reader(info.path, None if size == (info.height, info.width) else size)
    ts = _decord.reader_timestamps(reader, probed.time_base)
    valid = _increasing(ts)
    chosen = valid[sampling.indices(ts[valid])]
    out = _Frames(info.path, len(chosen), size)
    for i, frame in _decord.fetch(reader, chosen, shape=out.hw):
        out.add(frame, float(ts[i]))
    return out.clip()


def torchcodec_size(probed: _Probed, size: tuple[int, int]) -> tuple[int, int] | None:
    """The ``Resize`` to ask torchcodec for, or ``None`` to keep the stored size."""
    return None if size == (probed.info.height, probed.info.width) else size


def _read_torchcodec(probed: _Probed, index: FileIndex, chosen: np.ndarray, size: tuple[int, int]) -> VideoClip:
    info = probed.info
    assert probed.time_base is not None  # plan_backend never picks torchcodec without pts
    decoder = _torchcodec.open_decoder(info.path, torchcodec_size(probed, size))
    out = _Frames(info.path, len(chosen), size)
    for pos, frame in _torchcodec.fetch(decoder, index.stream.keys, chosen, probed.time_base, shape=size):
        out.add(frame, float(index.seconds[pos]))
    return out.clip()


def _increasing(ts: np.ndarray) -> np.ndarray:
    """Indices of the frames whose timestamp is after every earlier one (drops duplicates/reorders)."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    running = np.maximum.accumulate(np.concatenate([[-np.inf], ts[:-1]]))
    return np.flatnonzero(ts > running)


def _read_pyav(
    probed: _Probed, index: FileIndex, chosen: np.ndarray, size: tuple[int, int], *, seek: bool = True
) -> VideoClip:
    """Chosen frames through PyAV: seeking (default), or ``seek=False`` decoding every frame in order."""
    src = probed.info.path
    out = _Frames(src, len(chosen), size)
    stats = _pyav.DecodeStats()
    with _pyav.open_input(src) as container:
        stream = _pyav.video_stream(container, src)
        try:
            if seek:
                for pos, frame in _pyav.seek_frames(container, stream, src, index.stream, chosen, stats):
                    out.add(_pyav.to_rgb(frame, src, size), float(index.seconds[pos]))
            else:
                _decode_all(container, stream, src, index, chosen, size, stats, out)
        except VideoError:
            raise
        except Exception as exc:  # anything PyAV raises that the decode loop did not anticipate
            raise VideoError(src, f"decoding failed ({describe_exception(exc)})") from None
    return out.clip()


def _decode_all(container, stream, src, index: FileIndex, chosen, size, stats, out: _Frames) -> None:
    keys = index.stream.keys
    wanted = {int(keys[i]) for i in chosen}
    last_key = int(keys[chosen[-1]]) if len(chosen) else None
    if last_key is None:
        return
    timeline = index.stream.timeline
    for key, t, frame in _pyav.decoded_frames(container, stream, src, stats, timeline=timeline):
        if key in wanted:
            out.add(_pyav.to_rgb(frame, src, size), t)
        if key == last_key:
            break  # frames come out in presentation order: nothing chosen remains
