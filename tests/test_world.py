"""ShapesWorld generator and tasks: determinism, invariants, answer derivability, splits, mp4 round trip."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppllava_hermes.evaluation.records import QARecord
from ppllava_hermes.world.generator import (
    COLORS,
    PALETTE,
    SHAPES,
    World,
    WorldConfig,
    generate_world,
    save_mp4,
)
from ppllava_hermes.world.tasks import (
    BENCHMARK,
    CLIP_ATTEMPTS,
    FORWARD_ANSWER,
    SHORT_TYPES,
    SPLITS,
    TASK_KIND_OF,
    TASK_TYPES,
    TaskConfig,
    check_record,
    clip_seed,
    frame_caption,
    generate_questions,
    make_split,
    region_captions,
    short_clip_dataset,
    split_of_seed,
    verify_record,
    verify_records,
    video_seed,
    world_for_record,
)

av = pytest.importorskip("av")

SHORT_CFG = WorldConfig(duration=150.0)


@pytest.fixture(scope="module")
def worlds() -> list[World]:
    return [generate_world(SHORT_CFG, seed) for seed in range(20)]


@pytest.fixture(scope="module")
def questions(worlds) -> list[tuple[World, QARecord]]:
    tc = TaskConfig(questions_per_type=2)
    return [(w, r) for w in worlds for r in generate_questions(w, tc)]


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps": 0.25},
        {"fps": 3.0},
        {"height": 111},
        {"width": 16},
        {"duration": 0},
        {"duration": -5},
        {"max_objects": 0},
        {"min_objects": 4},
        {"initial_objects": 5},
        {"colors": ("red",)},
        {"colors": ("red", "red")},
        {"colors": ("red", "pink")},
        {"shapes": ("circle", "hexagon")},
        {"radius_range": (20, 10)},
        {"radius_range": (60, 60)},
        {"max_objects": 6},  # six radius-24 objects cannot fit in 112x112
        {"speed_range": (0.0, 5.0)},
        {"speed_range": (5.0, 100.0)},
        {"appear_rate": -1.0},
        {"mean_lifetime": 0.0},
        {"static_fraction": 0.95},
        {"static_segment": 0.0},
        {"frame_noise": -1.0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


def test_config_dict_round_trip():
    cfg = WorldConfig(duration=33.0, colors=("red", "blue", "green", "yellow"), fps=2.0)
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.n_frames == 66


def test_bad_seed():
    with pytest.raises(ValueError):
        generate_world(SHORT_CFG, -1)


# --- determinism and invariants --------------------------------------------------------------------


def test_same_seed_same_world(worlds):
    again = generate_world(SHORT_CFG, 3)
    w = worlds[3]
    assert again.events == w.events
    for t in (0, 17, w.n_frames - 1):
        assert again.states(t) == w.states(t)
        assert again.render(t).tobytes() == w.render(t).tobytes()


def test_different_seeds_differ(worlds):
    a, b = worlds[0], worlds[1]
    assert a.events != b.events
    assert not np.array_equal(a.render(0), b.render(0))
    assert not np.array_equal(a.background, b.background)  # backgrounds are per video


def test_frame_noise_is_deterministic_per_frame():
    w = generate_world(dataclasses.replace(SHORT_CFG, frame_noise=3.0), 7)
    f5 = w.render(5)
    _ = w.render(2)  # rendering order never changes pixels
    assert np.array_equal(f5, w.render(5))
    assert not np.array_equal(f5, generate_world(SHORT_CFG, 7).render(5))


def test_event_log_matches_states(worlds):
    """The log is what the frames show: appear/leave/recolour/count events equal state differences."""
    for w in worlds:
        prev: dict[int, tuple] = {}
        derived = []
        for t in range(w.n_frames):
            cur = {s.id: (s.shape, s.color) for s in w.states(t)}
            for i in sorted(cur.keys() - prev.keys()):
                derived.append(("appear", t, i, cur[i][1]))
            for i in sorted(prev.keys() - cur.keys()):
                derived.append(("leave", t, i, prev[i][1]))
            for i in sorted(cur.keys() & prev.keys()):
                if cur[i][1] != prev[i][1]:
                    derived.append(("color_change", t, i, cur[i][1]))
            if len(cur) != len(prev):
                derived.append(("count", t, None, len(cur)))
            prev = cur
        logged = [
            (
                e.kind,
                e.t_index,
                e.object_ids[0] if e.object_ids else None,
                e.count if e.kind == "count" else e.colors[0],
            )
            for e in w.events
            if e.kind != "collide"
        ]
        assert sorted(logged, key=str) == sorted(derived, key=str)
        assert [e.t_index for e in w.events] == sorted(e.t_index for e in w.events)


def test_physical_invariants(worlds):
    for w in worlds:
        cfg = w.config
        for t in range(w.n_frames):
            ss = w.states(t)
            assert len(ss) <= cfg.max_objects
            for i, a in enumerate(ss):
                # present means at least partly inside; bouncing objects are fully inside
                assert a.x + a.radius > 0 and a.x - a.radius < cfg.width
                assert a.leaving or a.fully_visible(cfg.width, cfg.height)
                for b in ss[i + 1 :]:
                    assert np.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius  # never overlap
        appear_frames = [e.t_index for e in w.events_of("appear") if e.t_index > 0]
        assert len(appear_frames) == len(set(appear_frames))  # at most one new object per frame
        for e in w.events_of("collide"):
            assert len(e.object_ids) == 2


def test_all_event_kinds_occur(worlds):
    kinds = {e.kind for w in worlds for e in w.events}
    assert kinds == {"appear", "leave", "color_change", "collide", "count"}


def test_static_stretches_freeze_everything():
    cfg = dataclasses.replace(SHORT_CFG, duration=240.0, static_fraction=0.4, static_segment=20.0)
    w = generate_world(cfg, 11)
    assert 0.2 < w.static.mean() < 0.6 and not w.static[0]
    frozen = np.flatnonzero(w.static)
    assert not any(w.static[e.t_index] for e in w.events)
    for t in frozen[:60]:
        assert w.states(t) == w.states(t - 1)
        assert np.array_equal(w.render(t), w.render(t - 1))


def test_rendered_pixels_show_the_states(worlds):
    w = worlds[2]
    for t in (0, 40, 90):
        frame = w.render(t)
        assert frame.shape == (112, 112, 3) and frame.dtype == np.uint8
        for s in w.states(t):
            if s.fully_visible(112, 112):
                assert tuple(frame[int(s.y), int(s.x)]) == PALETTE[s.color]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    fps=st.sampled_from([0.5, 1.0, 2.0]),
    max_objects=st.integers(1, 3),
    radius=st.integers(8, 24),
)
def test_random_configs_generate_valid_worlds_and_questions(seed, fps, max_objects, radius):
    cfg = WorldConfig(
        duration=40.0, fps=fps, max_objects=max_objects, radius_range=(radius, radius), color_change_rate=3.0
    )
    w = generate_world(cfg, seed)
    assert len(w.timestamps()) == cfg.n_frames
    recs = generate_questions(w, TaskConfig(backward_min_gap=5.0))
    assert all(not p for p in verify_records(w, recs)), [
        (r.question, p) for r, p in zip(recs, verify_records(w, recs), strict=True)
    ]


# --- questions ------------------------------------------------------------------------------------


def test_every_answer_is_derivable(questions):
    problems = [(w.seed, r.task_type, r.question, check_record(w, r)) for w, r in questions]
    assert not [p for p in problems if p[3]]
    by_type = {tt: sum(r.task_type == tt for _, r in questions) for tt in TASK_TYPES}
    assert all(n >= 10 for n in by_type.values()), by_type  # every type is exercised on these seeds


def test_checker_catches_wrong_answers(questions):
    """Changing an answer, or asking the question at another moment, must fail verification."""
    caught = 0
    for w, r in questions:
        if r.options:
            wrong = dataclasses.replace(r, answer=(r.answer + 1) % len(r.options))
        elif r.task_kind == "forward":
            wrong = dataclasses.replace(r, extra={**r.extra, "event_time": r.extra["event_time"] + 1.0})
        elif r.task_type in ("count", "count_now"):
            wrong = dataclasses.replace(r, answer=str(int(r.answer) + 1))
        else:
            wrong = dataclasses.replace(r, answer="xyz")
        assert not verify_record(w, wrong), (r.question, wrong.answer)
        caught += 1
    assert caught == len(questions)
    w, r = questions[0]
    assert not verify_record(w, dataclasses.replace(r, question=r.question.replace("colour", "size")))
    assert not verify_record(w, dataclasses.replace(r, task_kind="other"))


def test_checker_rejects_ambiguous_references():
    """A shape named while two of it are visible is ambiguous; the checker refuses it."""
    cfg = WorldConfig(duration=30.0, max_objects=3, initial_objects=3, shapes=("circle", "square"))
    for seed in range(30):
        w = generate_world(cfg, seed)
        ss = w.states(0)
        shapes = [s.shape for s in ss]
        dup = next((s for s in shapes if shapes.count(s) > 1), None)
        if dup is not None and w.is_clean(0):
            r = QARecord(
                BENCHMARK, "x", "v.mp4", f"What colour is the {dup} now?", answer=ss[shapes.index(dup)].color,
                task_type="color_now", task_kind="realtime", timestamp=0.0, extra={"seed": seed},
            )  # fmt: skip
            assert any("2 objects" in p for p in check_record(w, r))
            return
    pytest.fail("no world with a duplicated shape found")


def test_record_fields(questions):
    qids = [r.qid for _, r in questions]
    assert len(qids) == len(set(qids))
    mc = [r for _, r in questions if r.options]
    assert 0.3 < len(mc) / len(questions) < 0.8
    for w, r in questions:
        assert r.benchmark == BENCHMARK and r.task_kind == TASK_KIND_OF[r.task_type]
        assert 0 <= r.timestamp < w.duration
        QARecord(**dataclasses.asdict(r))  # re-validates
        if r.options:
            assert len(r.options) == 4 and len(set(r.options)) == 4
        else:
            assert isinstance(r.answer, str) and r.answer
        if r.task_kind == "short":
            assert r.start < r.end == r.timestamp
            assert round((r.end - r.start) * w.fps) + 1 == 4
        if r.task_kind == "backward":
            assert r.timestamp - r.extra["event_time"] >= 10.0
        if r.task_kind == "forward":
            assert r.answer == FORWARD_ANSWER and not r.options
            assert r.extra["event_time"] - r.timestamp >= 3.0
            assert r.extra["tolerance"] > 0 and r.extra["event"]


def test_answer_positions_are_spread(questions):
    positions = [r.answer for _, r in questions if r.options]
    counts = np.bincount(positions, minlength=4)
    assert counts.min() > 0.12 * len(positions), counts


def test_questions_are_deterministic(worlds):
    a = generate_questions(worlds[4], TaskConfig(questions_per_type=2))
    b = generate_questions(generate_world(SHORT_CFG, 4), TaskConfig(questions_per_type=2))
    assert a == b


def test_world_for_record_rebuilds_the_world(questions):
    w, r = questions[-1]
    again = world_for_record(r)
    assert again.events == w.events and verify_record(again, r)


def test_task_config_validation():
    with pytest.raises(ValueError):
        TaskConfig(task_types=("color", "smell"))
    with pytest.raises(ValueError):
        TaskConfig(mc_fraction=1.5)
    with pytest.raises(ValueError):
        TaskConfig(clip_frames=1)


# --- long videos ----------------------------------------------------------------------------------


def test_thirty_minute_world_is_cheap(monkeypatch):
    def no_render(self, t_index):
        raise AssertionError("generation must not render frames")

    monkeypatch.setattr(World, "render", no_render)
    t0 = time.perf_counter()
    w = generate_world(WorldConfig(duration=1800.0), 123)
    recs = generate_questions(w)
    elapsed = time.perf_counter() - t0
    assert w.n_frames == 1800 and len(w.events) > 100
    assert elapsed < 5.0, elapsed  # about 0.1 s on one core
    assert {r.task_kind for r in recs} == {"short", "backward", "realtime", "forward"}
    problems = verify_records(w, recs)
    assert not any(problems), problems


# --- splits and datasets --------------------------------------------------------------------------


def test_split_seed_ranges_are_disjoint():
    for s in SPLITS:
        assert split_of_seed(video_seed(s, 0)) == s
        assert split_of_seed(video_seed(s, 10**8)) == s
        assert split_of_seed(clip_seed(s, 0)) == s
        assert split_of_seed(clip_seed(s, 6 * 10**7, CLIP_ATTEMPTS - 1)) == s
    clip_seeds = {clip_seed("train", i, a) for i in range(50) for a in range(CLIP_ATTEMPTS)}
    assert len(clip_seeds) == 50 * CLIP_ATTEMPTS  # seed blocks of clips do not overlap
    with pytest.raises(ValueError):
        clip_seed("train", 0, CLIP_ATTEMPTS)
    with pytest.raises(ValueError):
        video_seed("train", 5 * 10**8)  # would run into the clip half
    with pytest.raises(ValueError):
        make_split("dev", 1)


def test_make_split():
    splits = {
        s: make_split(s, 3, duration=60.0, task_config=TaskConfig(task_types=("color_now", "when_appear")))
        for s in SPLITS
    }
    seeds = [set(sp.seeds) for sp in splits.values()]
    assert all(len(a & b) == 0 for i, a in enumerate(seeds) for b in seeds[i + 1 :])
    for name, sp in splits.items():
        assert len(sp.worlds) == 3 and sp.records
        worlds = {w.name: w for w in sp.worlds}
        for r in sp.records:
            assert r.video.startswith(f"{name}/") and r.video.endswith(".mp4")
            assert split_of_seed(r.extra["seed"]) == name
            assert verify_record(worlds[r.video[len(name) + 1 : -4]], r)
    assert make_split("val", 2, 60.0, seed_base=1).seeds[0] == splits["val"].seeds[1]


def test_make_split_writes_videos(tmp_path):
    sp = make_split(
        "test", 1, duration=8.0, task_config=TaskConfig(task_types=("count_now",)), out_dir=tmp_path
    )
    path = tmp_path / sp.records[0].video
    assert path.is_file() and path.stat().st_size > 0


def test_short_clip_dataset():
    t0 = time.perf_counter()
    data = short_clip_dataset("train", 60)
    assert time.perf_counter() - t0 < 5.0
    assert len(data) == 60
    types = [r.task_type for _, r in data]
    assert all(types.count(t) == 15 for t in SHORT_TYPES), types  # the rotation holds
    n_objects = []
    for frames, r in data:
        assert frames.shape == (4, 112, 112, 3) and frames.dtype == np.uint8
        assert r.task_kind == "short" and r.start == 0.0 and r.end == 3.0
        w = world_for_record(r)
        assert split_of_seed(w.seed) == "train"
        assert np.array_equal(frames[-1], w.render(3))
        assert verify_record(w, r), check_record(w, r)
        n_objects.append(len(w.states(0)))
    assert np.mean(np.isin(n_objects, (1, 2))) > 0.6  # mostly 1-2 objects
    again = short_clip_dataset("train", 5)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(data, again, strict=False))
    other = short_clip_dataset("val", 5)
    assert not any(np.array_equal(a[0], b[0]) for a, b in zip(data, other, strict=False))


def test_short_clip_options():
    data = short_clip_dataset("test", 8, frames_per_clip=3, mc_fraction=1.0, task_types=("color",), fps=2.0)
    assert all(r.options and r.task_type == "color" for _, r in data)
    assert all(f.shape[0] == 3 for f, _ in data)


# --- captions -------------------------------------------------------------------------------------


def test_region_captions(worlds):
    w = worlds[5]
    seen = 0
    for t in range(0, w.n_frames, 10):
        frame = w.render(t)
        caps = region_captions(w, t)
        for (x0, y0, x1, y1), cap in caps:
            assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
            _, color, shape = cap.split()
            assert color in COLORS and shape in SHAPES
            crop = frame[y0:y1, x0:x1].reshape(-1, 3)
            # the object's colour covers a good part of its box (>= 30% even for the triangle)
            share = np.mean(np.all(crop == np.array(PALETTE[color]), axis=1))
            assert share > 0.3, (cap, share)
            seen += 1
        assert frame_caption(w, t).count(" a ") + frame_caption(w, t).startswith("a ") >= len(caps)
    assert seen > 10


# --- mp4 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [0.5, 2.0])
def test_mp4_round_trip(tmp_path, fps):
    w = generate_world(WorldConfig(duration=12.0, fps=fps), 21)
    path = w.save_mp4(tmp_path / "v.mp4")
    with av.open(str(path)) as container:
        decoded = [(f.to_ndarray(format="rgb24"), f.time) for f in container.decode(video=0)]
    assert len(decoded) == w.n_frames
    assert np.allclose([t for _, t in decoded], w.timestamps(), atol=1e-3)
    for t, (img, _) in enumerate(decoded):
        assert img.shape == (112, 112, 3)
        assert np.abs(img.astype(int) - w.render(t).astype(int)).mean() < 6  # lossy, but close
        for s in w.states(t):
            if s.fully_visible(112, 112):
                centre = img[int(s.y), int(s.x)].astype(int)
                assert np.abs(centre - np.array(PALETTE[s.color])).max() < 25


def test_save_mp4_rejects_no_frames(tmp_path):
    with pytest.raises(ValueError):
        save_mp4(tmp_path / "empty.mp4", iter([]), 1.0)


def test_project_reader_reads_world_mp4(tmp_path):
    video = pytest.importorskip("ppllava_hermes.video")
    if not hasattr(video, "read_video"):
        pytest.skip("ppllava_hermes.video.read_video not available yet")
    w = generate_world(WorldConfig(duration=10.0), 8)
    path = w.save_mp4(tmp_path / "v.mp4")
    clip = video.read_video(str(path), fps=1.0)
    assert len(clip) == w.n_frames
    assert np.abs(clip.frames[3].astype(int) - w.render(3).astype(int)).mean() < 6


# --- dense token labels ---------------------------------------------------------------------------


def test_token_labels_match_pixels_and_motion():
    from ppllava_hermes.world.labels import IGNORE, NONE, token_labels
    from ppllava_hermes.world.tasks import iter_short_clip_worlds

    checked = 0
    for w, frames, _rec in iter_short_clip_worlds("train", 24):
        assert np.array_equal(frames, np.stack(list(w.frames(0, 4))))
        lab = token_labels(w, 4, group=2, cell=28)
        assert all(v.shape == (2, 4, 4) and v.dtype == np.int64 for v in lab.values())
        for g in range(2):
            for i in range(4):
                for j in range(4):
                    c, s, d = (int(lab[k][g, i, j]) for k in ("color", "shape", "direction"))
                    assert (c == NONE) == (s == NONE) == (d == NONE)
                    if c == NONE:
                        continue
                    checked += 1
                    color, shape = COLORS[c - 1], SHAPES[s - 1]
                    # the labelled colour fills a good part of the cell in the group's frames
                    cell = frames[2 * g: 2 * g + 2, 28 * i: 28 * i + 28, 28 * j: 28 * j + 28].reshape(-1, 3)
                    assert np.mean(np.all(cell == np.array(PALETTE[color]), axis=1)) > 0.05
                    owner = [st for st in w.states(2 * g) if st.color == color and st.shape == shape]
                    assert owner, (color, shape)
                    if d != IGNORE:
                        nxt = next(st for st in w.states(2 * g + 1) if st.id == owner[0].id)
                        dx, dy = nxt.x - owner[0].x, nxt.y - owner[0].y
                        expected = {1: dx < 0, 2: dx > 0, 3: dy < 0, 4: dy > 0}[d]
                        assert expected and (dx == 0 or dy == 0), (d, dx, dy)
        n_labelled = int((lab["color"] != NONE).sum())
        assert n_labelled >= len(w.states(0)), "every object labels at least one token"
    assert checked > 40
    with pytest.raises(ValueError, match="multiple of group"):
        token_labels(w, 3, group=2)


def test_short_clips_object_weights():
    """Binding clips (stage 5): 2-3 objects when asked for; weights that are not 3 probabilities are refused."""
    from ppllava_hermes.world.tasks import iter_short_clip_worlds

    counts = [len(w.tracks) for w, _, rec in iter_short_clip_worlds("train", 12, task_types=("shape",),
                                                                    object_weights=(0.0, 0.6, 0.4))]
    assert len(counts) == 12 and min(counts) >= 2 and max(counts) <= 3
    for bad in ((0.5, 0.5), (0.5, 0.6, 0.1), (-0.1, 0.6, 0.5)):
        with pytest.raises(ValueError, match="object_weights"):
            next(iter_short_clip_worlds("train", 1, object_weights=bad))
