"""The model trained by the training scripts: a VLM with prompt-guided pooling between vision and LLM.

:class:`PooledVideoLM` is an ``nn.Module`` holding the VLM (through its adapter), the pooling module and
an optional CLIP relevance scorer. Its forward takes a :func:`collate_video_batch` batch and returns
the hidden states of the answer tokens of every row, computed on the exact sequence the streaming
session builds at question time (see :mod:`.sequence`): frames -> session chunks -> VLM visual tokens
-> relevance of the question (question-only text into CLIP) -> pooled tokens -> prefix, visual
segments, question, answer -> language model (no cache) -> hidden states.

Batch layout (one dict, tensors plus a few Python lists; shared by SFT and by the TRL DPO collator):

* ``videos``: list of ``V`` :class:`~.data.VideoInput`; ``clip_queries``: ``V`` strings;
* ``prompt_ids`` ``(V, Lq)`` / ``prompt_lengths`` ``(V,)``: ids of ``adapter.question_text(q)``, right-padded;
* ``input_ids`` ``(N, W)``: per row the *completion window*: the question's last token, then the answer
  tokens (and the end-of-turn token), right-padded; ``attention_mask`` ``(N, W)`` marks real tokens,
  ``completion_mask`` ``(N, W)`` the answer tokens (the loss);
* ``video_index`` ``(N,)``: the video (and prompt) of each row; DPO puts chosen and rejected rows of
  one pair on the same video, which is encoded and pooled once.

Only the window goes through the LM head: hidden state ``j`` of the window predicts window token
``j + 1``, the layout TRL's fused log-prob head expects of ``input_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import VisualTokens, VLMAdapter
from ..pooling import PromptGuidedPooling
from ..pooling.relevance import VideoPatchFeatures
from ..streaming.pooling_stage import pool_visual
from .data import VideoInput
from .sequence import append_text, context_sequence, encode_chunks, run_language_model, stack_sequences


@dataclass
class PooledChunk:
    """One chunk after pooling: its visual tokens and the times of its real frames."""

    visual: VisualTokens
    frame_times: np.ndarray


@dataclass
class VideoLMOutput:
    """Output of :meth:`PooledVideoLM.forward`.

    Attributes:
        hidden: ``(N, W, D)`` hidden states over each row's completion window.
        logits: ``(N, W - 1, V)`` next-token logits of window positions ``0..W-2`` (predicting ``1..W-1``).
        loss: mean cross-entropy over the answer tokens (``completion_mask``), or None without a mask.
        visual_tokens: ``(V,)`` visual tokens each video gave the LLM (the token budget).
    """

    hidden: torch.Tensor
    logits: torch.Tensor | None
    loss: torch.Tensor | None
    visual_tokens: torch.Tensor


class PooledVideoLM(nn.Module):
    """VLM + prompt-guided pooling (+ CLIP relevance) as one trainable module.

    Args:
        adapter: the VLM's adapter; its HF model becomes submodule ``vlm``.
        pooling: the pooling module (submodule ``pooling``).
        scorer: a ``RelevanceScorer`` (submodule ``scorer``), or None for plain average pooling.
        chunk_frames: frames per session chunk (``StreamConfig.chunk_frames``), pooled one by one.
        pool: False skips the pooling stage (the unpooled baseline, full token budget).
    """

    def __init__(self, adapter: VLMAdapter, pooling: PromptGuidedPooling, scorer: nn.Module | None = None,
                 chunk_frames: int = 8, pool: bool = True) -> None:
        super().__init__()
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.adapter = adapter
        self.vlm = adapter.model
        self.pooling = pooling
        self.scorer = scorer
        self.chunk_frames = chunk_frames
        self.pool = pool
        #: encode frames with gradients (set when the projector is trained)
        self.encode_with_grad = False
        #: frozen encodings kept across batches by ``VideoInput.key`` (see :meth:`enable_feature_cache`)
        self.feature_cache: dict | None = None
        self.prefix_ids = adapter.tokenize(adapter.prefix_text())

    # ---- visual side ---------------------------------------------------------------------------
    def enable_feature_cache(self) -> None:
        """Keep frozen encodings (VLM visual tokens unless the projector trains, CLIP patch features) of
        every video with a ``key`` for the model's lifetime: epochs after the first skip both vision
        towers. Memory grows with the number of distinct videos; meant for small data sets."""
        self.feature_cache = {}

    def _cache(self, video: VideoInput) -> dict:
        if self.feature_cache is not None and video.key is not None:
            return self.feature_cache.setdefault(video.key, {})
        return video.cache

    def relevance(self, chunk_frames, clip_query: str, grid: tuple[int, int, int], cache: dict,
                  index: int) -> torch.Tensor | None:
        """``(1, t, h, w)`` relevance of a chunk's tokens to ``clip_query`` (None without a scorer).

        CLIP's vision tower is frozen: its patch features are memoised in ``cache``; the text side
        runs with gradients so the extended text positions can train.
        """
        if self.scorer is None:
            return None
        key = ("clip", id(self.scorer.model), self.chunk_frames, index)
        feats = cache.get(key)
        if feats is None:
            feats = self.scorer.encode_video(chunk_frames)
            cache[key] = feats
        return self.scorer.score(clip_query, VideoPatchFeatures(feats.features), grid=grid)

    def pooled_chunks(self, video: VideoInput, clip_query: str) -> list[PooledChunk]:
        """The video's chunks as the LLM gets them: encoded, scored against ``clip_query``, pooled."""
        cache = self._cache(video)
        chunks = encode_chunks(self.adapter, video, self.chunk_frames, grad=self.encode_with_grad, cache=cache)
        out = []
        for i, chunk in enumerate(chunks):
            visual = chunk.visual
            if self.pool:
                weights = self.relevance(chunk.frames, clip_query, visual.grid, cache, i)
                visual = pool_visual(visual, self.pooling, weights)
            out.append(PooledChunk(visual, chunk.frame_times))
        return out

    # ---- language side -------------------------------------------------------------------------
    def answer_hidden(self, input_ids: torch.Tensor, video_index: torch.Tensor, videos: list[VideoInput],
                      prompt_ids: torch.Tensor, prompt_lengths: torch.Tensor, clip_queries: list[str],
                      **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(N, W, D)`` over each row's completion window, and ``(V,)`` visual token counts."""
        if len(videos) != prompt_ids.shape[0] or len(clip_queries) != len(videos):
            raise ValueError(f"{len(videos)} videos, {prompt_ids.shape[0]} prompts, {len(clip_queries)} CLIP queries")
        input_ids = input_ids.cpu()
        contexts, budgets = [], []
        for v, video in enumerate(videos):
            pooled = self.pooled_chunks(video, clip_queries[v])
            budgets.append(sum(c.visual.num_tokens for c in pooled))
            q = prompt_ids[v, : int(prompt_lengths[v])].cpu()
            contexts.append(context_sequence(self.adapter, self.prefix_ids, [c.visual for c in pooled], q))
        width = input_ids.shape[1]
        rows, starts = [], []
        for n in range(input_ids.shape[0]):
            v = int(video_index[n])
            if input_ids[n, 0] != prompt_ids[v, int(prompt_lengths[v]) - 1].cpu():
                raise ValueError(f"row {n}: its window does not start with the last token of video {v}'s question")
            ctx = contexts[v]
            rows.append(append_text(self.adapter, ctx, input_ids[n, 1:]))
            starts.append(len(ctx) - 1)  # the question's last token opens the window
        embeds, positions = stack_sequences(self.adapter, rows)
        hidden = run_language_model(self.adapter, embeds, positions)
        index = torch.tensor(starts, device=hidden.device).unsqueeze(1) + torch.arange(width, device=hidden.device)
        window = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return window, torch.tensor(budgets)

    def forward(self, input_ids: torch.Tensor, completion_mask: torch.Tensor | None = None, *,
                compute_logits: bool = True, **batch: object) -> VideoLMOutput:
        """Window hidden states, next-token logits and the answer-token cross-entropy (see module doc)."""
        hidden, budgets = self.answer_hidden(input_ids, **batch)
        logits = loss = None
        if compute_logits or completion_mask is not None:
            logits = self.vlm.lm_head(hidden[:, :-1])
        if completion_mask is not None:
            labels = input_ids[:, 1:].to(logits.device).masked_fill(completion_mask[:, 1:].to(logits.device) == 0, -100)
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return VideoLMOutput(hidden, logits, loss, budgets)


# ---- batches -------------------------------------------------------------------------------------
def answer_ids(adapter: VLMAdapter, answer: str) -> torch.Tensor:
    """``(La,)`` ids of an answer followed by the end-of-turn token the session stops on.

    A trailing end-of-turn string (TRL appends the tokenizer's EOS to completions) is not doubled.
    """
    end_token = "<|im_end|>"
    end_id = adapter.tokenizer.convert_tokens_to_ids(end_token)
    text = answer.strip()
    eos = adapter.tokenizer.eos_token
    for suffix in {end_token, eos} - {None}:
        if text.endswith(suffix):
            text = text[: -len(suffix)].rstrip()
    ids = adapter.tokenize(text)
    return torch.cat([ids, torch.tensor([end_id], dtype=torch.long)])


def collate_video_batch(adapter: VLMAdapter, videos: list[VideoInput], questions: list[str],
                        clip_queries: list[str], completions: list[tuple[int, str]]) -> dict:
    """Build a batch (module doc) from ``V`` videos with their questions and ``N`` completion rows.

    Args:
        videos, questions, clip_queries: per video: frames, the question the VLM is asked, the CLIP text.
        completions: ``(video index, answer text)`` per row, in row order.
    """
    if not (len(videos) == len(questions) == len(clip_queries)):
        raise ValueError("videos, questions and clip_queries must have the same length")
    pad_id = adapter.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    prompts = [adapter.tokenize(adapter.question_text(q)) for q in questions]
    lq = max(len(p) for p in prompts)
    prompt_ids = torch.full((len(prompts), lq), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, : len(p)] = p
    answers = [answer_ids(adapter, text) for _, text in completions]
    width = 1 + max(len(a) for a in answers)
    input_ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(answers), width), dtype=torch.long)
    completion = torch.zeros((len(answers), width), dtype=torch.long)
    for n, ((v, _), a) in enumerate(zip(completions, answers, strict=True)):
        input_ids[n, 0] = prompts[v][-1]
        input_ids[n, 1 : 1 + len(a)] = a
        attention[n, : 1 + len(a)] = 1
        completion[n, 1 : 1 + len(a)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "completion_mask": completion,
        "video_index": torch.tensor([v for v, _ in completions], dtype=torch.long),
        "prompt_ids": prompt_ids,
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        "videos": list(videos),
        "clip_queries": list(clip_queries),
    }
