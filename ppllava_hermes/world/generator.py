"""ShapesWorld generator: a seeded, procedurally generated video world of moving coloured shapes.

What this module knows:

* :class:`WorldConfig`: frame size, frame rate, duration, object count limits, the colour palette and
  shape vocabulary, object radius and speed, event rates and optional static stretches. Validated on
  construction.
* :func:`generate_world`: runs the simulation once, frame by frame, from ``numpy.random.Generator``
  streams derived from the seed only, and returns a :class:`World` holding the event log
  (:class:`Event`) and per-frame object states (:class:`ObjectState`). Pixels are NOT produced here:
  :meth:`World.render` draws one frame on demand, so a 30-minute world costs a few hundred KiB.
* :func:`save_mp4`: writes frames to an H.264 mp4 (through :func:`ppllava_hermes.video.write_video`).

What it does not know: questions and answers (``tasks.py``), models, training.

World rules (all times are frame times ``t = t_index / fps``):

* Objects are circles, squares, triangles or crosses of radius ``radius_range`` px with one palette
  colour. Their extent for physics is the bounding circle, so shapes never overlap at frame times:
  there is no occlusion and every count is well defined.
* Each object moves with constant speed in one of four directions (left/right/up/down; image ``y``
  grows downward). It bounces off the frame border until its lifetime runs out; from then on it
  ignores the border and leaves the scene in its current direction.
* Two objects whose next positions would overlap collide: both stay where they were for that frame
  and each one moving toward the other reverses direction ("collide" event).
* New objects pop in fully inside the frame, never overlapping others, at most one per frame
  ("appear" event). Fully visible objects change colour at random ("color_change" event).
* An object "leaves" at the first frame in which no part of it is inside the frame; it is present
  (and may be partly visible) before that. Every change of the number of present objects is logged
  as a "count" event.
* Static stretches: runs of frames with no motion and no events (frames identical unless
  ``frame_noise`` > 0), for frame-sparsity experiments.

Event semantics: an event at ``t_index = k`` is a change between frames ``k - 1`` and ``k``; the
state of frame ``k`` already shows it (an appearing object is drawn in frame ``k``; a leaving object is
no longer present in frame ``k``). Objects present at frame 0 get "appear" events at ``t_index`` 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ppllava_hermes.video.types import VideoClip
from ppllava_hermes.video.writer import write_video

#: Palette: saturated, well separated hues; backgrounds are desaturated grey so these always stand out.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 85, 225),
    "yellow": (240, 215, 35),
    "purple": (150, 55, 195),
    "orange": (250, 140, 25),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Directions and their unit vectors in image coordinates (x right, y down).
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_DIR_VEC = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
_REVERSE = (1, 0, 3, 2)
EVENT_KINDS: tuple[str, ...] = ("appear", "leave", "color_change", "collide", "count")
BACKGROUND_KINDS: tuple[str, ...] = ("noise", "stripes", "checker", "gradient")

_PLACEMENT_TRIES = 40  # random positions tried per spawn before giving up for this frame
_SPAWN_MARGIN = 3.0  # px of free space kept around a new object
_INITIAL_ATTEMPTS = 25  # tries at placing the whole initial group
_MIN_LIFETIME_S = 4.0  # an object bounces at least this long, so it can be seen and asked about


@dataclass
class WorldConfig:
    """Parameters of a ShapesWorld video. Lengths in pixels, times in seconds, rates per minute.

    Attributes:
        height / width: frame size (even, for yuv420p mp4).
        fps: frames per second, 0.5 to 2.
        duration: video length in seconds; ``n_frames = round(duration * fps)`` (at least 1).
        max_objects: most objects present at once.
        min_objects: while fewer are present, a new one appears as soon as there is room.
        initial_objects: objects present at frame 0; None: uniform in ``[max(1, min_objects), max_objects]``.
        colors / shapes: vocabulary used by this world (subsets of :data:`COLORS` / :data:`SHAPES`).
        radius_range: inclusive integer range of object radii (bounding circle), px.
        speed_range: range of object speeds, px per second.
        appear_rate: expected appearances per minute while there is room (below ``max_objects``).
        mean_lifetime: mean seconds an object bounces before it starts to leave (exponential).
        color_change_rate: expected colour changes per object per minute.
        static_fraction: fraction of frames (approximately) inside static stretches.
        static_segment: length of one static stretch, seconds.
        frame_noise: std of per-frame pixel noise (intensity levels); 0 makes static frames identical.
    """

    height: int = 112
    width: int = 112
    fps: float = 1.0
    duration: float = 60.0
    max_objects: int = 3
    min_objects: int = 1
    initial_objects: int | None = None
    colors: tuple[str, ...] = COLORS
    shapes: tuple[str, ...] = SHAPES
    radius_range: tuple[int, int] = (18, 24)
    speed_range: tuple[float, float] = (5.0, 12.0)
    appear_rate: float = 4.0
    mean_lifetime: float = 40.0
    color_change_rate: float = 1.0
    static_fraction: float = 0.0
    static_segment: float = 30.0
    frame_noise: float = 0.0

    def __post_init__(self) -> None:
        # tuples, so that a config rebuilt from JSON (lists) compares equal and stays hashable
        self.colors = tuple(self.colors)
        self.shapes = tuple(self.shapes)
        self.radius_range = (int(self.radius_range[0]), int(self.radius_range[1]))
        self.speed_range = (float(self.speed_range[0]), float(self.speed_range[1]))
        errors = []
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 32 or v > 1024 or v % 2:
                errors.append(f"{name}={v!r} must be an even int in [32, 1024]")
        if not 0.5 <= self.fps <= 2.0:
            errors.append(f"fps={self.fps} must be in [0.5, 2]")
        if not 0 < self.duration <= 4 * 3600:
            errors.append(f"duration={self.duration} must be in (0, 4 h]")
        elif round(self.duration * self.fps) < 1:
            errors.append(f"duration={self.duration} gives no frame at fps={self.fps}")
        if not 1 <= self.max_objects <= 8:
            errors.append(f"max_objects={self.max_objects} must be in [1, 8]")
        if not 0 <= self.min_objects <= self.max_objects:
            errors.append(f"min_objects={self.min_objects} must be in [0, max_objects]")
        if self.initial_objects is not None and not 0 <= self.initial_objects <= self.max_objects:
            errors.append(f"initial_objects={self.initial_objects} must be in [0, max_objects]")
        for vocab, allowed, name in ((self.colors, COLORS, "colors"), (self.shapes, SHAPES, "shapes")):
            if len(vocab) < 2 or len(set(vocab)) != len(vocab) or not set(vocab) <= set(allowed):
                errors.append(f"{name}={vocab} must be >= 2 distinct names from {allowed}")
        rmin, rmax = self.radius_range
        if not 4 <= rmin <= rmax:
            errors.append(f"radius_range={self.radius_range} must satisfy 4 <= min <= max")
        elif 2 * rmax + 8 > min(self.height, self.width):
            errors.append(
                f"radius_range={self.radius_range} too large for a {self.height}x{self.width} frame"
            )
        elif self.max_objects * math.pi * rmax**2 > 0.5 * self.height * self.width:
            # beyond half the frame area, placement fails often and the scene jams
            errors.append(
                f"max_objects={self.max_objects} objects of radius {rmax} cover more than half the frame"
            )
        smin, smax = self.speed_range
        if not 0 < smin <= smax:
            errors.append(f"speed_range={self.speed_range} must satisfy 0 < min <= max")
        elif (
            2 * rmax + 8 <= min(self.height, self.width)
            and smax / self.fps > (min(self.height, self.width) - 2 * rmax) / 2
        ):
            # one reflection per frame must be enough to stay inside the frame
            errors.append(f"speed_range max {smax} px/s moves too far per frame at fps={self.fps}")
        for name in ("appear_rate", "color_change_rate", "frame_noise"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.mean_lifetime <= 0:
            errors.append(f"mean_lifetime={self.mean_lifetime} must be > 0")
        if not 0 <= self.static_fraction <= 0.9:
            errors.append(f"static_fraction={self.static_fraction} must be in [0, 0.9]")
        if self.static_segment <= 0:
            errors.append(f"static_segment={self.static_segment} must be > 0")
        if errors:
            raise ValueError("invalid WorldConfig: " + "; ".join(errors))

    @property
    def n_frames(self) -> int:
        return max(1, int(round(self.duration * self.fps)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists); :meth:`from_dict` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        return cls(**d)


@dataclass(frozen=True)
class ObjectState:
    """One object in one frame. ``x, y``: centre in px (float); ``direction``: where it heads next."""

    id: int
    shape: str
    color: str
    x: float
    y: float
    radius: int
    direction: str
    leaving: bool

    def fully_visible(self, width: int, height: int) -> bool:
        """The whole bounding circle lies inside the frame."""
        r = self.radius
        return r <= self.x <= width - r and r <= self.y <= height - r

    def bbox(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` pixel box of the drawn shape (x1, y1 exclusive), clipped to the frame."""
        hx, top, bottom = _shape_extent(self.shape, self.radius)
        x0 = max(0, math.floor(self.x - hx))
        y0 = max(0, math.floor(self.y - top))
        x1 = min(width, math.ceil(self.x + hx) + 1)
        y1 = min(height, math.ceil(self.y + bottom) + 1)
        return x0, y0, max(x0, x1), max(y0, y1)


@dataclass(frozen=True)
class Event:
    """One logged change. ``object_ids``, ``shapes`` and ``colors`` are aligned tuples.

    ``colors``: the objects' colours at the event (appear: first colour; leave: colour in the last
    frame it was present; color_change: the new colour; collide: current colours). ``old_colors``: only
    for color_change. ``count``: only for count events (number of present objects from this frame on).
    """

    kind: str
    t_index: int
    time: float
    object_ids: tuple[int, ...] = ()
    shapes: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    old_colors: tuple[str, ...] = ()
    count: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind {self.kind!r} not in {EVENT_KINDS}")
        if not (len(self.object_ids) == len(self.shapes) == len(self.colors)):
            raise ValueError(f"event {self.kind} at {self.t_index}: object fields are not aligned")

    def describe(self) -> str:
        """Short English description ("the red circle appeared")."""
        names = [f"the {c} {s}" for c, s in zip(self.colors, self.shapes, strict=True)]
        if self.kind == "appear":
            return f"{names[0]} appeared"
        if self.kind == "leave":
            return f"{names[0]} left the scene"
        if self.kind == "color_change":
            return f"the {self.old_colors[0]} {self.shapes[0]} turned {self.colors[0]}"
        if self.kind == "collide":
            return f"{names[0]} and {names[1]} collided"
        return f"the number of shapes became {self.count}"


@dataclass
class Track:
    """One object's whole life: present in frames ``[start, stop)``; arrays are indexed ``t - start``.

    Attributes:
        xs / ys: ``(stop - start,)`` float64 centre coordinates, px.
        colors / dirs / leaving: ``(stop - start,)`` indices into the world's colours / :data:`DIRECTIONS`
            and whether it had started to leave.
    """

    id: int
    shape: str
    radius: int
    speed: float
    start: int
    stop: int
    xs: np.ndarray
    ys: np.ndarray
    colors: np.ndarray
    dirs: np.ndarray
    leaving: np.ndarray


@dataclass
class World:
    """A generated ShapesWorld video: event log + per-frame object states; pixels drawn on demand.

    Attributes:
        config / seed: what generated it (``generate_world(config, seed)`` rebuilds it exactly).
        events: the event log, ordered by ``t_index`` (within one frame: collide, leave, color_change,
            appear, count).
        tracks: one :class:`Track` per object; the object id is its index here.
        static: ``(n_frames,)`` bool, True for frames inside a static stretch.
        background: ``(H, W, 3)`` uint8 background image, seeded per world.
    """

    config: WorldConfig
    seed: int
    events: list[Event]
    tracks: list[Track]
    static: np.ndarray
    background: np.ndarray
    _active: list[tuple[int, ...]] = field(repr=False, default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.config.n_frames

    @property
    def fps(self) -> float:
        return self.config.fps

    @property
    def duration(self) -> float:
        """Seconds covered by the frames (``n_frames / fps``)."""
        return self.n_frames / self.fps

    @property
    def name(self) -> str:
        return f"shapesworld_{self.seed:010d}"

    def time_of(self, t_index: int) -> float:
        """Seconds at which frame ``t_index`` is shown."""
        return t_index / self.fps

    def index_at(self, time: float) -> int:
        """The last frame shown at or before ``time`` seconds (clipped to the video)."""
        return int(min(self.n_frames - 1, max(0, math.floor(time * self.fps + 1e-6))))

    def timestamps(self) -> np.ndarray:
        """``(n_frames,)`` float64 frame times in seconds."""
        return np.arange(self.n_frames, dtype=np.float64) / self.fps

    def _check_index(self, t_index: int) -> None:
        if not 0 <= t_index < self.n_frames:
            raise IndexError(f"{self.name}: frame {t_index} out of [0, {self.n_frames})")

    def states(self, t_index: int) -> list[ObjectState]:
        """Objects present in frame ``t_index`` (partly visible ones included), ordered by id."""
        self._check_index(t_index)
        out = []
        for oid in self._active[t_index]:
            tr = self.tracks[oid]
            i = t_index - tr.start
            out.append(
                ObjectState(
                    id=tr.id,
                    shape=tr.shape,
                    color=self.config.colors[tr.colors[i]],
                    x=float(tr.xs[i]),
                    y=float(tr.ys[i]),
                    radius=tr.radius,
                    direction=DIRECTIONS[tr.dirs[i]],
                    leaving=bool(tr.leaving[i]),
                )
            )
        return out

    def present_ids(self, t_index: int) -> tuple[int, ...]:
        self._check_index(t_index)
        return self._active[t_index]

    def is_clean(self, t_index: int) -> bool:
        """Every present object is fully inside the frame (counts and attributes are unambiguous)."""
        w, h = self.config.width, self.config.height
        return all(s.fully_visible(w, h) for s in self.states(t_index))

    def render(self, t_index: int) -> np.ndarray:
        """Frame ``t_index`` as ``(H, W, 3)`` uint8 RGB."""
        img = Image.fromarray(self.background.copy())
        draw = ImageDraw.Draw(img)
        for s in self.states(t_index):
            _draw_shape(draw, s.shape, s.x, s.y, s.radius, PALETTE[s.color])
        frame = np.array(img)
        if self.config.frame_noise > 0:
            # per-frame stream keyed by (seed, frame): rendering order never changes the pixels
            rng = np.random.default_rng([self.seed, 0x5EED, t_index])
            noise = rng.normal(0.0, self.config.frame_noise, size=frame.shape)
            frame = np.clip(frame + noise, 0, 255).astype(np.uint8)
        return frame

    def frames(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[np.ndarray]:
        """Yield frames ``start, start + step, ... < stop`` one at a time (never all in memory)."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        for t in range(start, stop, step):
            yield self.render(t)

    def clip(self, start: int, stop: int) -> VideoClip:
        """Frames ``[start, stop)`` as a :class:`VideoClip` (in memory: keep it short)."""
        idx = range(start, min(stop, self.n_frames))
        if len(idx) == 0:
            raise ValueError(f"{self.name}: empty clip [{start}, {stop})")
        frames = np.stack([self.render(t) for t in idx])
        return VideoClip(frames, np.asarray(idx, dtype=np.float64) / self.fps, source=self.name)

    def save_mp4(self, path: str | Path, crf: int = 18) -> Path:
        """Write every frame to an mp4 at ``config.fps``; frames are rendered and encoded one by one."""
        return save_mp4(path, self.frames(), self.fps, crf=crf)

    def events_of(self, kind: str) -> list[Event]:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r} not in {EVENT_KINDS}")
        return [e for e in self.events if e.kind == kind]


# ---------------------------------------------------------------------------------------------------
# drawing


def _shape_extent(shape: str, r: int) -> tuple[float, float, float]:
    """(half width, extent above centre, extent below centre) of the drawn shape, px."""
    if shape == "square":
        h = 0.8 * r
        return h, h, h
    if shape == "triangle":
        return r * math.sqrt(3) / 2, float(r), r / 2
    return float(r), float(r), float(r)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: int, rgb: tuple) -> None:
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
    elif shape == "square":
        h = 0.8 * r  # a little smaller than the circle so that the two have similar areas
        draw.rectangle([x - h, y - h, x + h, y + h], fill=rgb)
    elif shape == "triangle":
        pts = [
            (x + r * math.cos(a), y + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        draw.polygon(pts, fill=rgb)
    elif shape == "cross":
        w = 0.34 * r
        draw.rectangle([x - r, y - w, x + r, y + w], fill=rgb)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-contrast, desaturated textured background, ``(H, W, 3)`` uint8 (about 0.5 ms at 112x112)."""
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    base = rng.uniform(85.0, 175.0) + rng.uniform(-8.0, 8.0, size=3)  # greyish, slight tint
    amp = rng.uniform(6.0, 16.0)
    # open grids: patterns are built by broadcasting (H, 1) against (1, W), float32 is plenty here
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    if kind == "noise":
        g = int(rng.integers(4, 10))
        c = rng.uniform(-1.0, 1.0, size=(g, g)).astype(np.float32)
        # bilinear upsampling of a coarse grid: smooth blobs
        ys = yy[:, 0] * (g - 1) / (height - 1)
        xs = xx[0] * (g - 1) / (width - 1)
        y0 = np.minimum(ys.astype(int), g - 2)
        x0 = np.minimum(xs.astype(int), g - 2)
        fy = (ys - y0)[:, None]
        fx = (xs - x0)[None, :]
        top = c[y0][:, x0] * (1 - fx) + c[y0][:, x0 + 1] * fx
        bottom = c[y0 + 1][:, x0] * (1 - fx) + c[y0 + 1][:, x0 + 1] * fx
        pattern = top * (1 - fy) + bottom * fy
    elif kind == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(8.0, 28.0)
        phase = rng.uniform(0, 2 * math.pi)
        pattern = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)
    elif kind == "checker":
        cell = int(rng.integers(6, 20))
        pattern = (((yy // cell) + (xx // cell)) % 2) * 2.0 - 1.0
    else:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        pattern = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min())) * 2.0 - 1.0
    img = (base.astype(np.float32) + (amp * pattern.astype(np.float32))[..., None]).round()
    grain = rng.integers(-3, 4, size=(height, width, 3), dtype=np.int16)  # fine sensor-like grain
    return np.clip(img.astype(np.int16) + grain, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# simulation


class _Obj:
    """Mutable simulation state of one object (internal)."""

    __slots__ = ("id", "shape", "radius", "speed", "x", "y", "color", "dir", "exit_frame", "track")

    def __init__(self, oid, shape, radius, speed, x, y, color, direction, exit_frame):
        self.id, self.shape, self.radius, self.speed = oid, shape, radius, speed
        self.x, self.y, self.color, self.dir, self.exit_frame = x, y, color, direction, exit_frame
        self.track: dict[str, list] = {"xs": [], "ys": [], "colors": [], "dirs": [], "leaving": []}


def _static_mask(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """``(n_frames,)`` bool: static stretches of ``static_segment`` s, placed at seeded random frames."""
    n = cfg.n_frames
    mask = np.zeros(n, dtype=bool)
    seg = max(1, int(round(cfg.static_segment * cfg.fps)))
    target = int(round(cfg.static_fraction * n))
    if target == 0 or n < 2:
        return mask
    n_seg = max(1, round(target / seg))
    # stretches never cover frame 0 (so the video starts moving); they may touch or overlap
    starts = np.sort(rng.choice(np.arange(1, n), size=min(n_seg, n - 1), replace=False))
    for s in starts:
        mask[s : s + seg] = True
    return mask


def generate_world(config: WorldConfig, seed: int) -> World:
    """Simulate a world. Deterministic: ``(config, seed)`` fully determines events, states and pixels.

    Cost is ``O(n_frames * objects^2)`` Python steps, no pixels: a 30-minute world at 1 fps takes
    tens of milliseconds.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    cfg = config
    # independent streams: changing the background code never changes the dynamics and vice versa
    sim_ss, bg_ss, static_ss = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(sim_ss)
    background = _make_background(np.random.default_rng(bg_ss), cfg.height, cfg.width)
    static = _static_mask(cfg, np.random.default_rng(static_ss))

    W, H, fps, n = cfg.width, cfg.height, cfg.fps, cfg.n_frames
    n_colors = len(cfg.colors)
    dt = 1.0 / fps
    p_appear = cfg.appear_rate * dt / 60.0
    p_recolor = cfg.color_change_rate * dt / 60.0
    events: list[Event] = []
    objs: list[_Obj] = []  # present objects, ordered by id
    finished: list[_Obj] = []
    stops: dict[int, int] = {}
    starts: dict[int, int] = {}
    active: list[tuple[int, ...]] = []
    next_id = 0

    def ev(kind: str, k: int, group: list[_Obj], colors: list[int], **kw) -> Event:
        return Event(
            kind,
            k,
            k / fps,
            tuple(o.id for o in group),
            tuple(o.shape for o in group),
            tuple(cfg.colors[c] for c in colors),
            **kw,
        )

    def try_spawn(k: int, others: list[_Obj], oid: int) -> _Obj | None:
        """A new object that does not touch ``others``, or None if no free spot was found."""
        r = int(rng.integers(cfg.radius_range[0], cfg.radius_range[1] + 1))
        for _ in range(_PLACEMENT_TRIES):
            x, y = rng.uniform(r, W - r), rng.uniform(r, H - r)
            if all(math.hypot(x - o.x, y - o.y) >= r + o.radius + _SPAWN_MARGIN for o in others):
                break
        else:
            return None
        # prefer a shape and a colour nobody present has: more objects can be named uniquely
        used_shapes = {o.shape for o in others}
        free_shapes = [s for s in cfg.shapes if s not in used_shapes] or list(cfg.shapes)
        used_colors = {o.color for o in others}
        free_colors = [c for c in range(n_colors) if c not in used_colors] or list(range(n_colors))
        shape = free_shapes[rng.integers(len(free_shapes))]
        color = free_colors[rng.integers(len(free_colors))]
        speed = float(rng.uniform(*cfg.speed_range))
        direction = int(rng.integers(4))
        life = max(_MIN_LIFETIME_S, float(rng.exponential(cfg.mean_lifetime)))
        return _Obj(oid, shape, r, speed, x, y, color, direction, k + int(math.ceil(life * fps)))

    def add(o: _Obj, k: int) -> None:
        nonlocal next_id
        next_id += 1
        starts[o.id] = k
        objs.append(o)
        events.append(ev("appear", k, [o], [o.color]))

    def inside(o: _Obj, x: float, y: float) -> bool:
        return x + o.radius > 0 and x - o.radius < W and y + o.radius > 0 and y - o.radius < H

    # frame 0: place the initial group jointly; placing one by one fails when an early object
    # lands in the middle, so retry the whole group and keep the largest one placed
    n0 = cfg.initial_objects
    if n0 is None:
        lo = max(1, cfg.min_objects)
        n0 = int(rng.integers(lo, cfg.max_objects + 1))
    best: list[_Obj] = []
    for _ in range(_INITIAL_ATTEMPTS):
        group: list[_Obj] = []
        for i in range(n0):
            o = try_spawn(0, group, i)
            if o is None:
                break
            group.append(o)
        if len(group) > len(best):
            best = group
        if len(best) == n0:
            break
    for o in best:
        add(o, 0)
    if objs:
        events.append(Event("count", 0, 0.0, count=len(objs)))

    for k in range(n):
        if static[k]:
            for o in objs:
                o.exit_frame += 1  # lifetimes pause too: nothing at all changes in a static stretch
        elif k > 0:
            count_before = len(objs)
            # 1. candidate moves; bouncing objects reflect off the border
            cand: dict[int, tuple[float, float, int]] = {}
            for o in objs:
                vx, vy = _DIR_VEC[o.dir] * (o.speed * dt)
                nx, ny, nd = o.x + vx, o.y + vy, o.dir
                if k < o.exit_frame:
                    r = o.radius
                    if nx < r:
                        nx, nd = 2 * r - nx, _REVERSE[nd]
                    elif nx > W - r:
                        nx, nd = 2 * (W - r) - nx, _REVERSE[nd]
                    if ny < r:
                        ny, nd = 2 * r - ny, _REVERSE[nd]
                    elif ny > H - r:
                        ny, nd = 2 * (H - r) - ny, _REVERSE[nd]
                cand[o.id] = (nx, ny, nd)
            # 2. collisions: overlapping pairs keep their old positions (which never overlap), so the
            # loop ends; reverting one object can create new overlaps, hence the fixed point
            reverted: set[int] = set()
            pairs: list[tuple[_Obj, _Obj]] = []
            changed = True
            while changed:
                changed = False
                for i, a in enumerate(objs):
                    pa = (a.x, a.y) if a.id in reverted else cand[a.id][:2]
                    for b in objs[i + 1 :]:
                        pb = (b.x, b.y) if b.id in reverted else cand[b.id][:2]
                        if math.hypot(pa[0] - pb[0], pa[1] - pb[1]) < a.radius + b.radius:
                            if (a, b) not in pairs:
                                pairs.append((a, b))
                            for o in (a, b):
                                if o.id not in reverted:
                                    reverted.add(o.id)
                                    changed = True
                            pa = (a.x, a.y)
            flip: set[int] = set()
            for a, b in pairs:
                dx, dy = b.x - a.x, b.y - a.y
                va, vb = _DIR_VEC[cand[a.id][2]], _DIR_VEC[cand[b.id][2]]
                a_toward = va[0] * dx + va[1] * dy > 0
                b_toward = -(vb[0] * dx + vb[1] * dy) > 0
                if a_toward or not b_toward:  # neither approaching cannot overlap; flip both then
                    flip.add(a.id)
                if b_toward or not a_toward:
                    flip.add(b.id)
            for o in objs:
                nx, ny, nd = cand[o.id]
                if o.id in reverted:
                    nx, ny = o.x, o.y
                    if o.id in flip:
                        nd = _REVERSE[nd]
                o.x, o.y, o.dir = nx, ny, nd
            for a, b in pairs:
                events.append(ev("collide", k, [a, b], [a.color, b.color]))
            # 3. leaving: fully outside the frame
            for o in list(objs):
                if not inside(o, o.x, o.y):
                    objs.remove(o)
                    finished.append(o)
                    stops[o.id] = k
                    events.append(ev("leave", k, [o], [o.color]))
            # 4. colour changes, only for fully visible objects that are not leaving
            for o in objs:
                r = o.radius
                visible = r <= o.x <= W - r and r <= o.y <= H - r
                if visible and k < o.exit_frame and rng.random() < p_recolor:
                    old = o.color
                    o.color = (old + 1 + int(rng.integers(n_colors - 1))) % n_colors
                    events.append(ev("color_change", k, [o], [o.color], old_colors=(cfg.colors[old],)))
            # 5. at most one new object per frame
            if len(objs) < cfg.max_objects and (len(objs) < cfg.min_objects or rng.random() < p_appear):
                o = try_spawn(k, objs, next_id)
                if o is not None:
                    add(o, k)
            if len(objs) != count_before:
                events.append(Event("count", k, k / fps, count=len(objs)))
        for o in objs:
            t = o.track
            t["xs"].append(o.x)
            t["ys"].append(o.y)
            t["colors"].append(o.color)
            t["dirs"].append(o.dir)
            t["leaving"].append(k >= o.exit_frame)
        active.append(tuple(o.id for o in objs))

    tracks = []
    for o in sorted(finished + objs, key=lambda o: o.id):
        t = o.track
        tracks.append(
            Track(
                id=o.id,
                shape=o.shape,
                radius=o.radius,
                speed=o.speed,
                start=starts[o.id],
                stop=stops.get(o.id, n),
                xs=np.asarray(t["xs"], dtype=np.float64),
                ys=np.asarray(t["ys"], dtype=np.float64),
                colors=np.asarray(t["colors"], dtype=np.int8),
                dirs=np.asarray(t["dirs"], dtype=np.int8),
                leaving=np.asarray(t["leaving"], dtype=bool),
            )
        )
    return World(cfg, seed, events, tracks, static, background, active)


# ---------------------------------------------------------------------------------------------------
# mp4


def save_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, crf: int = 18) -> Path:
    """Encode ``(H, W, 3)`` uint8 frames to H.264 (yuv420p) at ``fps`` with the project's writer.

    Frames are consumed one at a time (an iterator keeps memory flat); frame ``i`` is shown at
    ``i / fps``. crf 18 keeps the palette colours within a few levels. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # threads=1: the machines are shared and 112x112 frames gain nothing from more
    options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
    return write_video(path, frames, fps, codec="h264", options=options)
