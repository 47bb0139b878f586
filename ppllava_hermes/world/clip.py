"""The ShapesWorld CLIP: a tiny open_clip ViT CLIP, the relevance model for prompt-guided pooling.

No pretrained CLIP weights can be installed here, so the relevance model of PPLLaVA's prompt-guided
pooling (ALGORITHMS.md section 1, step 1) is a tiny CLIP trained on ShapesWorld frames
(``train/train_clip.py``) and shipped in ``world/checkpoints/clip/``.

What this module knows:

* the architecture (:data:`WORLD_CLIP_CONFIG`), an open_clip custom model config registered with
  ``open_clip.add_model_config`` and built by ``open_clip.create_model``: a ViT of 112x112 input and
  patch 14 (an 8 x 8 patch grid, 3 blocks of width 96) and a 2-block causal text transformer of width
  64 over 24 positions; joint space 64-d;
* its word-level tokenizer (:class:`WorldTokenizer`: a fixed 111-word vocabulary of captions and
  ShapesWorld questions, 114 ids; open_clip's ``SimpleTokenizer`` works offline but its 49,408-row embedding
  alone would be 12 MB at width 64);
* :func:`patch_features` (the per-patch features :class:`~ppllava_hermes.pooling.relevance.RelevanceScorer`
  uses, with gradients, for training);
* saving and loading (``model.safetensors`` + ``config.json``).

Why ``pool_type="avg"``: open_clip then computes the image embedding as
``mean_i(ln_post(x_i)) @ proj = mean_i(ln_post(x_i) @ proj)`` over the patch tokens ``x_i`` (the CLS
token still takes part in attention but is left out of the mean), i.e. the image feature *is* the
average of exactly the projected patch features that RelevanceScorer compares with the prompt
(``ln_post`` then ``proj`` for every patch). The contrastive image-text loss therefore trains the
patches' projected features in the text space directly; with CLS pooling (``"tok"``) only the CLS
token is projected in training and the patch tokens' projections are never asked to mean anything.
Training adds patch-level losses on top (each patch against the captions, each caption against the
patches of a frame), so the relevance map peaks on the object the prompt names.

What it does not know: training data, losses, evaluation (``train/train_clip.py``), pooling.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compat import require
from .generator import COLORS, SHAPES

CLIP_DIR = Path(__file__).parent / "checkpoints" / "clip"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_NAME = "shapesworld-clip"
BACKGROUND_CAPTION = "background"

#: Words besides colours and shapes: captions, the ShapesWorld question templates (``tasks.py``), the
#: streaming stage's generic prompt, and a few common ones. Anything else maps to ``<unk>``.
_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            (
                "a an the and of or in on at to is are was were it this that there what which who where when "
                "how many much does did do has have colour color shape shapes object objects thing things "
                "clip video frame scene now visible moving move moves direction left right up down first "
                "last new appear appears appeared after before started start leave leaves left change "
                "changes changed changing bump bumped into collide collided with number count tell me "
                "happening happen happens describe current summarise summarize so far background nothing "
                "circles squares triangles crosses one two three four zero big small"
            ).split()
        )
    )
)
_WORD = re.compile(r"[a-z0-9]+")

#: open_clip model config (``open_clip.add_model_config`` JSON); ``vocab_size`` is set from the tokenizer.
WORLD_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 112,
        "patch_size": 14,
        "width": 96,
        "layers": 3,
        "head_width": 32,
        "mlp_ratio": 2.0,
        "pool_type": "avg",  # image feature = mean of the projected patch features (module doc)
    },
    "text_cfg": {
        "context_length": 24,
        "vocab_size": None,
        "width": 64,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
        # argmax pooling reads the EOS position: the tokenizer gives EOS the highest id
        "pool_type": "argmax",
    },
}


class WorldTokenizer:
    """Word-level tokenizer: ``list[str] -> list[list[int]]`` (word ids then EOS, no padding).

    Ids: ``<pad>`` 0, ``<unk>`` 1, words 2.., ``<eos>`` last (the highest id, so open_clip's
    ``argmax`` text pooling finds it). Text is lower-cased and split into ``[a-z0-9]+`` runs
    (punctuation dropped). This is the callable form
    :func:`~ppllava_hermes.pooling.text_extension.tokenize_prompts` accepts: it pads with
    :attr:`pad_token_id` and, when a prompt is too long, keeps the last id (the EOS).
    """

    pad_token_id = 0
    unk_token_id = 1

    def __init__(self, words: Sequence[str] | None = None, context_length: int | None = None) -> None:
        words = list(words) if words is not None else default_vocabulary()
        if len(set(words)) != len(words):
            raise ValueError("tokenizer vocabulary has duplicate words")
        self.words = words
        self._ids = {w: i + 2 for i, w in enumerate(words)}
        self.eos_token_id = len(words) + 2
        self.context_length = context_length  # informative; tokenize_prompts fits to the model's

    @property
    def vocab_size(self) -> int:
        return self.eos_token_id + 1

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` without EOS."""
        return [self._ids.get(w, self.unk_token_id) for w in _WORD.findall(text.lower())]

    def __call__(self, prompts: str | Sequence[str]) -> list[list[int]]:
        prompts = [prompts] if isinstance(prompts, str) else prompts
        return [[*self.encode(p), self.eos_token_id] for p in prompts]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "word", "words": list(self.words)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldTokenizer:
        if d.get("type") != "word":
            raise ValueError(f"unknown tokenizer type {d.get('type')!r}")
        return cls(d["words"])


def default_vocabulary() -> list[str]:
    """Colours, shapes, the background caption and :data:`_WORDS`, sorted and unique."""
    return sorted(set(COLORS) | set(SHAPES) | {BACKGROUND_CAPTION} | set(_WORDS))


@functools.cache
def _config_folder() -> Path:
    # open_clip registers config *files*: one private folder per process
    return Path(tempfile.mkdtemp(prefix="ppllava-world-clip-"))


def _register(config: dict[str, Any]) -> str:
    """Register ``config`` with open_clip under a name derived from its content; returns the name."""
    open_clip = require("open_clip", "the ShapesWorld CLIP")

    text = json.dumps(config, sort_keys=True)
    name = f"{MODEL_NAME}-{zlib.crc32(text.encode()):08x}"
    if name not in open_clip.list_models():
        path = _config_folder() / f"{name}.json"
        path.write_text(text)
        open_clip.add_model_config(path)
    return name


def model_config(tokenizer: WorldTokenizer | None = None, **overrides: Any) -> dict[str, Any]:
    """:data:`WORLD_CLIP_CONFIG` with the tokenizer's vocabulary size; ``overrides`` update
    ``vision_cfg`` / ``text_cfg`` keys (``{"vision_cfg": {"layers": 2}}``) or top-level keys."""
    tokenizer = tokenizer or WorldTokenizer()
    config = copy.deepcopy(WORLD_CLIP_CONFIG)
    config["text_cfg"]["vocab_size"] = tokenizer.vocab_size
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def build_world_clip(
    config: dict[str, Any] | None = None, tokenizer: WorldTokenizer | None = None, seed: int = 0
) -> tuple[nn.Module, WorldTokenizer]:
    """A randomly initialised ShapesWorld CLIP (open_clip ``CLIP``) and its tokenizer, in eval mode.

    Args:
        config: an open_clip model config (default :func:`model_config`); its text ``vocab_size`` must
            cover the tokenizer.
        tokenizer: default :class:`WorldTokenizer` with :func:`default_vocabulary`.
        seed: initialisation seed (the global torch RNG is saved and restored).
    """
    open_clip = require("open_clip", "the ShapesWorld CLIP")

    tokenizer = tokenizer or WorldTokenizer()
    config = config if config is not None else model_config(tokenizer)
    if config["text_cfg"]["vocab_size"] < tokenizer.vocab_size:
        raise ValueError(
            f"text vocab_size {config['text_cfg']['vocab_size']} < tokenizer's {tokenizer.vocab_size}"
        )
    name = _register(config)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights loaded": random init is wanted
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(previous)
    tokenizer.context_length = int(config["text_cfg"]["context_length"])
    return model.eval(), tokenizer


def patch_features(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Projected, *unnormalised* patch features, the ones RelevanceScorer normalises and scores.

    Args:
        model: an open_clip ViT CLIP.
        pixels: ``(N, 3, 112, 112)`` normalised images.

    Returns:
        ``(N, h, w, embed_dim)`` = ``ln_post(last block's patch tokens) @ proj`` (CLS dropped); with
        ``pool_type="avg"`` their mean over ``h, w`` equals ``model.encode_image(pixels)``.
    """
    visual = model.visual
    out = visual.forward_intermediates(
        pixels, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NCHW"
    )
    return out["image_intermediates"][-1].permute(0, 2, 3, 1) @ visual.proj


def image_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation open_clip attached to the model (OpenAI CLIP's mean / std by default)."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))), tuple(
        cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    )


def save_world_clip(
    model: nn.Module,
    tokenizer: WorldTokenizer,
    path: str | Path,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (fp32 state dict) and ``config.json`` (open_clip model config,
    tokenizer vocabulary, ``extra`` such as training settings) into folder ``path``; returns it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else model_config(tokenizer)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = {"model_name": MODEL_NAME, "model_cfg": config, "tokenizer": tokenizer.to_dict(), **(extra or {})}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def has_world_clip(path: str | Path | None = None) -> bool:
    """Whether a trained ShapesWorld CLIP is in ``path`` (default: the shipped folder)."""
    path = Path(path) if path is not None else CLIP_DIR
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def load_world_clip(path: str | Path | None = None) -> tuple[nn.Module, WorldTokenizer]:
    """The trained ShapesWorld CLIP ``(model in eval mode, tokenizer)`` from ``path`` (default: the
    shipped ``ppllava_hermes/world/checkpoints/clip/``); usable by ``RelevanceScorer(model, tokenizer)``.

    Raises:
        FileNotFoundError: no checkpoint there (it says how to train one).
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else CLIP_DIR
    if not has_world_clip(path):
        raise FileNotFoundError(
            f"ShapesWorld CLIP {str(path)!r}: no checkpoint ({WEIGHTS_FILE} + {CONFIG_FILE}); train one with "
            f"`ppllava-hermes train train_clip --out {path}` (about 10 minutes on a CPU core)"
        )
    meta = json.loads((path / CONFIG_FILE).read_text())
    tokenizer = WorldTokenizer.from_dict(meta["tokenizer"])
    model, tokenizer = build_world_clip(meta["model_cfg"], tokenizer)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
    return model.eval(), tokenizer
