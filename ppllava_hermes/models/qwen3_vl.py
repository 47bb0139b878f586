"""Adapter for Qwen3-VL: interleaved M-RoPE, DeepStack, and the timestamps its processor writes.

Specification. A chunk of ``T`` frames (``T`` a multiple of ``temporal_patch_size`` = 2) goes through the
family's own HF video processor and vision tower (``Qwen3VLModel.get_video_features``) and enters the
language model laid out exactly as ``Qwen3VLProcessor`` + ``Qwen3VLModel.get_rope_index`` lay out a video:

- **One segment per temporal group** (a frame pair): the processor writes, for every group,
  ``<{time:.1f} seconds><|vision_start|>`` + ``h*w`` video tokens + ``<|vision_end|>``, where ``time`` is
  the mean of the group's first and last frame times (``Qwen3VLProcessor._calculate_timestamps``), and
  ``get_rope_index`` splits a video into ``t`` grids of one group each. So the timestamp and delimiter
  tokens take text positions (one after another), the group's grid tokens take ``(t, h, w) =
  (p, p + row, p + col)`` from ``get_vision_position_ids`` at the current position ``p`` (temporal
  position constant inside the group: time is carried by the text, not by the positions), and text
  resumes at ``p + max(h, w)``. A stream of chunks is therefore token-for-token and position-for-position
  the one-shot prompt of the whole video: nothing of the layout depends on where chunks are cut.
- **Vision encoding is per frame pair** in the tower (``cu_seqlens`` of one group each, position
  embeddings interpolated per group from ``h, w``), so a chunk's features equal those the one-shot
  forward computes for the same groups.
- **DeepStack**: the tower also returns ``K = len(deepstack_visual_indexes)`` feature maps from its
  intermediate blocks, which the text model adds to the hidden states of the visual tokens after decoder
  layers ``0 .. K-1``. They are carried *inside* the visual tokens: ``VisualTokens.features`` is
  ``(t, h, w, (1 + K) * D)``, the merger's output followed by the K DeepStack maps (channel blocks of
  ``D``), and every :class:`Segment` this adapter builds has ``(L, (1 + K) * D)`` embeddings (zeros in the
  DeepStack blocks of text, timestamp and delimiter rows). :meth:`Qwen3VLAdapter.forward` splits them and
  calls the HF text model with its own ``visual_pos_masks`` / ``deepstack_visual_embeds`` arguments for the
  segment's ``VISUAL`` rows, so each chunk's DeepStack features are added to that chunk's own tokens during
  its prefill, at the layers the one-shot forward adds them (adding the zero rows of the delimiters and
  timestamps changes nothing: ``x + 0 == x``). Keys cached at those layers already hold the DeepStack
  contribution, so later chunks and questions see what they see in the one-shot forward.
- **Pooling** (``ppllava_hermes.pooling``, before the LLM) has no counterpart in the model, so it cannot be
  "exact"; because the DeepStack maps travel as channels of the same token, the pooling stage averages them
  with the same window weights and kernel as the main features, which keeps every pooled token's main and
  DeepStack parts the same mixture of source tokens. A pooled temporal group (stride ``st``) is one
  segment as above, whose timestamp is the mean of its first and last frame times.
- **The video part of the prompt**: the processor Qwen3-VL was released with (``transformers`` 4.57)
  replaced the chat template's whole ``<|vision_start|><|video_pad|><|vision_end|>`` by the per-group
  blocks above; that is the default layout. ``transformers`` >= 5 replaces only ``<|video_pad|>``, so a
  prompt rendered with the chat template keeps one outer ``<|vision_start|>`` / ``<|vision_end|>`` around
  the whole video. ``video_wrapper=True`` reproduces that too, exactly: the outer ``<|vision_start|>``
  ends the prefix and the outer ``<|vision_end|>`` opens each question, the per-group
  blocks in between are unchanged. Either way a stream is one video however it is cut into chunks.
- **Positions and memory**: the RoPE spec is M-RoPE with ``mrope_interleaved`` (frequency ``j`` follows
  axis ``j % 3`` within the h/w sections, t elsewhere; see ``memory.rope``), so memory policies move
  cached keys exactly; a chunk is one commit, so re-indexing moves it rigidly.

What cannot be streamed exactly, and the closest exact alternative:

- The processor's pixel budget (``size["shortest_edge"]`` / ``["longest_edge"]``, and
  ``cap_pixels_per_frame``) is a budget for the whole *video*: the resolution it picks depends on how many
  frames the video has, which a stream does not know in advance. Streamed, each chunk is resized within the
  budget for the chunk. Exact alternative: a per-frame resolution fixed up front (frames resized to a
  multiple of ``patch_size * merge_size`` before streaming, with bounds that do not bind, as
  :func:`default_video_processor` does); then chunked and one-shot encodings are identical.
- Frame sampling (``do_sample_frames``, ``fps``) needs the whole video; the session samples, so the adapter
  always calls the processor with ``do_sample_frames=False``.
- The gate of ``streaming.sparsity`` needs a chunk's grid as one run of tokens; Qwen3-VL writes a
  timestamp between groups, so gating works only for chunks of one frame pair (it raises otherwise).

Knows nothing of streaming sessions, memory policies or pooling beyond the layout above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..compat import cache_kwargs
from ..memory.cache import TokenKind, TokenMeta
from ..memory.rope import RopeSpec
from .base import Segment, VisualTokens, VLMAdapter, check_logits_mode, lm_head_logits, text_meta
from .qwen2_5_vl import seconds_per_group


@dataclass
class Qwen3VLVisualTokens(VisualTokens):
    """:class:`VisualTokens` that also keep the chunk's frame times, for the timestamps of the prompt.

    Attributes:
        frame_times: ``(T,)`` float64 seconds of the chunk's frames ``first_frame_id .. first_frame_id + T - 1``
            (padding copies included): a group's timestamp is the mean of its first and last frame's.
        first_frame_id: stream index of the chunk's first frame.

    ``features`` is ``(t, h, w, (1 + K) * D)``: main features, then the K DeepStack maps. Pooling keeps
    this class (``with_features`` is a ``dataclasses.replace``) and these two fields, which stay valid:
    pooled groups still start at one of the chunk's frames.
    """

    frame_times: torch.Tensor
    first_frame_id: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frame_times.ndim != 1 or len(self.frame_times) < self.features.shape[0]:
            raise ValueError(f"frame_times must be (T,) with T >= t={self.features.shape[0]} groups")


class Qwen3VLAdapter(VLMAdapter):
    """Wraps ``Qwen3VLForConditionalGeneration`` and ``Qwen3VLMoeForConditionalGeneration`` (the MoE
    members share the vision tower, DeepStack, RoPE and prompt; see the module docstring for the layout)."""

    pos_dims = 3
    family = "qwen3_vl"
    #: what the chat template writes for a video part; the adapter writes the per-group blocks instead.
    video_text = "<|vision_start|><|video_pad|><|vision_end|>"

    def __init__(self, model, tokenizer, video_processor=None, *, video_wrapper: bool = False, **kwargs) -> None:
        """``video_wrapper``: keep the chat template's outer ``<|vision_start|>`` / ``<|vision_end|>`` around
        the video, as ``transformers`` >= 5's processor renders it (module docstring); default: the
        released processor's layout, without it."""
        if video_processor is None:
            video_processor = default_video_processor(model.config)
        super().__init__(model, tokenizer, video_processor, **kwargs)
        self.video_wrapper = bool(video_wrapper)
        vc = model.config.vision_config
        self.frames_per_group = int(vc.temporal_patch_size)
        self.merge = int(vc.spatial_merge_size)
        self.video_token_id = int(model.config.video_token_id)
        self.vision_start_id = int(model.config.vision_start_token_id)
        self.vision_end_id = int(model.config.vision_end_token_id)
        #: K: DeepStack maps, added after decoder layers 0 .. K-1.
        self.deepstack_levels = len(vc.deepstack_visual_indexes)
        self.hidden_size = int(self.text_config.hidden_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | str = "auto", device: str | None = None,
                        attn_implementation: str | None = None, **kwargs) -> Qwen3VLAdapter:
        """Load a real checkpoint (local folder, or a hub name where the hub is reachable)."""
        from transformers import AutoConfig, Qwen3VLForConditionalGeneration

        if AutoConfig.from_pretrained(path).model_type == "qwen3_vl_moe":
            from transformers import Qwen3VLMoeForConditionalGeneration as model_cls
        else:
            model_cls = Qwen3VLForConditionalGeneration
        return cls._load(model_cls, path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                         **kwargs)

    # ---- widths -----------------------------------------------------------------------------------
    @property
    def packed_width(self) -> int:
        """``(1 + K) * D``: the width of this adapter's features and segment embeddings."""
        return (1 + self.deepstack_levels) * self.hidden_size

    def _pad(self, embeds: torch.Tensor) -> torch.Tensor:
        """``(L, D)`` text embeddings -> ``(L, (1 + K) * D)`` with zero DeepStack blocks."""
        return torch.nn.functional.pad(embeds, (0, self.packed_width - embeds.shape[-1]))

    def rope_spec(self) -> RopeSpec:
        # Qwen3VLTextRotaryEmbedding always interleaves (it ignores the config's mrope_interleaved flag).
        return dataclasses.replace(super().rope_spec(), mrope_interleaved=True)

    def prefix_text(self) -> str:
        return super().prefix_text() + ("<|vision_start|>" if self.video_wrapper else "")

    def question_text(self, question: str) -> str:
        return ("<|vision_end|>" if self.video_wrapper else "") + super().question_text(question)

    def text_segment(self, ids: torch.Tensor, start: int, kind: TokenKind = TokenKind.TEXT,
                     frame_id: int = -1) -> Segment:
        """As the base class, with embeddings padded to :attr:`packed_width` (segments are concatenated)."""
        meta = text_meta(len(ids), start, self.pos_dims, kind, frame_id)
        return Segment(self._pad(self.embed_ids(ids)), meta, start + len(ids))

    # ---- video ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, timestamps: np.ndarray, first_frame_id: int) -> Qwen3VLVisualTokens:
        """``(T, H, W, 3)`` uint8 -> tokens ``(t, h, w, (1 + K) * D)`` with ``t = T / 2``."""
        if len(frames) == 0 or len(frames) % self.frames_per_group:
            raise ValueError(
                f"Qwen3-VL encodes frames in groups of {self.frames_per_group}; got {len(frames)} frames"
            )
        # The session samples frames; a saved processor would otherwise resample the chunk (fps=2 default).
        batch = self.video_processor(videos=[np.asarray(frames)], do_sample_frames=False, return_tensors="pt")
        grid = batch["video_grid_thw"].to(self.device)
        pixels = batch["pixel_values_videos"].to(self.device, self.model.model.visual.dtype)
        out = self.model.model.get_video_features(pixels, grid)
        main = out.pooler_output[0]  # (t*h*w, D), grid order
        deep = [levels[0] for levels in out.deepstack_features]  # K x (t*h*w, D)
        t, gh, gw = (int(x) for x in grid[0])
        h, w = gh // self.merge, gw // self.merge
        features = torch.cat([main, *deep], dim=-1).reshape(t, h, w, -1)
        times = np.asarray(timestamps, dtype=np.float64)
        return Qwen3VLVisualTokens(
            features=features,
            suffix=features.new_zeros(0, features.shape[-1]),
            group_times=torch.as_tensor(times[:: self.frames_per_group][:t]),
            group_frame_ids=first_frame_id + torch.arange(t, dtype=torch.long) * self.frames_per_group,
            seconds_per_group=seconds_per_group(times, self.frames_per_group),
            frame_times=torch.as_tensor(times),
            first_frame_id=int(first_frame_id),
        )

    def group_timestamps(self, visual: VisualTokens) -> list[float]:
        """Seconds written before each temporal group: the mean of its first and last frame times, as
        ``Qwen3VLProcessor._calculate_timestamps`` computes them. Plain :class:`VisualTokens` (no frame
        times) use the group's start plus half the span between its first and last frame."""
        t = visual.grid[0]
        if isinstance(visual, Qwen3VLVisualTokens):
            ids = (visual.group_frame_ids.cpu() - visual.first_frame_id).tolist()
            times = visual.frame_times.tolist()
            # A group ends where the next starts; the last spans as many frames as the others (pooling
            # that dropped trailing groups leaves frames after it), or to the chunk's end.
            last = len(times) if t == 1 else min(len(times), ids[-1] + ids[1] - ids[0])
            ends = ids[1:] + [last]
            return [(times[a] + times[b - 1]) / 2 for a, b in zip(ids, ends, strict=True)]
        span = visual.seconds_per_group * (1 - 1 / self.frames_per_group)
        return [float(x) + span / 2 for x in visual.group_times[:t].tolist()]

    def timestamp_text(self, seconds: float) -> str:
        """The processor's text for one group's time."""
        return f"<{seconds:.1f} seconds>"

    def visual_segment(self, visual: VisualTokens, start: int) -> Segment:
        """Per group: timestamp + ``<|vision_start|>`` (text positions), the ``h*w`` grid tokens (M-RoPE
        positions of a one-group grid), ``<|vision_end|>``. All rows are ``VISUAL``, tagged with the group's
        first frame, so policies evict a group's timestamp and delimiters with its tokens."""
        _, h, w = visual.grid
        width = visual.features.shape[-1]
        if width != self.packed_width:
            raise ValueError(f"Qwen3-VL visual tokens must have (1 + K) * D = {self.packed_width} channels "
                             f"(main + {self.deepstack_levels} DeepStack maps), got {width}")
        grid_pos = self.model.model.get_vision_position_ids(0, torch.tensor([1, h, w]), 1, 1, device="cpu").long()
        end_embed = self._pad(self.embed_ids(torch.tensor([self.vision_end_id])))
        embeds, positions, frame_ids = [], [], []
        pos = start
        for g, seconds in enumerate(self.group_timestamps(visual)):
            head = torch.cat([self.tokenize(self.timestamp_text(seconds)), torch.tensor([self.vision_start_id])])
            n_head = len(head)
            grid_tokens = visual.features[g].reshape(h * w, width)
            embeds += [self._pad(self.embed_ids(head)), grid_tokens.to(end_embed.dtype), end_embed]
            grid_start = pos + n_head
            end_pos = grid_start + max(h, w)  # get_rope_index: text resumes after the grid's h/w extent
            positions += [
                torch.arange(pos, grid_start).unsqueeze(0).expand(3, -1),
                grid_pos + grid_start,
                torch.full((3, 1), end_pos),
            ]
            frame_ids.append(torch.full((n_head + h * w + 1,), int(visual.group_frame_ids[g]), dtype=torch.long))
            pos = end_pos + 1
        embeds_t = torch.cat(embeds, dim=0)
        kinds = torch.full((embeds_t.shape[0],), int(TokenKind.VISUAL), dtype=torch.long)
        meta = TokenMeta(torch.cat(positions, dim=1).long(), torch.cat(frame_ids), kinds)
        return Segment(embeds_t, meta, pos)

    # ---- the language model -----------------------------------------------------------------------
    def lm_positions(self, meta: TokenMeta) -> torch.Tensor:
        return meta.positions.unsqueeze(1)  # (3, 1, L)

    def forward(self, segment_embeds: torch.Tensor, meta: TokenMeta, cache, output_attentions: bool = False,
                logits: str = "all"):
        """Run the text model on one segment ``(L, (1 + K) * D)`` (or ``(L, D)``: no DeepStack).

        The first ``D`` channels are the input embeddings; the ``VISUAL`` rows' DeepStack blocks go to the
        HF text model as ``deepstack_visual_embeds`` (K x ``(n_visual, D)``) with ``visual_pos_masks``
        ``(1, L)``, which adds them after decoder layers ``0 .. K-1``. Returns ``(logits, attentions or
        None)``; ``logits`` as :meth:`LMAdapter.forward` ("all", "last" or "none").
        """
        check_logits_mode(logits)
        d = self.hidden_size
        x = segment_embeds.to(self.device)
        deepstack = {}
        visual = meta.kinds.to(torch.long) == int(TokenKind.VISUAL)
        if self.deepstack_levels and x.shape[-1] > d and bool(visual.any()):
            rows = x[visual.to(x.device), d:].to(self.dtype)
            deepstack = {
                "visual_pos_masks": visual.unsqueeze(0).to(self.device),
                "deepstack_visual_embeds": list(rows.split(d, dim=-1)),
            }
        out = self.language_model(
            inputs_embeds=x[:, :d].unsqueeze(0).to(self.dtype),
            position_ids=self.lm_positions(meta).to(self.device),
            use_cache=True,
            **cache_kwargs(self.language_model, cache),
            output_attentions=output_attentions,
            **deepstack,
        )
        return lm_head_logits(self.model.lm_head, out.last_hidden_state, logits), (
            out.attentions if output_attentions else None)


def default_video_processor(config):
    """A video processor for a config without a saved one (tiny test models): frames are only rounded to
    the patch multiple, with pixel bounds that never bind (so a frame's resolution does not depend on how
    many frames a chunk holds: chunked and one-shot encodings agree), and no frame sampling."""
    from transformers import Qwen3VLVideoProcessor

    vc = config.vision_config
    side = vc.patch_size * vc.spatial_merge_size
    return Qwen3VLVideoProcessor(
        patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size,
        merge_size=vc.spatial_merge_size,
        size={"shortest_edge": side * side * vc.temporal_patch_size, "longest_edge": 1 << 40},
        do_sample_frames=False,
        cap_pixels_per_frame=False,
    )
