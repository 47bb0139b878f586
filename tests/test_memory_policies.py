"""Every memory policy through the same invariants, on both tiny model families.

Budget never exceeded (budget + system + anchor allowance), layers equal in length, frame order kept,
system prompt bit-identical, positions under the model maximum, memory unchanged by a question.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppllava_hermes.memory import POLICIES, FullCache, Hermes, MemoryPolicy, make_policy
from ppllava_hermes.memory.policy import CompressResult
from ppllava_hermes.memory.rope import RopeSpec
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession

from .helpers import random_frames
from .memory_helpers import adapter, check_invariants, system_state

FAMILIES = ["qwen2_5_vl", "llava_onevision"]
ANCHORS = 4


@dataclass(frozen=True)
class Case:
    """One row of the policy matrix.

    Attributes:
        make: budget -> a fresh policy (test options: small headroom, a few anchors).
        limit: (budget, system entries) -> the most entries a layer may hold between questions (None: no bound).
        compresses: over the matrix's streams the budget is exceeded, so the policy must evict or merge.
    """

    make: Callable[[int], MemoryPolicy]
    limit: Callable[[int, int], int | None]
    compresses: bool = True


def _bounded(extra: int = 0) -> Callable[[int, int], int]:
    return lambda budget, system: system + budget + extra


#: Every policy ``make_policy`` knows (test_registry_covers_every_policy checks it) plus variants.
CASES: dict[str, Case] = {
    "full": Case(lambda b: FullCache(), lambda b, s: None, compresses=False),
    "window": Case(lambda b: make_policy("window", budget=b, headroom=64), _bounded()),
    "sink": Case(lambda b: make_policy("sink", budget=b, headroom=64), _bounded()),
    "hermes": Case(lambda b: make_policy("hermes", budget=b, anchors=ANCHORS, headroom=64), _bounded(ANCHORS)),
    "hermes_eager": Case(lambda b: Hermes(budget=b, reindex="eager", anchors=ANCHORS, headroom=64), _bounded(ANCHORS)),
    "snapkv": Case(lambda b: make_policy("snapkv", budget=b, headroom=64, reindex="eager"), _bounded()),
    "uniform": Case(lambda b: make_policy("uniform", frames=4), lambda b, s: s, compresses=False),
    "merge": Case(lambda b: make_policy("merge", threshold=0.5, headroom=64), lambda b, s: None, compresses=False),
    "merge_hermes": Case(lambda b: make_policy("merge", budget=b, threshold=0.5, anchors=ANCHORS, headroom=64),
                         _bounded(ANCHORS)),
    "retrieval": Case(lambda b: make_policy("retrieval", budget=b, headroom=64), _bounded()),
    "retrieval-tokens": Case(lambda b: make_policy("retrieval-tokens", budget=b, headroom=64), _bounded()),
    "novelty": Case(lambda b: make_policy("novelty", budget=b, headroom=64), _bounded()),
}
NAMES = list(CASES)


def build(name: str, budget: int) -> MemoryPolicy:
    return CASES[name].make(budget)


def limit_for(name: str, budget: int, system: int) -> int | None:
    """The most entries a layer may hold between questions."""
    return CASES[name].limit(budget, system)


def stream_and_check(family: str, name: str, budget: int, sizes: list[int], chunk_frames: int,
                     max_position: int = 32768) -> StreamingSession:
    ad = adapter(family, max_position)
    session = StreamingSession(ad, memory=build(name, budget), config=StreamConfig(chunk_frames=chunk_frames))
    frames, times = random_frames(sum(sizes), seed=len(sizes))
    return feed_and_check(session, frames, times, sizes, name, budget, max_position)


def feed_and_check(session: StreamingSession, frames, times, sizes: list[int], name: str, budget: int,
                   max_position: int) -> StreamingSession:
    """Feed ``frames`` in calls of ``sizes`` frames, checking the row's invariants after each; returns ``session``."""
    system = None
    start = 0
    for size in sizes:
        session.add_frames(frames[start : start + size], times[start : start + size])
        start += size
        if not session.started:
            continue
        n_system = session.cache.count(0)  # TokenKind.SYSTEM
        if system is None:
            system = system_state(session.cache)
        check_invariants(session.cache, limit=limit_for(name, budget, n_system), system=system,
                         max_position=max_position)
    return session


def test_registry_covers_every_policy():
    """A policy added to the registry without a row here fails, so the matrix cannot fall behind."""
    assert set(POLICIES) <= set(CASES), f"no matrix row for {sorted(set(POLICIES) - set(CASES))}"
    assert isinstance(make_policy("full"), FullCache)
    with pytest.raises(ValueError, match="unknown memory policy"):
        make_policy("lru", budget=10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", NAMES)
def test_invariants_and_memory_restored_after_ask(family, name):
    session = stream_and_check(family, name, budget=24, sizes=[4] * 6, chunk_frames=4)
    if CASES[name].compresses:
        assert session.stats.compress_log, "the budget must have been exceeded"
        assert max(r.evicted + r.merged for r in session.stats.compress_log) > 0
    before, position = session.cache.state(), session.next_position
    answer = session.ask("What now?", GenerationConfig(max_new_tokens=4))
    session.ask("And?", GenerationConfig(max_new_tokens=3, do_sample=True, seed=1, top_p=0.9))
    after = session.cache.state()
    assert session.next_position == position
    for b, a in zip(before, after, strict=True):
        assert b.keys() == a.keys()
        for key in b:
            assert torch.equal(b[key], a[key]), key
    assert answer.frames_seen == 24


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(FAMILIES),
    name=st.sampled_from(["window", "sink", "hermes", "hermes_eager", "snapkv", "merge_hermes", "retrieval"]),
    budget=st.integers(min_value=19, max_value=40),
    sizes=st.lists(st.integers(min_value=1, max_value=8), min_size=4, max_size=8),
    chunk_frames=st.integers(min_value=1, max_value=4),
)
def test_budget_order_and_system_hold_for_random_streams(family, name, budget, sizes, chunk_frames):
    stream_and_check(family, name, budget, sizes, chunk_frames)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["hermes", "window", "sink", "snapkv", "merge_hermes", "retrieval"])
def test_positions_stay_under_a_small_maximum_forever(family, name):
    """max_position_embeddings=256: without re-indexing the stream would pass it (Qwen's M-RoPE advances
    4 positions per frame pair, LLaVA-OneVision 4.5 per frame here)."""
    session = stream_and_check(family, name, budget=24, sizes=[4] * 36, chunk_frames=2, max_position=256)
    assert any(r.next_position is not None for r in session.stats.compress_log)
    assert session.next_position < 256
    session.ask("Still there?", GenerationConfig(max_new_tokens=2))


def test_lazy_hermes_reindexes_only_near_the_limit():
    session = stream_and_check("llava_onevision", "hermes", budget=24, sizes=[4] * 30, chunk_frames=4,
                               max_position=256)
    moves = [r.next_position for r in session.stats.compress_log]
    assert moves[0] is None  # far from the limit: positions left alone
    assert any(m is not None for m in moves)


class _AlwaysCompress(Hermes):
    def wants_compress(self, cache) -> bool:
        return True


@pytest.mark.parametrize("family", FAMILIES)
def test_hermes_with_infinite_budget_equals_full_cache(family):
    """Compression runs after every chunk (probe, scores, eager re-indexing) but keeps everything."""
    frames, times = random_frames(12, seed=9)
    logits = {}
    ad = adapter(family, 1 << 21)  # room for a budget of a million under the position limit
    for label, policy in [("full", FullCache()), ("hermes", _AlwaysCompress(budget=10**6, reindex="eager"))]:
        session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=4, record_logits=True))
        session.add_frames(frames, times)
        answer = session.ask("What happens?", GenerationConfig(max_new_tokens=3), return_logits=True)
        logits[label] = (torch.cat(session.logits_log[:4] + [answer.question_logits]), answer.token_ids)
        if label == "hermes":
            assert len(session.stats.compress_log) == 3
    torch.testing.assert_close(logits["hermes"][0], logits["full"][0], atol=1e-5, rtol=0)
    assert logits["hermes"][1] == logits["full"][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_answers_like_a_full_cache_over_the_sampled_frames(family):
    frames, times = random_frames(16, seed=11)
    uniform = StreamingSession(adapter(family), memory=make_policy("uniform", frames=4),
                               config=StreamConfig(chunk_frames=4))
    uniform.add_frames(frames, times)
    assert uniform.cache.count(1) == 0  # nothing visual prefilled while streaming
    got = uniform.ask("Which?", GenerationConfig(max_new_tokens=3), return_logits=True)
    picks = [0, 5, 10, 15]
    assert uniform.memory.question_frames(16, 4) == picks
    full = StreamingSession(adapter(family), config=StreamConfig(chunk_frames=4))
    full.add_frames(frames[picks], times[picks])
    want = full.ask("Which?", GenerationConfig(max_new_tokens=3), return_logits=True)
    torch.testing.assert_close(got.question_logits, want.question_logits, atol=1e-5, rtol=0)
    assert got.token_ids == want.token_ids
    assert uniform.cache.physical_length() == uniform.cache.count(0)  # back to the system prompt only
    # the offline baseline is its own session class; streaming sessions and policies know nothing of it
    from ppllava_hermes.streaming.uniform import UniformSession

    assert type(uniform) is UniformSession and type(full) is StreamingSession
    assert uniform.stored_frame_bytes == frames.nbytes
    assert not hasattr(full, "_frame_store") and not hasattr(MemoryPolicy, "question_frames")
    with pytest.raises(ValueError, match=r"watch\(\): memory policy 'uniform' builds its cache per question"):
        uniform.watch("Tell me when it moves.")


def test_uniform_budget_in_tokens():
    policy = make_policy("uniform", budget=40)
    assert policy.frames_for(tokens_per_frame=10) == 4
    assert policy.question_frames(3, 10) == [0, 1, 2]


# ---- configuration errors ------------------------------------------------------------------------
def test_budget_smaller_than_the_system_prompt_is_refused():
    session = StreamingSession(adapter("llava_onevision"), memory=Hermes(budget=5, headroom=64))
    frames, times = random_frames(2)
    with pytest.raises(ValueError, match="smaller than the system prompt"):
        session.add_frames(frames, times)


@pytest.mark.parametrize("tiers, message", [
    ((0.5, 0.6, 0.3), "add up to 1"),
    ((0.1, 0.9), "three fractions"),
    ((-0.1, 0.8, 0.3), "three fractions"),
])
def test_bad_tier_fractions_are_refused(tiers, message):
    with pytest.raises(ValueError, match=message):
        Hermes(tiers=tiers)


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, "budget"),
    ({"anchors": -1}, "anchors"),
    ({"reindex": "sometimes"}, "reindex"),
    ({"smoothing": (0.1, 2.0, 0.4)}, "smoothing"),
    ({"shallow_recency": (1.5, 20.0)}, "recency"),
])
def test_bad_hermes_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Hermes(**kwargs)


def test_baseline_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="sink_tokens"):
        make_policy("sink", budget=4, sink_tokens=4)
    with pytest.raises(ValueError, match="budget"):
        make_policy("window", budget=0)
    with pytest.raises(ValueError, match="frames"):
        make_policy("uniform", frames=0)


@pytest.mark.parametrize("name", ["hermes", "window", "sink", "snapkv", "retrieval"])
def test_a_model_without_rope_is_refused_at_construction(name, monkeypatch):
    ad = adapter("llava_onevision")
    monkeypatch.setattr(ad, "rope_spec", lambda: None)
    with pytest.raises(ValueError, match="rotary position"):
        StreamingSession(ad, memory=make_policy(name, budget=32))
    no_freq = RopeSpec(inv_freq=None, mrope_section=None, attention_scaling=1.0, max_position_embeddings=4096)
    with pytest.raises(ValueError, match="rotary position"):
        make_policy(name, budget=32).check_model(no_freq, 4)


def test_positions_that_cannot_fit_are_refused():
    session = StreamingSession(adapter("llava_onevision", 256), memory=Hermes(budget=200, anchors=8, headroom=64))
    frames, times = random_frames(2)
    with pytest.raises(ValueError, match="do not fit"):
        session.add_frames(frames, times)


def test_full_cache_is_the_default_and_never_compresses():
    session = StreamingSession(adapter("llava_onevision"), config=StreamConfig(chunk_frames=4))
    frames, times = random_frames(8)
    session.add_frames(frames, times)
    assert isinstance(session.memory, FullCache)
    assert session.stats.compress_log == []
    assert FullCache().compress(session.cache, session.rope, None, 0) == CompressResult()
    assert np.isclose(session.stats.frames, 8)


@pytest.mark.parametrize("name", ["window", "sink", "snapkv", "hermes", "merge", "retrieval"])
def test_reindexing_policies_validate_their_options(name):
    from ppllava_hermes.memory.policy import ReindexingPolicy

    with pytest.raises(ValueError, match=rf"^{name}: reindex must be one of \('eager', 'lazy'\), got 'soon'$"):
        make_policy(name, reindex="soon")
    with pytest.raises(ValueError, match=rf"^{name}: headroom must be >= 0, got -1$"):
        make_policy(name, headroom=-1)
    policy = make_policy(name)
    assert isinstance(policy, ReindexingPolicy) or isinstance(policy.merge, ReindexingPolicy)
    with pytest.raises(ValueError, match=f"memory policy {name!r} re-rotates cached keys"):
        policy.check_model(None, 2)
