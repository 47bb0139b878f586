"""torchcodec plumbing: whether it can run here, and fetching chosen frames of a file by their pts.

Knows: that torchcodec may be missing or installed without the system FFmpeg libraries it loads at
run time (its import then succeeds but every decoder call fails), how to open a
``torchcodec.decoders.VideoDecoder`` that resizes inside FFmpeg (``transforms=[Resize]``) and returns
``NHWC`` uint8 frames with the display rotation already applied, and how to ask it for exact frames
by time (``get_frames_played_at`` at the middle of each frame's display interval), checking that each
returned frame's pts is the one asked for.
Does not know: which frames to keep, their timestamps in seconds (the caller owns the frame index
built from PyAV packets), or when to fall back to PyAV; any failure raises :class:`TorchcodecFailed`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from fractions import Fraction
from types import ModuleType

import numpy as np

from .errors import VideoBackendWarning, describe_exception

# Frames per decoder call: bounds the full-resolution frames held at once while reading or streaming.
BATCH_FRAMES = 8

_warned = False


class TorchcodecFailed(Exception):
    """torchcodec could not do what was asked; the message is a one-line reason."""


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        import torchcodec.decoders as decoders
    except Exception as exc:  # ImportError, or OSError / RuntimeError from its native parts
        return None, f"torchcodec is not installed or cannot be imported ({describe_exception(exc)})"
    try:
        from torchcodec._core import ops  # torchcodec binds its FFmpeg ops here when the libraries load
    except Exception as exc:
        return None, f"torchcodec cannot load its core library ({describe_exception(exc)})"
    if not getattr(ops, "_FFMPEG_AVAILABLE", True):
        return None, (
            "torchcodec cannot load the FFmpeg shared libraries (libavcodec, libavformat, libavutil ...); "
            "install FFmpeg, e.g. apt-get install ffmpeg"
        )
    return decoders, ""


def import_torchcodec() -> ModuleType | None:
    """``torchcodec.decoders`` when torchcodec is importable and its FFmpeg libraries load, else ``None``."""
    return _load()[0]


def unavailable_reason() -> str:
    """Why :func:`import_torchcodec` returns ``None`` (empty when torchcodec is usable)."""
    return _load()[1]


def reset() -> None:
    """Forget the cached availability check and the fallback warning (for tests)."""
    global _warned
    _load.cache_clear()
    _warned = False


def warn_fallback_once() -> None:
    """Warn, once per process, that ``backend="auto"`` decodes files with PyAV, and why."""
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"video: decoding files with PyAV (slower seeking) because {unavailable_reason()}",
        VideoBackendWarning,
        stacklevel=4,
    )


def open_decoder(path: str, size: tuple[int, int] | None):
    """A ``VideoDecoder`` returning upright ``(N, H, W, 3)`` frames, resized to ``size`` ``(H, W)`` in FFmpeg."""
    decoders = import_torchcodec()
    if decoders is None:
        raise TorchcodecFailed(unavailable_reason())
    transforms = None
    if size is not None:
        from torchcodec.transforms import Resize

        transforms = [Resize(size)]
    try:
        return decoders.VideoDecoder(
            path,
            dimension_order="NHWC",
            seek_mode="approximate",  # frames are located by time; the exact index is ours (PyAV packets)
            num_ffmpeg_threads=0,
            transforms=transforms,
        )
    except Exception as exc:
        raise TorchcodecFailed(describe_exception(exc)) from None


def query_times(keys: np.ndarray, time_base: Fraction) -> np.ndarray:
    """Absolute seconds in the middle of each frame's display interval (``keys``: sorted pts).

    Asking torchcodec for the frame played at the middle, not the start, of an interval makes the
    answer immune to float rounding of ``pts * time_base``.
    """
    keys = np.asarray(keys, dtype=np.int64)
    gaps = np.diff(keys).astype(np.float64)
    last_gap = float(np.median(gaps)) if len(gaps) else 1.0
    mids = keys + np.concatenate([gaps, [last_gap]]) / 2
    return mids * float(time_base)


def fetch(
    decoder,
    keys: np.ndarray,
    positions: np.ndarray,
    time_base: Fraction,
    *,
    shape: tuple[int, int],
) -> Iterator[tuple[int, np.ndarray]]:
    """Frames ``keys[positions]`` in order, ``BATCH_FRAMES`` per decoder call.

    Args:
        keys: ``(T,)`` int64 pts of every frame, sorted.
        positions: ``(K,)`` increasing positions into ``keys`` to decode.
        shape: expected ``(H, W)`` of the returned frames.

    Yields:
        ``(position, frame)``, frame ``(H, W, 3)`` uint8 RGB (a view into the batch tensor's memory).
    """
    times = query_times(keys, time_base)
    tb_num, tb_den = time_base.numerator, time_base.denominator
    for start in range(0, len(positions), BATCH_FRAMES):
        batch = [int(p) for p in positions[start : start + BATCH_FRAMES]]
        try:
            got = decoder.get_frames_played_at([float(times[p]) for p in batch])
        except Exception as exc:
            raise TorchcodecFailed(describe_exception(exc)) from None
        data = got.data.numpy()
        ticks = np.round(got.pts_seconds.numpy() * tb_den / tb_num).astype(np.int64)
        if data.shape != (len(batch), *shape, 3) or data.dtype != np.uint8:
            raise TorchcodecFailed(f"torchcodec returned frames of shape {data.shape}, expected {(len(batch), *shape, 3)}")
        want = keys[batch]
        if not np.array_equal(ticks, want):
            bad = int(np.flatnonzero(ticks != want)[0])
            raise TorchcodecFailed(f"torchcodec returned the frame at pts {ticks[bad]} for pts {want[bad]}")
        yield from zip(batch, data, strict=True)
