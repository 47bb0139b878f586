"""Encode RGB frames to a video file with PyAV (tests, ShapesWorld and debugging outputs).

Knows: H.264 (libx264) or MPEG-4 Part 2 in yuv420p, constant frame rate (frame k at k / fps), an
optional keyframe interval and an optional display-matrix rotation. Does not know: audio, variable
frame rate, or quality tuning beyond FFmpeg ``options``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import VideoError, describe_exception

#: whether this PyAV can store a display-matrix rotation (``VideoStream.set_display_rotation``, PyAV >= 17.1).
ROTATION_SUPPORTED = hasattr(av.video.stream.VideoStream, "set_display_rotation")


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "h264",
    keyframe_interval: int | None = None,
    rotation: int = 0,
    options: Mapping[str, str] | None = None,
) -> Path:
    """Write frames to ``path``; the container follows the suffix (.mp4, .avi, .mkv, .mov …).

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB, or an iterable of ``(H, W, 3)`` uint8 RGB frames (written as
            they come, so a generator never needs the whole video in memory). H and W must be even
            (yuv420p halves the chroma planes).
        fps: frames per second; frame k gets timestamp k / fps.
        codec: "h264" (libx264) or "mpeg4"; any other FFmpeg encoder name is passed through.
        keyframe_interval: GOP size; 1 makes every frame a keyframe (handy for corruption tests).
        rotation: counter-clockwise degrees (multiple of 90) stored as the display matrix (mp4/mov):
            players, and this package's readers, show the frames rotated by it.
        options: FFmpeg encoder options, e.g. ``{"crf": "18"}``.

    Returns:
        The path written. On any failure the partial file is removed and :class:`VideoError` is raised
        (``ValueError`` for bad frames or arguments).
    """
    fps_frac = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if not fps_frac > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    if keyframe_interval is not None and keyframe_interval < 1:
        raise ValueError(f"keyframe_interval must be >= 1, got {keyframe_interval}")
    dst = Path(path)
    written = 0
    try:
        with av.open(str(dst), mode="w") as container:
            stream = None
            for frame in frames:
                frame = _check_frame(
                    frame, written, None if stream is None else (stream.height, stream.width)
                )
                if stream is None:
                    stream = _add_stream(
                        container, codec, fps_frac, frame.shape, keyframe_interval, rotation, options
                    )
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                written += 1
            if stream is None:
                raise ValueError("no frames to write")
            for packet in stream.encode():  # flush delayed frames (B-frames, lookahead)
                container.mux(packet)
    except av.error.FFmpegError as exc:
        dst.unlink(missing_ok=True)
        raise VideoError(dst, f"cannot write video ({describe_exception(exc)})") from None
    except BaseException:
        dst.unlink(missing_ok=True)  # never leave a truncated file that looks like a video
        raise
    return dst


def _check_frame(frame: np.ndarray, k: int, hw: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {k}: expected (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    if hw is not None and frame.shape[:2] != hw:
        raise ValueError(f"frame {k}: size {frame.shape[:2]} differs from the first frame's {hw}")
    if frame.shape[0] % 2 or frame.shape[1] % 2:
        raise ValueError(f"frame {k}: height and width must be even for yuv420p, got {frame.shape[:2]}")
    return np.ascontiguousarray(frame)


def _add_stream(container, codec, fps, shape, keyframe_interval, rotation, options):
    stream = container.add_stream(codec, rate=fps, options=dict(options or {}))
    stream.height, stream.width = shape[0], shape[1]
    stream.pix_fmt = "yuv420p"
    if keyframe_interval is not None:
        stream.codec_context.gop_size = keyframe_interval
    if rotation % 360:
        if not ROTATION_SUPPORTED:
            raise ValueError(f"rotation={rotation}: writing a display rotation needs PyAV >= 17.1, "
                             f"this is PyAV {av.__version__}")
        stream.set_display_rotation(rotation)
    return stream
