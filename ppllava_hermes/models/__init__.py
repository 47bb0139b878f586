"""One small adapter per Hugging Face VLM family (see ``base.VLMAdapter``)."""

from __future__ import annotations

from pathlib import Path

from .base import RopeSpec, Segment, VisualTokens, VLMAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS = {
    "qwen2_5_vl": Qwen2_5_VLAdapter,
    "qwen2_vl": Qwen2_5_VLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "qwen3_vl_moe": Qwen3VLAdapter,
    "llava_onevision": LlavaOnevisionAdapter,
}


def adapter_for_model(model, tokenizer, video_processor=None, **kwargs) -> VLMAdapter:
    """Wrap an already-built HF model in the adapter of its family."""
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise ValueError(f"model type {model_type!r} is not supported; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type](model, tokenizer, video_processor, **kwargs)


def load_adapter(path: str | Path, **kwargs) -> VLMAdapter:
    """Load a checkpoint and wrap it in the adapter of its family (``config.model_type``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise ValueError(f"model {str(path)!r}: cannot read its config ({err})") from None
    if config.model_type not in ADAPTERS:
        raise ValueError(
            f"model {str(path)!r}: type {config.model_type!r} is not supported; supported: {sorted(ADAPTERS)}"
        )
    return ADAPTERS[config.model_type].from_pretrained(path, **kwargs)


__all__ = [
    "ADAPTERS",
    "LlavaOnevisionAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "RopeSpec",
    "Segment",
    "VLMAdapter",
    "VisualTokens",
    "adapter_for_model",
    "load_adapter",
]
