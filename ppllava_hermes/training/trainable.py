"""What a training run updates, and how the trained parts are saved and loaded.

By default only the pooling trains (its optional learnable tau, window bias and pooled-token adapter,
see :class:`~ppllava_hermes.pooling.PoolingConfig`) together with the CLIP long-prompt extension's
trainable position tail (PPLLaVA's asymmetric extension); the LLM, the vision tower and the rest of
CLIP are frozen. Options add the VLM's projector (Qwen2.5-VL's patch merger, LLaVA-OneVision's
multi-modal projector; PPLLaVA ref trains projector + pooling) or LoRA adapters on the LLM (peft).

A trained folder holds only the trained parts:

* ``pooling/``: ``PromptGuidedPooling.save_pretrained`` (config + weights);
* ``trainable.safetensors``: every other trained tensor (CLIP text tail, projector, LoRA), named as in
  :class:`~.model.PooledVideoLM`'s state dict;
* ``training_config.json``: the :class:`TrainableConfig` and the text-extension settings, so that
  :func:`load_trained` rebuilds the same architecture (extends CLIP, injects LoRA) before loading.

It knows nothing of optimisers, data or TRL.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..compat import require
from ..pooling import PromptGuidedPooling, TextExtensionConfig, extend_text_context, is_extended
from .model import PooledVideoLM

TRAINABLE_FILE = "trainable.safetensors"
CONFIG_FILE = "training_config.json"
POOLING_DIR = "pooling"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainableConfig:
    """Which parts of :class:`PooledVideoLM` train.

    Attributes:
        pooling: the pooling module's parameters (it may have none: see ``PoolingConfig``).
        clip_text: the CLIP text encoder's extended position tail (needs ``extend_clip_text``).
        extend_clip_text: apply the asymmetric long-prompt extension (77 -> 248 for CLIP) to the scorer.
        text_keep, text_factor: the extension's kept positions and interpolation factor (ref 20, 4).
        projector: the VLM's projector / patch merger (frames are then encoded with gradients).
        lora_rank: rank of LoRA adapters on the LLM's attention projections (0 = no LoRA).
        lora_alpha, lora_dropout: LoRA scaling and dropout.
        lora_targets: LLM module names LoRA wraps.
    """

    pooling: bool = True
    clip_text: bool = True
    extend_clip_text: bool = True
    text_keep: int = 20
    text_factor: int = 4
    projector: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS)

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("lora_rank > 0 needs at least one target module name")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.clip_text and not self.extend_clip_text:
            raise ValueError("clip_text=True trains the extended position tail: it needs extend_clip_text=True")
        TextExtensionConfig(keep=self.text_keep, factor=self.text_factor)  # validates

    @property
    def trains_vlm(self) -> bool:
        """Whether any VLM weight trains (then a DPO reference needs its own copy of the VLM)."""
        return self.projector or self.lora_rank > 0


def projector_module(vlm: nn.Module) -> nn.Module:
    """The projector of a supported VLM: Qwen2.5-VL's ``visual.merger``, LLaVA-OneVision's
    ``multi_modal_projector``."""
    inner = getattr(vlm, "model", vlm)
    if hasattr(inner, "visual") and hasattr(inner.visual, "merger"):
        return inner.visual.merger
    if hasattr(inner, "multi_modal_projector"):
        return inner.multi_modal_projector
    raise TypeError(f"{type(vlm).__name__}: no known projector (visual.merger / multi_modal_projector)")


def prepare_architecture(model: PooledVideoLM, config: TrainableConfig) -> None:
    """Changes of architecture a config implies, before any weights are loaded: the CLIP text
    extension and LoRA injection. Idempotent."""
    if model.scorer is not None and config.extend_clip_text and not is_extended(model.scorer.model):
        ext = TextExtensionConfig(keep=config.text_keep, factor=config.text_factor, trainable=True)
        extend_text_context(model.scorer.model, model.scorer.tokenizer, ext)
    if config.lora_rank and not any("lora_" in n for n, _ in model.vlm.named_parameters()):
        peft = require("peft", "LoRA (lora_rank > 0)")
        LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_targets))
        inject_adapter_in_model(lora, model.adapter.language_model)


def apply_trainable(model: PooledVideoLM, config: TrainableConfig) -> list[str]:
    """Freeze everything, then unfreeze what ``config`` trains; returns the trainable parameter names.

    Raises ValueError when nothing would train (e.g. a pooling without parameters and no other part).
    """
    prepare_architecture(model, config)
    model.requires_grad_(False)
    if config.pooling:
        model.pooling.requires_grad_(True)
    if config.clip_text and model.scorer is not None:
        for name, p in model.scorer.named_parameters():
            if "parametrizations." in name and name.endswith(".original"):  # the extension's trainable tail
                p.requires_grad_(True)
    if config.projector:
        projector_module(model.vlm).requires_grad_(True)
        model.encode_with_grad = True
    if config.lora_rank:
        for name, p in model.adapter.language_model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError(
            "nothing to train: the pooling has no parameters (enable learn_tau / window_bias / adapter_dim) "
            "and no CLIP text tail, projector or LoRA is trained"
        )
    return names


def trainable_state_dict(model: PooledVideoLM) -> dict[str, torch.Tensor]:
    """The trained tensors (``requires_grad``) and all pooling state, by :class:`PooledVideoLM` name."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in keep or k.startswith("pooling.")}


def save_trained(model: PooledVideoLM, directory: str | Path, config: TrainableConfig) -> Path:
    """Write the trained parts (module doc) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.pooling.save_pretrained(directory / POOLING_DIR)
    state = {k: v.detach().contiguous().cpu() for k, v in trainable_state_dict(model).items()
             if not k.startswith("pooling.")}
    save_file(state, str(directory / TRAINABLE_FILE), metadata={"format": "pt"})
    meta = {"trainable": asdict(config), "chunk_frames": model.chunk_frames}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_trainable_config(directory: str | Path) -> TrainableConfig:
    meta = json.loads((Path(directory) / CONFIG_FILE).read_text())
    return TrainableConfig(**meta["trainable"])


def load_trained(model: PooledVideoLM, directory: str | Path) -> PooledVideoLM:
    """Load a folder written by :func:`save_trained` into ``model`` (its VLM and scorer as built fresh):
    the pooling is replaced, CLIP is extended / LoRA injected as recorded, then the tensors are loaded.

    Raises:
        FileNotFoundError: not a trained folder. KeyError: a saved tensor has no place in ``model``.
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not a trained folder (no {CONFIG_FILE})")
    config = read_trainable_config(directory)
    prepare_architecture(model, config)
    device = next(model.vlm.parameters()).device
    model.pooling = PromptGuidedPooling.from_pretrained(directory / POOLING_DIR).to(device)
    state = load_file(str(directory / TRAINABLE_FILE))
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"{directory}: saved tensors with no place in the model: {unknown[:5]}")
    model.load_state_dict(state, strict=False)
    return model
