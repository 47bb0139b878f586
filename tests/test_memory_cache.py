"""MemoryCache under the inherited transformers Cache API: crop() and reset() keep the per-entry metadata in
step with keys and values; generate() and forwards without commit() are refused with a clear error."""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from ppllava_hermes.memory import MemoryCache, TokenKind, TokenMeta

LAYERS, HEADS, DIM = 2, 2, 4


def _meta(start: int, n: int, kind: TokenKind = TokenKind.VISUAL, pos_dims: int = 1) -> TokenMeta:
    pos = torch.arange(start, start + n).repeat(pos_dims, 1)
    return TokenMeta(pos, torch.full((n,), start, dtype=torch.long), torch.full((n,), int(kind), dtype=torch.long))


def _append(cache: MemoryCache, start: int, n: int, *, commit: bool = True) -> None:
    """What a model forward does (one update per layer), then the caller's commit."""
    for i in range(cache.num_layers):
        k = torch.randn(1, HEADS, n, DIM)
        cache.update(k, k + 1, i)
    if commit:
        cache.commit(_meta(start, n))


def _in_step(cache: MemoryCache) -> None:
    for layer in cache.layers:
        n = len(layer)
        assert layer.get_seq_length() == n
        assert layer.positions.shape[1] == n and layer.kinds.shape == layer.counts.shape == layer.uids.shape == (n,)
        assert layer.segments.shape == layer.frame_ids.shape == (n,)


def _filled() -> MemoryCache:
    cache = MemoryCache(LAYERS)
    _append(cache, 0, 3)
    _append(cache, 3, 4)
    return cache


def test_crop_drops_the_last_entries_with_their_metadata():
    cache = _filled()
    before = cache.state()
    cache.crop(-2)
    _in_step(cache)
    assert cache.physical_length() == 5
    for layer, old in zip(cache.state(), before, strict=True):
        for key, value in layer.items():
            expected = old[key][..., :5, :] if key in ("keys", "values") else old[key][..., :5]
            assert torch.equal(value, expected), key
    cache.crop(0)
    assert cache.physical_length() == 5
    cache.layers[0].crop(-1)  # a layer on its own stays in step too
    assert len(cache.layers[0]) == cache.layers[0].get_seq_length() == 4
    cache.layers[1].crop(-1)
    cache.crop(-10)  # more than held: empty, not negative
    _in_step(cache)
    assert cache.physical_length() == 0
    _append(cache, 0, 2)  # and usable again
    _in_step(cache)
    assert cache.layers[0].uids.tolist() == [0, 1]


def test_crop_with_a_positive_length_points_to_truncate():
    cache = _filled()
    with pytest.raises(ValueError, match=r"crop\(3\).*MemoryCache.truncate"):
        cache.crop(3)
    _in_step(cache)
    assert cache.physical_length() == 7


def test_reset_empties_keys_values_and_metadata():
    cache = _filled()
    cache.reset()
    _in_step(cache)
    assert cache.physical_length() == 0 and cache.get_seq_length() == 0 and cache.kv_bytes() == 0
    assert cache.max_position() == -1
    _append(cache, 0, 2)
    _in_step(cache)
    assert cache.layers[1].segments.tolist() == [0, 0] and cache.layers[1].uids.tolist() == [0, 1]


def test_a_forward_on_uncommitted_entries_is_refused():
    cache = _filled()
    _append(cache, 7, 2, commit=False)  # a forward whose tokens were never committed
    with pytest.raises(RuntimeError, match="never committed.*MemoryCache.commit"):
        _append(cache, 9, 1, commit=False)
    cache.truncate(7)  # what the streaming session does after a probe forward
    _append(cache, 7, 1)
    _in_step(cache)


def _tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _cache_argument(model) -> str:
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache``."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def test_generate_with_a_memory_cache_is_refused_before_it_writes_anything():
    model = _tiny_lm()
    ids = torch.tensor([[1, 5, 9, 3]])
    name = _cache_argument(model)
    reference = model.generate(ids, max_new_tokens=3, do_sample=False, **{name: DynamicCache()})
    assert reference.shape == (1, 7)  # the same call works with the default cache
    cache = MemoryCache(LAYERS)
    with pytest.raises((NotImplementedError, RuntimeError), match=r"generate\(\).*(StreamingSession.ask|DynamicCache)"):
        model.generate(ids, max_new_tokens=3, do_sample=False, **{name: cache})
    _in_step(cache)
    assert cache.get_seq_length() == 0, "refused before the first forward"


def test_a_manual_loop_with_commits_matches_generate_with_the_default_cache():
    """What to use instead of generate(): explicit positions and a commit after each forward."""
    model = _tiny_lm()
    ids = torch.tensor([[1, 5, 9, 3]])
    name = _cache_argument(model)
    reference = model.generate(ids, max_new_tokens=3, do_sample=False, **{name: DynamicCache()})[0, 4:].tolist()
    cache, out, step = MemoryCache(LAYERS), [], ids
    position = 0
    with torch.no_grad():
        for _ in range(3):
            n = step.shape[1]
            pos = torch.arange(position, position + n)
            logits = model(input_ids=step, position_ids=pos[None], use_cache=True, **{name: cache}).logits
            cache.commit(_meta(position, n, TokenKind.TEXT))
            position += n
            step = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(step))
    assert out == reference
    _in_step(cache)
    assert cache.layers[0].positions[0].tolist() == list(range(6))
