"""Attention of probe tokens over a KV memory, without switching the model to eager attention.

A memory policy scores cached entries by the attention that a few probe tokens (a pseudo-query prompt,
or a question) give them, per layer, averaged over heads and the probe's tokens. Asking the model for its
attention weights (``output_attentions=True``) needs eager attention: on a GPU that means leaving sdpa /
flash attention for a slow, memory-hungry path, and every layer's full weight matrix is built whether a
policy reads it or not. Here instead (method ``"queries"``):

1. the probe tokens run through the decoder stack with the model's own attention implementation and no
   LM head (:meth:`LMAdapter.probe_forward`);
2. forward hooks on the layers a policy reads capture the query states there: the output of ``q_proj``
   (or of ``q_norm``, for families that normalise queries per head, Qwen3-VL), rotated with the
   ``position_embeddings`` (cos, sin) the model handed that attention module, so 1-D RoPE, M-RoPE and
   interleaved M-RoPE are whatever the model itself computed;
3. after the module has appended the probe's keys to the cache, the hook computes
   ``softmax(q k^T * scaling)`` against that layer's cached keys (GQA: query head ``h`` reads KV head
   ``h // (heads / kv_heads)``, as ``repeat_kv`` lays them out; causal among the probe tokens), in float32,
   and keeps the mean over heads and tokens of the weights on the entries that were there before;
4. the forward stops after the deepest layer any prompt needs (the later layers are not run), and the
   cache is cut back to its length.

Several prompts share one forward: they are laid end to end, all at their own positions, with a 4-D mask
under which each prompt sees the cache and itself only (causally), so each prompt's hidden states and
weights are those of a forward of its own (up to float rounding of longer matmuls). The mask needs an
attention implementation that takes one (eager or sdpa); under flash attention, prompts run one forward
each.

``"eager"`` is the reference: one forward per prompt inside :meth:`LMAdapter.eager_attention` with
``output_attentions=True``. ``"auto"`` takes ``"queries"`` where it was tested equal to eager (the attention
classes in :data:`PROVEN_ATTENTION`, no sliding-window layers) and ``"eager"`` elsewhere.

Shapes: probe embeddings ``(L, D)``; keys ``(1, kv_heads, N + L, head_dim)``; weights
``(1, heads, L, N + L)``; what comes back, per prompt and layer, ``(N,)`` float32 CPU or None.
Knows nothing of memory policies or video: a language model, a cache and text segments.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import torch

from ..memory.cache import TokenMeta

if TYPE_CHECKING:
    from ..memory.cache import MemoryCache
    from .base import LMAdapter, Segment

PROBE_METHODS = ("auto", "queries", "eager")

#: Attention classes on which ``"queries"`` is tested equal to the eager weights (tests/test_probe_attention.py):
#: SmolLM2 / Llama, LLaVA-OneVision's Qwen2, Qwen2.5-VL, Qwen3-VL (dense and MoE share the attention layout).
PROVEN_ATTENTION = frozenset({
    "LlamaAttention", "Qwen2Attention", "Qwen2_5_VLAttention", "Qwen3VLTextAttention", "Qwen3VLMoeTextAttention",
})

#: Attention implementations that take a custom 4-D mask (several prompts in one forward).
MASKABLE = ("eager", "sdpa")

#: Per probe prompt, per layer: ``(N,)`` float32 CPU attention on the cache's entries, or None (not asked).
ProbeScores = list[list[torch.Tensor | None]]


class _Done(Exception):
    """Raised by the deepest needed layer's hook: nothing after it is needed, so the forward stops there."""


def resolve_method(lm: LMAdapter, method: str = "auto") -> str:
    """``"queries"`` or ``"eager"``: what ``method`` means for this model (``ValueError`` on an unknown one,
    or on ``"queries"`` for a model whose attention modules do not have the layout the hooks read)."""
    if method not in PROBE_METHODS:
        raise ValueError(f"probe method must be one of {PROBE_METHODS}, got {method!r}")
    if method == "eager":
        return method
    modules = lm.attention_modules()
    shaped = all(hasattr(m, "q_proj") and hasattr(m, "head_dim") and hasattr(m, "scaling") for m in modules)
    sliding = "sliding_attention" in (getattr(lm.text_config, "layer_types", None) or ())
    if method == "queries":
        if not shaped:
            raise ValueError("probe method 'queries' needs attention modules with q_proj, head_dim and scaling")
        return method
    proven = all(type(m).__name__ in PROVEN_ATTENTION for m in modules)
    return "queries" if (shaped and proven and not sliding) else "eager"


@torch.no_grad()
def probe_attention(lm: LMAdapter, cache: MemoryCache, prompts: Sequence[Segment],
                    layers: Sequence[Collection[int] | None] | None = None, *, method: str = "auto") -> ProbeScores:
    """Attention of each text segment in ``prompts`` over ``cache``, which is then cut back to its length.

    Args:
        lm: the language model.
        cache: the memory; no metadata is committed and its keys / values end as they were.
        prompts: text segments at the positions they are probed at (usually all at the next position).
        layers: per prompt, the layers whose attention is wanted (None: every layer).
        method: ``"auto"``, ``"queries"`` or ``"eager"`` (module docstring).

    Returns:
        per prompt, per layer, ``(len(cache),)`` float32 CPU tensors: the weight each entry received,
        averaged over heads and the prompt's tokens; None for layers not asked for.
    """
    num_layers = lm.num_layers
    wanted = [set(range(num_layers)) if (layers is None or layers[p] is None) else {int(i) for i in layers[p]}
              for p in range(len(prompts))]
    out: ProbeScores = [[None] * num_layers for _ in prompts]
    if not prompts or not any(wanted):
        return out
    if resolve_method(lm, method) == "eager":
        for p, seg in enumerate(prompts):
            if wanted[p]:
                out[p] = _eager(lm, cache, seg, wanted[p])
        return out
    active = [p for p in range(len(prompts)) if wanted[p]]
    # All prompts in one forward under a block mask; implementations without custom masks: one forward each.
    groups = [active] if lm.text_config._attn_implementation in MASKABLE else [[p] for p in active]
    for group in groups:
        rows = _queries(lm, cache, [prompts[p] for p in group], [wanted[p] for p in group])
        for p, row in zip(group, rows, strict=True):
            out[p] = row
    return out


def _eager(lm: LMAdapter, cache: MemoryCache, seg: Segment, wanted: set[int]) -> list[torch.Tensor | None]:
    """The reference: the model's own attention weights, from one eager forward of ``seg``."""
    length = cache.physical_length()
    try:
        with lm.eager_attention():
            _, attentions = lm.forward(seg.embeds, seg.meta, cache, output_attentions=True, logits="none")
    finally:
        cache.truncate(length)
    # (1, heads, L_q, L_kv) per layer -> mean over heads and queries, past entries only.
    return [a[0, :, :, :length].float().mean(dim=(0, 1)).cpu() if i in wanted else None
            for i, a in enumerate(attentions)]


def _queries(lm: LMAdapter, cache: MemoryCache, prompts: Sequence[Segment],
             wanted: Sequence[set[int]]) -> ProbeScores:
    """One forward of ``prompts`` laid end to end (a block mask when there are several); weights from hooks."""
    length = cache.physical_length()
    spans, start = [], 0
    for seg in prompts:
        spans.append((start, start + len(seg)))
        start += len(seg)
    embeds = torch.cat([seg.embeds for seg in prompts]) if len(prompts) > 1 else prompts[0].embeds
    meta = prompts[0].meta if len(prompts) == 1 else TokenMeta(
        torch.cat([seg.meta.positions for seg in prompts], dim=1),
        torch.cat([seg.meta.frame_ids for seg in prompts]),
        torch.cat([seg.meta.kinds for seg in prompts]))
    allowed = _allowed(length, spans, lm.device)  # (L, N + L) bool
    mask = None
    if len(prompts) > 1:  # one prompt: the model's own causal mask is the same and keeps its fast path
        mask = torch.zeros(allowed.shape, dtype=lm.dtype, device=lm.device)
        mask = mask.masked_fill(~allowed, torch.finfo(lm.dtype).min)[None, None]
    need = set().union(*wanted)
    last = max(need)
    out: ProbeScores = [[None] * lm.num_layers for _ in prompts]
    queries: dict[int, torch.Tensor] = {}
    handles = []
    modules = lm.attention_modules()

    def keep_query(i: int):
        def hook(module: torch.nn.Module, args, output: torch.Tensor) -> None:
            queries[i] = output
        return hook

    def score(i: int):
        def hook(module: torch.nn.Module, args, kwargs, output) -> None:
            q = queries.pop(i)
            q = q.view(*q.shape[:2], -1, module.head_dim).transpose(1, 2)  # (1, heads, L, head_dim)
            cos, sin = kwargs["position_embeddings"]
            q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)  # the model's rotation, its dtype
            weights = attention_weights(q, cache.layers[i].keys, float(module.scaling), allowed)
            per_row = weights[0, :, :, :length].sum(dim=0)  # (L, N): summed over heads, once for all prompts
            for p, (a, b) in enumerate(spans):
                if i in wanted[p]:
                    out[p][i] = (per_row[a:b].sum(dim=0) / ((b - a) * weights.shape[1])).cpu()
            if i == last:
                raise _Done
        return hook

    try:
        for i in sorted(need):
            module = modules[i]
            source = module.q_norm if hasattr(module, "q_norm") else module.q_proj  # queries as attention sees them
            handles.append(source.register_forward_hook(keep_query(i)))
            handles.append(module.register_forward_hook(score(i), with_kwargs=True))
        try:
            lm.probe_forward(embeds, meta, cache, mask)
        except _Done:
            pass
    finally:
        for h in handles:
            h.remove()
        cache.truncate(length)
    if any(out[p][i] is None for p in range(len(prompts)) for i in wanted[p]):
        raise RuntimeError("probe: a hooked attention layer did not run (its module is not called as "
                           "self_attn(hidden_states=..., position_embeddings=...))")
    return out


def attention_weights(q: torch.Tensor, keys: torch.Tensor, scaling: float, allowed: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T * scaling)`` in float32, with grouped KV heads and a boolean mask.

    Args:
        q: ``(1, heads, L, head_dim)`` rotated queries.
        keys: ``(1, kv_heads, N + L, head_dim)`` the layer's cached keys, the probe's own last.
        scaling: the module's softmax scale (``head_dim ** -0.5``).
        allowed: ``(L, N + L)`` bool, True where a query may attend; its first ``N`` columns (the cache,
            which every probe token sees) are not read.

    Returns:
        ``(1, heads, L, N + L)`` float32 weights (rows sum to 1).
    """
    b, heads, n_q, dim = q.shape
    kv_heads = keys.shape[1]
    # Query head h reads KV head h // (heads / kv_heads) (repeat_kv's layout): the query rows of a KV head's
    # group stacked, one plain batched matmul per KV head, no repeated keys (and no broadcasting matmul).
    qg = q.float().reshape(b, kv_heads, (heads // kv_heads) * n_q, dim)
    logits = torch.matmul(qg, keys.float().transpose(-1, -2)).view(b, heads, n_q, -1)  # (1, heads, L, N + L)
    logits.mul_(scaling)  # after the product, as eager attention scales
    logits[..., -n_q:].masked_fill_(~allowed[:, -n_q:], float("-inf"))  # only the probe's own block is masked
    return torch.softmax(logits, dim=-1)


def _allowed(length: int, spans: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """``(L, N + L)`` bool: every probe token sees the ``N`` cached entries and, causally, its own prompt."""
    total = spans[-1][1]
    allowed = torch.zeros(total, length + total, dtype=torch.bool, device=device)
    allowed[:, :length] = True
    for a, b in spans:
        allowed[a:b, length + a : length + b] = torch.ones(b - a, b - a, dtype=torch.bool, device=device).tril()
    return allowed


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (the rotation convention of every supported family)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
