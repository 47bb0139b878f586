"""Proportional attention: an entry that stands for ``c`` tokens gets ``+log(c)`` on its attention logit.

A merged entry (``counts > 1``: token merging, HERMES anchors) is the mean of ``c`` keys; if they were
all alike, attention would have given their ``c`` copies ``c`` times the weight of one. Adding
``log(c)`` to the logit restores that mass (the proportional attention of ToMe, Bolya et al., arXiv
2210.09461, applied to a KV memory).

This is an attention function registered with transformers' ``AttentionInterface`` under
:data:`ATTENTION_NAME`; :func:`proportional_attention` switches a model's text config to it for the
duration of a ``with`` block and tells it where the counts are (a callable ``layer_idx -> (N,)``
counts of the cached entries). New tokens of the running forward count 1 and attend causally.
Without a counts source it is plain scaled-dot-product attention. Knows nothing of video or model
families beyond transformers' attention-function convention (``module.layer_idx``,
``module.num_key_value_groups``).

Shapes: query ``(B, H_q, L, D)``; key / value ``(B, H_kv, N + L, D)``; counts ``(N,)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F

ATTENTION_NAME = "ppllava_proportional"

CountSource = Callable[[int], torch.Tensor]
_SOURCE: ContextVar[CountSource | None] = ContextVar("ppllava_count_source", default=None)


def count_bias(counts: torch.Tensor, q_len: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(q_len, N + q_len)`` additive bias: ``log(counts)`` on the cached entries, causal on the new ones."""
    n = counts.shape[0]
    bias = torch.zeros(q_len, n + q_len, device=device, dtype=dtype)
    bias[:, :n] = counts.to(device=device, dtype=torch.float32).clamp_min(1e-30).log().to(dtype)
    bias[:, n:] = torch.full((q_len, q_len), float("-inf"), device=device, dtype=dtype).triu(1)
    return bias


def proportional_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """Attention with ``log(count)`` on cached entries; returns ``((B, L, H_q, D), None)`` like HF's sdpa."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    q_len, kv_len = query.shape[2], key.shape[2]
    source = _SOURCE.get()
    counts = source(module.layer_idx) if source is not None else None
    n_past = kv_len - q_len
    if counts is None or counts.shape[0] != n_past:
        counts = torch.ones(n_past)
    bias = count_bias(counts, q_len, query.device, query.dtype)
    if attention_mask is not None:  # a mask from the caller (padding) still applies
        mask = attention_mask[..., -kv_len:]
        bias = bias + (mask if mask.dtype != torch.bool else torch.zeros_like(mask, dtype=query.dtype)
                       .masked_fill(~mask, float("-inf")))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`ATTENTION_NAME` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, proportional_sdpa)


@contextlib.contextmanager
def proportional_attention(config, counts: CountSource) -> Iterator[None]:
    """Within the block, the model whose text ``config`` this is attends with ``+log(counts)``.

    ``counts(layer_idx)`` gives the ``(N,)`` counts of the entries cached in that layer (e.g.
    ``lambda i: session.cache.layers[i].counts``). Restores the previous attention implementation.
    """
    register()
    previous = config._attn_implementation
    token = _SOURCE.set(counts)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = previous
        _SOURCE.reset(token)
