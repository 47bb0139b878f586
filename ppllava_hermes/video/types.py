"""The frame container every stage after video input consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class VideoClip:
    """A time-ordered run of RGB frames.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        timestamps: ``(T,)`` float64 seconds from the start of the source, strictly increasing.
        source: where the frames came from (path, URL or folder), for error messages and logs.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"{self.source or 'clip'}: frames must be (T, H, W, 3), got {self.frames.shape}")
        if self.frames.dtype != np.uint8:
            raise ValueError(f"{self.source or 'clip'}: frames must be uint8, got {self.frames.dtype}")
        if len(self.timestamps) != len(self.frames):
            raise ValueError(
                f"{self.source or 'clip'}: {len(self.frames)} frames but {len(self.timestamps)} timestamps"
            )
        if len(self.timestamps) > 1 and np.any(np.diff(self.timestamps) <= 0):
            raise ValueError(f"{self.source or 'clip'}: timestamps must be strictly increasing")

    def __len__(self) -> int:
        return len(self.frames)

    def slice(self, start: int, stop: int) -> VideoClip:
        return VideoClip(self.frames[start:stop], self.timestamps[start:stop], self.source)
