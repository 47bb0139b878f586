"""Shared fixtures for the memory tests: cached tiny adapters with a short system prompt, invariants."""

from __future__ import annotations

from functools import cache

import torch

from ppllava_hermes.memory import MemoryCache, TokenKind
from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import VLMAdapter

from .helpers import FAMILIES

SYSTEM_PROMPT = "Hi."  # 19 byte tokens with the chat template: small budgets stay legal


@cache
def adapter(family: str, max_position_embeddings: int = 32768) -> VLMAdapter:
    """A tiny random model of ``family`` (built once per configuration; sessions never modify it)."""
    model, tok = FAMILIES[family](max_position_embeddings=max_position_embeddings)
    return adapter_for_model(model, tok, system_prompt=SYSTEM_PROMPT)


def system_state(cache: MemoryCache) -> list[dict[str, torch.Tensor]]:
    """Keys, values and positions of the system-prompt entries of every layer."""
    out = []
    for layer in cache.layers:
        m = layer.kinds == int(TokenKind.SYSTEM)
        out.append({"keys": layer.keys[..., m, :].clone(), "values": layer.values[..., m, :].clone(),
                    "positions": layer.positions[:, m].clone()})
    return out


def check_invariants(cache: MemoryCache, *, limit: int | None, system: list[dict[str, torch.Tensor]],
                     max_position: int) -> None:
    """Budget, equal lengths, frame order, system prompt intact, positions under the model maximum."""
    lengths = {len(layer) for layer in cache.layers}
    assert len(lengths) == 1, f"layers differ in length: {lengths}"
    for i, layer in enumerate(cache.layers):
        assert layer.get_seq_length() == len(layer)
        if limit is not None:
            assert len(layer) <= limit, f"layer {i} holds {len(layer)} > {limit}"
        fids = layer.frame_ids[layer.kinds != int(TokenKind.SYSTEM)]
        assert bool((fids[1:] >= fids[:-1]).all()), f"layer {i}: frame order broken {fids.tolist()}"
        assert bool((layer.uids[1:] > layer.uids[:-1]).all()), f"layer {i}: entry order broken"
        assert int(layer.positions.max()) < max_position
        m = layer.kinds == int(TokenKind.SYSTEM)
        assert torch.equal(layer.keys[..., m, :], system[i]["keys"])
        assert torch.equal(layer.values[..., m, :], system[i]["values"])
        assert torch.equal(layer.positions[:, m], system[i]["positions"])
