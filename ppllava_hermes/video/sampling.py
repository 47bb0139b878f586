"""Which frames to keep: pure index arithmetic over frame timestamps.

Knows: uniform sampling of N frames, sampling at a target frame rate (batch and online, with the
same result), and capping the count. Does not know about decoders, files or pixels; every function
takes timestamps in seconds (strictly increasing) or a frame count and returns int64 indices.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

# Timestamps come from integer ticks of a container time base (≥ 1 µs apart in practice); a grid
# point this close to a frame counts as reached, so k / fps never misses frame k to float rounding,
# and two frames this close to equally near a grid point count as a tie.
_TOL = 1e-7


def uniform_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` evenly spread indices into ``range(n_total)``: the middle frame of each of ``n`` equal segments.

    Returns all ``n_total`` indices when ``n >= n_total``, so indices are always unique.

    Returns:
        ``(min(n, n_total),)`` int64, strictly increasing.
    """
    n_total = operator.index(n_total)
    n = operator.index(n)
    if n_total < 0:
        raise ValueError(f"n_total must be >= 0, got {n_total}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n >= n_total:
        return np.arange(n_total, dtype=np.int64)
    # segment width n_total / n >= 1, so the floors of consecutive centres differ by at least 1
    return np.floor((np.arange(n) + 0.5) * n_total / n).astype(np.int64)


def _check_fps(target_fps: float) -> float:
    fps = float(target_fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"target fps must be a positive finite number, got {target_fps!r}")
    return fps


class FpsSampler:
    """Online frame-rate sampler: feed timestamps one at a time, learn which frames to keep.

    The grid is ``t0 + j / target_fps`` (``t0`` = first timestamp, ``j = 0, 1, …`` up to the last
    timestamp); each grid point keeps the frame nearest to it (ties go to the earlier frame), and a
    frame kept for several grid points is kept once. Whether the previous frame is nearest to a grid
    point is only known when the next frame arrives, hence the ``(take_previous, take_current)`` answer.
    :func:`fps_indices` is this sampler run over a whole array, so batch and streaming agree.
    """

    def __init__(self, target_fps: float) -> None:
        self.target_fps = _check_fps(target_fps)
        self._t0: float | None = None
        self._next_j = 0  # index of the first grid point not yet assigned to a frame
        self._prev_ts = -math.inf
        self._prev_taken = False

    def _grid(self, j: int) -> float:
        assert self._t0 is not None
        return self._t0 + j / self.target_fps

    def push(self, ts: float) -> tuple[bool, bool]:
        """Feed the next frame's timestamp (seconds, greater than the previous one).

        Returns:
            ``(take_previous, take_current)``: keep the frame pushed before this one (not yet kept),
            and keep this frame.
        """
        ts = float(ts)
        if ts <= self._prev_ts:
            raise ValueError(f"timestamps must be strictly increasing, got {ts} after {self._prev_ts}")
        take_prev = take_cur = False
        if self._t0 is None:
            self._t0, self._next_j, take_cur = ts, 1, True
        else:
            j = self._next_j
            # last grid point reachable from this frame; floor() then nudge, so it matches _grid() exactly
            last = max(j - 1, math.floor((ts + _TOL - self._t0) * self.target_fps))
            while self._grid(last + 1) <= ts + _TOL:
                last += 1
            while last >= j and self._grid(last) > ts + _TOL:
                last -= 1
            if last >= j:
                # grid points in (prev, ts]: nearness to prev only shrinks as t grows, so the first
                # point decides for the previous frame and the last one for this frame
                first_t, last_t = self._grid(j), self._grid(last)
                # (ties, within _TOL of float noise, go to the earlier frame)
                take_prev = first_t - self._prev_ts <= ts - first_t + _TOL and not self._prev_taken
                take_cur = last_t - self._prev_ts > ts - last_t + _TOL
                self._next_j = last + 1
        self._prev_ts, self._prev_taken = ts, take_cur
        return take_prev, take_cur


def _as_timestamps(timestamps: ArrayLike) -> np.ndarray:
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError(f"timestamps must be 1-D, got shape {ts.shape}")
    if len(ts) > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError("timestamps must be strictly increasing")
    return ts


def fps_indices(timestamps: ArrayLike, target_fps: float) -> np.ndarray:
    """Indices of the frames to keep when sampling ``timestamps`` at ``target_fps`` (see :class:`FpsSampler`).

    Args:
        timestamps: ``(T,)`` seconds, strictly increasing.
        target_fps: frames per second wanted; at or above the source rate every frame is kept.

    Returns:
        ``(K,)`` int64, strictly increasing, ``K <= T``.
    """
    ts = _as_timestamps(timestamps)
    sampler = FpsSampler(target_fps)
    keep: list[int] = []
    for i, t in enumerate(ts.tolist()):
        take_prev, take_cur = sampler.push(t)
        if take_prev:
            keep.append(i - 1)
        if take_cur:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Sampling:
    """How to pick frames from a whole video.

    Attributes:
        fps: sample at this rate (see :func:`fps_indices`); exclusive with ``num_frames``.
        num_frames: pick this many frames uniformly (see :func:`uniform_indices`).
        max_frames: cap; when more frames would be picked, keep this many spread uniformly over them.

    With all three ``None`` every frame is kept.
    """

    fps: float | None = None
    num_frames: int | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.num_frames is not None:
            raise ValueError("give either fps or num_frames, not both")
        if self.fps is not None:
            object.__setattr__(self, "fps", _check_fps(self.fps))
        for name in ("num_frames", "max_frames"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    def indices(self, timestamps: ArrayLike) -> np.ndarray:
        """Frames to keep out of ``timestamps`` (``(T,)`` seconds, strictly increasing); ``(K,)`` int64."""
        ts = _as_timestamps(timestamps)
        if self.num_frames is not None:
            n = min(self.num_frames, self.max_frames or self.num_frames)
            return uniform_indices(len(ts), n)
        idx = fps_indices(ts, self.fps) if self.fps is not None else np.arange(len(ts), dtype=np.int64)
        if self.max_frames is not None and len(idx) > self.max_frames:
            idx = idx[uniform_indices(len(idx), self.max_frames)]
        return idx
