"""Prompt-guided 3-D pooling of a video's visual tokens (PPLLaVA, arXiv 2411.02327).

Based on PPLLaVA (Liu et al., 2024), section "prompt-guided pooling": each 3-D window of the token grid
is reduced to one token, the weighted sum of its tokens with weights ``softmax(w_window / tau)``,
where ``w`` is a per-token relevance to the prompt (see :mod:`ppllava_hermes.pooling.relevance`).

Layout: features are channels-last, ``(batch, T, H, W, dim)``, the order in which a VLM lays out its
visual tokens (flattening ``T, H, W`` gives the token sequence). A flat ``(batch, T*H*W, dim)`` input is
accepted with an explicit ``grid``.

This module knows nothing of CLIP, prompts, the LLM or its KV memory: features + relevance weights +
grid in, pooled features + grid out. With ``weights=None`` it is plain 3-D average pooling (the
no-query mode, used when no question is known yet).

:class:`UniformDrop` is the comparison baseline that pools nothing: one token kept per window, always at
the same place in it (the same output grid and token count as pooling with that kernel).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

Triple = tuple[int, int, int]

VIDEO_KERNEL: Triple = (2, 3, 3)  # (ref) 32x24x24 -> 16x8x8
IMAGE_KERNEL: Triple = (1, 3, 3)  # (ref) single images: no temporal pooling
PADDING_MODES = ("error", "drop", "replicate", "pad")
AXES = ("T", "H", "W")

CONFIG_NAME = "pooling_config.json"
WEIGHTS_NAME = "pooling.safetensors"


def _triple(value, name: str) -> Triple | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or any(v < 1 for v in value):
        raise ValueError(f"{name} must be three positive integers (t, h, w), got {value}")
    return value  # type: ignore[return-value]


@dataclass
class PoolingConfig:
    """Hyperparameters of :class:`PromptGuidedPooling`.

    Attributes:
        kernel: window ``(kt, kh, kw)``. Default (ref) ``(2, 3, 3)`` for video; use ``IMAGE_KERNEL``
            ``(1, 3, 3)`` (ref) for images. Leave ``None`` when ``target`` is given.
        stride: window step ``(st, sh, sw)``; ``None`` means stride = kernel (ref, non-overlapping).
            A stride larger than the kernel is rejected: it would skip tokens.
        target: output grid ``(T', H', W')``; kernel and stride are then derived from each input grid
            (see :meth:`resolve`). Exclusive with ``kernel`` / ``stride``.
        tau: softmax temperature inside a window, 0.01 (ref). Relevance weights are global-softmax
            probabilities, so a small tau is needed to make a window's most relevant token dominate.
        learn_tau: make tau a trainable parameter (initialised at ``tau``); off (ref).
        window_bias: a trainable logit bias per window position (``kt*kh*kw`` values, initialised at 0,
            so the pooling is unchanged until trained): a learned prior over where in a window the
            kept token sits, added to ``w / tau`` inside each window's softmax. Needs a fixed kernel
            (not ``target``). Off (ref).
        adapter_dim: ``> 0`` adds a residual bottleneck MLP on the pooled tokens,
            ``x + up(gelu(down(norm(x))))`` with ``up`` initialised at 0 (identity until trained), so
            fine-tuning can map pooled tokens back towards the statistics the LLM was trained on.
            Applied only where tokens are actually pooled (kernel (1, 1, 1) stays an exact identity).
            0 = off (ref).
        feature_dim: ``D`` of the features, required with ``adapter_dim``.
        padding: what to do when the kernel does not tile the grid exactly on some axis
            (``I < k`` or ``(I - k) % s != 0``):

            - ``"error"``: raise a ValueError naming the grid, kernel and stride (default: silent
              token loss is worse than a clear failure).
            - ``"drop"``: the usual pooling arithmetic, ``(I - k) // s + 1`` windows; trailing tokens
              that do not fill a window are ignored (still an error when ``I < k``).
            - ``"replicate"``: extend the end of the axis by repeating its last token (features and
              weights) until the windows cover it: ``ceil((I - k) / s) + 1`` windows.
            - ``"pad"``: same windows as ``"replicate"``, but the added positions get zero weight, so
              an edge window averages only its real tokens.
    """

    kernel: Triple | None = None
    stride: Triple | None = None
    target: Triple | None = None
    tau: float = 0.01
    learn_tau: bool = False
    padding: str = "error"
    window_bias: bool = False
    adapter_dim: int = 0
    feature_dim: int | None = None

    def __post_init__(self) -> None:
        self.kernel = _triple(self.kernel, "kernel")
        self.stride = _triple(self.stride, "stride")
        self.target = _triple(self.target, "target")
        if self.target is not None:
            if self.kernel is not None or self.stride is not None:
                raise ValueError(
                    f"give either kernel/stride or target, not both (kernel={self.kernel}, "
                    f"stride={self.stride}, target={self.target})"
                )
        else:
            if self.kernel is None:
                self.kernel = VIDEO_KERNEL
            if self.stride is None:
                self.stride = self.kernel
            if any(s > k for s, k in zip(self.stride, self.kernel, strict=True)):
                raise ValueError(
                    f"stride {self.stride} is larger than kernel {self.kernel} on some axis: "
                    "tokens between windows would be skipped"
                )
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {self.tau!r}")
        self.tau = float(self.tau)
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")
        if self.window_bias and self.target is not None:
            raise ValueError(
                "window_bias needs a fixed kernel: in target mode the window size changes with the input grid"
            )
        if not isinstance(self.adapter_dim, int) or self.adapter_dim < 0:
            raise ValueError(f"adapter_dim must be an integer >= 0, got {self.adapter_dim!r}")
        if self.adapter_dim and (self.feature_dim is None or self.feature_dim < 1):
            raise ValueError(
                f"adapter_dim={self.adapter_dim} needs feature_dim (the features' D), got {self.feature_dim!r}"
            )

    @property
    def has_trainable_parameters(self) -> bool:
        """Whether :class:`PromptGuidedPooling` built from this config has parameters."""
        return self.learn_tau or self.window_bias or self.adapter_dim > 0

    @classmethod
    def for_images(cls, **kwargs) -> PoolingConfig:
        """Config with the image kernel ``(1, 3, 3)`` (ref)."""
        return cls(kernel=IMAGE_KERNEL, **kwargs)

    def resolve(self, grid: Triple) -> tuple[Triple, Triple]:
        """Kernel and stride for an input grid ``(T, H, W)``.

        In target mode, per axis with input ``I`` and target ``O``: ``s = I // O`` and
        ``k = I - (O - 1) * s``, so exactly ``O`` windows cover the whole axis (``k == s`` when ``O``
        divides ``I``; otherwise neighbouring windows overlap by ``k - s`` tokens).
        """
        if self.target is None:
            return self.kernel, self.stride  # type: ignore[return-value]
        kernel, stride = [], []
        for axis, size, out in zip(AXES, grid, self.target, strict=True):
            if out > size:
                raise ValueError(
                    f"target grid {self.target} is larger than the input grid {tuple(grid)} on axis {axis}: "
                    "pooling cannot add tokens"
                )
            s = size // out
            kernel.append(size - (out - 1) * s)
            stride.append(s)
        return tuple(kernel), tuple(stride)  # type: ignore[return-value]

    def output_grid(self, grid: Triple) -> Triple:
        """The pooled grid ``(T', H', W')`` for an input grid, under the padding policy."""
        kernel, stride = self.resolve(grid)
        return tuple(_plan_axis(self.padding, grid, kernel, stride, i)[0] for i in range(3))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PoolingConfig:
        return cls(**data)


def _plan_axis(padding: str, grid: Triple, kernel: Triple, stride: Triple, axis: int) -> tuple[int, int]:
    """Windows along one axis and the axis length they span (> size: padded, < size: cropped)."""
    size, k, s = grid[axis], kernel[axis], stride[axis]
    fits = size >= k and (size - k) % s == 0
    if fits:
        return (size - k) // s + 1, size
    where = f"grid (T, H, W) = {tuple(grid)} with kernel {tuple(kernel)} and stride {tuple(stride)}"
    if padding == "error" or (padding == "drop" and size < k):
        reason = (
            f"axis {AXES[axis]} has {size} tokens, fewer than the kernel's {k}"
            if size < k
            else f"axis {AXES[axis]} leaves {(size - k) % s} trailing token(s) outside every window"
        )
        raise ValueError(
            f"the pooling kernel does not fit {where}: {reason}. Use a grid that fits, a target size, "
            "or PoolingConfig(padding='drop' | 'replicate' | 'pad')"
        )
    if padding == "drop":
        out = (size - k) // s + 1
    else:  # replicate / pad: enough windows to cover every token
        out = max(math.ceil((size - k) / s), 0) + 1
    return out, (out - 1) * s + k


@dataclass
class PooledOutput:
    """Result of :class:`PromptGuidedPooling`.

    Attributes:
        features: ``(batch, T', H', W', dim)`` pooled tokens.
        grid: ``(T', H', W')``.
        kernel, stride: the window geometry that was used (resolved from ``target`` if given): pooled
            token ``(t, h, w)`` covers input tokens ``[t*st, t*st+kt) x [h*sh, h*sh+kh) x [w*sw, w*sw+kw)``.
        window_weights: ``(batch, T', H', W', kt*kh*kw)`` the softmax weights inside each window, in
            ``(kt, kh, kw)`` row-major order; each row sums to 1.
        source_index: ``(batch, T', H', W')`` flat index into the input's ``T*H*W`` tokens of each
            window's highest-weight token (the window's first token on ties, e.g. with no query).
    """

    features: torch.Tensor
    grid: Triple
    kernel: Triple
    stride: Triple
    window_weights: torch.Tensor
    source_index: torch.Tensor

    @property
    def tokens(self) -> torch.Tensor:
        """``(batch, T'*H'*W', dim)``: the pooled tokens in sequence order."""
        return self.features.flatten(1, 3)


def _unfold3d(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Strided view ``(B, T', H', W', *rest, kt, kh, kw)`` of ``x`` ``(B, T, H, W, *rest)``; no copy."""
    for dim in range(3):
        x = x.unfold(1 + dim, kernel[dim], stride[dim])
    return x


def _fit_axis(x: torch.Tensor, axis: int, length: int, fill: float | None) -> torch.Tensor:
    """Crop or extend dim ``1 + axis`` of ``x`` to ``length``: replicate the last entry or use ``fill``."""
    size = x.shape[1 + axis]
    if length <= size:
        return x.narrow(1 + axis, 0, length)
    if fill is None:
        index = torch.arange(length, device=x.device).clamp_(max=size - 1)
        return x.index_select(1 + axis, index)
    pad_shape = list(x.shape)
    pad_shape[1 + axis] = length - size
    return torch.cat([x, x.new_full(pad_shape, fill)], dim=1 + axis)


class PooledTokenAdapter(nn.Module):
    """Residual bottleneck MLP ``x + up(gelu(down(norm(x))))`` on pooled tokens ``(..., D)``.

    ``up`` starts at zero, so the adapter is an exact identity until trained.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.up.weight.dtype
        # computed in the adapter's dtype (fp32 parameters next to a bf16 VLM), added in the features'
        return x + self.up(F.gelu(self.down(self.norm(x.to(dtype))))).to(x.dtype)


class PromptGuidedPooling(nn.Module):
    """Weighted 3-D pooling: ``out = sum_window softmax(w_window / tau) * x_window``.

    Example (ref): 32 frames x 24x24 tokens = 18,432 tokens, kernel (2, 3, 3) -> 16 x 8 x 8 = 1,024.
    """

    def __init__(self, config: PoolingConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else PoolingConfig()
        if self.config.learn_tau:
            # log-parametrised so that tau stays positive under gradient steps
            self.log_tau = nn.Parameter(torch.tensor(math.log(self.config.tau)))
        else:
            self.log_tau = None
        kernel = self.config.kernel
        self.window_bias = (
            nn.Parameter(torch.zeros(kernel[0] * kernel[1] * kernel[2])) if self.config.window_bias else None
        )
        self.adapter = (
            PooledTokenAdapter(self.config.feature_dim, self.config.adapter_dim)  # type: ignore[arg-type]
            if self.config.adapter_dim
            else None
        )

    @property
    def tau(self) -> torch.Tensor | float:
        return self.log_tau.exp() if self.log_tau is not None else self.config.tau

    def forward(
        self,
        features: torch.Tensor,
        weights: torch.Tensor | None = None,
        grid: Triple | None = None,
    ) -> PooledOutput:
        """Pool ``features`` window by window.

        Args:
            features: ``(batch, T, H, W, dim)``, or ``(batch, T*H*W, dim)`` with ``grid``.
            weights: ``(batch, T, H, W)`` (or ``(batch, T*H*W)``) relevance of each token to the prompt,
                e.g. from :class:`~ppllava_hermes.pooling.relevance.RelevanceScorer`; ``None``: plain
                average pooling (no-query mode).
            grid: ``(T, H, W)``; required for flat features, checked against 5-D ones.

        Returns:
            :class:`PooledOutput` with ``features`` ``(batch, T', H', W', dim)``, ``T' = (T - kt) // st + 1``
            (and likewise for H, W) when the kernel fits. Kernel = stride = (1, 1, 1) returns the input
            tensor itself (as a 5-D view for flat input), bit for bit.
        """
        x = self._as_grid(features, grid)
        batch, t, h, w, _ = x.shape
        in_grid = (t, h, w)
        kernel, stride = self.config.resolve(in_grid)
        if weights is not None:
            weights = self._check_weights(weights, batch, in_grid)

        if kernel == (1, 1, 1) and stride == (1, 1, 1):
            # exact identity: hand the input back, no arithmetic and no copy
            index = torch.arange(t * h * w, device=x.device).view(1, t, h, w).expand(batch, -1, -1, -1)
            ones = x.new_ones((batch, t, h, w, 1), dtype=torch.float32)
            return PooledOutput(x, in_grid, kernel, stride, ones, index)

        logits = (
            torch.zeros((batch, t, h, w), device=x.device, dtype=torch.float32)
            if weights is None
            else weights.float() / self.tau
        )
        index = torch.arange(t * h * w, device=x.device).view(1, t, h, w)
        out_grid = []
        for axis in range(3):
            n_out, span = _plan_axis(self.config.padding, in_grid, kernel, stride, axis)
            out_grid.append(n_out)
            if span == in_grid[axis]:
                continue
            masked = self.config.padding == "pad" and span > in_grid[axis]
            x = _fit_axis(x, axis, span, 0.0 if masked else None)
            logits = _fit_axis(logits, axis, span, float("-inf") if masked else None)
            index = _fit_axis(index, axis, span, None)

        # (B, T', H', W', K) window probabilities; K = kt*kh*kw in row-major window order
        window_logits = _unfold3d(logits, kernel, stride).flatten(-3)
        if self.window_bias is not None:
            window_logits = window_logits + self.window_bias
        probs = window_logits.softmax(dim=-1)
        windows = _unfold3d(x, kernel, stride)  # (B, T', H', W', D, kt, kh, kw) strided view
        # window dims kept unflattened: flattening the view would copy every window (2.5x slower)
        pooled = torch.einsum(
            "bthwdxyz,bthwxyz->bthwd", windows, probs.view(probs.shape[:4] + kernel).to(x.dtype)
        )
        if self.adapter is not None:
            pooled = self.adapter(pooled)

        flat_index = _unfold3d(index, kernel, stride).flatten(-3)  # (1, T', H', W', K)
        best = probs.argmax(dim=-1, keepdim=True)
        source = flat_index.expand(batch, *flat_index.shape[1:]).gather(-1, best).squeeze(-1)
        return PooledOutput(pooled, tuple(out_grid), kernel, stride, probs, source)  # type: ignore[arg-type]

    @staticmethod
    def _as_grid(features: torch.Tensor, grid: Triple | None) -> torch.Tensor:
        if features.ndim == 5:
            if grid is not None and tuple(grid) != tuple(features.shape[1:4]):
                raise ValueError(
                    f"grid {tuple(grid)} does not match features of shape {tuple(features.shape)}"
                )
            return features
        if features.ndim == 3:
            if grid is None:
                raise ValueError("flat features (batch, tokens, dim) need grid=(T, H, W)")
            t, h, w = grid
            if t * h * w != features.shape[1]:
                raise ValueError(
                    f"grid {tuple(grid)} has {t * h * w} tokens but features have {features.shape[1]}"
                )
            return features.view(features.shape[0], t, h, w, features.shape[2])
        raise ValueError(
            f"features must be (batch, T, H, W, dim) or (batch, tokens, dim), got shape {tuple(features.shape)}"
        )

    @staticmethod
    def _check_weights(weights: torch.Tensor, batch: int, grid: Triple) -> torch.Tensor:
        if weights.ndim == 2 and weights.shape == (batch, grid[0] * grid[1] * grid[2]):
            return weights.view(batch, *grid)
        if tuple(weights.shape) != (batch, *grid):
            raise ValueError(
                f"weights must be (batch, T, H, W) = {(batch, *grid)} to match the features, "
                f"got {tuple(weights.shape)}"
            )
        return weights

    def output_grid(self, grid: Triple) -> Triple:
        """``(T', H', W')`` that :meth:`forward` produces for an input grid."""
        return self.config.output_grid(grid)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``pooling_config.json`` and ``pooling.safetensors`` (trainable state, may be empty)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PromptGuidedPooling:
        """Rebuild a module written by :meth:`save_pretrained`."""
        directory = Path(directory)
        config = PoolingConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
        module = cls(config)
        module.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
        return module


def average_pool(
    features: torch.Tensor, kernel: Triple = VIDEO_KERNEL, stride: Triple | None = None
) -> torch.Tensor:
    """Reference no-query pooling with ``F.avg_pool3d``: ``(B, T, H, W, D) -> (B, T', H', W', D)``."""
    pooled = F.avg_pool3d(features.permute(0, 4, 1, 2, 3), kernel, stride or kernel)
    return pooled.permute(0, 2, 3, 4, 1)


class UniformDrop(nn.Module):
    """Uniform token dropping, the no-pooling baseline at a pooling kernel's token count.

    Each ``(kt, kh, kw)`` window of the grid (non-overlapping, stride = kernel) keeps one token, always
    the one at the same ``offset`` inside the window, and drops the others: a strided subsample
    ``x[:, ot::kt, oh::kh, ow::kw]`` that keeps every ``kt*kh*kw``-th token, evenly spread in space and
    time. The output grid, token count and :class:`PooledOutput` fields are those of
    :class:`PromptGuidedPooling` with the same kernel, so it drops in wherever that module goes
    (``streaming.pooling_stage.pool_visual``, ``PoolingStage`` without a scorer). No arithmetic on the
    kept tokens: each is an input token, bit for bit. Not part of PPLLaVA; a comparison baseline (ours).

    Args:
        kernel: window ``(kt, kh, kw)``; it must tile the grid exactly (ValueError otherwise).
        offset: position ``(ot, oh, ow)`` of the kept token in its window, each in ``[0, k)``; default
            the window's centre ``k // 2`` per axis (the first token on an axis of 1).
    """

    def __init__(self, kernel: Triple, offset: Triple | None = None) -> None:
        super().__init__()
        self.kernel: Triple = _triple(kernel, "kernel")  # type: ignore[assignment]
        self.offset: Triple = tuple(k // 2 for k in self.kernel) if offset is None else tuple(offset)  # type: ignore[assignment]
        if len(self.offset) != 3 or any(not 0 <= o < k for o, k in zip(self.offset, self.kernel, strict=True)):
            raise ValueError(f"offset {self.offset} must lie inside the kernel {self.kernel} on every axis")

    def output_grid(self, grid: Triple) -> Triple:
        """``(T/kt, H/kh, W/kw)``; ValueError when the kernel does not tile ``grid``."""
        return tuple(_plan_axis("error", grid, self.kernel, self.kernel, i)[0] for i in range(3))  # type: ignore[return-value]

    def forward(
        self, features: torch.Tensor, weights: torch.Tensor | None = None, grid: Triple | None = None
    ) -> PooledOutput:
        """Keep one token per window of ``features`` ``(batch, T, H, W, dim)`` (or flat with ``grid``).

        ``weights`` must be None: dropping ignores the prompt, and silently ignoring relevance weights
        would hide a configuration error.
        """
        if weights is not None:
            raise ValueError("uniform dropping takes no relevance weights (use PromptGuidedPooling for those)")
        x = PromptGuidedPooling._as_grid(features, grid)
        batch, t, h, w, _ = x.shape
        out_grid = self.output_grid((t, h, w))
        (kt, kh, kw), (ot, oh, ow) = self.kernel, self.offset
        kept = x[:, ot::kt, oh::kh, ow::kw]
        index = torch.arange(t * h * w, device=x.device).view(1, t, h, w)[:, ot::kt, oh::kh, ow::kw]
        one_hot = x.new_zeros((batch, *out_grid, kt * kh * kw), dtype=torch.float32)
        one_hot[..., (ot * kh + oh) * kw + ow] = 1.0
        return PooledOutput(kept, out_grid, self.kernel, self.kernel, one_hot, index.expand(batch, -1, -1, -1))
