"""Prompt-guided pooling (PPLLaVA): shrink a video's visual tokens, keeping what the prompt asks about.

Stage between vision encoding and the LLM: features + token grid + prompt in, pooled features + grid
out. It knows nothing of the KV memory or the LLM.

- :mod:`.relevance`: CLIP-family scorer, prompt -> weights ``(batch, T, H, W)`` over the VLM token grid.
- :mod:`.pool`: weighted 3-D pooling ``(batch, T, H, W, dim) -> (batch, T', H', W', dim)``, and
  :class:`UniformDrop` (keep one token per window: the dropping baseline at the same token count).
- :mod:`.text_extension`: long prompts (77 -> 248 text positions, asymmetric extension).
- :mod:`.testing`: tiny random CLIP models and an offline tokenizer (not re-exported).
"""

from .pool import (
    IMAGE_KERNEL,
    PADDING_MODES,
    VIDEO_KERNEL,
    PooledOutput,
    PoolingConfig,
    PromptGuidedPooling,
    UniformDrop,
    average_pool,
)
from .relevance import (
    RelevanceConfig,
    RelevanceScorer,
    VideoPatchFeatures,
    frames_to_tensor,
)
from .text_extension import (
    AsymmetricPositionTable,
    TextExtensionConfig,
    extend_text_context,
    interpolate_positions,
    is_extended,
    set_tokenizer_context,
    text_context_length,
    tokenize_prompts,
)

__all__ = [
    "IMAGE_KERNEL",
    "PADDING_MODES",
    "VIDEO_KERNEL",
    "AsymmetricPositionTable",
    "PooledOutput",
    "PoolingConfig",
    "PromptGuidedPooling",
    "RelevanceConfig",
    "RelevanceScorer",
    "TextExtensionConfig",
    "UniformDrop",
    "VideoPatchFeatures",
    "average_pool",
    "extend_text_context",
    "frames_to_tensor",
    "interpolate_positions",
    "is_extended",
    "set_tokenizer_context",
    "text_context_length",
    "tokenize_prompts",
]
