"""Long prompts for CLIP-family text encoders: the asymmetric position extension, and tokenisation.

Based on PPLLaVA (arXiv 2411.02327) section "CLIP context extension", which follows Long-CLIP: a
CLIP text encoder has 77 learned positions (SigLIP 64), too few for a video question with options.
The table is extended to 248 (SigLIP 196): the first ``keep`` = 20 (ref) positions, which CLIP trained
well, are kept as they are and frozen; the remaining ``L - keep`` positions are linearly interpolated
``factor`` = 4 (ref) times (``new[keep + 4 i] = old[keep + i]``, with linear extrapolation past the last
one), and this part is a trainable copy so fine-tuning can adapt it.

Mechanism: the position table becomes a ``torch.nn.utils.parametrize`` parametrisation,
:class:`AsymmetricPositionTable`, that holds the frozen head as a buffer; the parametrised tensor's
``original`` is an ``nn.Parameter`` with only the rows ``[keep, L')``. Everything that reads the table
(open_clip's ``encode_text``, HF's ``nn.Embedding``) keeps working and gradients reach only the tail.
The extension patches the model in place (it is a change of architecture, as in the paper, not a
temporary hook); to load a checkpoint saved after extension, extend a fresh model first.

Also here: :func:`tokenize_prompts`, which fits prompts to a model's context, truncating an over-long
prompt with a warning that says how many tokens were dropped.

This module knows nothing of video, pooling or the VLM.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass
class TextExtensionConfig:
    """How to extend a text position table.

    Attributes:
        keep: leading positions kept as they are and frozen, 20 (ref).
        factor: interpolation factor of the remaining positions, 4 (ref): 77 -> 20 + 4 * 57 = 248,
            SigLIP 64 -> 20 + 4 * 44 = 196.
        trainable: the interpolated tail is a trainable parameter (ref); False freezes it too.
    """

    keep: int = 20
    factor: int = 4
    trainable: bool = True

    def __post_init__(self) -> None:
        if self.keep < 0:
            raise ValueError(f"keep must be >= 0, got {self.keep}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def extended_length(self, length: int) -> int:
        """New number of positions for a table of ``length`` positions."""
        if length - self.keep < 2:
            raise ValueError(
                f"a table of {length} positions has fewer than 2 positions after the kept {self.keep}: "
                "nothing to interpolate"
            )
        return self.keep + self.factor * (length - self.keep)


def interpolate_positions(table: torch.Tensor, keep: int = 20, factor: int = 4) -> torch.Tensor:
    """Asymmetric extension of a position table.

    Args:
        table: ``(L, dim)`` learned positions.
        keep: leading rows copied unchanged, 20 (ref).
        factor: interpolation factor of rows ``[keep, L)``, 4 (ref).

    Returns:
        ``(keep + factor * (L - keep), dim)``: rows ``< keep`` equal ``table``'s bit for bit; new row
        ``keep + n`` is the linear interpolation of the old tail at fractional index ``n / factor``
        (extrapolated from the last two rows beyond the end).
    """
    tail = table[keep:].float()
    m = tail.shape[0]
    if m < 2:
        raise ValueError(f"need at least 2 positions after keep={keep}, table has {table.shape[0]}")
    u = torch.arange(factor * m, dtype=torch.float32, device=table.device) / factor
    lo = u.floor().long().clamp_(max=m - 2)  # the last segment extrapolates (frac up to 2 - 1/factor)
    frac = (u - lo).unsqueeze(1)
    new_tail = tail[lo] + frac * (tail[lo + 1] - tail[lo])
    return torch.cat([table[:keep], new_tail.to(table.dtype)], dim=0)


class AsymmetricPositionTable(nn.Module):
    """Parametrisation ``tail (L' - keep, dim) -> table (L', dim)`` with a frozen head.

    ``frozen`` ``(keep, dim)`` is a buffer: no gradient, and no optimizer (weight decay included) can
    touch it. The tail is the parametrised tensor's ``original`` parameter.
    """

    def __init__(self, head: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("frozen", head.detach().clone())

    @property
    def keep(self) -> int:
        return self.frozen.shape[0]

    def forward(self, tail: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.frozen.to(tail.dtype), tail], dim=0)

    def right_inverse(self, table: torch.Tensor) -> torch.Tensor:
        # assigning a full table only updates the trainable tail; the head stays frozen by design
        return table[self.keep :]


def _install_table(owner: nn.Module, name: str, old: torch.Tensor, config: TextExtensionConfig) -> int:
    """Set ``owner.<name>`` to the extended ``(L', D)`` table of ``old`` ``(L, D)``, parametrised."""
    old = old.detach()
    new = interpolate_positions(old, config.keep, config.factor)
    setattr(owner, name, nn.Parameter(new, requires_grad=config.trainable))
    parametrize.register_parametrization(owner, name, AsymmetricPositionTable(old[: config.keep]))
    owner.parametrizations[name].original.requires_grad_(config.trainable)
    return new.shape[0]


def _causal_mask(length: int, like: torch.Tensor) -> torch.Tensor:
    # open_clip's additive mask: -inf above the diagonal
    return torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


def _text_owner(model: nn.Module) -> tuple[str, nn.Module]:
    """(kind, module holding the position table) for the model families we support."""
    if hasattr(model, "text_model") and hasattr(model.text_model, "embeddings"):
        return "hf", model.text_model.embeddings  # CLIPModel, SiglipModel, *WithProjection
    if hasattr(model, "embeddings") and hasattr(model.embeddings, "position_embedding"):
        return "hf", model.embeddings  # CLIPTextModel, SiglipTextModel
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module) and hasattr(text, "positional_embedding"):
        return "open_clip", text  # open_clip CustomTextCLIP
    if hasattr(model, "positional_embedding") and hasattr(model, "token_embedding"):
        return "open_clip", model  # open_clip CLIP, or a TextTransformer itself
    raise TypeError(
        f"{type(model).__name__} is not a supported CLIP-family text encoder "
        "(open_clip CLIP / CustomTextCLIP / TextTransformer, HF CLIPModel / SiglipModel / their text models)"
    )


def is_extended(model: nn.Module) -> bool:
    """Whether :func:`extend_text_context` was already applied to ``model``."""
    kind, owner = _text_owner(model)
    target = owner.position_embedding if kind == "hf" else owner
    name = "weight" if kind == "hf" else "positional_embedding"
    return parametrize.is_parametrized(target, name)


def text_context_length(model: nn.Module) -> int:
    """Number of text positions the model accepts now (77 for CLIP, 248 once extended)."""
    kind, owner = _text_owner(model)
    if kind == "hf":
        return int(owner.position_embedding.weight.shape[0])
    return int(owner.context_length)


def extend_text_context(
    model: nn.Module,
    tokenizer: object | None = None,
    config: TextExtensionConfig | None = None,
) -> int:
    """Extend a CLIP-family text encoder's positions in place (asymmetric scheme, see module doc).

    Patches the position table, the context-length attributes, open_clip's causal attention mask
    (HF builds its mask from the input length) and, if given, the tokenizer's context length
    (``context_length`` for open_clip tokenizers, ``model_max_length`` for HF tokenizers/processors).

    Args:
        model: open_clip ``CLIP`` / ``CustomTextCLIP`` / ``TextTransformer`` or HF ``CLIPModel`` /
            ``SiglipModel`` / ``CLIPTextModel`` / ``SiglipTextModel``.
        tokenizer: optional tokenizer to update alongside.
        config: keep / factor / trainable; reference defaults when None.

    Returns:
        The new number of positions (248 for CLIP, 196 for SigLIP with the defaults).
    """
    config = config if config is not None else TextExtensionConfig()
    if is_extended(model):
        raise ValueError(f"{type(model).__name__}'s text positions are already extended")
    kind, owner = _text_owner(model)
    if kind == "hf":
        old = owner.position_embedding.weight
        embedding = nn.Embedding(
            config.extended_length(old.shape[0]), old.shape[1], device=old.device, dtype=old.dtype
        )
        length = _install_table(embedding, "weight", old, config)
        owner.position_embedding = embedding
        owner.position_ids = torch.arange(length, device=old.device).expand(1, -1)
        for cfg in {id(c): c for c in _hf_text_configs(model)}.values():
            cfg.max_position_embeddings = length
    else:
        if getattr(owner, "cls_emb", None) is not None:
            raise TypeError("open_clip text towers with a CLS embedding (CoCa) are not supported")
        config.extended_length(owner.positional_embedding.shape[0])  # validates before patching
        length = _install_table(owner, "positional_embedding", owner.positional_embedding, config)
        if getattr(owner, "attn_mask", None) is not None:
            owner.attn_mask = _causal_mask(length, owner.attn_mask)
        owner.context_length = length
        if hasattr(owner, "num_pos"):
            owner.num_pos = length
        if owner is not model and hasattr(model, "context_length"):
            model.context_length = length
    if tokenizer is not None:
        set_tokenizer_context(tokenizer, length)
    return length


def _hf_text_configs(model: nn.Module) -> list:
    configs = []
    config = getattr(model, "config", None)
    if config is not None:
        configs.append(getattr(config, "text_config", config))
    text_model = getattr(model, "text_model", None)
    if text_model is not None and getattr(text_model, "config", None) is not None:
        configs.append(text_model.config)
    return configs


def set_tokenizer_context(tokenizer: object, length: int) -> None:
    """Tell a tokenizer (open_clip, HF tokenizer or processor, or open_clip's HF wrapper) its new length."""
    for tok in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if tok is None:
            continue
        if hasattr(tok, "context_length"):
            tok.context_length = length
        if hasattr(tok, "model_max_length"):
            tok.model_max_length = length


def _warn_truncated(prompts: Sequence[str], lengths: Sequence[int], context_length: int) -> None:
    over = [(i, n) for i, n in enumerate(lengths) if n > context_length]
    if over:
        detail = ", ".join(f"prompt {i}: {n} tokens, {n - context_length} dropped" for i, n in over)
        warnings.warn(
            f"{len(over)} prompt(s) longer than the text encoder's {context_length} positions were "
            f"truncated ({detail}); extend the context with extend_text_context() to keep them",
            stacklevel=3,
        )


def _fit(ids: list[int], context_length: int, keep_last: bool) -> list[int]:
    if len(ids) <= context_length:
        return ids
    # keep the closing special token (EOS/EOT) the text pooling reads from
    return ids[: context_length - 1] + ids[-1:] if keep_last else ids[:context_length]


def tokenize_prompts(
    tokenizer: object | Callable[[list[str]], list[list[int]]],
    prompts: Sequence[str],
    context_length: int,
    pad_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to ``context_length``; prompts that are too long are truncated with a warning.

    Supported tokenizers:
      - open_clip ``SimpleTokenizer`` (has ``encode``, ``sot_token_id``, ``eot_token_id``): ``[SOT] text
        [EOT]``, padded with 0; truncation keeps the EOT last (as open_clip does).
      - HF tokenizers, HF processors (their ``.tokenizer``) and open_clip's ``HFTokenizer`` wrapper
        (its ``.tokenizer``): the tokenizer's own special tokens, ``padding="max_length"``.
      - any callable ``list[str] -> list[list[int]]`` returning ids with special tokens and no padding;
        truncation keeps the last id (the EOS); padded with ``pad_token_id`` (or the callable's
        ``pad_token_id`` attribute, else 0).

    Args:
        tokenizer: see above.
        prompts: ``batch`` strings.
        context_length: the text encoder's number of positions.
        pad_token_id: padding id for the callable case.

    Returns:
        ``input_ids`` ``(batch, context_length)`` long and ``attention_mask`` ``(batch, context_length)``
        long (1 = real token).
    """
    prompts = list(prompts)
    hf = _hf_tokenizer(tokenizer)
    if hf is not None:
        # verbose=False: we warn ourselves, with the count of dropped tokens
        lengths = [len(ids) for ids in hf(prompts, add_special_tokens=True, verbose=False)["input_ids"]]
        _warn_truncated(prompts, lengths, context_length)
        enc = hf(
            prompts, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt"
        )
        mask = enc.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(enc["input_ids"])
        return enc["input_ids"].long(), mask.long()

    if all(hasattr(tokenizer, a) for a in ("encode", "sot_token_id", "eot_token_id")):
        seqs = [[tokenizer.sot_token_id, *tokenizer.encode(p), tokenizer.eot_token_id] for p in prompts]
        pad = 0
    elif callable(tokenizer):
        seqs = [list(map(int, s)) for s in tokenizer(prompts)]
        pad = pad_token_id if pad_token_id is not None else getattr(tokenizer, "pad_token_id", 0) or 0
    else:
        raise TypeError(f"unsupported tokenizer {type(tokenizer).__name__}")
    _warn_truncated(prompts, [len(s) for s in seqs], context_length)
    ids = torch.full((len(seqs), context_length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), context_length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        seq = _fit(seq, context_length, keep_last=True)
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _hf_tokenizer(tokenizer: object):
    """The HF ``PreTrainedTokenizerBase`` behind ``tokenizer``, or None."""
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # transformers is a dependency, but keep open_clip-only use working
        return None
    for tok in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if isinstance(tok, PreTrainedTokenizerBase):
            return tok
    return None
