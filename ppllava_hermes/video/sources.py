"""Streaming sources: :func:`stream_video` yields time-ordered :class:`VideoClip` chunks.

Knows: local video files (decord index batches or PyAV demux/decode, never the whole video in
memory), anything else PyAV opens (rtsp://, http://, /dev/video0, with a connect/read timeout so it
never hangs), and folders of images (natural name order, timestamps from a frame rate, PIL decoding).
Also frame-rate sampling on the fly, chunking by frame count and/or time window, and pacing to wall
clock. Does not know: what consumes the chunks, resizing, or audio.
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

from . import _decord, _pyav
from .errors import VideoError, VideoNotFoundError, describe_exception
from .reader import Backend, _increasing, _probe, _Probed, check_backend, decord_failure, plan_decord
from .sampling import FpsSampler, fps_indices
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
        backend: for files, as in :func:`~ppllava_hermes.video.reader.read_video`; URLs and devices use PyAV.
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
            with a :class:`~ppllava_hermes.video.errors.VideoDecodeWarning` when the stream ends.
    """
    cfg = StreamConfig(
        chunk_frames=chunk_frames,
        chunk_seconds=chunk_seconds,
        fps=fps,
        realtime=realtime,
        max_frames=max_frames,
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
        frames = _file_frames(probed, plan_decord(probed, cfg.backend), cfg)
    else:
        if cfg.backend == "decord":
            raise VideoError(
                src, "decord reads only local files; use backend='auto' or 'pyav' for URLs and devices"
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


def _chunks(frames: Iterable[tuple[float, np.ndarray]], src: str, cfg: StreamConfig) -> Iterator[VideoClip]:
    images: list[np.ndarray] = []
    stamps: list[float] = []
    window = 0
    t_first: float | None = None
    for ts, image in frames:
        if t_first is None:
            t_first = ts
        # +1e-9: a frame exactly on a window boundary must not fall back into the previous window
        w = math.floor((ts - t_first) / cfg.chunk_seconds + 1e-9) if cfg.chunk_seconds else 0
        if images and (w != window or image.shape != images[0].shape):
            yield VideoClip(np.stack(images), np.asarray(stamps), src)
            images, stamps = [], []
        if not images:
            window = w
        images.append(image)
        stamps.append(ts)
        if cfg.chunk_frames is not None and len(images) >= cfg.chunk_frames:
            yield VideoClip(np.stack(images), np.asarray(stamps), src)
            images, stamps = [], []
    if images:
        yield VideoClip(np.stack(images), np.asarray(stamps), src)


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


def _file_frames(probed: _Probed, use_decord: bool, cfg: StreamConfig) -> Iterator[tuple[float, np.ndarray]]:
    src = probed.info.path
    last = -math.inf
    if use_decord:
        try:
            for ts, image in _decord_frames(probed, cfg):
                last = ts
                yield ts, image
            return
        except _decord.DecordFailed as exc:
            if cfg.backend == "decord":
                raise VideoError(src, decord_failure(exc)) from None
            logger.info("video %r: decord failed (%s); continuing with PyAV after t=%.3f s", src, exc, last)
    # PyAV restarts from the beginning; its sampler anchors at the same first frame, so it picks the
    # same frames, and we skip those already yielded
    for ts, image in _pyav_frames(src, cfg, live=False):
        if ts > last:
            yield ts, image


def _decord_frames(probed: _Probed, cfg: StreamConfig) -> Iterator[tuple[float, np.ndarray]]:
    info = probed.info
    reader = _decord.open_reader(info.path)
    ts = _decord.reader_timestamps(reader, probed.time_base)
    valid = _increasing(ts)
    chosen = valid[fps_indices(ts[valid], cfg.fps)] if cfg.fps is not None else valid
    if cfg.max_frames is not None:
        chosen = chosen[: cfg.max_frames]
    for i, image in _decord.fetch(reader, chosen, shape=(info.height, info.width)):
        yield float(ts[i]), image


def _pyav_frames(src: str, cfg: StreamConfig, *, live: bool) -> Iterator[tuple[float, np.ndarray]]:
    stats = _pyav.DecodeStats()
    timeout = cfg.timeout if live else None
    fmt = "v4l2" if src.startswith("/dev/video") else None
    try:
        with _pyav.open_input(
            src, timeout=timeout, options=cfg.options if live else None, format=fmt, what="cannot open"
        ) as container:
            stream = _pyav.video_stream(container, src)
            decoded = _pyav.decoded_frames(
                container, stream, src, stats, timeout=timeout, count_leading=not live
            )
            for ts, frame in _sampled(((ts, frame) for _, ts, frame in decoded), cfg.fps):
                yield ts, _pyav.to_rgb(frame, src)
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
            yield ts, image
    finally:
        _pyav.warn_skipped(folder, len(broken), detail=f"unreadable images: {', '.join(broken[:5])}")
