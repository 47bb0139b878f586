"""Adapter for Qwen2.5-VL (and Qwen2-VL, which shares the video path and M-RoPE rule).

Frames go through the family's own HF video processor and vision tower; positions follow the
model's ``get_rope_index`` rule exactly (each chunk is one video segment: ``<|vision_start|>``, the
video tokens with t/h/w positions from ``get_vision_position_ids``, ``<|vision_end|>``; text resumes
at ``start + max(h, w)``). Knows nothing of streaming, memory policies or pooling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..memory.cache import TokenKind, TokenMeta
from .base import Segment, VisualTokens, VLMAdapter
from .templates import QWEN2_VL_CHAT_TEMPLATE

DEFAULT_FPS = 1.0


def seconds_per_group(timestamps: np.ndarray, frames_per_group: int) -> float:
    """Time spanned by one temporal group, from the chunk's frame spacing (``frames_per_group / fps``)."""
    if len(timestamps) >= 2:
        step = float(np.median(np.diff(timestamps)))
    else:
        step = 1.0 / DEFAULT_FPS
    return frames_per_group * step


class Qwen2_5_VLAdapter(VLMAdapter):
    """Wraps ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen2VLForConditionalGeneration``."""

    pos_dims = 3
    family = "qwen2_5_vl"
    video_text = "<|vision_start|><|video_pad|><|vision_end|>"
    default_chat_template = QWEN2_VL_CHAT_TEMPLATE

    def __init__(self, model, tokenizer, video_processor=None, **kwargs) -> None:
        if video_processor is None:
            video_processor = default_video_processor(model.config)
        super().__init__(model, tokenizer, video_processor, **kwargs)
        vc = model.config.vision_config
        self.frames_per_group = int(vc.temporal_patch_size)
        self.merge = int(vc.spatial_merge_size)
        self.tokens_per_second = getattr(vc, "tokens_per_second", 1)
        self.video_token_id = int(model.config.video_token_id)
        self.vision_start_id = int(model.config.vision_start_token_id)
        self.vision_end_id = int(model.config.vision_end_token_id)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | str = "auto", device: str | None = None,
                        attn_implementation: str | None = None, **kwargs) -> Qwen2_5_VLAdapter:
        """Load a real checkpoint (local folder, or a hub name where the hub is reachable)."""
        from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

        config = AutoConfig.from_pretrained(path)
        if config.model_type == "qwen2_vl":
            from transformers import Qwen2VLForConditionalGeneration as model_cls
        else:
            model_cls = Qwen2_5_VLForConditionalGeneration
        return cls._load(model_cls, path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                         **kwargs)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, timestamps: np.ndarray, first_frame_id: int) -> VisualTokens:
        if len(frames) == 0 or len(frames) % self.frames_per_group:
            raise ValueError(
                f"Qwen2.5-VL encodes frames in groups of {self.frames_per_group}; got {len(frames)} frames"
            )
        batch = self.video_processor(videos=[np.asarray(frames)], return_tensors="pt")
        grid = batch["video_grid_thw"].to(self.device)
        pixels = batch["pixel_values_videos"].to(self.device, self.model.model.visual.dtype)
        feats = self.model.model.get_video_features(pixels, grid).pooler_output[0]
        t, gh, gw = (int(x) for x in grid[0])
        h, w = gh // self.merge, gw // self.merge
        features = feats.reshape(t, h, w, -1)
        ts = torch.as_tensor(np.asarray(timestamps, dtype=np.float64)[:: self.frames_per_group][:t])
        ids = first_frame_id + torch.arange(t, dtype=torch.long) * self.frames_per_group
        return VisualTokens(
            features=features,
            suffix=features.new_zeros(0, features.shape[-1]),
            group_times=ts,
            group_frame_ids=ids,
            seconds_per_group=seconds_per_group(np.asarray(timestamps), self.frames_per_group),
        )

    def video_positions(self, grid: tuple[int, int, int], start: int, seconds: float) -> torch.Tensor:
        """``(3, t*h*w)`` positions of a video's tokens exactly as the model's ``get_rope_index`` gives them."""
        t, h, w = grid
        interval = self.tokens_per_second * torch.tensor(seconds, dtype=torch.float32)
        return self.model.model.get_vision_position_ids(
            start, torch.tensor([t, h, w]), 1, 1, interval, device="cpu"
        ).long()

    def visual_segment(self, visual: VisualTokens, start: int) -> Segment:
        t, h, w = visual.grid
        n = t * h * w
        video_pos = self.video_positions(visual.grid, start + 1, visual.seconds_per_group)
        end_pos = start + 1 + max(h, w)
        positions = torch.cat(
            [torch.full((3, 1), start), video_pos, torch.full((3, 1), end_pos)], dim=1
        )
        frame_of_token = visual.group_frame_ids.repeat_interleave(h * w)
        frame_ids = torch.cat([frame_of_token[:1], frame_of_token, frame_of_token[-1:]])
        # Delimiters travel with their chunk's frames so that memory policies can evict them too.
        kinds = torch.full((n + 2,), int(TokenKind.VISUAL), dtype=torch.long)
        delim = self.embed_ids(torch.tensor([self.vision_start_id, self.vision_end_id]))
        embeds = torch.cat([delim[:1], visual.features.reshape(n, -1).to(delim.dtype), delim[1:]], dim=0)
        return Segment(embeds, TokenMeta(positions, frame_ids, kinds), end_pos + 1)

    def lm_positions(self, meta: TokenMeta) -> torch.Tensor:
        return meta.positions.unsqueeze(1)  # (3, 1, L)


def default_video_processor(config):
    """A video processor for a config without a saved one (tiny test models): no resizing beyond
    the patch multiple, no frame sampling (the session samples)."""
    from transformers import Qwen2VLVideoProcessor

    vc = config.vision_config
    side = vc.patch_size * vc.spatial_merge_size
    return Qwen2VLVideoProcessor(
        patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size,
        merge_size=vc.spatial_merge_size,
        size={"shortest_edge": side * side, "longest_edge": 1024 * side * side},
        do_sample_frames=False,
        cap_pixels_per_frame=False,
    )
