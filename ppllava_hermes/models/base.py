"""The contract between the streaming engine and one Hugging Face VLM family.

An adapter turns frames into visual tokens laid out on their grid, wraps visual tokens and text into
:class:`Segment`s (input embeddings + the positions the model's own ``get_rope_index`` would give +
token kinds), and runs the language model on one segment with a given cache. It knows nothing of the
streaming session, of memory policies or of pooling: the session drives the adapter.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..compat import cache_kwargs
from ..memory.cache import TokenKind, TokenMeta
from ..memory.rope import RopeSpec
from .templates import PromptFrame, prompt_frame


@dataclass
class VisualTokens:
    """Visual tokens of one chunk in the LLM's embedding space, on their grid.

    Attributes:
        features: ``(t, h, w, D)``: t temporal groups (Qwen2.5-VL: frame pairs; LLaVA-OneVision:
            frames), an h x w token grid each.
        suffix: ``(k, D)`` tokens the family appends after the grid (LLaVA-OneVision's newline), not pooled.
        group_times: ``(t,)`` float seconds: timestamp of each group's first frame.
        group_frame_ids: ``(t,)`` long: stream index of each group's first frame.
        seconds_per_group: time one temporal group spans (Qwen2.5-VL's ``second_per_grid_ts``).
    """

    features: torch.Tensor
    suffix: torch.Tensor
    group_times: torch.Tensor
    group_frame_ids: torch.Tensor
    seconds_per_group: float

    def __post_init__(self) -> None:
        if self.features.ndim != 4:
            raise ValueError(f"features must be (t, h, w, D), got {tuple(self.features.shape)}")
        t = self.features.shape[0]
        if self.group_times.shape != (t,) or self.group_frame_ids.shape != (t,):
            raise ValueError(f"group_times / group_frame_ids must have length t={t}")

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w, _ = self.features.shape
        return t, h, w

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w + self.suffix.shape[0]

    def with_features(self, features: torch.Tensor, group_times: torch.Tensor, group_frame_ids: torch.Tensor,
                      seconds_per_group: float) -> VisualTokens:
        """The same chunk with a new grid (e.g. after pooling)."""
        return replace(self, features=features, group_times=group_times, group_frame_ids=group_frame_ids,
                       seconds_per_group=seconds_per_group)


@dataclass
class Segment:
    """A run of tokens ready for the language model.

    Attributes:
        embeds: ``(L, D)`` input embeddings.
        meta: positions ``(pos_dims, L)``, frame ids and kinds (see :class:`TokenMeta`).
        next_position: the position the next segment starts at (the model's own rule).
    """

    embeds: torch.Tensor
    meta: TokenMeta
    next_position: int

    def __len__(self) -> int:
        return self.embeds.shape[0]


def load_processors(path):
    """The tokenizer and video processor saved with a checkpoint; ``None`` for the video processor when the
    folder has none (the adapter then builds the family's default from the model config)."""
    from transformers import AutoTokenizer, AutoVideoProcessor

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        video_processor = AutoVideoProcessor.from_pretrained(path)
    except (OSError, ValueError):
        video_processor = None
    return tokenizer, video_processor


def load_chat_template(path) -> str | None:
    """The chat template of the checkpoint's processor (``chat_template.json`` / ``.jinja``); None when the
    folder has no multimodal processor or it has no template (the adapter then uses its family's format)."""
    from transformers import AutoProcessor, ProcessorMixin

    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception:  # noqa: BLE001 - optional: a folder without a loadable processor uses the family's format
        return None
    template = getattr(processor, "chat_template", None) if isinstance(processor, ProcessorMixin) else None
    return template if isinstance(template, str) else None


def text_meta(length: int, start: int, pos_dims: int, kind: TokenKind, frame_id: int = -1) -> TokenMeta:
    """Positions ``start .. start+length-1`` on every axis (text uses 1-D positions, copied per axis)."""
    pos = torch.arange(start, start + length, dtype=torch.long)
    return TokenMeta(
        positions=pos.unsqueeze(0).expand(pos_dims, -1).clone(),
        frame_ids=torch.full((length,), frame_id, dtype=torch.long),
        kinds=torch.full((length,), int(kind), dtype=torch.long),
    )


LOGITS_MODES = ("all", "last", "none")


def check_logits_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one of :data:`LOGITS_MODES` (called before any forward runs)."""
    if mode not in LOGITS_MODES:
        raise ValueError(f"logits must be one of {LOGITS_MODES}, got {mode!r}")


def lm_head_logits(head: torch.nn.Module, hidden: torch.Tensor, mode: str) -> torch.Tensor | None:
    """``hidden`` ``(1, L, D)`` -> logits of every position ``(1, L, V)``, of the last ``(1, 1, V)``, or None
    (``mode`` checked by the caller with :func:`check_logits_mode` before its forward)."""
    if mode == "none":
        return None
    return head(hidden[:, -1:] if mode == "last" else hidden)


class LMAdapter(ABC):
    """The language-model half of an adapter: what the KV engine (``streaming/engine.py``) drives.

    Tokenizing, text segments at explicit positions, one forward of the language model on a cache, the
    RoPE spec, stop tokens and the ChatML prompt frame. Subclasses say where the HF text model lives and
    which ``position_ids`` it takes (:meth:`lm_positions`).
    """

    #: 3 for M-RoPE (t, h, w), 1 for 1-D RoPE.
    pos_dims: int = 1
    family: str = ""

    def __init__(self, model, tokenizer, system_prompt: str = "You are a helpful assistant.") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        # How this model is best asked a standing query (a ``streaming.watch.WatchConfig``; None: the
        # default yes/no prompt). A model trained for watches (ShapesWorld stage 4) sets its own.
        self.watch_config = None

    # ---- properties every family provides -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def language_model(self) -> torch.nn.Module:
        """The HF text model (the decoder stack without the LM head)."""
        return self.model.model

    @property
    def text_config(self):
        return self.language_model.config

    @property
    def num_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def eos_token_ids(self) -> list[int]:
        ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.add(eos)
        return sorted(i for i in ids if i is not None and i >= 0)

    def rope_spec(self) -> RopeSpec:
        rotary = self.language_model.rotary_emb
        section = getattr(rotary, "mrope_section", None)
        return RopeSpec(
            inv_freq=rotary.inv_freq.detach().float().cpu().clone(),
            mrope_section=tuple(section) if (section is not None and self.pos_dims == 3) else None,
            attention_scaling=float(getattr(rotary, "attention_scaling", 1.0)),
            max_position_embeddings=int(self.text_config.max_position_embeddings),
        )

    # ---- prompt format (ChatML for both families) -----------------------------------------------
    def prefix_text(self) -> str:
        """Text before the first video chunk: the system turn and the opening of the user turn."""
        return f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n<|im_start|>user\n"

    def question_text(self, question: str) -> str:
        """Text after the video: the question, closing the user turn and opening the answer."""
        return f"{question}<|im_end|>\n<|im_start|>assistant\n"

    def tokenize(self, text: str) -> torch.Tensor:
        """``(L,)`` long token ids, no special tokens added."""
        return torch.tensor(self.tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``(L,)`` ids -> ``(L, D)`` input embeddings."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def text_segment(self, ids: torch.Tensor, start: int, kind: TokenKind = TokenKind.TEXT,
                     frame_id: int = -1) -> Segment:
        """Text ``ids`` ``(L,)`` at positions ``start..start+L-1``; ``frame_id`` tags a text stream's chunk."""
        meta = text_meta(len(ids), start, self.pos_dims, kind, frame_id)
        return Segment(self.embed_ids(ids), meta, start + len(ids))

    # ---- family-specific ------------------------------------------------------------------------
    @abstractmethod
    def lm_positions(self, meta: TokenMeta) -> torch.Tensor:
        """The ``position_ids`` tensor the language model takes for one segment (batch 1)."""

    def forward(self, segment_embeds: torch.Tensor, meta: TokenMeta, cache, output_attentions: bool = False,
                logits: str = "all"):
        """Run the language model on one segment. Returns ``(logits, attentions or None)``.

        ``logits``: "all" ``(1, L, V)``, "last" ``(1, 1, V)`` (the next token's only) or "none" (None): the LM
        head over a whole chunk is ~V / hidden times the chunk's hidden states and is not needed to stream.
        Keys and values are appended to ``cache``; the caller commits ``meta`` afterwards.
        """
        check_logits_mode(logits)
        out = self.language_model(
            inputs_embeds=segment_embeds.unsqueeze(0).to(self.dtype),
            position_ids=self.lm_positions(meta).to(self.device),
            use_cache=True,
            **cache_kwargs(self.language_model, cache),
            output_attentions=output_attentions,
        )
        return lm_head_logits(self.model.lm_head, out.last_hidden_state, logits), (
            out.attentions if output_attentions else None)

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Temporarily use eager attention so that attention weights can be returned (memory probes)."""
        config = self.language_model.config
        previous = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = previous

    # ---- the memory probe's hook point (``models/probe.py``) -------------------------------------
    def attention_modules(self) -> list[torch.nn.Module]:
        """The self-attention module of each decoder layer, in layer order: the probe hooks their query
        projections (``q_proj``, or ``q_norm`` where the family normalises queries) and their outputs."""
        return [layer.self_attn for layer in self.language_model.layers]

    def probe_forward(self, segment_embeds: torch.Tensor, meta: TokenMeta, cache,
                      attention_mask: torch.Tensor | None = None) -> None:
        """Run the decoder stack on text probe tokens, without the LM head (the probe reads what it needs
        through hooks; keys and values are appended to ``cache``, which the caller cuts back).

        Args:
            segment_embeds: ``(L, D')`` input embeddings of text tokens; the first ``hidden_size`` channels
                are used (a family that packs more per row, Qwen3-VL's DeepStack, leaves zeros there for text).
            meta: the tokens' positions (``(pos_dims, L)``) and kinds.
            attention_mask: None (causal over cache + tokens) or ``(1, 1, L, len(cache) + L)`` additive float
                mask in the model's dtype (several probe prompts in one forward, each seeing only the cache and
                itself).
        """
        self.language_model(
            inputs_embeds=segment_embeds[:, : self.text_config.hidden_size].unsqueeze(0).to(self.dtype),
            position_ids=self.lm_positions(meta).to(self.device),
            attention_mask=attention_mask,
            use_cache=True,
            **cache_kwargs(self.language_model, cache),
        )


class VLMAdapter(LMAdapter):
    """Base class of the per-family VLM adapters. Subclasses wrap a HF ``...ForConditionalGeneration``."""

    #: frames consumed per temporal group (Qwen2.5-VL: 2).
    frames_per_group: int = 1
    #: what the family's chat template writes for one video part (``models/templates.py``).
    video_text: str = ""
    #: the family's published chat format, used when the checkpoint ships no template (None: the
    #: ChatML frame of :class:`LMAdapter`).
    default_chat_template: str | None = None

    def __init__(self, model, tokenizer, video_processor, system_prompt: str = "You are a helpful assistant.",
                 chat_template: str | None = None) -> None:
        super().__init__(model, tokenizer, system_prompt)
        self.video_processor = video_processor
        self.chat_template = chat_template or self.default_chat_template
        self._frames: dict[tuple[str, str | None], PromptFrame] = {}

    # ---- prompt format: the checkpoint's chat template, cut into the stream's pieces ------------
    @property
    def prompt_frame(self) -> PromptFrame:
        """Prefix, text after each video and answer opening for the current system prompt
        (:func:`templates.prompt_frame`; plain ChatML without a template)."""
        key = (self.system_prompt, self.chat_template)
        if key not in self._frames:
            if self.chat_template is None:
                self._frames[key] = PromptFrame(LMAdapter.prefix_text(self), "", LMAdapter.question_text(self, ""))
            else:
                self._frames[key] = prompt_frame(self.tokenizer, self.chat_template, self.video_text, self.system_prompt)
        return self._frames[key]

    def prefix_text(self) -> str:
        """Text before the first video chunk: the system turn and the opening of the user turn."""
        return self.prompt_frame.prefix

    def question_text(self, question: str) -> str:
        """Text after the video: the question, closing the user turn and opening the answer."""
        return question + self.prompt_frame.answer_open

    def after_video_ids(self) -> torch.Tensor:
        """``(k,)`` ids of the text the chat format writes after each video (part of each chunk)."""
        return self.tokenize(self.prompt_frame.after_video)

    def save_pretrained(self, path) -> None:
        """Save model, tokenizer and video processor in one folder that ``from_pretrained`` reloads."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.video_processor.save_pretrained(path)

    @property
    def language_model(self) -> torch.nn.Module:
        """The HF text model inside ``...ForConditionalGeneration`` (both families nest it the same way)."""
        return self.model.model.language_model

    @classmethod
    def _load(cls, model_cls, path, *, dtype, device, attn_implementation, **kwargs):
        """Load ``model_cls`` from ``path`` with the tokenizer and video processor saved beside it."""
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = model_cls.from_pretrained(path, dtype=dtype, **extra).eval()
        if device:
            model = model.to(device)
        tokenizer, video_processor = load_processors(path)
        kwargs.setdefault("chat_template", load_chat_template(path))
        return cls(model, tokenizer, video_processor, **kwargs)

    # ---- family-specific: video -----------------------------------------------------------------
    @abstractmethod
    def encode_frames(self, frames: np.ndarray, timestamps: np.ndarray, first_frame_id: int) -> VisualTokens:
        """``(T, H, W, 3)`` uint8 frames -> visual tokens; ``T`` must be a multiple of ``frames_per_group``."""

    @abstractmethod
    def visual_segment(self, visual: VisualTokens, start: int) -> Segment:
        """Wrap a chunk's visual tokens (with the family's delimiters) into a segment at ``start``."""
