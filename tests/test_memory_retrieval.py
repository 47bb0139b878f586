"""The retrieval memory: a resident window, a host store of what it evicts, question-time retrieval.

Numbers checked: the resident budget over long random streams; the store holding exactly the evicted
entries (uids, committed positions, layer-0 keys and values, bytes); the answer cache equal to the full
cache when everything is retrieved (logits to 1e-5 in fp32); the stream's cache and the store
bit-identical after questions; a planted old frame retrieved by a question aligned with it.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from ppllava_hermes.memory import FullCache, MemoryCache, Retrieval, TokenKind, make_policy
from ppllava_hermes.memory.rope import rerotate
from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import VLMAdapter
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession

from .helpers import FAMILIES, random_frames
from .memory_helpers import SYSTEM_PROMPT, adapter, check_invariants, system_state

FAMILY_NAMES = ["qwen2_5_vl", "llava_onevision"]


@cache
def one_layer_adapter(family: str) -> VLMAdapter:
    """A one-layer tiny model: its keys and values depend only on each token and its position, not on
    what else was in the cache when it was prefilled, so a windowed stream holds the full cache's KV."""
    model, tok = FAMILIES[family](max_position_embeddings=1 << 21, num_layers=1)
    return adapter_for_model(model, tok, system_prompt=SYSTEM_PROMPT)


def stream(ad: VLMAdapter, policy, sizes: list[int], seed: int = 0, chunk_frames: int = 4,
           check_budget: int | None = None) -> StreamingSession:
    session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=chunk_frames))
    frames, times = random_frames(sum(sizes), seed=seed)
    start, system = 0, None
    for size in sizes:
        session.add_frames(frames[start : start + size], times[start : start + size])
        start += size
        if check_budget is not None and session.started:
            system = system or system_state(session.cache)
            check_invariants(session.cache, limit=session.cache.count(TokenKind.SYSTEM) + check_budget,
                             system=system, max_position=ad.rope_spec().max_position_embeddings)
            check_partition(session)
    return session


def check_partition(session: StreamingSession) -> None:
    """Resident and stored entries are disjoint and together every entry the stream committed."""
    policy = session.memory
    resident = session.cache.layers[0].uids
    stored = torch.cat([b.uids for b in policy.store]) if policy.store else torch.zeros(0, dtype=torch.long)
    together = torch.sort(torch.cat([resident, stored])).values
    assert torch.equal(together, torch.arange(int(resident.max()) + 1))
    assert bool((stored[1:] > stored[:-1]).all()), "store out of stream order"
    for layer in session.cache.layers:
        assert torch.equal(layer.uids, resident)  # every layer holds the same entries


def store_state(policy: Retrieval) -> list[list[torch.Tensor]]:
    return [[*b.keys, *b.values, *b.summaries, *b.summary_values, b.positions, b.committed, b.frame_ids, b.kinds, b.counts,
             b.segments, b.uids] for b in policy.store]


# ---- ingest: the resident window and the host store ---------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_resident_budget_holds_and_the_store_is_what_was_evicted(family):
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 7, size=14).tolist()
    budget = 26
    ad = adapter(family)
    policy = make_policy("retrieval", budget=budget, headroom=64)
    session = stream(ad, policy, sizes, seed=3, chunk_frames=3, check_budget=budget)
    assert len(session.stats.compress_log) > 5
    # Counts: what the compressions evicted is what the store holds.
    assert policy.stored_tokens == sum(r.evicted for r in session.stats.compress_log) > 0
    assert all(int(b.kinds.ne(int(TokenKind.VISUAL)).sum()) == 0 for b in policy.store)
    assert all(bool((b.frame_ids == b.frame_id).all()) for b in policy.store)
    # Committed positions: the full cache's positions of the same entries, shifted by one delta per segment
    # (a segment is committed whole; later ones start where the re-indexed stream had got to).
    full = stream(ad, FullCache(), sizes, seed=3, chunk_frames=3)
    full0 = full.cache.layers[0]
    shifts: dict[int, set[int]] = {}
    for b in policy.store:
        assert torch.equal(b.frame_ids, full0.frame_ids[b.uids])
        assert torch.equal(b.segments, full0.segments[b.uids])
        for seg, delta in zip(b.segments.tolist(), (full0.positions[:, b.uids] - b.committed).T.tolist(), strict=True):
            assert len(set(delta)) == 1  # the same on every axis
            shifts.setdefault(seg, set()).add(delta[0])
    assert all(len(d) == 1 for d in shifts.values()) and max(max(d) for d in shifts.values()) > 0
    # Bytes: host + resident = the full cache's keys and values.
    layer = full0
    per_entry = 2 * layer.keys.shape[0] * layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.element_size()
    assert policy.host_bytes == policy.stored_tokens * ad.num_layers * per_entry
    assert policy.host_bytes + session.cache.kv_bytes() == full.cache.kv_bytes()
    assert policy.summary_bytes == len(policy.store) * ad.num_layers * per_entry // layer.keys.element_size() * 4
    assert all(t.device.type == "cpu" for b in policy.store for t in (*b.keys, *b.values))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_store_holds_the_evicted_keys_and_values(family):
    """On the one-layer model a windowed stream's KV equals the full cache's: the stored keys are the full
    cache's keys moved to the positions they had when evicted, the values the same bit for bit."""
    ad = one_layer_adapter(family)
    policy = make_policy("retrieval", budget=24, headroom=64)
    session = stream(ad, policy, [4] * 5, seed=2)
    full = stream(ad, FullCache(), [4] * 5, seed=2).cache.layers[0]
    assert len(session.stats.compress_log) >= 2  # keys re-indexed before some of them were evicted
    moved = False
    for b in policy.store:
        want = rerotate(full.keys[..., b.uids, :], full.positions[:, b.uids], b.positions, ad.rope_spec())
        torch.testing.assert_close(b.keys[0], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.values[0], full.values[..., b.uids, :], atol=1e-6, rtol=0)
        moved |= not torch.equal(b.positions, b.committed)
    assert moved, "some stored block must have been re-indexed before its eviction"


# ---- question time ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("name", ["retrieval", "retrieval-tokens"])
def test_retrieving_everything_answers_like_the_full_cache(family, name):
    """Many compressions with eager re-indexing, then every block retrieved: the re-derived layout and the
    re-rotated keys give the full cache's question logits and answer."""
    ad = one_layer_adapter(family)
    frames, times = random_frames(16, seed=3)
    got = {}
    for label, policy in [("full", FullCache()),
                          ("retrieval", make_policy(name, budget=24, retrieve_budget=10**6, headroom=64))]:
        session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=4))
        session.add_frames(frames, times)
        got[label] = session.ask("What happens?", GenerationConfig(max_new_tokens=4), return_logits=True)
    policy = session.memory
    assert policy.last_question.tokens_retrieved == policy.stored_tokens > 0
    assert len(session.stats.compress_log) >= 2
    torch.testing.assert_close(got["retrieval"].question_logits, got["full"].question_logits, atol=1e-5, rtol=0)
    assert got["retrieval"].token_ids == got["full"].token_ids
    assert got["retrieval"].kv_bytes == got["full"].kv_bytes
    assert got["retrieval"].cache_tokens == got["full"].cache_tokens


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_retrieving_everything_after_a_last_eviction_answers_like_the_full_cache(family):
    """The four-layer model: the only eviction follows the last chunk (so every entry was prefilled with the
    whole past, as in the full cache) and cuts the last chunk's segment in two."""
    ad = adapter(family, 1 << 21)
    frames, times = random_frames(28, seed=4)
    probe = StreamingSession(ad, config=StreamConfig(chunk_frames=12))
    probe.add_frames(frames[:12], times[:12])
    first_chunk = probe.cache.count(TokenKind.VISUAL)
    got = {}
    for label, policy in [("full", FullCache()), ("retrieval", make_policy(
            "retrieval", budget=first_chunk, retrieve_budget=10**6, headroom=64))]:
        session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=16))
        session.add_frames(frames[:12], times[:12])  # one chunk, exactly the budget
        session.add_frames(frames[12:], times[12:])  # one chunk larger than the budget
        got[label] = session.ask("What happens?", GenerationConfig(max_new_tokens=4), return_logits=True)
    assert len(session.stats.compress_log) == 1 and session.memory.stored_tokens > first_chunk
    segments = {int(s) for b in session.memory.store for s in b.segments}
    assert segments & {int(s) for s in session.cache.layers[0].segments}, "a segment split by the eviction"
    torch.testing.assert_close(got["retrieval"].question_logits, got["full"].question_logits, atol=1e-5, rtol=0)
    assert got["retrieval"].token_ids == got["full"].token_ids


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_questions_leave_the_stream_cache_and_the_store_bit_identical(family):
    budget = 24
    policy = make_policy("retrieval", budget=budget, headroom=64)
    session = stream(adapter(family), policy, [4] * 6)
    before, position, stored = session.cache.state(), session.next_position, store_state(policy)
    resident_bytes = session.cache.kv_bytes()
    answer = session.ask("What was there at the start?", GenerationConfig(max_new_tokens=4))
    session.ask("And?", GenerationConfig(max_new_tokens=3, do_sample=True, seed=1, top_p=0.9))
    assert session.next_position == position
    for b, a in zip(before, session.cache.state(), strict=True):
        assert b.keys() == a.keys()
        for key in b:
            assert torch.equal(b[key], a[key]), key
    for b, a in zip(stored, store_state(policy), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(b, a, strict=True))
    assert len(store_state(policy)) == len(stored)
    # The answer saw the resident window plus at most retrieve_budget (= budget) retrieved entries.
    report = policy.last_question
    assert report.blocks_scored == len(policy.store) and report.scores.shape == (len(policy.store),)
    assert 0 < report.tokens_retrieved <= budget
    system = session.cache.count(TokenKind.SYSTEM)
    assert answer.cache_tokens == session.cache.physical_length() + report.tokens_retrieved
    assert answer.cache_tokens <= system + 2 * budget
    assert answer.kv_bytes > resident_bytes and report.host_bytes == policy.host_bytes
    assert session.stats.peak_kv_bytes >= answer.kv_bytes


def test_retrieve_budget_zero_is_the_window():
    frames, times = random_frames(24, seed=1)
    answers = []
    for policy in [make_policy("window", budget=24, headroom=64),
                   make_policy("retrieval", budget=24, retrieve_budget=0, headroom=64)]:
        session = StreamingSession(adapter("llava_onevision"), memory=policy, config=StreamConfig(chunk_frames=4))
        session.add_frames(frames, times)
        answers.append(session.ask("Which?", GenerationConfig(max_new_tokens=3), return_logits=True))
    assert torch.equal(answers[0].question_logits, answers[1].question_logits)
    assert policy.stored_tokens > 0 and policy.last_question.tokens_retrieved == 0


# ---- a constructed case: the question's attention points at one old frame -----------------------
def aligned_probe(queries: list[torch.Tensor]):
    """A probe with fixed per-layer queries ``(heads, head_dim)``: softmax(k . q) over the cache, mean over
    heads (rotation ignored: the keys are compared as they sit in the cache)."""
    calls = []

    def probe(cache: MemoryCache, start: int) -> list[torch.Tensor]:
        calls.append(cache.physical_length())
        out = []
        for layer, q in zip(cache.layers, queries, strict=True):
            logits = torch.einsum("hnd,hd->hn", layer.keys[0].float(), q)
            out.append(torch.softmax(logits, dim=-1).mean(0))
        return out

    return probe, calls


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("probe_batch", [1, 1024])
def test_a_question_aligned_with_an_old_frame_retrieves_it(family, probe_batch):
    ad = adapter(family)
    rope = ad.rope_spec()
    policy = make_policy("retrieval", budget=24, headroom=64, probe_batch=probe_batch)
    session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=4))
    frames, times = random_frames(24, seed=6)
    session.add_frames(frames[:4], times[:4])
    # Plant: the entries of the second frame group of the first chunk get keys that, moved to the position
    # the scoring cache gives every summary (right after the system prompt), equal 4 q.
    layer0 = session.cache.layers[0]
    target_fid = int(layer0.frame_ids[layer0.kinds == int(TokenKind.VISUAL)].unique()[1])
    planted = (layer0.frame_ids == target_fid).nonzero().squeeze(1)
    n_sys = session.cache.count(TokenKind.SYSTEM)
    gen = torch.Generator().manual_seed(0)
    kv_heads, head_dim = layer0.keys.shape[1], layer0.keys.shape[3]
    queries = [torch.nn.functional.normalize(torch.randn(kv_heads, head_dim, generator=gen), dim=-1) * 3
               for _ in session.cache.layers]
    at = torch.full((session.cache.pos_dims, planted.numel()), n_sys)
    for layer, q in zip(session.cache.layers, queries, strict=True):
        aligned = (4 * q)[None, :, None, :].expand(1, kv_heads, planted.numel(), head_dim)
        layer.keys[..., planted, :] = rerotate(aligned.to(layer.keys.dtype), at, layer.positions[:, planted], rope)
    session.add_frames(frames[4:], times[4:])
    assert target_fid in [b.frame_id for b in policy.store]
    target = [b.frame_id for b in policy.store].index(target_fid)
    block = len(policy.store[target])
    policy.retrieve_budget = block  # room for one block
    probe, calls = aligned_probe(queries)
    built = policy.question_cache(session.cache, rope, probe, session.next_position)
    report = policy.last_question
    assert int(report.scores.argmax()) == target
    assert report.frames_retrieved == [target_fid] and report.tokens_retrieved == block
    # Bounded scoring: one probe per batch of summaries, each over system + batch + resident entries.
    resident = session.cache.physical_length()
    assert len(calls) == -(-len(policy.store) // probe_batch)
    assert max(calls) <= resident + min(probe_batch, len(policy.store))
    answer, start = built
    a0 = answer.layers[0]
    assert torch.equal(a0.uids, torch.sort(torch.cat([policy.store[target].uids, layer0.uids])).values)
    assert len(answer.layers[0]) == resident + block and start == int(a0.positions.max()) + 1
    assert torch.equal(a0.positions[:, :n_sys], layer0.positions[:, :n_sys])  # system prompt never moves


# ---- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, r"^retrieval: budget must be >= 1"),
    ({"frames": 0}, r"^retrieval: frames must be >= 1"),
    ({"retrieve_budget": -1}, r"^retrieval: retrieve_budget must be >= 0, got -1$"),
    ({"probe_batch": 0}, r"^retrieval: probe_batch must be >= 1, got 0$"),
])
def test_bad_retrieval_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_policy("retrieval", **kwargs)


def test_answer_cache_positions_must_fit():
    policy = make_policy("retrieval", budget=60, retrieve_budget=120, headroom=64)
    session = StreamingSession(adapter("llava_onevision", 256), memory=policy)
    frames, times = random_frames(2)
    with pytest.raises(ValueError, match=r"retrieval: .* retrieve_budget \(120\) .* do not fit under the model's 256"):
        session.add_frames(frames, times)


def test_defaults_are_the_simplestream_window_plus_as_much_again():
    policy = make_policy("retrieval")
    assert isinstance(policy, Retrieval) and policy.budget is None and policy.frames == 4
    assert policy.retrieve_budget is None and policy.reindex == "eager"
    session = stream(adapter("qwen2_5_vl"), policy, [4] * 6)
    resident = session.cache.count(TokenKind.VISUAL)
    session.ask("What?", GenerationConfig(max_new_tokens=2))
    assert 0 < policy.last_question.tokens_retrieved <= resident
    assert len(session.frame_log) == 24 and len({int(f) for f in session.cache.layers[0].frame_ids if f >= 0}) == 2


# ---- retrieval-tokens: a block ranked by its best entry -------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("probe_batch", [1, 40, 1024])
def test_one_aligned_entry_ranks_its_frame_first_with_token_scoring(family, probe_batch):
    """One entry of an old frame is aligned with the question, the rest of that frame points away, so the
    frame's mean key (the summary) points away: ``retrieval`` ranks the frame last, ``retrieval-tokens``
    first; its scoring caches stay within ``probe_batch`` entries (or one block) beside the resident ones."""
    ad = adapter(family)
    rope = ad.rope_spec()
    frames, times = random_frames(24, seed=7)
    gen = torch.Generator().manual_seed(1)
    ranks = {}
    for name in ("retrieval", "retrieval-tokens"):
        policy = make_policy(name, budget=24, headroom=64, probe_batch=probe_batch)
        session = StreamingSession(ad, memory=policy, config=StreamConfig(chunk_frames=4))
        session.add_frames(frames[:4], times[:4])
        layer0 = session.cache.layers[0]
        target_fid = int(layer0.frame_ids[layer0.kinds == int(TokenKind.VISUAL)].unique()[1])
        planted = (layer0.frame_ids == target_fid).nonzero().squeeze(1)
        n_sys = session.cache.count(TokenKind.SYSTEM)
        kv_heads, head_dim = layer0.keys.shape[1], layer0.keys.shape[3]
        if name == "retrieval":
            queries = [torch.nn.functional.normalize(torch.randn(kv_heads, head_dim, generator=gen), dim=-1) * 3
                       for _ in session.cache.layers]
        at = torch.full((session.cache.pos_dims, planted.numel()), n_sys)
        for layer, q in zip(session.cache.layers, queries, strict=True):
            scale = torch.full((planted.numel(),), -2.0)
            scale[0] = 6.0  # one strongly aligned entry; the frame's mean points away from q
            aligned = scale[None, None, :, None] * q[None, :, None, :]
            layer.keys[..., planted, :] = rerotate(aligned.to(layer.keys.dtype), at, layer.positions[:, planted], rope)
        session.add_frames(frames[4:], times[4:])
        fids = [b.frame_id for b in policy.store]
        target = fids.index(target_fid)
        probe, calls = aligned_probe(queries)
        policy.question_cache(session.cache, rope, probe, session.next_position)
        scores = policy.last_question.scores
        ranks[name] = int((scores > scores[target]).sum())
        largest = max(len(b) for b in policy.store)
        assert max(calls) <= session.cache.physical_length() + max(
            probe_batch if name == "retrieval-tokens" else min(probe_batch, len(policy.store)), largest)
        if name == "retrieval-tokens":
            assert target_fid in policy.last_question.frames_retrieved
            assert sum(calls) - len(calls) * session.cache.physical_length() == policy.stored_tokens
    assert ranks["retrieval-tokens"] == 0
    assert ranks["retrieval"] > 0
