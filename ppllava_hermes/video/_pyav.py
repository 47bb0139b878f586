"""PyAV (FFmpeg) plumbing shared by the reader and the streaming sources.

Knows: opening a container with an optional connect/read timeout (a local MP4 that cannot be opened
because its index is missing is named as such), mapping pts to seconds, indexing a file's frames and
keyframes from packets alone (leaving out the half packet a truncated file ends with), demuxing and
decoding packet by packet while skipping what the decoder rejects (and counting it), decoding only
chosen frames of a file by seeking to the keyframe before each one and decoding forward to it
(:func:`seek_frames`), and turning a frame into an upright ``(H, W, 3)`` uint8 RGB array
(display-matrix rotation applied), optionally resized inside swscale during the colour conversion, so
no full-resolution RGB copy is ever made.
Does not know: which frames to keep, chunking, torchcodec or decord, or how results are reported to
the caller beyond :class:`DecodeStats` and :class:`~ppllava_hermes.video.errors.VideoError`.
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from . import _mp4
from .errors import VideoDecodeWarning, VideoError, VideoNotFoundError, describe_exception

# A demuxer that keeps failing at the same spot would otherwise loop forever.
_MAX_CONSECUTIVE_DEMUX_ERRORS = 64


def open_input(
    source: str,
    *,
    timeout: float | None = None,
    options: Mapping[str, str] | None = None,
    format: str | None = None,
    what: str = "not a video file",
) -> av.container.InputContainer:
    """``av.open`` for reading; every failure becomes a :class:`VideoError` (``what`` prefixes the reason)."""
    try:
        return av.open(source, mode="r", timeout=timeout, options=dict(options or {}), format=format)
    except FileNotFoundError:  # av.error.FileNotFoundError subclasses the builtin
        raise VideoNotFoundError(source) from None
    except av.error.ExitError:  # raised by PyAV's interrupt callback when the timeout fires
        raise VideoError(source, f"timed out after {timeout} s while opening") from None
    except Exception as exc:  # FFmpegError subclasses; anything else must not escape raw either
        # FFmpeg only says "Invalid data" for an MP4 without its index: name the likely cause instead
        truncated = _mp4.open_failure(source) if os.path.isfile(source) else None
        raise VideoError(source, truncated or f"{what} ({describe_exception(exc)})") from None


def video_stream(container: av.container.InputContainer, source: str) -> av.video.stream.VideoStream:
    """The first video stream, or a :class:`VideoError` listing what the container has instead."""
    if container.streams.video:
        return container.streams.video[0]
    kinds = sorted({s.type for s in container.streams})
    found = ", ".join(kinds) if kinds else "no streams at all"
    raise VideoError(source, f"no video stream (found: {found})")


def quarter_turns(rotation: float, source: str) -> int:
    """Counter-clockwise quarter turns for a display-matrix angle; only multiples of 90° are supported."""
    k = round(rotation / 90)
    if abs(rotation - 90 * k) > 1:
        raise VideoError(
            source, f"unsupported rotation {rotation:g} degrees (only multiples of 90 are handled)"
        )
    return k % 4


def to_rgb(frame: av.VideoFrame, source: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decoded frame -> ``(H, W, 3)`` uint8 RGB, rotated upright as the display matrix asks.

    ``size`` is the upright ``(H, W)`` wanted; swscale resizes while converting to RGB (bilinear,
    which filters over the whole source footprint when shrinking).
    """
    # FFmpeg's display-matrix angle is counter-clockwise, as is np.rot90 with positive k
    k = quarter_turns(frame.rotation, source)
    if size is None:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        h, w = (size[1], size[0]) if k % 2 else size  # the stored frame is not rotated yet
        if (h, w) == (frame.height, frame.width):
            rgb = frame.to_ndarray(format="rgb24")
        else:
            rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


@dataclass
class Timeline:
    """Maps a frame key to seconds from the start of the source.

    In pts mode the key is the frame's pts in ``time_base`` units and ``start`` is the pts of t = 0.
    In ordinal mode (elementary streams such as raw ``.h264`` carry no pts) the key is the frame's
    position in decode output and seconds are ``key / rate``.
    """

    time_base: Fraction
    start: int | None
    rate: Fraction
    ordinal: bool = False

    @classmethod
    def for_stream(cls, stream: av.video.stream.VideoStream, *, ordinal: bool = False) -> Timeline:
        rate = stream.guessed_rate if ordinal else stream.average_rate
        rate = rate or stream.guessed_rate or stream.average_rate or Fraction(25)  # FFmpeg's own default
        return cls(
            time_base=Fraction(stream.time_base or Fraction(1, 90000)),
            start=0 if ordinal else stream.start_time,
            rate=Fraction(rate),
            ordinal=ordinal,
        )

    def seconds(self, key: int) -> float:
        if self.ordinal:
            return (key * self.rate.denominator) / self.rate.numerator
        if self.start is None:  # live sources may not report a start time: the first frame is t = 0
            self.start = key
        # exact integer arithmetic, one rounding: (pts - start) * tb is identical however it is reached
        return ((key - self.start) * self.time_base.numerator) / self.time_base.denominator


def demux_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    source: str,
    timeout: float | None,
) -> Iterator[av.Packet]:
    """Video packets (ending with FFmpeg's empty flush packet); demux errors are retried, then reading stops."""
    packets = container.demux(stream)
    errors = 0
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.ExitError:
            raise VideoError(source, f"timed out after {timeout} s waiting for data") from None
        except av.error.EOFError:
            return
        except Exception as exc:  # damaged container data: resume from the demuxer's next position
            errors += 1
            if errors > _MAX_CONSECUTIVE_DEMUX_ERRORS:
                warnings.warn(
                    f"video {source!r}: stopped reading after {errors} consecutive demux errors "
                    f"({describe_exception(exc)})",
                    VideoDecodeWarning,
                    stacklevel=2,
                )
                return
            packets = container.demux(stream)
            continue
        errors = 0
        yield packet


@dataclass
class DecodeStats:
    """What :func:`decoded_frames` had to skip.

    Attributes:
        rejected: packets the decoder raised on.
        corrupt: frames the decoder flagged as corrupt (damaged but concealed).
        disordered: frames whose timestamp was not after the previous frame's.
        lost: packets that never produced a frame (known once a later frame comes out, or at the end).
    """

    rejected: int = 0
    corrupt: int = 0
    disordered: int = 0
    lost: int = 0

    @property
    def skipped(self) -> int:
        return self.rejected + self.corrupt + self.disordered + self.lost


def decoded_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    source: str,
    stats: DecodeStats,
    *,
    timeout: float | None = None,
    count_leading: bool = True,
    timeline: Timeline | None = None,
) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """Decode the whole stream in order; yields ``(key, seconds, frame)`` for good frames only.

    Frames are not converted to RGB here, so callers pay for conversion only on frames they keep.
    Broken frames are counted in ``stats`` and skipped; timestamps of the others come from their own
    pts, so a skipped frame never shifts the timing of later ones. ``count_leading=False`` ignores
    losses before the first good frame (a live stream joined between keyframes loses those normally).
    ``timeline`` defaults to the stream's own (see :func:`index_stream`, which returns the same one).
    """
    pending: set[int] = set()  # pts of packets sent to the decoder whose frame has not come out yet
    last_ts = -math.inf
    ordinal = 0
    for packet in demux_packets(container, stream, source, timeout):
        has_data = packet.size > 0
        if timeline is None and has_data:
            timeline = Timeline.for_stream(stream, ordinal=packet.pts is None)
        if has_data and packet.pts is not None:
            pending.add(packet.pts)
        try:
            frames = stream.decode(packet)
        except Exception:  # InvalidDataError & co: this packet's frame is lost, the next ones may decode
            if has_data and (count_leading or last_ts > -math.inf):
                stats.rejected += 1
            if packet.pts is not None:
                pending.discard(packet.pts)
            continue
        for frame in frames:
            if timeline is None:
                timeline = Timeline.for_stream(stream, ordinal=frame.pts is None)
            if timeline.ordinal:
                key, ordinal, counts = ordinal, ordinal + 1, True
            elif frame.pts is None:
                continue  # cannot be placed in time; its packet stays pending and is counted as lost
            else:
                # a key no longer pending was already counted as lost: do not count it twice
                key, counts = frame.pts, frame.pts in pending
                pending.discard(key)
            counts = counts and (count_leading or last_ts > -math.inf)
            if frame.is_corrupt:
                stats.corrupt += counts
                continue
            ts = timeline.seconds(key)
            if ts <= last_ts:
                stats.disordered += counts
                continue
            if pending and not timeline.ordinal:
                # decoders emit frames in presentation order: whatever is still pending before this
                # frame will never come out (also keeps the set small on endless live streams)
                stale = [p for p in pending if p < key]
                if count_leading or last_ts > -math.inf:
                    stats.lost += len(stale)
                pending.difference_update(stale)
            last_ts = ts
            yield key, ts, frame
    stats.lost += len(pending)


@dataclass
class StreamIndex:
    """Every frame a file announces, from packets alone (no decoding).

    Attributes:
        keys: ``(T,)`` int64 frame keys sorted by presentation time (pts, or decode order without pts).
        keyframes: ``(K,)`` int64 sorted pts of keyframe packets; empty when the stream has no pts
            (then it cannot be seeked by pts and is decoded from the start).
        timeline: maps keys to seconds.
    """

    keys: np.ndarray
    keyframes: np.ndarray
    timeline: Timeline

    def seconds(self) -> np.ndarray:
        """``(T,)`` float64 seconds of every key."""
        return np.array([self.timeline.seconds(int(k)) for k in self.keys], dtype=np.float64)


def cut_off(packet: av.Packet, file_size: int | None) -> bool:
    """Whether ``packet`` is the partial last packet of a file cut short.

    FFmpeg returns what the file still holds of such a packet and flags it corrupt; its data reaches
    the end of the file. ``file_size`` ``None`` (not a local file) never cuts anything off.
    """
    return (
        file_size is not None
        and packet.is_corrupt
        and packet.pos is not None
        and packet.pos >= 0
        and packet.pos + packet.size >= file_size
    )


def index_stream(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    source: str,
    file_size: int | None = None,
) -> StreamIndex:
    """The :class:`StreamIndex` of a file's video stream (reads every packet, decodes none).

    With ``file_size``, a partial packet at the end of a truncated file (see :func:`cut_off`) is not a
    frame: it is left out, so nobody asks for a frame that cannot be whole.
    """
    pts: list[int] = []
    key_pts: list[int] = []
    count = 0
    for packet in demux_packets(container, stream, source, None):
        if packet.size > 0 and not cut_off(packet, file_size):
            count += 1
            if packet.pts is not None:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
    if not pts:
        empty = np.zeros(0, dtype=np.int64)
        return StreamIndex(np.arange(count, dtype=np.int64), empty, Timeline.for_stream(stream, ordinal=True))
    keys = np.unique(np.asarray(pts, dtype=np.int64))
    timeline = Timeline.for_stream(stream)
    if timeline.start is None:
        timeline.start = int(keys[0])
    return StreamIndex(keys, np.unique(np.asarray(key_pts, dtype=np.int64)), timeline)


def seek_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    source: str,
    index: StreamIndex,
    positions: np.ndarray,
    stats: DecodeStats,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decode only the frames ``index.keys[positions]`` (``positions`` increasing); yields ``(position, frame)``.

    Before a wanted frame whose GOP starts after the decoder's position, the container is seeked to
    that GOP's keyframe (by its pts, which no earlier packet's dts can pass) and decoding goes forward
    from there; wanted frames in the GOP being decoded are reached by decoding forward, so dense
    sampling decodes sequentially. Frames that cannot be decoded are not yielded (the caller counts
    what is missing). Without keyframe pts (elementary streams) the whole stream is decoded in order.
    """
    wanted = [int(index.keys[p]) for p in positions]
    keyframes = index.keyframes.tolist()
    first = int(index.keys[0]) if len(index.keys) else 0

    def gop_start(key: int) -> int | None:
        j = bisect.bisect_right(keyframes, key) - 1
        return keyframes[j] if j >= 0 else None

    i, n = 0, len(wanted)
    frames: Iterator[tuple[int, float, av.VideoFrame]] | None = None
    sought: int | None = None  # the wanted key the last seek was for: never seek twice for one frame
    try:
        while i < n:
            target = wanted[i]
            start = gop_start(target)
            if frames is not None:
                frames.close()
            if start is not None and start > first:
                container.seek(start, stream=stream, backward=True, any_frame=False)
                sought = target
            elif frames is not None:  # the target's GOP is the first one: back to the start
                container.seek(first, stream=stream, backward=True, any_frame=False)
                sought = target
            frames = decoded_frames(container, stream, source, stats, timeline=index.timeline)
            for key, _, frame in frames:
                while i < n and wanted[i] < key:
                    i += 1  # passed without being decoded: lost
                if i == n:
                    break
                if key == wanted[i]:
                    yield int(positions[i]), frame
                    i += 1
                    if i == n:
                        break
                nxt_start = gop_start(wanted[i])
                if nxt_start is not None and nxt_start > key and wanted[i] != sought:
                    break  # the next wanted frame is in a later GOP: seek there
            else:
                break  # end of stream: whatever is still wanted was never decoded
    finally:
        if frames is not None:
            frames.close()


def warn_skipped(
    source: str, skipped: int, total: int | None = None, *, detail: str = "", stacklevel: int = 3
) -> None:
    """Issue the standard :class:`VideoDecodeWarning` for ``skipped`` frames (no-op when 0)."""
    if skipped <= 0:
        return
    of = f" of {total}" if total is not None else ""
    why = detail or "damaged data"
    warnings.warn(
        f"video {source!r}: skipped {skipped}{of} frame(s) that could not be decoded ({why}); "
        "the other frames keep their own timestamps",
        VideoDecodeWarning,
        stacklevel=stacklevel,
    )
