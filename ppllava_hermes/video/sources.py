"""Streaming sources: :func:`stream_video` yields time-ordered :class:`VideoClip` chunks.

Knows: local video files (indexed from packets, then the chosen frames fetched a small batch at a
time by torchcodec, or by PyAV seeking to keyframes and decoding forward, or by decord when named;
never the whole video in memory), anything else PyAV opens (rtsp://, http://, /dev/video0, with a
connect/read timeout so it never hangs, sampled on the fly), and folders of images (natural name
order, timestamps from a frame rate, PIL decoding). Also frame-rate sampling (files: the same frames
as ``read_video``), chunking by frame count and/or time window, pacing to wall clock, and shrinking
each frame to ``max_side`` right after it is decoded, so at most one chunk (or one decoder batch) of
full-resolution frames exists at a time. Does not know: what consumes the chunks, or audio.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np

from . import _decord, _pyav, _torchcodec
from .errors import VideoError, VideoNotFoundError, describe_exception
from .reader import (
    Backend,
    FileIndex,
    _increasing,
    _probe,
    _Probed,
    check_backend,
    decord_failure,
    file_index,
    plan_backend,
    torchcodec_failure,
    torchcodec_size,
    warn_truncated,
)
from .sampling import FpsSampler, fps_indices
from .sizing import check_max_side, fit_size, resize_rgb
from .types import VideoClip

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

T = TypeVar("T")


@dataclass(frozen=True)
class StreamConfig:
    """Validated options of :func:`stream_video` (see there). With no chunk size, chunks are 1 s windows."""

    chunk_frames: int | None = None
    chunk_seconds: float | None = None
    fps: float | None = None
    realtime: bool = False
    max_frames: int | None = None
    max_side: int | None = None
    backend: Backend = "auto"
    image_fps: float = 1.0
    timeout: float | None = 10.0
    options: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_frames", "max_frames"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("chunk_seconds", "fps", "image_fps", "timeout"):
            value = getattr(self, name)
            if value is None and name != "image_fps":
                continue
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "max_side", check_max_side(self.max_side))
        check_backend(self.backend)
        if self.chunk_frames is None and self.chunk_seconds is None:
            object.__setattr__(self, "chunk_seconds", 1.0)


def stream_video(
    source: str | os.PathLike[str],
    *,
    chunk_frames: int | None = None,
    chunk_seconds: float | None = None,
    fps: float | None = None,
    realtime: bool = False,
    max_frames: int | None = None,
    max_side: int | None = None,
    backend: Backend = "auto",
    image_fps: float = 1.0,
    timeout: float | None = 10.0,
    options: Mapping[str, str] | None = None,
) -> Iterator[VideoClip]:
    """Yield a source as consecutive chunks, decoding incrementally.

    Args:
        source: a video file, a folder of images, or a URL/device PyAV opens (rtsp://, http://, /dev/video0).
        chunk_frames: close a chunk after this many frames.
        chunk_seconds: close a chunk at the end of each window of this many seconds (windows start at the
            first frame's time). Both may be given (whichever comes first); neither means 1 s windows.
            A chunk also closes when the frame size changes (possible in live streams and image folders).
        fps: keep frames at this rate, same selection as ``read_video(fps=...)``; ``None`` keeps all.
        realtime: pace the chunks so each is yielded no earlier than its last timestamp, counted in
            wall-clock time from the first request.
        max_frames: stop after this many frames (kept frames, after ``fps`` sampling).
        max_side: shrink every frame (aspect kept, never enlarged) so its longer side is at most this
            many pixels, right after it is decoded; ``None`` keeps the source resolution.
        backend: for files, as in :func:`~ppllava_hermes.video.reader.read_video` (if torchcodec fails
            mid-file under "auto", PyAV continues after the last frame yielded); URLs and devices use PyAV.
        image_fps: frame rate that gives image ``k`` of a folder the timestamp ``k / image_fps``.
        timeout: seconds to wait when connecting to and reading a URL/device before raising
            :class:`VideoError` (not used for local files).
        options: FFmpeg options for URLs/devices, e.g. ``{"rtsp_transport": "tcp"}``.

    Returns:
        An iterator of :class:`VideoClip`, frames ``(t, H, W, 3)`` uint8 RGB, timestamps ``(t,)`` float64
        seconds (from pts, relative to the stream start), increasing across chunks.

    Raises:
        VideoError: missing or unreadable source; raised by this call for files and folders, on the first
            ``next()`` for URLs and devices (which are opened lazily). Undecodable frames are skipped
            with a :class:`~ppllava_hermes.video.errors.VideoDecodeWarning` when the stream ends; a
            truncated file is streamed to where its frames end, said by this call in one
            :class:`~ppllava_hermes.video.errors.VideoTruncatedWarning`.
    """
    cfg = StreamConfig(
        chunk_frames=chunk_frames,
        chunk_seconds=chunk_seconds,
        fps=fps,
        realtime=realtime,
        max_frames=max_frames,
        max_side=max_side,
        backend=backend,
        image_fps=image_fps,
        timeout=timeout,
        options=options,
    )
    src, kind = _classify(source)
    if kind == "folder":
        frames = _image_frames(src, _list_images(src), cfg)
    elif kind == "file":
        probed = _probe(src)
        warn_truncated(probed.info)
        frames = _file_frames(probed, plan_backend(probed, cfg.backend), cfg)
    else:
        if cfg.backend in ("decord", "torchcodec"):
            raise VideoError(
                src, f"{cfg.backend} reads only local files here; use backend='auto' or 'pyav' for URLs and devices"
            )
        frames = _pyav_frames(src, cfg, live=True)
    return _chunked(frames, src, cfg)


def _classify(source: str | os.PathLike[str]) -> tuple[str, str]:
    src = os.fspath(source)
    if "://" in src:
        return src, "url"
    path = Path(src)
    if src.startswith("/dev/"):
        if not path.exists():
            raise VideoNotFoundError(src, "device not found")
        return src, "device"
    if path.is_dir():
        return src, "folder"
    if not path.exists():
        raise VideoNotFoundError(src)
    return src, "file"


def _chunked(frames: Iterator[tuple[float, np.ndarray]], src: str, cfg: StreamConfig) -> Iterator[VideoClip]:
    try:
        limited = islice(frames, cfg.max_frames) if cfg.max_frames is not None else frames
        chunks = _chunks(limited, src, cfg)
        yield from (_paced(chunks) if cfg.realtime else chunks)
    finally:
        frames.close()  # release the decoder now, also when the consumer stops early


class _Chunk:
    """Frames of the chunk being filled. With a frame count, they are copied into one preallocated
    ``(chunk_frames, H, W, 3)`` array as they come (no second copy by ``np.stack``, and decoder
    buffers are released frame by frame); otherwise they are listed and stacked at the end."""

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.buffer: np.ndarray | None = None
        self.images: list[np.ndarray] = []
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.buffer.shape[1:] if self.buffer is not None else self.images[0].shape

    def add(self, ts: float, image: np.ndarray) -> None:
        if self.capacity is None:
            self.images.append(image)
        else:
            if self.buffer is None:
                self.buffer = np.empty((self.capacity, *image.shape), dtype=np.uint8)
            self.buffer[len(self.stamps)] = image
        self.stamps.append(ts)

    def clip(self, src: str) -> VideoClip:
        n = len(self.stamps)
        frames = np.stack(self.images) if self.buffer is None else self.buffer[:n]
        return VideoClip(frames, np.asarray(self.stamps), src)


def _chunks(frames: Iterable[tuple[float, np.ndarray]], src: str, cfg: StreamConfig) -> Iterator[VideoClip]:
    chunk = _Chunk(cfg.chunk_frames)
    window = 0
    t_first: float | None = None
    for ts, image in frames:
        if t_first is None:
            t_first = ts
        # +1e-9: a frame exactly on a window boundary must not fall back into the previous window
        w = math.floor((ts - t_first) / cfg.chunk_seconds + 1e-9) if cfg.chunk_seconds else 0
        if len(chunk) and (w != window or image.shape != chunk.shape):
            yield chunk.clip(src)
            chunk = _Chunk(cfg.chunk_frames)
        if not len(chunk):
            window = w
        chunk.add(ts, image)
        if cfg.chunk_frames is not None and len(chunk) >= cfg.chunk_frames:
            yield chunk.clip(src)
            chunk = _Chunk(cfg.chunk_frames)
    if len(chunk):
        yield chunk.clip(src)


def _paced(chunks: Iterator[VideoClip]) -> Iterator[VideoClip]:
    started = time.monotonic()  # the stream "starts playing" at the first request
    t0: float | None = None
    for clip in chunks:
        if t0 is None:
            t0 = float(clip.timestamps[0])
        delay = started + (float(clip.timestamps[-1]) - t0) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield clip


def _sampled(items: Iterable[tuple[float, T]], fps: float | None) -> Iterator[tuple[float, T]]:
    """Online fps sampling of ``(seconds, payload)`` pairs; payloads are not decoded until kept."""
    if fps is None:
        yield from items
        return
    sampler = FpsSampler(fps)
    prev: tuple[float, T] | None = None
    for ts, payload in items:
        take_prev, take_cur = sampler.push(ts)
        if take_prev and prev is not None:
            yield prev
        if take_cur:
            yield ts, payload
        prev = (ts, payload)


def _file_frames(probed: _Probed, plan: str, cfg: StreamConfig) -> Iterator[tuple[float, np.ndarray]]:
    info = probed.info
    src = info.path
    size = fit_size(info.height, info.width, cfg.max_side)
    if plan == "decord":
        try:
            yield from _decord_frames(probed, cfg, size)
        except _decord.DecordFailed as exc:
            raise VideoError(src, decord_failure(exc)) from None
        return
    index = file_index(src)
    chosen = index.valid
    if cfg.fps is not None:
        chosen = chosen[fps_indices(index.seconds[chosen], cfg.fps)]
    if cfg.max_frames is not None:
        chosen = chosen[: cfg.max_frames]
    if plan == "torchcodec":
        last = -math.inf
        try:
            for ts, image in _torchcodec_frames(probed, index, chosen, size):
                last = ts
                yield ts, image
            return
        except _torchcodec.TorchcodecFailed as exc:
            if cfg.backend == "torchcodec":
                raise VideoError(src, torchcodec_failure(exc)) from None
            logger.info("video %r: torchcodec failed (%s); continuing with PyAV after t=%.3f s", src, exc, last)
        # PyAV picks up exactly the chosen frames not yielded yet: no repeats, no gaps
        chosen = chosen[index.seconds[chosen] > last]
    yield from _pyav_file_frames(src, index, chosen, size)


def _decord_frames(probed: _Probed, cfg: StreamConfig, size: tuple[int, int]) -> Iterator[tuple[float, np.ndarray]]:
    info = probed.info
    reader = _decord.open_reader(info.path, None if size == (info.height, info.width) else size)
    ts = _decord.reader_timestamps(reader, probed.time_base)
    valid = _increasing(ts)
    chosen = valid[fps_indices(ts[valid], cfg.fps)] if cfg.fps is not None else valid
    if cfg.max_frames is not None:
        chosen = chosen[: cfg.max_frames]
    for i, image in _decord.fetch(reader, chosen, shape=size):
        yield float(ts[i]), image


def _torchcodec_frames(
    probed: _Probed, index: FileIndex, chosen: np.ndarray, size: tuple[int, int]
) -> Iterator[tuple[float, np.ndarray]]:
    assert probed.time_base is not None  # plan_backend never picks torchcodec without pts
    decoder = _torchcodec.open_decoder(probed.info.path, torchcodec_size(probed, size))
    for pos, image in _torchcodec.fetch(decoder, index.stream.keys, chosen, probed.time_base, shape=size):
        yield float(index.seconds[pos]), image


def _pyav_file_frames(
    src: str, index: FileIndex, chosen: np.ndarray, size: tuple[int, int]
) -> Iterator[tuple[float, np.ndarray]]:
    """The chosen frames of a file through PyAV (seeking); missing ones are counted and warned about."""
    stats = _pyav.DecodeStats()
    got, last_pos, done = 0, None, False
    try:
        with _pyav.open_input(src) as container:
            stream = _pyav.video_stream(container, src)
            for pos, frame in _pyav.seek_frames(container, stream, src, index.stream, chosen, stats):
                got, last_pos = got + 1, pos
                yield float(index.seconds[pos]), _pyav.to_rgb(frame, src, size)
            done = True
    except VideoError:
        raise
    except Exception as exc:  # anything PyAV raises that the decode loop did not anticipate
        raise VideoError(src, f"decoding failed ({describe_exception(exc)})") from None
    finally:
        # stopped early: only the chosen frames before the last one yielded can be known missing
        reached = len(chosen) if done else (int(np.searchsorted(chosen, last_pos)) + 1 if got else 0)
        _pyav.warn_skipped(src, reached - got)


def _pyav_frames(src: str, cfg: StreamConfig, *, live: bool) -> Iterator[tuple[float, np.ndarray]]:
    """Everything PyAV opens, decoded in order and sampled on the fly (URLs and devices)."""
    stats = _pyav.DecodeStats()
    timeout = cfg.timeout if live else None
    fmt = "v4l2" if src.startswith("/dev/video") else None
    size: tuple[int, int] | None = None
    try:
        with _pyav.open_input(
            src, timeout=timeout, options=cfg.options if live else None, format=fmt, what="cannot open"
        ) as container:
            stream = _pyav.video_stream(container, src)
            decoded = _pyav.decoded_frames(
                container, stream, src, stats, timeout=timeout, count_leading=not live
            )
            for ts, frame in _sampled(((ts, frame) for _, ts, frame in decoded), cfg.fps):
                if cfg.max_side is not None:
                    turned = _pyav.quarter_turns(frame.rotation, src) % 2
                    h, w = (frame.width, frame.height) if turned else (frame.height, frame.width)
                    size = fit_size(h, w, cfg.max_side)  # per frame: live streams may change size
                yield ts, _pyav.to_rgb(frame, src, size)
    except VideoError:
        raise
    except Exception as exc:  # anything PyAV raises that the decode loop did not anticipate
        raise VideoError(src, f"decoding failed ({describe_exception(exc)})") from None
    finally:
        _pyav.warn_skipped(src, stats.skipped)


_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> list[str | int]:
    # re.split with a group alternates text, number, text…, so positions always compare like types
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(_DIGITS.split(name))]


def _list_images(folder: str) -> list[Path]:
    paths = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not paths:
        raise VideoError(folder, f"no images in folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(paths, key=lambda p: (_natural_key(p.name), p.name))


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps  # only image folders need PIL

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)  # honour EXIF orientation, as rotated videos are honoured
        return np.array(upright.convert("RGB"), dtype=np.uint8)


def _image_frames(folder: str, paths: list[Path], cfg: StreamConfig) -> Iterator[tuple[float, np.ndarray]]:
    broken: list[str] = []
    try:
        items = ((k / cfg.image_fps, path) for k, path in enumerate(paths))
        for ts, path in _sampled(items, cfg.fps):
            try:
                image = _load_image(path)
            except Exception:  # truncated or non-image file with an image suffix: skip it, keep timing
                broken.append(path.name)
                continue
            if cfg.max_side is not None:
                image = resize_rgb(image, fit_size(*image.shape[:2], cfg.max_side))
            yield ts, image
    finally:
        _pyav.warn_skipped(folder, len(broken), detail=f"unreadable images: {', '.join(broken[:5])}")
