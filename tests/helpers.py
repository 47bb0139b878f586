"""Shared helpers for tests: tiny models and the HF reference input for a streamed video."""

from __future__ import annotations

import numpy as np
import torch

from ppllava_hermes.models import adapter_for_model
from ppllava_hermes.models.base import VLMAdapter
from ppllava_hermes.testing import tiny_llava_onevision, tiny_qwen2_5_vl

FAMILIES = {"qwen2_5_vl": tiny_qwen2_5_vl, "llava_onevision": tiny_llava_onevision}


def tiny_adapter(family: str, **kwargs) -> VLMAdapter:
    model, tok = FAMILIES[family](**kwargs)
    return adapter_for_model(model, tok)


def random_frames(n: int, size: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n, dtype=np.float64) * 0.5


def hf_processor(adapter: VLMAdapter):
    """The family's HF processor around the adapter's tokenizer and video processor, with the chat
    template the adapter was built with (the family's published format for tiny models)."""
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )

    if adapter.family == "qwen2_5_vl":
        return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=adapter.tokenizer,
                                   video_processor=adapter.video_processor, chat_template=adapter.chat_template)
    vc = adapter.model.config.vision_config
    side = vc.image_size // vc.patch_size
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(), tokenizer=adapter.tokenizer,
        video_processor=adapter.video_processor, num_image_tokens=side * side,
        vision_feature_select_strategy=adapter.model.config.vision_feature_select_strategy,
        chat_template=adapter.chat_template)


def hf_reference_inputs(adapter: VLMAdapter, chunks: list[tuple[np.ndarray, np.ndarray]], question: str) -> dict:
    """The one-shot HF input equal to a stream of ``chunks`` followed by ``question``.

    The prompt is the HF processor's own: its ``apply_chat_template`` over a system turn and one user
    turn with one video part per chunk (as the session feeds them) and the question, then its call on
    that text and the chunks' frames (token expansion, pixel values, grids; each chunk's frame rate from
    its timestamps). Returns kwargs for ``model(...)`` and ``model.generate(...)``.
    """
    from transformers.video_utils import VideoMetadata

    from ppllava_hermes.models.templates import conversation

    processor = hf_processor(adapter)
    text = processor.apply_chat_template(conversation(adapter.system_prompt, len(chunks), question),
                                         tokenize=False, add_generation_prompt=True)
    metadata = [VideoMetadata(total_num_frames=len(f), fps=1.0 / float(np.median(np.diff(t))),
                              frames_indices=list(range(len(f)))) for f, t in chunks]
    batch = processor(text=[text], videos=[f for f, _ in chunks], video_metadata=metadata, return_tensors="pt")
    keep = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts",
            "mm_token_type_ids")
    out = {k: batch[k] for k in keep if k in batch}
    if "second_per_grid_ts" in out:
        out["second_per_grid_ts"] = torch.as_tensor(out["second_per_grid_ts"], dtype=torch.float32)
    return out
