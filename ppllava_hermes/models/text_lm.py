"""Adapter for a plain causal text LM (``...ForCausalLM``: Llama, Qwen2, SmolLM2): the engine's LM half only.

1-D RoPE, the HF decoder at ``model.model`` and the head at ``model.lm_head``. Used to run the memory
policies on real attention over text (``ppllava-hermes bench real_lm_memory``) through the same KV engine
as the video session. Knows nothing of video.
"""

from __future__ import annotations

import torch

from ..memory.cache import TokenMeta
from .base import LMAdapter


class CausalLMAdapter(LMAdapter):
    """``AutoModelForCausalLM`` + tokenizer; ChatML prompt frame like the VLM families."""

    pos_dims = 1
    family = "causal_lm"

    def lm_positions(self, meta: TokenMeta) -> torch.Tensor:
        return meta.positions  # (1, L): batch 1 of 1-D positions
