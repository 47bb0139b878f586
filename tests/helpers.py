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


def hf_reference_inputs(adapter: VLMAdapter, chunks: list[tuple[np.ndarray, np.ndarray]], question: str) -> dict:
    """The one-shot HF input equal to a stream of ``chunks`` followed by ``question``.

    Each chunk is one video in the prompt, as the session feeds it. Returns kwargs for ``model(...)``
    and ``model.generate(...)``.
    """
    tok = adapter.tokenizer
    ids = list(adapter.tokenize(adapter.prefix_text()).tolist())
    cfg = adapter.model.config
    if adapter.family == "qwen2_5_vl":
        pixels, grids, seconds, types = [], [], [], [0] * len(ids)
        for frames, times in chunks:
            batch = adapter.video_processor(videos=[frames], return_tensors="pt")
            grid = batch["video_grid_thw"][0]
            n = int(grid.prod()) // adapter.merge**2
            ids += [cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id]
            types += [0] + [2] * n + [0]
            pixels.append(batch["pixel_values_videos"])
            grids.append(grid)
            seconds.append(2 * float(np.median(np.diff(times))))
        q = adapter.tokenize(adapter.question_text(question)).tolist()
        ids += q
        types += [0] * len(q)
        return dict(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pixel_values_videos=torch.cat(pixels),
            video_grid_thw=torch.stack(grids),
            second_per_grid_ts=torch.tensor(seconds),
            mm_token_type_ids=torch.tensor([types]),
        )
    pixels = []
    for frames, _ in chunks:
        batch = adapter.video_processor(videos=[frames], return_tensors="pt")
        pixels.append(batch["pixel_values_videos"])
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        per_frame = ((side + 1) // 2) ** 2
        ids += [cfg.video_token_index] * (len(frames) * per_frame + 1)
    ids += adapter.tokenize(adapter.question_text(question)).tolist()
    del tok
    return dict(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        pixel_values_videos=torch.cat(pixels),
    )
