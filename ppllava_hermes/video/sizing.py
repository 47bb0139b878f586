"""Output frame size: fit a frame inside ``max_side`` pixels, and resize one RGB frame.

Knows: the size rule every decoder path shares (keep the aspect ratio, scale so the longer side is
at most ``max_side``, never upscale, round each side to the nearest pixel, at least 1), and a PIL
resize of one ``(H, W, 3)`` uint8 frame for paths whose decoder cannot resize (image folders, decord
fallbacks). Does not know: decoders; they resize right after decoding so that at most one
full-resolution frame (or one small batch) exists at a time.
"""

from __future__ import annotations

import numpy as np


def check_max_side(max_side: int | None) -> int | None:
    """``max_side`` as an int, or ``None``; raises ``ValueError`` unless it is a positive integer."""
    if max_side is None:
        return None
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1:
        raise ValueError(f"max_side must be a positive integer, got {max_side!r}")
    return int(max_side)


def fit_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(H, W)`` of a ``height x width`` frame scaled down so its longer side is at most ``max_side``."""
    longest = max(height, width)
    if max_side is None or longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` ``(H, W, 3)`` uint8 resized to ``size`` ``(H, W)`` (PIL bilinear, antialiased); as is when equal."""
    if image.shape[:2] == tuple(size):
        return image
    from PIL import Image

    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
