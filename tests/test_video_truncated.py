"""Truncated MP4 files: with the index first they read as the shorter video they hold, said once; with
the index last (or cut inside it) they are a one-line :class:`VideoError` naming the likely cause.

Videos are the ones of ``test_video`` (frame k a flat colour encoding k, at k / FPS), written with PyAV
with and without ``movflags=faststart`` and then cut at a chosen byte.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from ppllava_hermes.video import (
    VideoClip,
    VideoDecodeWarning,
    VideoError,
    VideoTruncatedWarning,
    _mp4,
    probe,
    read_video,
    stream_video,
    write_video,
)

from .test_video import FPS, HAS_TORCHCODEC, H, N, W, assert_clip_is_file, frames, make_frame


def _write_faststart(path: Path, n: int = N) -> Path:
    """An H.264 mp4 whose 'moov' index comes before the frames (what a web player wants)."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p"
        for k in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(make_frame(k), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _packets(path: Path) -> list[tuple[int, int, int]]:
    """``(pos, size, frame number)`` of every video packet, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rows = [
            (p.pos, p.size, round(float(p.pts * stream.time_base) * FPS))
            for p in container.demux(stream)
            if p.size
        ]
    return sorted(rows)


def _cut(path: Path, size: int, name: str) -> Path:
    out = path.with_name(name)
    out.write_bytes(path.read_bytes()[:size])
    return out


def _decode_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, VideoDecodeWarning)]


@pytest.fixture(scope="module")
def index_first(tmp_path_factory) -> tuple[Path, Path, list[int]]:
    """(whole file, the file cut in the middle of frame 20's data, the frames still whole in it).

    With B-frames, frame 20 is stored before frame 19, so the whole frames are 0 to 18.
    """
    path = _write_faststart(tmp_path_factory.mktemp("truncated") / "whole.mp4")
    packets = _packets(path)
    pos, size, k = next(row for row in packets if row[2] == 20)
    cut = _cut(path, pos + size // 2, "cut.mp4")
    whole = sorted(frame for p, s, frame in packets if p + s <= pos + size // 2)
    return path, cut, whole


def test_whole_file_is_not_truncated(index_first):
    path, _, _ = index_first
    info = probe(path)
    assert (info.num_frames, info.duration, info.truncated) == (N, 3.0, False)
    assert (info.declared_frames, info.declared_duration) == (None, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_clip_is_file(read_video(path), list(range(N)))
    assert not _decode_warnings(caught)


def test_probe_reports_where_the_frames_end(index_first):
    _, cut, whole = index_first
    assert whole == list(range(len(whole))) and len(whole) >= 19
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoDecodeWarning)  # probe describes, it does not warn
        info = probe(cut)
    assert info.truncated
    assert (info.num_frames, info.declared_frames, info.declared_duration) == (len(whole), N, 3.0)
    assert info.duration == pytest.approx(len(whole) / FPS)  # the last whole frame's time + one period
    assert info.fps == FPS


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_index_first_reads_as_a_shorter_video_with_one_warning(index_first, backend):
    _, cut, whole = index_first
    end = f"{len(whole) / FPS:.1f}"
    message = rf"^video '.*cut\.mp4': truncated: frames end at {end} s of a declared 3\.0 s, {len(whole)} of 30 frames"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = read_video(cut, backend=backend)
    got = _decode_warnings(caught)
    # one line, and no "skipped 1 frame" about the half frame the file ends with
    assert [w.category for w in got] == [VideoTruncatedWarning], [str(w.message) for w in got]
    assert "\n" not in str(got[0].message) and re.match(message, str(got[0].message)), str(got[0].message)
    assert_clip_is_file(clip, whole)
    # sampling sees only the frames that are there: the fps grid stops at the cut
    with pytest.warns(VideoTruncatedWarning):
        assert_clip_is_file(read_video(cut, fps=5, backend=backend), list(range(0, len(whole), 2)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunks = list(stream_video(cut, chunk_frames=8, backend=backend))
    assert [w.category for w in _decode_warnings(caught)] == [VideoTruncatedWarning]
    assert_clip_is_file(
        VideoClip(np.concatenate([c.frames for c in chunks]), np.concatenate([c.timestamps for c in chunks])),
        whole,
    )


@pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec (with FFmpeg libraries) not usable")
def test_truncated_file_and_torchcodec(index_first):
    _, cut, whole = index_first
    assert probe(cut).backend == "pyav"  # auto does not try torchcodec on it (see the next lines)
    # frames away from the cut come from torchcodec as from any file ...
    with pytest.warns(VideoTruncatedWarning):
        assert_clip_is_file(read_video(cut, num_frames=4, backend="torchcodec"), [2, 7, 11, 16])
    # ... but reaching the end makes its decoder meet the half frame: forced, it fails in one line
    try:
        with pytest.warns(VideoTruncatedWarning):
            clip = read_video(cut, backend="torchcodec")
    except VideoError as err:
        assert re.match(r"^video '.*cut\.mp4': torchcodec failed \(.*\); backend='auto' or 'pyav'", str(err))
        assert "\n" not in str(err)
    else:  # a torchcodec that stops cleanly at the cut is just as right
        assert_clip_is_file(clip, whole)


def test_index_first_cut_before_any_whole_frame(index_first):
    path, _, _ = index_first
    first_pos, first_size, _ = _packets(path)[0]
    cut = _cut(path, first_pos + first_size // 2, "nothing.mp4")
    with pytest.raises(
        VideoError, match=r"^video '.*nothing\.mp4': truncated: no whole video frame \(the file ends at"
    ):
        probe(cut)


def _index_last_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    last = write_video(tmp / "recording.mp4", frames(), FPS)  # the mp4 muxer writes 'moov' at the end
    data = last.read_bytes()
    first = _write_faststart(tmp / "web.mp4")
    no_index = "looks like a truncated or incomplete MP4: it has an 'ftyp' box but no 'moov' index"
    cut_index = r"looks like a truncated MP4: the file ends inside its 'moov' index \(at \d+ bytes\)"
    return {
        "index-last, cut in the frames": (_cut(last, len(data) // 2, "interrupted.mp4"), no_index),
        "index-last, only the header": (_cut(last, 40, "header.mp4"), no_index),
        # the middle of the index: sample tables cut (its last bytes are only the encoder's name)
        "index-last, cut in the index": (
            _cut(last, (data.rfind(b"moov") + len(data)) // 2, "short.mp4"),
            cut_index,
        ),
        "index-first, cut in the index": (_cut(first, 200, "early.mp4"), cut_index),
    }


@pytest.mark.parametrize("opener", [probe, read_video, stream_video])
def test_missing_or_cut_index_is_named(tmp_path, opener):
    for case, (path, reason) in _index_last_cases(tmp_path).items():
        with pytest.raises(VideoError, match=rf"^video '.*{path.name}': {reason}") as info:
            opener(path)
        err = info.value
        assert "\n" not in str(err), case
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), case


def _box(kind: bytes, payload: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack(">I", 8 + len(payload) if size is None else size) + kind + payload


def test_box_layout(tmp_path):
    ftyp = _box(b"ftyp", b"isom\0\0\2\0isomiso2")
    cases = {
        "whole": (ftyp + _box(b"moov", b"x" * 20) + _box(b"mdat", b"y" * 50), ("ftyp", "moov", "mdat"), None),
        "mdat to the end": (ftyp + _box(b"mdat", b"y" * 50, size=0), ("ftyp", "mdat"), None),
        "large mdat cut": (
            ftyp + struct.pack(">I4sQ", 1, b"mdat", 10_000) + b"y" * 50,
            ("ftyp", "mdat"),
            "mdat",
        ),
        "cut header": (ftyp + b"\0\0", ("ftyp",), ""),
    }
    for name, (data, types, cut) in cases.items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        layout = _mp4.layout(path)
        assert layout is not None and (layout.types, layout.cut, layout.size) == (types, cut, len(data)), name
    (tmp_path / "notes.mp4").write_text("not a video")
    assert _mp4.layout(tmp_path / "notes.mp4") is None and _mp4.layout(tmp_path / "missing.mp4") is None
    assert _mp4.open_failure(tmp_path / "whole.mp4") is None
    assert "no 'moov' index" in _mp4.open_failure(tmp_path / "mdat to the end.mp4")
