"""Dense per-token labels of a ShapesWorld clip, from its object states (training supervision only).

A VLM's vision tower turns a clip into merged tokens on a ``(t, h, w)`` grid: token ``(g, i, j)``
sees frames ``g*group .. g*group+group-1`` and the pixel cell ``[i*cell, (i+1)*cell) x [j*cell, ...)``.
The generator knows what is in every cell, so each token can be told the colour, shape and direction
of motion of the object covering it. These labels are far denser than one answer word per clip,
which is what lets a tiny vision tower learn shapes and motion within a CPU budget.
"""

from __future__ import annotations

import numpy as np

from .generator import COLORS, DIRECTIONS, SHAPES, World

#: Label index 0 means "no object here"; attribute ``k`` of a vocabulary is ``k + 1``.
NONE = 0
IGNORE = -100
LABEL_SIZES: dict[str, int] = {"color": len(COLORS) + 1, "shape": len(SHAPES) + 1, "direction": len(DIRECTIONS) + 1}


def _step_direction(dx: float, dy: float) -> int:
    """Label of one frame-to-frame step: a direction along one axis, else IGNORE (still, diagonal)."""
    if abs(dx) > 1e-9 and abs(dy) < 1e-9:
        return DIRECTIONS.index("right" if dx > 0 else "left") + 1
    if abs(dy) > 1e-9 and abs(dx) < 1e-9:
        return DIRECTIONS.index("down" if dy > 0 else "up") + 1
    return IGNORE


def token_labels(
    world: World, n_frames: int, *, group: int = 2, cell: int = 28, min_cover: float = 0.3
) -> dict[str, np.ndarray]:
    """``{"color", "shape", "direction"}`` -> int64 ``(n_frames // group, H // cell, W // cell)`` labels.

    A token's object is the one whose drawn box covers most of the token's cell, averaged over the
    group's frames; below ``min_cover`` of the cell the token is labelled ``NONE``. Direction is the
    object's step across the group (first to last frame), ``IGNORE`` when the step is not along one
    axis (a bounce or a collision inside the group); it is ``NONE`` where no object is.
    """
    if n_frames % group or n_frames > world.n_frames:
        raise ValueError(f"n_frames={n_frames} must be a multiple of group={group} and <= {world.n_frames}")
    cfg = world.config
    gh, gw = cfg.height // cell, cfg.width // cell
    t = n_frames // group
    out = {k: np.zeros((t, gh, gw), dtype=np.int64) for k in LABEL_SIZES}
    edges_y = np.arange(gh + 1) * cell
    edges_x = np.arange(gw + 1) * cell
    for g in range(t):
        states = [world.states(k) for k in range(g * group, (g + 1) * group)]
        cover: dict[int, np.ndarray] = {}
        for frame in states:
            for s in frame:
                x0, y0, x1, y1 = s.bbox(cfg.width, cfg.height)
                oy = np.clip(np.minimum(edges_y[1:], y1) - np.maximum(edges_y[:-1], y0), 0, None)
                ox = np.clip(np.minimum(edges_x[1:], x1) - np.maximum(edges_x[:-1], x0), 0, None)
                cover[s.id] = cover.get(s.id, 0.0) + np.outer(oy, ox) / (cell * cell * group)
        if not cover:
            continue
        ids = list(cover)
        stack = np.stack([cover[i] for i in ids])  # (objects, gh, gw)
        best = stack.argmax(0)
        present = stack.max(0) >= min_cover
        by_id = {s.id: s for s in states[0]}
        last = {s.id: s for s in states[-1]}
        for k, oid in enumerate(ids):
            mask = present & (best == k)
            if not mask.any():
                continue
            s = by_id.get(oid) or last[oid]
            out["color"][g][mask] = COLORS.index(s.color) + 1
            out["shape"][g][mask] = SHAPES.index(s.shape) + 1
            if oid in by_id and oid in last:
                d = _step_direction(last[oid].x - by_id[oid].x, last[oid].y - by_id[oid].y)
            else:
                d = IGNORE
            out["direction"][g][mask] = d
    return out
