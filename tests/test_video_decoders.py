"""Decoder backends of the video stage: torchcodec vs PyAV, PyAV seeking vs full decoding, the
torchcodec-to-PyAV fallback warning, and the ``max_side`` size cap.

Videos are generated here (textured frames: a moving gradient whose colour encodes the frame number),
with short GOPs so that seeking has keyframes to jump to.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from ppllava_hermes.video import (
    Sampling,
    VideoBackendWarning,
    _pyav,
    _torchcodec,
    fit_size,
    probe,
    read_video,
    reader,
    stream_video,
    write_video,
)
from ppllava_hermes.video.writer import ROTATION_SUPPORTED

H, W, N, FPS = 72, 128, 60, 12


def textured(k: int) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    frame = np.empty((H, W, 3), dtype=np.uint8)
    frame[..., 0] = 30 + (x * 2 + k * 5) % 180
    frame[..., 1] = 30 + (y * 3 + k * 7) % 180
    frame[..., 2] = 40 + (k * 37) % 160  # flat: encodes k
    return frame


def blue(clip_frames: np.ndarray) -> np.ndarray:
    return clip_frames[..., 2].reshape(len(clip_frames), -1).mean(axis=1)


@pytest.fixture(scope="module")
def gop_videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gop")
    clips = np.stack([textured(k) for k in range(N)])
    return {
        "h264.mp4": write_video(root / "h264.mp4", clips, FPS, keyframe_interval=10),  # B-frames
        "mpeg4.avi": write_video(root / "mpeg4.avi", clips, FPS, codec="mpeg4", keyframe_interval=7),
        "h264.mkv": write_video(root / "h264.mkv", clips, FPS, keyframe_interval=15),
    }


@pytest.fixture
def fresh_torchcodec_check():
    _torchcodec.reset()
    yield
    _torchcodec.reset()


SAMPLINGS = [dict(num_frames=7), dict(fps=2.5), dict(max_frames=5), dict()]


@pytest.mark.parametrize("name", ["h264.mp4", "mpeg4.avi", "h264.mkv"])
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
def test_torchcodec_and_pyav_return_the_same_frames(gop_videos, name, sampling):
    pytest.importorskip("torchcodec")
    if _torchcodec.import_torchcodec() is None:
        pytest.skip(_torchcodec.unavailable_reason())
    path = gop_videos[name]
    a = read_video(path, backend="torchcodec", **sampling)
    b = read_video(path, backend="pyav", **sampling)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)  # same frames, bit-identical times
    assert a.frames.shape == b.frames.shape
    diff = np.abs(a.frames.astype(int) - b.frames.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6, (diff.mean(), diff.max())
    ks = np.round(a.timestamps * FPS).astype(int)
    want = np.array([40 + (k * 37) % 160 for k in ks])
    assert np.abs(blue(a.frames) - want).max() < 12  # and they are the frames the timestamps say (k±1: >= 37 off)
    # resized inside FFmpeg (torchcodec) vs inside swscale (PyAV): still close
    a = read_video(path, backend="torchcodec", max_side=64, **sampling)
    b = read_video(path, backend="pyav", max_side=64, **sampling)
    assert a.frames.shape[1:] == b.frames.shape[1:] == (36, 64, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 3


@pytest.mark.parametrize("name", ["h264.mp4", "mpeg4.avi", "h264.mkv"])
@pytest.mark.parametrize("sampling", [*SAMPLINGS, dict(num_frames=1), dict(fps=0.3)], ids=str)
def test_pyav_seeking_returns_what_full_decoding_returns(gop_videos, name, sampling):
    path = gop_videos[name]
    probed = reader._probe(path)
    index = reader.file_index(str(path))
    chosen = reader.choose(index, Sampling(**sampling))
    size = (H, W)
    sought = reader._read_pyav(probed, index, chosen, size, seek=True)
    full = reader._read_pyav(probed, index, chosen, size, seek=False)
    np.testing.assert_array_equal(sought.timestamps, full.timestamps)
    np.testing.assert_array_equal(sought.frames, full.frames)  # same decoder: bit-identical pixels


def test_pyav_seeking_decodes_only_the_needed_gops(gop_videos, monkeypatch):
    decoded = []
    real = _pyav.decoded_frames

    def counting(*args, **kwargs):
        for item in real(*args, **kwargs):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(_pyav, "decoded_frames", counting)
    clip = read_video(gop_videos["h264.mp4"], num_frames=3, backend="pyav")
    np.testing.assert_array_equal(clip.timestamps, np.array([10, 30, 50]) / FPS)
    # frames 10, 30, 50 each start a GOP of 10: a seek lands on each, nothing else is decoded
    # (a decoder with B-frames may emit one or two frames past the target before it is closed)
    assert len(decoded) <= 3 * 3, len(decoded)
    decoded.clear()
    streamed = np.concatenate([c.timestamps for c in stream_video(gop_videos["h264.mp4"], fps=0.5, backend="pyav")])
    np.testing.assert_array_equal(streamed, np.array([0, 24, 48]) / FPS)
    assert len(decoded) < 3 * 10


def test_auto_falls_back_to_pyav_with_one_warning(gop_videos, monkeypatch, fresh_torchcodec_check):
    # makes `import torchcodec.decoders` raise ImportError, as on an install without torchcodec
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    path = gop_videos["h264.mp4"]
    assert probe(path).backend == "pyav"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = read_video(path, num_frames=4)
        again = read_video(gop_videos["mpeg4.avi"], num_frames=4)
        streamed = list(stream_video(path, chunk_frames=8))
    said = [w for w in caught if issubclass(w.category, VideoBackendWarning)]
    assert len(said) == 1, [str(w.message) for w in caught]
    assert "decoding files with PyAV" in str(said[0].message)
    assert "torchcodec is not installed or cannot be imported" in str(said[0].message)
    assert len(caught) == 1  # nothing else
    np.testing.assert_array_equal(first.frames, read_video(path, num_frames=4, backend="pyav").frames)
    assert len(again) == 4 and sum(len(c) for c in streamed) == N
    with pytest.raises(ImportError, match="backend='torchcodec' was requested but torchcodec is not installed"):
        read_video(path, backend="torchcodec")


def test_fallback_reason_names_missing_ffmpeg_libraries(monkeypatch, fresh_torchcodec_check):
    pytest.importorskip("torchcodec")
    from torchcodec._core import ops

    monkeypatch.setattr(ops, "_FFMPEG_AVAILABLE", False)  # as when libavcodec & co cannot be loaded
    assert _torchcodec.import_torchcodec() is None
    assert "FFmpeg shared libraries" in _torchcodec.unavailable_reason()
    with pytest.warns(VideoBackendWarning, match="FFmpeg shared libraries"):
        _torchcodec.warn_fallback_once()


def test_fit_size_rule():
    assert fit_size(2160, 3840, 448) == (252, 448)
    assert fit_size(3840, 2160, 448) == (448, 252)
    assert fit_size(72, 128, 1000) == (72, 128)  # never enlarged
    assert fit_size(72, 128, None) == (72, 128)
    assert fit_size(1, 1000, 10) == (1, 10)
    with pytest.raises(ValueError, match="max_side must be a positive integer"):
        read_video("x.mp4", max_side=0)
    with pytest.raises(ValueError, match="max_side must be a positive integer"):
        stream_video("x.mp4", max_side=True)


def _backends() -> list[str]:
    out = ["pyav"]
    if _torchcodec.import_torchcodec() is not None:
        out.append("torchcodec")
    from ppllava_hermes.video import _decord

    if _decord.import_decord() is not None:
        out.append("decord")
    return out


@pytest.mark.skipif(not ROTATION_SUPPORTED, reason="writing a display rotation needs PyAV >= 17.1")
@pytest.mark.parametrize("backend", ["torchcodec", "pyav", "decord"])
def test_size_cap_is_honoured(gop_videos, tmp_path, backend):
    if backend not in _backends():
        pytest.skip(f"{backend} not usable here")
    path = gop_videos["h264.mp4"]
    full = read_video(path, num_frames=5, backend="pyav")
    clip = read_video(path, num_frames=5, max_side=40, backend=backend)
    assert clip.frames.shape == (5, 22, 40, 3)
    np.testing.assert_array_equal(clip.timestamps, full.timestamps)
    assert np.abs(blue(clip.frames) - blue(full.frames)).max() < 6  # same frames, smaller
    chunks = list(stream_video(path, chunk_frames=16, fps=6, max_side=40, backend=backend))
    assert [c.frames.shape for c in chunks] == [(16, 22, 40, 3), (14, 22, 40, 3)]
    if backend == "decord":
        return
    rotated = write_video(tmp_path / "rot.mp4", np.stack([textured(k) for k in range(4)]), FPS, rotation=90)
    clip = read_video(rotated, max_side=40, backend=backend)
    assert clip.frames.shape == (4, 40, 22, 3)  # upright (portrait), then capped
    small = read_video(rotated, backend=backend)
    want = np.asarray(
        [np.array(_resize(f, (40, 22)), dtype=int) for f in small.frames]
    )
    assert np.abs(clip.frames.astype(int) - want).mean() < 4


def _resize(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from ppllava_hermes.video.sizing import resize_rgb

    return resize_rgb(frame, hw)


def test_size_cap_for_image_folders(tmp_path):
    from PIL import Image

    for k in range(3):
        Image.fromarray(textured(k)).save(tmp_path / f"{k}.png")
    chunks = list(stream_video(tmp_path, chunk_frames=5, max_side=64))
    assert chunks[0].frames.shape == (3, 36, 64, 3)


def test_torchcodec_streams_chunk_by_chunk(gop_videos, monkeypatch):
    if _torchcodec.import_torchcodec() is None:
        pytest.skip("torchcodec not usable here")
    calls = []
    real_open = _torchcodec.open_decoder

    def spying_open(path, size):
        decoder = real_open(path, size)
        real_get = decoder.get_frames_played_at

        class Spy:
            def get_frames_played_at(self, seconds):
                calls.append(len(seconds))
                return real_get(seconds)

        return Spy()

    monkeypatch.setattr(_torchcodec, "open_decoder", spying_open)
    monkeypatch.setattr(_torchcodec, "BATCH_FRAMES", 5)
    stream = stream_video(gop_videos["h264.mp4"], chunk_frames=4, backend="torchcodec")
    assert len(next(stream)) == 4
    assert calls == [5]  # one decoder batch, not the whole video
    assert sum(len(c) for c in stream) == N - 4
    assert calls == [5] * (N // 5)
