"""Rotary position arithmetic on cached keys: rotate a key to a position, or move it to another one.

Pure functions of tensors and a :class:`RopeSpec` (defined here: the memory needs it, and models/ builds it). They know nothing of
caches, policies, video or a model family beyond the rotation convention every supported family shares
(HF Llama / Qwen2 / Qwen2.5-VL / Qwen3-VL):

- a key of ``head_dim`` D is split in halves ``[x1, x2]``; frequency ``j`` (``0 <= j < D/2``) rotates
  the pair ``(x1[j], x2[j])`` by the angle ``position * inv_freq[j]``:
  ``rot(x) = x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)`` with ``rotate_half([x1, x2]) = [-x2, x1]``,
  and the model multiplies ``cos`` and ``sin`` by ``attention_scaling``;
- M-RoPE (Qwen2.5-VL) takes frequency ``j``'s position from one axis: the first ``mrope_section[0]``
  frequencies from t, the next ``mrope_section[1]`` from h, the rest from w (the layout of
  ``Qwen2_5_VLRotaryEmbedding.recomposition_frequencies``);
- interleaved M-RoPE (Qwen3-VL, ``mrope_interleaved``): the axes take turns, frequency ``j`` follows
  ``j % 3`` (t, h, w) while ``j < 3 * mrope_section[1]`` (h) / ``j < 3 * mrope_section[2]`` (w), and t
  drives every frequency left over (the layout of ``Qwen3VLTextRotaryEmbedding.recomposition_frequencies``:
  with the real ``(24, 20, 20)`` of 64 frequencies, ``t h w t h w ... t h w t t t t``).

Rotations compose, ``rot(p + d) = rot(d) . rot(p)``, so a key already rotated at ``p`` moves to ``q`` by
the unscaled rotation of ``q - p``: no need to know the key before rotation. Angles are computed in
float64 from integer deltas, so moving a key is as exact as rotating it afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeSpec:
    """What a memory policy needs to re-rotate keys: inverse frequencies and, for M-RoPE, sections.

    Attributes:
        inv_freq: ``(head_dim/2,)`` float inverse frequencies of the model's rotary embedding.
        mrope_section: M-RoPE frequencies per axis (t, h, w), or None for 1-D RoPE.
        attention_scaling: factor the model applies to cos and sin.
        max_position_embeddings: the model's position limit.
        mrope_interleaved: the sections' frequencies are interleaved (Qwen3-VL) rather than contiguous
            (Qwen2-VL / Qwen2.5-VL); see :func:`frequency_axes`.
    """

    inv_freq: torch.Tensor
    mrope_section: tuple[int, ...] | None
    attention_scaling: float
    max_position_embeddings: int
    mrope_interleaved: bool = False


def frequency_axes(rope: RopeSpec) -> torch.Tensor:
    """``(head_dim/2,)`` long: which position axis (0 = t, 1 = h, 2 = w) drives each frequency.

    All zeros for 1-D RoPE.
    """
    half = rope.inv_freq.shape[0]
    if rope.mrope_section is None:
        return torch.zeros(half, dtype=torch.long)
    section = list(rope.mrope_section)
    if rope.mrope_interleaved:
        if len(section) != 3:
            raise ValueError(f"interleaved mrope_section must have 3 entries (t, h, w), got {tuple(section)}")
        # t everywhere, then h on 1, 4, 7, ... below 3*section[1] and w on 2, 5, 8, ... below 3*section[2]:
        # the same slices as the model's recomposition, clipped to head_dim/2 the same way.
        axes = torch.zeros(half, dtype=torch.long)
        for axis in (1, 2):
            axes[axis : 3 * section[axis] : 3] = axis
        return axes
    if sum(section) != half:
        raise ValueError(f"mrope_section {tuple(section)} must add up to head_dim/2 = {half}")
    # Section i uses axis i % 3, as in recomposition_frequencies.
    return torch.cat([torch.full((n,), i % 3, dtype=torch.long) for i, n in enumerate(section)])


def angles(positions: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
    """Rotation angles ``(N, head_dim/2)`` float64 for positions ``(pos_dims, N)`` (or ``(N,)``).

    1-D RoPE needs ``pos_dims == 1``; M-RoPE takes 3 (t, h, w) or 1 (text: the same value on every axis).
    """
    if positions.ndim == 1:
        positions = positions.unsqueeze(0)
    axes = frequency_axes(rope)
    if rope.mrope_section is None:
        if positions.shape[0] != 1:
            raise ValueError(f"1-D RoPE takes positions (1, N), got {tuple(positions.shape)}")
    elif positions.shape[0] not in (1, 3):
        raise ValueError(f"M-RoPE takes positions (3, N) or (1, N), got {tuple(positions.shape)}")
    if positions.shape[0] == 1:
        axes = torch.zeros_like(axes)
    per_freq = positions.to(torch.float64).cpu()[axes]  # (D/2, N): each frequency's own axis
    return (per_freq * rope.inv_freq.to(torch.float64).cpu()[:, None]).T


def _apply(x: torch.Tensor, theta: torch.Tensor, scale: float) -> torch.Tensor:
    """Rotate ``x (..., N, D)`` by ``theta (N, D/2)``; math in float32 at least, result in x's dtype."""
    work = torch.promote_types(x.dtype, torch.float32)
    cos = (torch.cos(theta) * scale).to(device=x.device, dtype=work)
    sin = (torch.sin(theta) * scale).to(device=x.device, dtype=work)
    cos = torch.cat([cos, cos], dim=-1)
    sin = torch.cat([sin, sin], dim=-1)
    xw = x.to(work)
    x1, x2 = xw.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xw * cos + rotated * sin).to(x.dtype)


def rotate(keys: torch.Tensor, positions: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
    """Keys before rotation ``(..., N, head_dim)`` -> keys as the model caches them at ``positions``.

    ``positions``: ``(pos_dims, N)`` long. Includes the model's ``attention_scaling``.
    """
    _check_dims(keys, rope)
    return _apply(keys, angles(positions, rope), rope.attention_scaling)


def rerotate(keys: torch.Tensor, old_positions: torch.Tensor, new_positions: torch.Tensor,
             rope: RopeSpec) -> torch.Tensor:
    """Move cached keys ``(..., N, head_dim)`` from ``old_positions`` to ``new_positions`` (both ``(pos_dims, N)``).

    Each frequency turns by its own axis' delta (for M-RoPE: t, h and w sections separately).
    Entries whose positions do not change come back bit-identical.
    """
    _check_dims(keys, rope)
    delta = new_positions.to(torch.long) - old_positions.to(torch.long)
    if old_positions.shape[-1] != keys.shape[-2] or new_positions.shape[-1] != keys.shape[-2]:
        raise ValueError(
            f"rerotate(): {keys.shape[-2]} keys but positions for {old_positions.shape[-1]} -> {new_positions.shape[-1]}"
        )
    if delta.ndim == 1:
        delta = delta.unsqueeze(0)
    moved = delta.ne(0).any(dim=0)
    if not bool(moved.any()):
        return keys
    if bool(moved.all()):
        return _apply(keys, angles(delta, rope), 1.0)
    # Only touch what moves: unmoved keys stay bit-identical (system prompt, kept prefixes).
    idx = moved.nonzero().squeeze(1)
    out = keys.clone()
    dev_idx = idx.to(keys.device)
    out[..., dev_idx, :] = _apply(keys.index_select(-2, dev_idx), angles(delta[:, idx], rope), 1.0)
    return out


def _check_dims(keys: torch.Tensor, rope: RopeSpec) -> None:
    if rope is None or rope.inv_freq is None:
        raise ValueError("a RoPE spec with inv_freq is required to rotate keys")
    if keys.shape[-1] != 2 * rope.inv_freq.shape[0]:
        raise ValueError(f"keys have head_dim {keys.shape[-1]}, RoPE has {2 * rope.inv_freq.shape[0]}")
