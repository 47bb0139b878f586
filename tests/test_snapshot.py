"""Session snapshots: save, kill, restore into a fresh session, and nothing is lost: equal memory, equal
answers, equal memory again after more frames; refusals of incompatible or damaged snapshots; the atomic
replace; watches and gate state come back."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from ppllava_hermes.memory import make_policy
from ppllava_hermes.streaming import (
    GenerationConfig,
    NoveltyGate,
    StreamConfig,
    StreamingSession,
    WatchConfig,
)
from ppllava_hermes.streaming import snapshot as snap
from ppllava_hermes.streaming.snapshot import restore_session, save_session

from .helpers import random_frames, tiny_adapter

torch.set_num_threads(1)

POLICIES = ["full", "hermes", "window", "sink", "retrieval", "merge"]
FIRST, TOTAL = 31, 41  # Qwen2.5-VL pairs frames: after 31 frames one waits for its partner


@pytest.fixture(scope="module")
def adapter():
    return tiny_adapter("qwen2_5_vl")


@pytest.fixture(scope="module")
def video():
    return random_frames(TOTAL, seed=3)


def session(adapter, policy: str = "hermes", budget: int = 60, chunk_frames: int = 4, **kwargs) -> StreamingSession:
    memory = make_policy(policy, budget=budget) if policy != "full" else None
    return StreamingSession(adapter, memory, config=StreamConfig(chunk_frames=chunk_frames), **kwargs)


def states_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def assert_same_stream(a: StreamingSession, b: StreamingSession) -> None:
    assert states_equal(a.cache.state(), b.cache.state())
    assert a.next_position == b.next_position and a.started == b.started
    assert a.frame_log == b.frame_log and a._pending_times == b._pending_times
    assert len(a._pending_frames) == len(b._pending_frames)
    assert all(np.array_equal(x, y) for x, y in zip(a._pending_frames, b._pending_frames, strict=True))
    assert counts(a.stats) == counts(b.stats)


def counts(stats) -> dict:
    """The statistics that do not measure time (those differ between two runs of the same stream)."""
    out = {k: v for k, v in vars(stats).items() if not k.endswith("_s") and k != "compress_log"}
    out["compress_log"] = [(r.evicted, r.merged, r.next_position) for r in stats.compress_log]
    return out


def streamed(adapter, video, policy: str, n: int = FIRST) -> StreamingSession:
    frames, times = video
    s = session(adapter, policy)
    s.add_frames(frames[:n], times[:n])
    return s


@pytest.mark.parametrize("policy", POLICIES)
def test_restore_loses_nothing(adapter, video, policy, tmp_path):
    frames, times = video
    a = streamed(adapter, video, policy)
    assert len(a._pending_frames) == 1
    if policy not in ("full", "merge"):  # compression has happened, and thrown entries out
        assert a.stats.compress_log and max(r.evicted for r in a.stats.compress_log) > 0
    if policy == "merge":
        assert sum(r.merged for r in a.stats.compress_log) > 0
    assert save_session(a, tmp_path / "snap") == tmp_path / "snap"
    saved_ids = {id(t) for layer in a.cache.layers for t in (layer.keys, layer.values)}

    b = session(adapter, policy)
    restore_session(b, tmp_path / "snap")
    # (1) the memory, tensor for tensor, and its positions; no tensor is shared with the saved session
    assert_same_stream(a, b)
    assert a.stats == b.stats  # timings included: they are the saved stream's
    assert not saved_ids & {id(t) for layer in b.cache.layers for t in (layer.keys, layer.values)}
    if policy == "retrieval":  # the host store came back block for block
        assert len(a.memory.store) == len(b.memory.store) > 0
        for x, y in zip(a.memory.store, b.memory.store, strict=True):
            assert torch.equal(x.committed, y.committed) and torch.equal(x.summaries[1], y.summaries[1])
            assert all(torch.equal(kx, ky) for kx, ky in zip(x.keys, y.keys, strict=True))
        assert torch.equal(a.memory._ref_uids, b.memory._ref_uids)
    if policy == "merge":
        assert torch.equal(a.memory.merge._codes, b.memory.merge._codes)
        assert a.memory.merge._seen == b.memory.merge._seen

    # (2) the same question, the same answer (and the same logits), the pending frame included
    gen = GenerationConfig(max_new_tokens=4)
    ans_a = a.ask("what happened?", gen, return_logits=True)
    ans_b = b.ask("what happened?", gen, return_logits=True)
    assert ans_a.token_ids == ans_b.token_ids and len(ans_a.token_ids) > 0
    assert torch.equal(ans_a.question_logits, ans_b.question_logits)
    assert ans_a.frames_seen == ans_b.frames_seen == FIRST

    # (3) the same further frames, the same memory again
    for s in (a, b):
        s.add_frames(frames[FIRST:], times[FIRST:])
    assert_same_stream(a, b)
    assert a.ask("and now?", gen).token_ids == b.ask("and now?", gen).token_ids


def test_restore_refuses_another_budget_or_policy(adapter, video, tmp_path):
    save_session(streamed(adapter, video, "hermes", n=9), tmp_path / "snap")
    with pytest.raises(ValueError, match=r"budget is 60, this session's is 80"):
        restore_session(session(adapter, "hermes", budget=80), tmp_path / "snap")
    with pytest.raises(ValueError, match=r"memory policy is 'hermes', this session's is 'window'"):
        restore_session(session(adapter, "window"), tmp_path / "snap")
    with pytest.raises(ValueError, match=r"chunk_frames is 4, this session's is 2"):
        restore_session(session(adapter, "hermes", chunk_frames=2), tmp_path / "snap")
    memory = make_policy("hermes", budget=60, anchors=8)
    with pytest.raises(ValueError, match=r"option 'anchors' is 64, this session's is 8"):
        restore_session(StreamingSession(adapter, memory, config=StreamConfig(chunk_frames=4)), tmp_path / "snap")
    other = tiny_adapter("qwen2_5_vl", seed=1)  # the same architecture, other weights
    with pytest.raises(ValueError, match=r"model weights_sha256"):
        restore_session(session(other, "hermes"), tmp_path / "snap")
    with pytest.raises(ValueError, match=r"not fresh"):
        restore_session(streamed(adapter, video, "hermes", n=4), tmp_path / "snap")
    fresh = session(adapter, "hermes")  # a refused restore leaves the session as it was
    with pytest.raises(ValueError):
        restore_session(fresh, tmp_path / "missing")
    assert not fresh.started and fresh.cache.physical_length() == 0


def test_damaged_snapshots_are_refused(adapter, video, tmp_path):
    s = streamed(adapter, video, "retrieval", n=21)
    folder = save_session(s, tmp_path / "snap")

    def damaged(name: str, edit) -> str:
        target = tmp_path / f"bad-{name}-{edit.__name__}"
        shutil.copytree(folder, target)
        edit(target / name)
        with pytest.raises(ValueError) as err:
            restore_session(session(adapter, "retrieval"), target)
        return str(err.value)

    def truncate(path):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)

    def flip(path):
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))

    def remove(path):
        path.unlink()

    for name in ("cache.safetensors", "frames.safetensors", "state.safetensors"):
        assert "truncated or corrupt" in damaged(name, truncate)
        assert "corrupt" in damaged(name, flip)
        assert f"{name} is missing" in damaged(name, remove)
    assert "state.json is unreadable" in damaged("state.json", truncate)
    assert "state.json is missing" in damaged("state.json", remove)

    def old_version(path):
        state = json.loads(path.read_text())
        state["version"] = 0
        path.write_text(json.dumps(state))

    assert "format version is 0" in damaged("state.json", old_version)

    def drop_field(path):
        state = json.loads(path.read_text())
        del state["session"]["frame_log"]
        path.write_text(json.dumps(state))

    assert "malformed" in damaged("state.json", drop_field)


def test_saving_over_a_snapshot_replaces_it_atomically(adapter, video, tmp_path, monkeypatch):
    frames, times = video
    s = streamed(adapter, video, "hermes", n=9)
    folder = save_session(s, tmp_path / "snap")
    first = (folder / "state.json").read_bytes()
    s.add_frames(frames[9:21], times[9:21])

    # A crash while writing the new one: the old one is intact, and no temporary folder is left.
    real = snap.save_file
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(snap, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_session(s, folder)
    monkeypatch.setattr(snap, "save_file", real)
    assert (folder / "state.json").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]
    old = session(adapter, "hermes")
    restore_session(old, folder)
    assert len(old.frame_log) == 8

    # Saving over it: the new state replaces the old, nothing else remains beside it.
    save_session(s, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]
    new = session(adapter, "hermes")
    restore_session(new, folder)
    assert_same_stream(s, new)

    # A crash between the two renames: the previous snapshot, complete under its backup name, is read.
    os.rename(folder, snap._backup_path(folder))
    again = session(adapter, "hermes")
    restore_session(again, folder)
    assert_same_stream(s, again)
    save_session(s, folder)  # and the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]

    # A folder that is not a snapshot is never replaced.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a session snapshot; refusing to replace it"):
        save_session(s, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_watches_come_back_and_decide(adapter, video, tmp_path):
    frames, times = video
    seen = []
    a = session(adapter, "hermes")
    config = WatchConfig(threshold=0.3, cooldown_s=2.0, text_tokens=2)
    wid = a.watch("a red circle appears", config, callback=seen.append)
    second = a.watch("the screen goes dark", WatchConfig(threshold=0.7, cooldown_s=0.0))
    a.unwatch(second)
    third = a.watch("something moves")
    a.add_frames(frames[:FIRST], times[:FIRST])
    assert a.watches[wid].decisions > 0
    save_session(a, tmp_path / "snap")

    b = session(adapter, "hermes")
    late = []
    restore_session(b, tmp_path / "snap", callbacks={third: late.append})
    assert list(b.watches) == list(a.watches) == [wid, third] and b._next_watch_id == a._next_watch_id == 3
    for k in (wid, third):
        x, y = a.watches[k], b.watches[k]
        assert (y.query, y.config, y.armed, y.last_fired, y.decisions) == (x.query, x.config, x.armed, x.last_fired,
                                                                            x.decisions)
        assert y.scores == x.scores and y.fired == x.fired and torch.equal(x.prompt_ids, y.prompt_ids)
        assert x.positive_ids == y.positive_ids and x.negative_ids == y.negative_ids
    assert b.watches[wid].callback is None and b.watches[third].callback == late.append
    assert b.events() == a.events()  # the events nobody collected yet

    before = b.watches[wid].decisions
    for s in (a, b):
        s.add_frames(frames[FIRST:], times[FIRST:])
    assert b.watches[wid].decisions > before
    for k in (wid, third):
        assert b.watches[k].scores == a.watches[k].scores
        assert (b.watches[k].armed, b.watches[k].last_fired) == (a.watches[k].armed, a.watches[k].last_fired)
    assert b.events() == a.events()
    assert_same_stream(a, b)
    with pytest.raises(ValueError, match=r"callbacks for watches \[7\]"):
        restore_session(session(adapter, "hermes"), tmp_path / "snap", callbacks={7: print})


def test_gate_state_and_stored_frames_come_back(adapter, video, tmp_path):
    frames, times = video
    a = session(adapter, "window", gate=NoveltyGate(threshold=0.02))
    a.add_frames(frames[:FIRST], times[:FIRST])
    save_session(a, tmp_path / "gated")
    b = session(adapter, "window", gate=NoveltyGate(threshold=0.02))
    restore_session(b, tmp_path / "gated")
    assert torch.equal(a.gate._reference, b.gate._reference) and a.gate._run == b.gate._run
    with pytest.raises(ValueError, match=r"gate is .*NoveltyGate', this session's is None"):
        restore_session(session(adapter, "window"), tmp_path / "gated")
    for s in (a, b):
        s.add_frames(frames[FIRST:], times[FIRST:])
    assert_same_stream(a, b)

    # An offline policy keeps decoded frames, not KV: they are saved and a question replays them.
    u = session(adapter, "uniform", budget=None)
    u.add_frames(frames[:9], times[:9])
    save_session(u, tmp_path / "uniform")
    v = session(adapter, "uniform", budget=None)
    restore_session(v, tmp_path / "uniform")
    assert all(np.array_equal(x, y) for x, y in zip(u._frame_store, v._frame_store, strict=True))
    gen = GenerationConfig(max_new_tokens=4)
    assert u.ask("what?", gen).token_ids == v.ask("what?", gen).token_ids


def test_unsnapshottable_state_is_refused_not_dropped(adapter, video, tmp_path):
    s = streamed(adapter, video, "hermes", n=9)
    s.memory.hook = lambda: None
    with pytest.raises(ValueError, match=r"cannot snapshot policy 'hermes': attribute 'hook' of type function"):
        save_session(s, tmp_path / "snap")
    del s.memory.hook
    s.memory.history = [torch.zeros(2), {"step": object()}]
    with pytest.raises(ValueError, match=r"attribute 'history.1.0' of type object"):
        save_session(s, tmp_path / "snap")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing was written
    del s.memory.history
    with s.engine.rollback(), pytest.raises(ValueError, match="inside a question"):
        save_session(s, tmp_path / "snap")
