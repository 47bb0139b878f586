"""Video input: open files, URLs, devices and image folders; sample frames with their timestamps.

Public API:
    probe(path) -> VideoInfo
    read_video(path, *, fps=None, num_frames=None, max_frames=None, max_side=None, backend="auto")
        -> VideoClip
    stream_video(source, *, chunk_frames=None, chunk_seconds=None, fps=None, realtime=False,
                 max_frames=None, max_side=None, backend="auto", image_fps=1.0, timeout=10.0,
                 options=None) -> Iterator[VideoClip]
    write_video(path, frames, fps, *, codec="h264", keyframe_interval=None, rotation=0, options=None) -> Path
    uniform_indices(n_total, n), fps_indices(timestamps, target_fps), FpsSampler, Sampling
    fit_size(height, width, max_side)
    VideoClip, VideoInfo, VideoError, VideoNotFoundError, VideoDecodeWarning, VideoTruncatedWarning,
    VideoBackendWarning

Files decode with torchcodec when it can run here, else with PyAV (one VideoBackendWarning says why);
decord only with ``backend="decord"``. Everything here returns RGB uint8 frames, rotated upright, at
their stored resolution unless ``max_side`` asks for smaller frames (resized right after decoding);
model preprocessing belongs to later stages. A truncated MP4 reads as the shorter video it holds:
``probe`` reports where its frames end (and what its header declared), ``read_video`` and
``stream_video`` say so in one :class:`VideoTruncatedWarning`; one whose index is missing (an
interrupted recording) is a :class:`VideoError` saying so.
"""

from .errors import (
    VideoBackendWarning,
    VideoDecodeWarning,
    VideoError,
    VideoNotFoundError,
    VideoTruncatedWarning,
)
from .reader import VideoInfo, probe, read_video
from .sampling import FpsSampler, Sampling, fps_indices, uniform_indices
from .sizing import fit_size
from .sources import stream_video
from .types import VideoClip
from .writer import write_video

__all__ = [
    "FpsSampler",
    "Sampling",
    "VideoBackendWarning",
    "VideoClip",
    "VideoDecodeWarning",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "VideoTruncatedWarning",
    "fit_size",
    "fps_indices",
    "probe",
    "read_video",
    "stream_video",
    "uniform_indices",
    "write_video",
]
