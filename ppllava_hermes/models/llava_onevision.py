"""Adapter for LLaVA-OneVision (SigLIP tower, projector, 2x bilinear pooling, Qwen2 LM with 1-D RoPE).

A chunk of T frames becomes the model's own video layout: T x h x w tokens followed by one newline
token, with contiguous 1-D positions, then the text the chat format writes after a video (the
published format: a newline; part of the chunk, so a memory drops it with the chunk's frames). Knows
nothing of streaming, memory policies or pooling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..memory.cache import TokenKind, TokenMeta
from .base import Segment, VisualTokens, VLMAdapter
from .templates import LLAVA_ONEVISION_CHAT_TEMPLATE


class LlavaOnevisionAdapter(VLMAdapter):
    """Wraps ``LlavaOnevisionForConditionalGeneration``."""

    pos_dims = 1
    frames_per_group = 1
    family = "llava_onevision"
    video_text = "<video>"
    default_chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE

    def __init__(self, model, tokenizer, video_processor=None, **kwargs) -> None:
        if video_processor is None:
            video_processor = default_video_processor(model.config)
        super().__init__(model, tokenizer, video_processor, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | str = "auto", device: str | None = None,
                        attn_implementation: str | None = None, **kwargs) -> LlavaOnevisionAdapter:
        """Load a real checkpoint (local folder, or a hub name where the hub is reachable)."""
        from transformers import LlavaOnevisionForConditionalGeneration

        return cls._load(LlavaOnevisionForConditionalGeneration, path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                         **kwargs)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, timestamps: np.ndarray, first_frame_id: int) -> VisualTokens:
        if len(frames) == 0:
            raise ValueError("encode_frames() needs at least one frame")
        cfg = self.model.config
        batch = self.video_processor(videos=[np.asarray(frames)], return_tensors="pt")
        pixels = batch["pixel_values_videos"].to(self.device, self.dtype)
        out = self.model.model.get_video_features(
            pixels,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output[0]
        t = len(frames)
        per_frame = (out.shape[0] - 1) // t
        side = int(round(per_frame**0.5))
        features = out[: t * per_frame].reshape(t, side, side, -1)
        # the model's newline feature, then the chat format's text after a video (its embeddings)
        suffix = torch.cat([out[t * per_frame :], self.embed_ids(self.after_video_ids()).to(out.dtype)])
        ts = np.asarray(timestamps, dtype=np.float64)
        step = float(np.median(np.diff(ts))) if t > 1 else 1.0
        return VisualTokens(
            features=features,
            suffix=suffix,
            group_times=torch.as_tensor(ts),
            group_frame_ids=first_frame_id + torch.arange(t, dtype=torch.long),
            seconds_per_group=step,
        )

    def visual_segment(self, visual: VisualTokens, start: int) -> Segment:
        t, h, w = visual.grid
        grid_tokens = visual.features.reshape(t * h * w, -1)
        embeds = torch.cat([grid_tokens, visual.suffix.to(grid_tokens.dtype)], dim=0)
        n = embeds.shape[0]
        frame_ids = visual.group_frame_ids.repeat_interleave(h * w)
        frame_ids = torch.cat([frame_ids, frame_ids[-1:].expand(visual.suffix.shape[0])])
        meta = TokenMeta(
            positions=torch.arange(start, start + n, dtype=torch.long).unsqueeze(0),
            frame_ids=frame_ids,
            kinds=torch.full((n,), int(TokenKind.VISUAL), dtype=torch.long),
        )
        return Segment(embeds, meta, start + n)

    def lm_positions(self, meta: TokenMeta) -> torch.Tensor:
        return meta.positions  # (1, L): batch 1 of 1-D positions


def default_video_processor(config):
    """A video processor for a config without a saved one (tiny test models)."""
    from transformers import LlavaOnevisionVideoProcessor

    size = config.vision_config.image_size
    return LlavaOnevisionVideoProcessor(size={"height": size, "width": size}, do_sample_frames=False)
