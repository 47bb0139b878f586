"""decord plumbing (optional, selectable only with ``backend="decord"``): optional import, opening a reader, timestamps, fetching frames in index batches.

Knows: that decord may be absent, that its timestamps are float32, that it may raise on damaged
data and that its output must be checked (it returns garbled 4-channel frames for rotated videos).
Does not know: which frames to keep, or when to fall back to PyAV; that is the caller's call, told
by :class:`DecordFailed`. Callers must vet a file with PyAV first (decord can hang on some inputs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from types import ModuleType

import numpy as np

from .errors import describe_exception

logger = logging.getLogger(__name__)

# Frames per get_batch call: bounds memory while streaming long files.
BATCH_FRAMES = 32


class DecordFailed(Exception):
    """decord could not do what was asked; the message is a one-line reason."""


def import_decord() -> ModuleType | None:
    """The decord module, or ``None`` when it is not installed (or its native library fails to load)."""
    try:
        import decord
    except (ImportError, OSError):
        return None
    # decord's bundled FFmpeg prints every decoding error; we report skipped frames as warnings instead
    decord.logging.set_level(decord.logging.QUIET)
    return decord


def open_reader(path: str, size: tuple[int, int] | None = None):
    """A ``decord.VideoReader`` for ``path`` (resizing to ``size`` ``(H, W)`` inside the decoder when given);
    :class:`DecordFailed` if decord is missing or refuses it."""
    decord = import_decord()
    if decord is None:
        raise DecordFailed("decord is not installed")
    h, w = size if size is not None else (-1, -1)
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h)
    except Exception as exc:
        raise DecordFailed(describe_exception(exc)) from None


def reader_timestamps(reader, time_base: Fraction | None) -> np.ndarray:
    """Start time of every frame, ``(T,)`` float64 seconds.

    decord reports float32 seconds (already relative to the stream start); rounding them to the
    stream's time base recovers the exact tick, so both backends return bit-identical timestamps.
    """
    n = len(reader)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    try:
        raw = np.asarray(reader.get_frame_timestamp(np.arange(n))[:, 0], dtype=np.float64)
    except Exception as exc:
        raise DecordFailed(describe_exception(exc)) from None
    if time_base is None or time_base <= 0:
        return raw
    ticks = np.round(raw * time_base.denominator / time_base.numerator)
    return ticks * time_base.numerator / time_base.denominator


def fetch(reader, indices: np.ndarray, *, shape: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """Frames at ``indices`` in order, decoded ``BATCH_FRAMES`` at a time.

    There is no per-frame retry on failure: decord's decoder thread reports an error from a damaged
    frame on whichever request comes next, often a good nearby frame (and not reproducibly), so
    decord cannot tell which frames are broken. Any failure raises :class:`DecordFailed`.

    Args:
        indices: ``(K,)`` int frame indices, increasing.
        shape: expected ``(H, W)``; anything else means decord mis-decoded.

    Yields:
        ``(index, frame)`` with frame ``(H, W, 3)`` uint8 RGB.
    """
    for start in range(0, len(indices), BATCH_FRAMES):
        batch = [int(i) for i in indices[start : start + BATCH_FRAMES]]
        try:
            frames = reader.get_batch(batch).asnumpy()
        except Exception as exc:
            raise DecordFailed(describe_exception(exc)) from None
        yield from zip(batch, _check(frames, len(batch), shape), strict=True)


def _check(frames: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    if frames.shape != (n, *shape, 3) or frames.dtype != np.uint8:
        raise DecordFailed(f"decord returned frames of shape {frames.shape}, expected {(n, *shape, 3)}")
    return frames
