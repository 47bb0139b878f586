"""TRL DPO on video with prompt-guided pooling: a video preference collator, a model wrapper, a trainer.

TRL's ``DPOTrainer`` handles images only (its vision collator builds ``pixel_values`` for a processor's
image placeholders); our sequence is not a token sequence with placeholders at all: the visual
tokens are pooled against the question (question-only text into CLIP) and get the adapter's
positions, chunk by chunk, as in the streaming session. So:

* :class:`VideoPreferenceCollator` turns rows ``{"prompt", "chosen", "rejected", "video"}`` (plus
  optional ``clip_query``, ``source``, ``line``) into the batch layout of
  :class:`~ppllava_hermes.training.model.PooledVideoLM` with ``2B`` rows, chosen rows first, as
  TRL expects (``chosen, rejected = logps.chunk(2)``); both rows of a pair share one video entry,
  encoded and pooled once. ``input_ids`` / ``completion_mask`` cover only the *completion window*
  (the question's last token, then the answer and its end-of-turn token): TRL reads nothing else.
* :class:`VideoDPOModel` is a ``PreTrainedModel`` around ``PooledVideoLM`` whose ``base_model``
  returns the hidden states of that window, so TRL's fused log-prob head (``add_fused_lm_head``:
  ``base_model(...)`` then ``lm_head`` on the positions with labels) and all of TRL's loss and metric
  code run unchanged. Its ``save_pretrained`` writes only the trained tensors.
* :class:`VideoDPOTrainer` subclasses ``DPOTrainer`` through public methods only (``__init__`` and
  ``evaluate``): it checks the settings video DPO needs (``remove_unused_columns=False`` so the
  ``video`` column reaches the collator, an explicit ``ref_model``) and gives each dataset untouched
  copies of the answers (``chosen_text`` / ``rejected_text``). TRL's own dataset preparation then runs
  as it likes (it appends EOS to ``chosen`` / ``rejected`` and tokenizes them as text-only sequences);
  the collator reads the copies and tokenizes the real sequence itself, so nothing TRL does to its
  columns reaches the model.
* Resuming goes through Trainer's own checkpoint loading: it calls ``model.load_state_dict(state,
  False)`` on the trained-tensor checkpoint, and :meth:`VideoDPOModel.load_state_dict` loads that subset
  strictly (a trained tensor missing raises) without reporting the frozen VLM weights, absent by design,
  as missing.
* :func:`checkpointing_kwargs` spells the activation-checkpointing flag the way the installed config
  does (``activation_checkpointing`` from transformers 5.24, ``gradient_checkpointing`` before).

Use :func:`reference_model` for the frozen reference: it shares the frozen VLM with the policy
(copies it only when VLM weights train: projector or LoRA) and copies pooling and CLIP.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from trl import DPOTrainer

from ..training.data import DataErrorLog, FrameSampling, VideoInput, VideoQAExample, question_only
from ..training.model import PooledVideoLM, collate_video_batch
from ..training.trainable import TrainableConfig, save_trained, trainable_state_dict

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected", "video")
#: ``answer column -> its untouched copy`` that the collator reads (TRL rewrites the answer columns).
RAW_ANSWER_COLUMNS = {"chosen": "chosen_text", "rejected": "rejected_text"}
WEIGHTS_NAME = "model.safetensors"
CHECKPOINTING_FLAGS = ("activation_checkpointing", "gradient_checkpointing")


def checkpointing_kwargs(config_class: type, enabled: bool) -> dict[str, bool]:
    """``{flag: enabled}`` for a Trainer config class, under the name its dataclass fields use.

    transformers 5.24 renamed ``TrainingArguments.gradient_checkpointing`` to ``activation_checkpointing``
    (the old name is a deprecated alias, removed in v6, and passing it warns); earlier releases have only
    the old name. Raises ``TypeError`` when the class has neither.
    """
    names = {f.name for f in dataclasses.fields(config_class)}
    for name in CHECKPOINTING_FLAGS:
        if name in names:
            return {name: enabled}
    raise TypeError(f"{config_class.__name__} has no activation checkpointing flag ({' / '.join(CHECKPOINTING_FLAGS)})")


def with_raw_answers(dataset: Any, dataset_name: str = "train") -> Any:
    """``dataset`` (a ``datasets.Dataset``) with ``chosen_text`` / ``rejected_text`` copies of its answers
    where it lacks them; raises ``ValueError`` when a column of :data:`REQUIRED_COLUMNS` is missing."""
    columns = list(dataset.column_names or [])
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"{dataset_name} dataset lacks column(s) {missing}; needs {list(REQUIRED_COLUMNS)}")
    todo = {src: dst for src, dst in RAW_ANSWER_COLUMNS.items() if dst not in columns}
    if not todo:
        return dataset
    return dataset.map(lambda row: {dst: row[src] for src, dst in todo.items()})


# ---- data ----------------------------------------------------------------------------------------
def make_video_loader(store: Mapping[str, VideoInput] | None = None,
                      sampling: FrameSampling | None = None) -> Callable[[str], VideoInput]:
    """``video column value -> VideoInput``: an id of ``store`` (in-memory frames), else a file read
    through the project's video reader (``VideoError`` propagates to the collator, which reports it)."""
    sampling = sampling or FrameSampling()

    def load(name: str) -> VideoInput:
        if store is not None and name in store:
            v = store[name]
            return VideoInput(v.frames, v.timestamps, key=name)  # a fresh per-batch cache
        from ..video import read_video

        clip = read_video(name, num_frames=sampling.num_frames, fps=sampling.fps,
                          max_frames=sampling.max_frames if sampling.fps is not None else None)
        return VideoInput(clip.frames, clip.timestamps, key=name)

    return load


def preference_rows(examples: list[VideoQAExample]) -> tuple[list[dict], dict[str, VideoInput]]:
    """Rows for a ``datasets.Dataset`` (strings only) and the store of in-memory frames they name.

    Examples without a ``rejected`` answer are left out (they are no preference pair).
    """
    rows, store = [], {}
    for ex in examples:
        if ex.rejected is None:
            continue
        if ex.frames is not None:
            store[ex.video] = VideoInput(ex.frames, ex.timestamps)
        rows.append({"prompt": ex.question, "chosen": ex.answer, "rejected": ex.rejected, "video": ex.video,
                     "chosen_text": ex.answer, "rejected_text": ex.rejected,
                     "clip_query": ex.clip_query, "source": ex.source, "line": -1 if ex.line is None else ex.line})
    return rows, store


class VideoPreferenceCollator:
    """TRL preference rows -> a ``PooledVideoLM`` batch with ``2B`` rows (module doc).

    The answers come from ``chosen_text`` / ``rejected_text`` where a row has them (the copies that TRL's
    dataset preparation leaves alone), else from ``chosen`` / ``rejected``.

    Args:
        adapter: the VLM adapter (tokenizer, chat format).
        video_loader: ``video`` value -> :class:`VideoInput` (see :func:`make_video_loader`).
        errors: a video that cannot be read is reported with the row's ``source`` / ``line`` and its pair
            dropped (skip) or raised (fail); a batch with no readable video raises in both modes.
    """

    def __init__(self, adapter, video_loader: Callable[[str], VideoInput], errors: DataErrorLog | None = None) -> None:
        self.adapter = adapter
        self.video_loader = video_loader
        self.errors = errors or DataErrorLog("fail")

    def __call__(self, examples: list[dict]) -> dict:
        from ..video import VideoError

        videos, questions, queries, chosen, rejected = [], [], [], [], []
        for ex in examples:
            missing = [c for c in REQUIRED_COLUMNS if not isinstance(ex.get(c), str) or not ex[c].strip()]
            line = ex.get("line")
            line = None if line is None or line < 0 else int(line)
            source = ex.get("source") or "<dataset>"
            if missing:
                self.errors.report(source, line, f"preference row without {missing}")
                continue
            try:
                video = self.video_loader(ex["video"])
            except (VideoError, FileNotFoundError, ValueError) as err:
                self.errors.report(source, line, f"cannot read video {ex['video']!r}: {err}")
                continue
            videos.append(video)
            questions.append(ex["prompt"])
            queries.append(ex.get("clip_query") or question_only(ex["prompt"]))
            chosen.append(ex.get(RAW_ANSWER_COLUMNS["chosen"]) or ex["chosen"])
            rejected.append(ex.get(RAW_ANSWER_COLUMNS["rejected"]) or ex["rejected"])
        if not videos:
            raise ValueError(f"no readable video in a batch of {len(examples)} preference rows ({self.errors.summary()})")
        rows = [(i, c) for i, c in enumerate(chosen)] + [(i, r) for i, r in enumerate(rejected)]
        return collate_video_batch(self.adapter, videos, questions, queries, rows)


# ---- model ---------------------------------------------------------------------------------------
class _WindowBackbone(nn.Module):
    """``base_model`` for TRL's fused head: batch -> ``last_hidden_state`` ``(N, W, D)`` of the windows."""

    def __init__(self, core: PooledVideoLM) -> None:
        super().__init__()
        self.core = core

    def forward(self, input_ids: torch.Tensor, use_cache: bool | None = None, **batch) -> BaseModelOutput:
        batch.pop("output_router_logits", None)
        hidden, _ = self.core.answer_hidden(input_ids, **batch)
        return BaseModelOutput(last_hidden_state=hidden)


class VideoDPOModel(PreTrainedModel):
    """A ``PooledVideoLM`` as the ``PreTrainedModel`` TRL trains (module doc).

    ``config`` is a copy of the VLM's (TRL writes pad ids into it); attention implementations are the
    VLM's own, so this wrapper declares support for all of them.
    """

    base_model_prefix = "backbone"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, core: PooledVideoLM, trainable: TrainableConfig | None = None) -> None:
        super().__init__(copy.deepcopy(core.vlm.config))
        self.backbone = _WindowBackbone(core)
        self.trainable = trainable or TrainableConfig()
        self.generation_config = copy.deepcopy(core.vlm.generation_config)

    @property
    def core(self) -> PooledVideoLM:
        return self.backbone.core

    def get_output_embeddings(self) -> nn.Module:
        return self.core.vlm.lm_head

    def get_input_embeddings(self) -> nn.Module:
        return self.core.vlm.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, **batch) -> CausalLMOutput:
        """Logits ``(N, W - 1, V)`` of the completion windows (TRL's unfused path)."""
        batch.pop("use_cache", None)
        batch.pop("labels", None)
        out = self.core(input_ids, **batch)
        return CausalLMOutput(logits=out.logits, loss=out.loss)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Always False (this wrapper does not checkpoint activations). TRL reads this deprecated name;
        answering here keeps transformers' deprecation warning for it out of every reference forward."""
        return False

    @property
    def is_activation_checkpointing(self) -> bool:
        """Always False (``supports_gradient_checkpointing`` is False)."""
        return False

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load a full state dict as ``nn.Module`` does, or this wrapper's checkpoint: the trained tensors only.

        A checkpoint (:meth:`save_pretrained`, what Trainer's resume passes with ``strict=False``) must hold
        every trained tensor and nothing this model lacks, else ``KeyError``; the frozen weights it leaves out
        by design are not reported as missing.
        """
        own = set(self.state_dict(keep_vars=True))
        given = set(state_dict)
        if given >= own:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        missing, unexpected = set(self.trained_state_dict()) - given, given - own
        if missing or unexpected:
            raise KeyError(f"checkpoint state: trained tensors missing {sorted(missing)[:5]}, "
                           f"unexpected keys {sorted(unexpected)[:5]}")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        return type(result)([], list(result.unexpected_keys))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Trained tensors (and the pooling's state) under this wrapper's names."""
        return {f"backbone.core.{k}": v for k, v in trainable_state_dict(self.core).items()}

    def save_pretrained(self, save_directory: str | Path, state_dict: dict | None = None,
                        is_main_process: bool = True, **_: object) -> None:
        """Write ``model.safetensors`` (the trained tensors only: a checkpoint TRL can resume from) and
        the trained folder of :func:`~ppllava_hermes.training.trainable.save_trained`."""
        if not is_main_process:
            return
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.trained_state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        save_trained(self.core, directory, self.trainable)


def reference_model(policy: VideoDPOModel) -> VideoDPOModel:
    """A frozen reference: the policy's pooling and CLIP copied, the VLM shared unless VLM weights train.

    Sharing keeps one copy of a large frozen VLM in memory. Under FSDP / DeepSpeed ZeRO-3, where each
    prepared model is sharded on its own, pass a reference built from a separate model instead.
    """
    core = policy.core
    adapter = core.adapter
    if policy.trainable.trains_vlm:
        adapter = copy.copy(adapter)
        adapter.model = copy.deepcopy(core.vlm)
    scorer = copy.deepcopy(core.scorer) if core.scorer is not None else None
    ref_core = PooledVideoLM(adapter, copy.deepcopy(core.pooling), scorer, chunk_frames=core.chunk_frames,
                             pool=core.pool)
    ref_core.encode_with_grad = False
    ref_core.feature_cache = core.feature_cache  # keys name the VLM / CLIP instance: sharing is safe
    # only the copies are frozen here: a shared VLM keeps the policy's settings (all frozen anyway)
    for module in (ref_core.pooling, ref_core.scorer, ref_core.vlm if policy.trainable.trains_vlm else None):
        if module is not None:
            module.requires_grad_(False)
    return VideoDPOModel(ref_core, policy.trainable).eval()


# ---- trainer -------------------------------------------------------------------------------------
class VideoDPOTrainer(DPOTrainer):
    """``DPOTrainer`` for :class:`VideoDPOModel` with :class:`VideoPreferenceCollator` (module doc): public
    methods only. Everything else, dataset preparation, the loss, the reference forward, metrics,
    logging and checkpoints, is TRL's and Trainer's.
    """

    def __init__(self, model: VideoDPOModel, ref_model: VideoDPOModel, args, data_collator: VideoPreferenceCollator,
                 train_dataset, eval_dataset=None, **kwargs) -> None:
        if args.remove_unused_columns:
            raise ValueError("video DPO needs DPOConfig(remove_unused_columns=False): the collator reads 'video'")
        if args.precompute_ref_log_probs:
            raise ValueError("precompute_ref_log_probs is not supported for video DPO: pass ref_model")
        if ref_model is None:
            raise ValueError("pass ref_model=reference_model(policy): TRL cannot rebuild a video model by name")
        train_dataset = with_raw_answers(train_dataset, "train")
        eval_dataset = self._with_raw_answers(eval_dataset)
        super().__init__(model=model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)

    @staticmethod
    def _with_raw_answers(eval_dataset):
        if eval_dataset is None or isinstance(eval_dataset, str):
            return eval_dataset
        if isinstance(eval_dataset, dict):
            return {name: with_raw_answers(ds, name) for name, ds in eval_dataset.items()}
        return with_raw_answers(eval_dataset, "eval")

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """``DPOTrainer.evaluate``; a dataset passed here gets the untouched answer copies first."""
        return super().evaluate(eval_dataset=self._with_raw_answers(eval_dataset), ignore_keys=ignore_keys,
                                metric_key_prefix=metric_key_prefix)
