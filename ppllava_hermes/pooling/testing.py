"""Tiny random CLIP-family models and an offline tokenizer, for tests and weight-free demos.

No weights are downloaded: every model here is randomly initialised and small enough for a CPU test
(width 16, one layer). The open_clip model is built through ``open_clip.create_model`` from a config
registered under :data:`TINY_OPEN_CLIP`, so it goes through the same factory as a real one.

This module knows nothing of pooling or the VLM.
"""

from __future__ import annotations

import functools
import json
import tempfile
import zlib
from pathlib import Path

from torch import nn

TINY_OPEN_CLIP = "ppllava-tiny-vit"
CLIP_VOCAB = 49408  # OpenAI BPE size, so open_clip's SimpleTokenizer ids fit every tiny CLIP


@functools.cache
def _config_folder() -> Path:
    # one folder per process for the registered tiny configs (open_clip registers config files)
    return Path(tempfile.mkdtemp(prefix="ppllava-open-clip-"))


def _tiny_open_clip_config(image_size: int, patch_size: int, width: int, context_length: int) -> dict:
    return {
        "embed_dim": width,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 1,
            "width": width,
            "head_width": width // 2,
            "patch_size": patch_size,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": CLIP_VOCAB,
            "width": width,
            "heads": 2,
            "layers": 1,
        },
    }


def tiny_open_clip(
    image_size: int = 48, patch_size: int = 8, width: int = 16, context_length: int = 77, **vision_cfg
):
    """A random open_clip ViT CLIP and its ``SimpleTokenizer``: ``(model, tokenizer)``, model in eval mode.

    The patch grid is ``image_size // patch_size`` per side (6 x 6 with the defaults); ``vision_cfg``
    overrides open_clip vision config keys (e.g. ``pool_type="avg"``).
    """
    import open_clip

    config = _tiny_open_clip_config(image_size, patch_size, width, context_length)
    config["vision_cfg"].update(vision_cfg)
    text = json.dumps(config, sort_keys=True)
    name = f"{TINY_OPEN_CLIP}-{zlib.crc32(text.encode()):08x}"
    if name not in open_clip.list_models():
        path = _config_folder() / f"{name}.json"
        path.write_text(text)
        open_clip.add_model_config(path)
    model = open_clip.create_model(name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(name)
    return model.eval(), tokenizer


def _tiny_tower(image_size: int, patch_size: int, width: int) -> dict:
    return {
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }


def _tiny_text(width: int, vocab_size: int, positions: int, **ids) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": positions,
        **ids,
    }


def tiny_hf_clip(image_size: int = 48, patch_size: int = 8, width: int = 16) -> nn.Module:
    """A random HF ``CLIPModel`` with the OpenAI vocabulary (use open_clip's ``SimpleTokenizer``)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=_tiny_text(width, CLIP_VOCAB, 77, bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=_tiny_tower(image_size, patch_size, width),
        projection_dim=width,
    )
    return CLIPModel(config).eval()


def tiny_siglip(
    image_size: int = 48, patch_size: int = 8, width: int = 16, vocab_size: int = 1000
) -> nn.Module:
    """A random HF ``SiglipModel``; use :class:`WordTokenizer` (ids: pad 0, eos 1)."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=_tiny_text(width, vocab_size, 64, bos_token_id=None, eos_token_id=1, pad_token_id=0),
        vision_config=_tiny_tower(image_size, patch_size, width),
    )
    return SiglipModel(config).eval()


class WordTokenizer:
    """Offline whitespace tokenizer: ``list[str] -> list[list[int]]`` (words, then EOS).

    Word ids are a stable hash into ``[first_word_id, vocab_size)``; ``lookup`` gives a word's id.
    The callable form accepted by :func:`~ppllava_hermes.pooling.text_extension.tokenize_prompts`.
    """

    pad_token_id = 0
    eos_token_id = 1
    first_word_id = 2

    def __init__(self, vocab_size: int = 1000) -> None:
        self.vocab_size = vocab_size

    def lookup(self, word: str) -> int:
        span = self.vocab_size - self.first_word_id
        return self.first_word_id + zlib.crc32(word.lower().encode()) % span

    def __call__(self, prompts: list[str]) -> list[list[int]]:
        return [[self.lookup(w) for w in p.split()] + [self.eos_token_id] for p in prompts]
