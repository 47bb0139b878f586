"""Relevance of each visual token to a prompt, from a CLIP-family model (PPLLaVA, arXiv 2411.02327).

Based on PPLLaVA section "prompt-guided pooling", step 1: the prompt's CLIP text feature ``t`` and the
frames' CLIP patch features ``v_i`` (both L2-normalised, in CLIP's joint space) give a similarity
``s_i = <t, v_i>`` per patch. The map is resampled from the CLIP patch grid to the VLM's token grid
``(T, H, W)`` by area interpolation (after averaging the frames a VLM groups into one temporal token,
e.g. 2 for Qwen2.5-VL), then turned into weights by one softmax over all ``T*H*W`` tokens of a video:
``w = softmax(s * exp(logit_scale) [+ logit_bias])``.

Patch features per backend (the vision tower's final norm and projection applied to every patch token,
not only the pooled one, so patches land in the space of the text feature):

- open_clip ViT: last block output -> ``ln_post`` -> ``@ proj`` for every patch (CLS dropped).
  (timm-tower or attention-pool open_clip models are not supported.)
- HF ``CLIPModel``: ``last_hidden_state`` (which in transformers 5 is *not* normed; only the CLS
  ``pooler_output`` is) -> ``post_layernorm`` -> ``visual_projection`` for every patch (CLS dropped).
- HF ``SiglipModel``: ``last_hidden_state`` is already ``post_layernorm``-ed and SigLIP has no patch
  projection (its image embedding is the attention-pooling head's output); by default the normed
  patches are used as they are. ``RelevanceConfig(siglip_patch_head=True)`` instead runs each patch
  alone through the pooling head (with a single key the attention reduces to its value/output
  projections), which maps it into the image-embedding space.

Frames are resized to the CLIP input size as a whole (no centre crop: the CLIP patch grid must cover
the same field of view as the VLM's token grid) and normalised with the model's own mean/std.

This module knows nothing of the VLM, its projector or its memory: frames + prompt + target grid in,
weights ``(batch, T, H, W)`` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compat import require
from .text_extension import text_context_length, tokenize_prompts

Triple = tuple[int, int, int]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass
class RelevanceConfig:
    """Options of :class:`RelevanceScorer`.

    Attributes:
        frames_per_token: consecutive frames the VLM merges into one temporal token (1 (ref, LLaVA
            family); 2 for Qwen2.5-VL's temporal patch): their similarity maps are averaged, an odd
            tail padded by repeating the last frame as Qwen2.5-VL does.
        frame_batch_size: frames per CLIP forward pass (memory bound, not a hyperparameter).
        interpolation: resize mode of frames to the CLIP input size ("bicubic" as CLIP, or "bilinear").
        use_logit_bias: add the model's ``logit_bias`` (SigLIP) before the softmax; it shifts all
            logits equally, so it only matters for callers that read logits, kept for fidelity.
        siglip_patch_head: SigLIP only: map patches through the attention-pooling head (see module doc).
    """

    frames_per_token: int = 1
    frame_batch_size: int = 16
    interpolation: str = "bicubic"
    use_logit_bias: bool = True
    siglip_patch_head: bool = False

    def __post_init__(self) -> None:
        if self.frames_per_token < 1:
            raise ValueError(f"frames_per_token must be >= 1, got {self.frames_per_token}")
        if self.frame_batch_size < 1:
            raise ValueError(f"frame_batch_size must be >= 1, got {self.frame_batch_size}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")


@dataclass
class VideoPatchFeatures:
    """Cached CLIP patch features of a video, to re-score new prompts without re-encoding.

    Attributes:
        features: ``(videos, frames, h, w, embed_dim)`` L2-normalised patch features on the CLIP
            patch grid ``h x w``.
    """

    features: torch.Tensor

    @property
    def grid(self) -> Triple:
        """``(frames, h, w)``."""
        return tuple(self.features.shape[1:4])  # type: ignore[return-value]

    def to(self, *args, **kwargs) -> VideoPatchFeatures:
        return VideoPatchFeatures(self.features.to(*args, **kwargs))


class _Backend:
    """One CLIP family: how to embed text and patches. Outputs are projected, not yet normalised."""

    image_size: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def context_length(self) -> int:
        return text_context_length(self.model)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, E)
        raise NotImplementedError

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, h, w, E)
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.reshape(())

    def logit_bias(self) -> torch.Tensor | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.reshape(())


def _pair(value) -> tuple[int, int]:
    return (
        (int(value), int(value)) if isinstance(value, (int, np.integer)) else (int(value[0]), int(value[1]))
    )


class _OpenClipBackend(_Backend):
    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        VisionTransformer = require("open_clip.transformer", "the open_clip relevance backend").VisionTransformer

        visual = model.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.proj is None:
            raise TypeError(
                "open_clip backend needs a ViT vision tower with ln_post + proj and no attention pooling, "
                f"got {type(visual).__name__}"
            )
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.image_size = _pair(cfg.get("size", visual.image_size))
        self.mean = tuple(cfg.get("mean", getattr(visual, "image_mean", None) or OPENAI_MEAN))
        self.std = tuple(cfg.get("std", getattr(visual, "image_std", None) or OPENAI_STD))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)  # causal model, EOT pooling: padding is never attended

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        out = visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NCHW"
        )
        tokens = out["image_intermediates"][-1].permute(0, 2, 3, 1)  # (N, h, w, width) after ln_post
        return tokens @ visual.proj


class _HFClipBackend(_Backend):
    def __init__(self, model: nn.Module, processor: object | None) -> None:
        super().__init__(model)
        vcfg = model.config.vision_config
        self.image_size = _pair(vcfg.image_size)
        self.patch_size = _pair(vcfg.patch_size)
        self.mean, self.std = _processor_stats(processor, OPENAI_MEAN, OPENAI_STD)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output  # EOS token
        return self.model.text_projection(pooled)

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        hidden = vision(pixel_values=pixels).last_hidden_state[:, 1:]  # drop CLS
        feats = self.model.visual_projection(vision.post_layernorm(hidden))
        h, w = (s // p for s, p in zip(self.image_size, self.patch_size, strict=True))
        return feats.reshape(feats.shape[0], h, w, feats.shape[-1])


class _HFSiglipBackend(_HFClipBackend):
    def __init__(self, model: nn.Module, processor: object | None, patch_head: bool) -> None:
        super().__init__(model, processor)
        self.mean, self.std = _processor_stats(processor, SIGLIP_MEAN, SIGLIP_STD)
        self.patch_head = patch_head
        if patch_head and not getattr(model.vision_model, "use_head", False):
            raise ValueError("siglip_patch_head=True but this SigLIP vision model has no pooling head")

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # SigLIP was trained on max_length-padded text without a mask and pools the last position
        return self.model.text_model(input_ids=ids).pooler_output

    def encode_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        feats = vision(pixel_values=pixels).last_hidden_state  # already post_layernorm-ed, no CLS
        if self.patch_head:
            n, length, dim = feats.shape
            feats = vision.head(feats.reshape(n * length, 1, dim)).reshape(n, length, dim)
        h, w = (s // p for s, p in zip(self.image_size, self.patch_size, strict=True))
        return feats.reshape(feats.shape[0], h, w, feats.shape[-1])


def _processor_stats(processor: object | None, mean: Sequence[float], std: Sequence[float]):
    image_processor = getattr(processor, "image_processor", processor)
    return (
        tuple(getattr(image_processor, "image_mean", None) or mean),
        tuple(getattr(image_processor, "image_std", None) or std),
    )


def _make_backend(model: nn.Module, processor: object | None, config: RelevanceConfig) -> _Backend:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type == "clip":
        return _HFClipBackend(model, processor)
    if model_type == "siglip":
        return _HFSiglipBackend(model, processor, config.siglip_patch_head)
    if hasattr(model, "visual") and hasattr(model, "encode_text"):
        return _OpenClipBackend(model)
    raise TypeError(
        f"unsupported CLIP model {type(model).__name__} (model_type={model_type!r}): expected an open_clip "
        "CLIP/CustomTextCLIP with a ViT tower, or HF CLIPModel / SiglipModel"
    )


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompt given: pass a question string (or a list of them)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(
                f"prompt {i} is empty: prompt-guided pooling needs the question text; without a question "
                "call PromptGuidedPooling with weights=None (average pooling, the no-query mode)"
            )
    return prompts


def _from_numpy(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(f"numpy frames must be uint8 (..., H, W, 3), got {frames.dtype}")
        return torch.from_numpy(np.ascontiguousarray(frames))  # zero-copy
    return frames


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Frames as float ``(..., 3, H, W)`` in [0, 1].

    Accepts uint8 ``(..., H, W, 3)`` (numpy or torch, e.g. ``VideoClip.frames``) or floating-point
    torch ``(..., 3, H, W)`` already in [0, 1].
    """
    frames = _from_numpy(frames)
    if frames.dtype == torch.uint8:
        if frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be channels-last (..., H, W, 3), got {tuple(frames.shape)}")
        return frames.movedim(-1, -3).float() / 255.0
    if not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 or floating point, got {frames.dtype}")
    if frames.shape[-3] != 3:
        raise ValueError(
            f"float frames must be channels-first (..., 3, H, W) in [0, 1], got {tuple(frames.shape)}"
        )
    return frames


class RelevanceScorer(nn.Module):
    """Prompt-to-token relevance weights from a CLIP-family model.

    Args:
        model: open_clip ``CLIP`` / ``CustomTextCLIP`` (ViT tower) or HF ``CLIPModel`` / ``SiglipModel``.
        tokenizer: open_clip tokenizer, HF tokenizer or processor, or a callable
            ``list[str] -> list[list[int]]`` (see :func:`~.text_extension.tokenize_prompts`).
        processor: optional HF processor / image processor, only read for its ``image_mean`` /
            ``image_std`` (HF models keep them outside the model config; defaults: CLIP's for CLIP,
            0.5 for SigLIP).
        config: :class:`RelevanceConfig`.

    The vision tower is treated as frozen: :meth:`encode_video` runs without gradients. Text encoding
    follows the caller's grad mode, so extended text positions can be fine-tuned through :meth:`score`.
    Give it the question alone (ref: question-only text into CLIP), not the chat template or options.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: object,
        processor: object | None = None,
        config: RelevanceConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config if config is not None else RelevanceConfig()
        self._backend = _make_backend(model, processor, self.config)

    @property
    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    @property
    def context_length(self) -> int:
        """Text positions of the model now (grows after :func:`~.text_extension.extend_text_context`)."""
        return self._backend.context_length()

    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """``(batch, embed_dim)`` L2-normalised text features; raises ValueError on an empty prompt."""
        prompts = _check_prompts(prompts)
        ids, mask = tokenize_prompts(self.tokenizer, prompts, self.context_length)
        device = self._param.device
        return F.normalize(self._backend.encode_text(ids.to(device), mask.to(device)).float(), dim=-1)

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` normalised CLIP input from frames (see :func:`frames_to_tensor`)."""
        x = frames_to_tensor(frames)
        x = x.reshape(-1, *x.shape[-3:]).to(self._param.device, torch.float32)
        x = F.interpolate(
            x,
            size=self._backend.image_size,
            mode=self.config.interpolation,
            align_corners=False,
            antialias=True,
        ).clamp_(0.0, 1.0)  # bicubic overshoots
        mean = torch.tensor(self._backend.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self._backend.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray | torch.Tensor) -> VideoPatchFeatures:
        """Encode frames once; :meth:`score` can then take the result for any number of prompts.

        Args:
            frames: one video ``(T, H, W, 3)`` uint8 / ``(T, 3, H, W)`` float, or a batch of videos
                ``(videos, T, ...)``.

        Returns:
            :class:`VideoPatchFeatures` ``(videos, T, h, w, embed_dim)``, normalised.
        """
        frames = _from_numpy(frames)
        if frames.ndim not in (4, 5):
            raise ValueError(
                f"frames must be one video (T, ...) or a batch (videos, T, ...), got {tuple(frames.shape)}"
            )
        videos, t = (1, frames.shape[0]) if frames.ndim == 4 else frames.shape[:2]
        flat = frames.reshape(videos * t, *frames.shape[-3:])
        dtype = self._param.dtype
        chunks = []
        for start in range(0, flat.shape[0], self.config.frame_batch_size):
            # float conversion per chunk: a long uint8 video as float32 at once would be 4x its size
            pixels = self.preprocess(flat[start : start + self.config.frame_batch_size]).to(dtype)
            chunks.append(F.normalize(self._backend.encode_patches(pixels).float(), dim=-1))
        feats = torch.cat(chunks)
        return VideoPatchFeatures(feats.reshape(videos, t, *feats.shape[1:]))

    def similarity(
        self, prompts: str | Sequence[str], video: VideoPatchFeatures | np.ndarray | torch.Tensor
    ) -> torch.Tensor:
        """Cosine similarities ``(batch, T, h, w)`` on the CLIP patch grid.

        ``batch`` is the number of prompts and of videos after broadcasting one against many.
        """
        if not isinstance(video, VideoPatchFeatures):
            video = self.encode_video(video)
        text = self.encode_text(prompts)
        feats = video.features.to(text.device)
        if feats.shape[0] != text.shape[0] and 1 not in (feats.shape[0], text.shape[0]):
            raise ValueError(f"{text.shape[0]} prompts for {feats.shape[0]} videos: give one, or as many")
        if feats.shape[0] == text.shape[0]:
            return torch.einsum("bthwe,be->bthw", feats, text)
        return torch.einsum("vthwe,pe->vpthw", feats, text).flatten(0, 1)  # one side broadcast

    def score(
        self,
        prompts: str | Sequence[str],
        video: VideoPatchFeatures | np.ndarray | torch.Tensor,
        grid: Triple | None = None,
    ) -> torch.Tensor:
        """Relevance weights of every VLM token to the prompt.

        Args:
            prompts: one question, or a list (one per video, or many for one video).
            video: frames (encoded here) or cached :class:`VideoPatchFeatures` from :meth:`encode_video`.
            grid: the VLM token grid ``(T, H, W)`` to resample to; None keeps
                ``(ceil(frames / frames_per_token), h, w)`` of the CLIP patch grid.

        Returns:
            ``(batch, T, H, W)`` weights, each video's summing to 1 (softmax over its ``T*H*W`` tokens).
        """
        sim = self.similarity(prompts, video)
        sim = _group_frames(sim, self.config.frames_per_token)
        if grid is not None and tuple(grid) != tuple(sim.shape[1:]):
            sim = F.interpolate(sim.unsqueeze(1), size=tuple(grid), mode="area").squeeze(1)
        logits = sim * self._backend.logit_scale().float().exp()
        bias = self._backend.logit_bias()
        if bias is not None and self.config.use_logit_bias:
            logits = logits + bias.float()
        return logits.flatten(1).softmax(dim=-1).view_as(logits)

    forward = score


def _group_frames(sim: torch.Tensor, group: int) -> torch.Tensor:
    """Average each run of ``group`` frames: ``(B, T, h, w) -> (B, ceil(T / group), h, w)``."""
    if group == 1:
        return sim
    t = sim.shape[1]
    padded = -(-t // group) * group
    if padded != t:  # repeat the last frame, as Qwen2.5-VL pads an odd frame count
        sim = torch.cat([sim, sim[:, -1:].expand(-1, padded - t, -1, -1)], dim=1)
    return sim.view(sim.shape[0], padded // group, group, *sim.shape[2:]).mean(dim=2)
