"""Build a :class:`~.model.PooledVideoLM` from command-line flags (shared by the training scripts).

Model specs (``--model``) and CLIP specs (``--clip``) are those of every command (``ppllava_hermes.specs``):
a model is a checkpoint folder, a hub id or a registered name (``shapesworld[:PATH]``, ``tiny-qwen2.5-vl``
alias ``tiny:qwen2_5_vl``, ``tiny-llava-onevision`` alias ``tiny:llava_onevision``); a CLIP is ``none``
(average pooling), ``tiny`` (a random tiny open_clip), ``shapesworld[:PATH]``, or a folder (a
ShapesWorld-CLIP folder, or a Hugging Face CLIP / SigLIP).

Devices are not chosen here: models are built on the CPU and ``accelerate`` places them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ..models.base import VLMAdapter
from ..pooling import PoolingConfig, PromptGuidedPooling
from ..specs import kernel_arg, load_model, load_relevance, model_help
from .model import PooledVideoLM
from .trainable import TrainableConfig, load_trained

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for the VLM, the CLIP scorer, the pooling and what trains."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="shapesworld", help=f"{model_help()}. Default: shapesworld")
    g.add_argument("--clip", default="shapesworld", help="none | shapesworld | tiny | a CLIP/SigLIP folder")
    g.add_argument("--dtype", default="auto", choices=sorted(DTYPES), help="VLM weights dtype (checkpoints only)")
    g.add_argument("--chunk-frames", type=int, default=8, help="frames per session chunk (pooled chunk by chunk)")
    g.add_argument("--init", default=None,
                   help="start from a trained folder (pooling, CLIP tail, projector, LoRA); its pooling "
                        "config replaces the --pool-* flags")
    g.add_argument("--cache-features", action=argparse.BooleanOptionalAction, default=False,
                   help="keep frozen vision / CLIP encodings of every video across epochs (small data sets)")
    p = parser.add_argument_group("pooling")
    p.add_argument("--pool-kernel", type=kernel_arg, default=(2, 3, 3), help="t,h,w (ref 2,3,3)")
    p.add_argument("--pool-tau", type=float, default=0.01, help="window softmax temperature (ref 0.01)")
    p.add_argument("--pool-padding", default="replicate", choices=["error", "drop", "replicate", "pad"])
    p.add_argument("--pool-learn-tau", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pool-window-bias", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pool-adapter-dim", type=int, default=64,
                   help="hidden size of the pooled-token adapter (0 = none)")
    t = parser.add_argument_group("what trains")
    t.add_argument("--train-pooling", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--extend-clip-text", action=argparse.BooleanOptionalAction, default=True,
                   help="asymmetric long-prompt extension of the CLIP text encoder (77 -> 248)")
    t.add_argument("--train-clip-text", action=argparse.BooleanOptionalAction, default=True,
                   help="train the extension's position tail")
    t.add_argument("--train-projector", action=argparse.BooleanOptionalAction, default=False)
    t.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on the LLM's attention (0 = off)")
    t.add_argument("--lora-alpha", type=float, default=16.0)


def load_vlm(spec: str, dtype: str = "auto") -> VLMAdapter:
    """The adapter of ``--model`` (``specs.load_model``), on the CPU; ``specs.SpecError`` on a bad spec."""
    return load_model(spec, dtype=DTYPES[dtype])


def load_clip(spec: str, frames_per_token: int):
    """The ``RelevanceScorer`` of ``--clip`` (``specs.load_relevance``; None for ``none``)."""
    return load_relevance(spec, frames_per_token=frames_per_token)


def pooling_config(args: argparse.Namespace, feature_dim: int) -> PoolingConfig:
    return PoolingConfig(kernel=args.pool_kernel, tau=args.pool_tau, padding=args.pool_padding,
                         learn_tau=args.pool_learn_tau, window_bias=args.pool_window_bias,
                         adapter_dim=args.pool_adapter_dim, feature_dim=feature_dim if args.pool_adapter_dim else None)


def trainable_config(args: argparse.Namespace) -> TrainableConfig:
    return TrainableConfig(pooling=args.train_pooling, clip_text=args.train_clip_text and args.extend_clip_text,
                           extend_clip_text=args.extend_clip_text, projector=args.train_projector,
                           lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)


@dataclass
class Built:
    """What :func:`build_model` returns: the model and the config of what trains."""

    model: PooledVideoLM
    trainable: TrainableConfig


def build_model(args: argparse.Namespace) -> Built:
    """The :class:`PooledVideoLM` the flags describe; ``--init`` loads a trained folder into it."""
    adapter = load_vlm(args.model, args.dtype)
    scorer = load_clip(args.clip, adapter.frames_per_group)
    dim = int(adapter.text_config.hidden_size)
    pooling = PromptGuidedPooling(pooling_config(args, dim))
    model = PooledVideoLM(adapter, pooling, scorer, chunk_frames=args.chunk_frames)
    if args.init:
        load_trained(model, args.init)
    if args.cache_features:
        model.enable_feature_cache()
    return Built(model, trainable_config(args))
