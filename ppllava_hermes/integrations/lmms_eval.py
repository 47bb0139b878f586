"""lmms-eval model wrapper: run lmms-eval's video tasks with this project's streaming memory and pooling.

Install with ``pip install 'ppllava-hermes[lmms-eval]'``; the package registers itself through the
``lmms_eval.models`` entry point (see pyproject.toml), so::

    lmms-eval --model ppllava_hermes \\
        --model_args pretrained=/path/to/Qwen2.5-VL-7B-Instruct,memory=hermes,budget=4096,pooling=avg \\
        --tasks videomme,ovo_forward --batch_size 1

``model_args`` (all optional): ``pretrained`` (checkpoint folder, "shapesworld" or a tiny random model
name), ``memory`` (full / window / sink / hermes / uniform), ``budget``, ``pooling`` (none / avg /
prompt), ``pool_kernel`` ("2,3,3"), ``clip`` (relevance model for prompt pooling), ``max_frames_num``
(frames per video for single-turn requests, default 32), ``fps`` (sampling rate instead; multi-round
requests stream at ``fps``, default 1), ``chunk_frames``, ``max_new_tokens``, ``device``.

* ``generate_until``: each request's video is sampled, streamed into a fresh session, and the
  context is asked (``until`` strings cut the answer).
* ``generate_until_multi_round`` (OVO-Bench forward and other multi-round tasks): one session per
  request; each round's video (a longer prefix of the same video) is sampled at ``fps`` and only the
  frames after the last ingested one are added, so the stream goes on between rounds. Returns the
  list of per-round answers.
* ``loglikelihood`` is not supported (the model decodes answers from a compressed memory; it does
  not score given continuations) and raises ``NotImplementedError``.

lmms-eval is imported only when the wrapper class is first used (module ``__getattr__``), so this
module imports without it. The lmms-eval API used: ``lmms_eval.api.model.lmms`` (subclassed),
``Instance.args``, ``self.task_dict[task][split][doc_id]``, ``self.cache_hook.add_partial``,
``lmms_eval.models.registry_v2.ModelManifest`` (entry-point payload, lmms-eval >= 0.5).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MODEL_ID = "ppllava_hermes"


def manifest():
    """The ``lmms_eval.models`` entry-point payload: where lmms-eval finds the wrapper class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.PPLLaVAHermesLMM",
                         aliases=("ppllava-hermes",))


def _parse_none(value: Any) -> Any:
    return None if value in (None, "", "None", "none", "null") else value


def _kernel(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        value = value.replace("x", ",").split(",")
    k = tuple(int(v) for v in value)
    if len(k) != 3:
        raise ValueError(f"pool_kernel {value!r}: expected three integers T,H,W")
    return k  # type: ignore[return-value]


def _frames_from_visuals(visuals: Any, *, num_frames: int | None, fps: float | None):
    """A :class:`~ppllava_hermes.video.VideoClip` from lmms-eval visuals: video paths or PIL images
    (or ``(H, W, 3)`` uint8 arrays, one per frame, 1 s apart); None when there are none."""
    from ..video import VideoClip, read_video

    if visuals is None:
        return None
    items = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
    items = [v for v in items if v is not None]
    if not items:
        return None
    if isinstance(items[0], str):
        if len(items) > 1:
            raise ValueError(f"one video per request is supported, got {len(items)} paths")
        return read_video(items[0], fps=fps, num_frames=None if fps else num_frames)
    frames = [np.asarray(v.convert("RGB") if hasattr(v, "convert") else v, dtype=np.uint8) for v in items]
    return VideoClip(np.stack(frames), np.arange(len(frames), dtype=np.float64), "images")


def _cut(text: str, until: Any) -> str:
    stops = [until] if isinstance(until, str) else list(until or [])
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def _build_class():
    try:
        from lmms_eval.api.model import lmms
    except ImportError as err:
        raise ImportError(
            "the lmms-eval wrapper needs lmms-eval: pip install 'ppllava-hermes[lmms-eval]'"
        ) from err

    from ..evaluation.protocols import Engine, MethodConfig, ProtocolConfig
    from ..evaluation.runner import build_model_adapter, process_shard
    from ..streaming import GenerationConfig

    class PPLLaVAHermesLMM(lmms):
        """ppllava_hermes as an lmms-eval model (see the module docstring for ``model_args``)."""

        is_simple = True

        def __init__(self, pretrained: str = "shapesworld", memory: str = "hermes", budget: Any = None,
                     pooling: str = "none", pool_kernel: Any = "2,3,3", clip: str | None = None,
                     max_frames_num: Any = 32, fps: Any = None, chunk_frames: Any = 8, max_new_tokens: Any = 128,
                     device: str | None = None, batch_size: Any = 1, **kwargs: Any) -> None:
            super().__init__()
            if int(batch_size) != 1:
                raise ValueError("ppllava_hermes answers one request at a time: use --batch_size 1")
            self._rank, self._world_size = process_shard()
            self.adapter = build_model_adapter(str(pretrained), _parse_none(device))
            budget = _parse_none(budget)
            method = MethodConfig(name=str(memory), memory=str(memory), budget=None if budget is None else int(budget),
                                  pooling=str(pooling), kernel=_kernel(pool_kernel))
            scorer = None
            if method.pooling == "prompt":
                from ..streaming.pooling_stage import load_scorer

                scorer = load_scorer(_parse_none(clip), frames_per_token=self.adapter.frames_per_group)
            self.max_frames_num = int(max_frames_num)
            self.fps = None if _parse_none(fps) is None else float(fps)
            self.max_new_tokens = int(max_new_tokens)
            settings = ProtocolConfig(protocol="streaming", chunk_frames=int(chunk_frames),
                                      max_new_tokens=self.max_new_tokens)
            self.engine = Engine(self.adapter, method, settings, scorer=scorer)
            self.extra_args = kwargs  # lmms-eval passes its own (e.g. device_map); unused

        # ---- helpers ---------------------------------------------------------------------------
        def _generation(self, gen_kwargs: dict[str, Any]) -> GenerationConfig:
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
            return GenerationConfig(max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                                    do_sample=sample, temperature=temperature if sample else 1.0,
                                    top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0) if sample else 1.0)

        def _ask(self, session, context: str, gen_kwargs: dict[str, Any]) -> str:
            question = context.replace("<image>", "").replace("<video>", "").strip() or "Describe the video."
            answer = session.ask(question, self._generation(gen_kwargs))
            return _cut(answer.text, gen_kwargs.get("until"))

        # ---- lmms-eval API ---------------------------------------------------------------------
        def generate_until(self, requests) -> list[str]:
            out = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                gen_kwargs = dict(gen_kwargs or {})
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                clip = _frames_from_visuals(visuals, num_frames=self.max_frames_num, fps=self.fps)
                session = self.engine.new_session()
                if clip is not None:
                    session.add_frames(clip.frames, clip.timestamps)
                text = self._ask(session, context, gen_kwargs)
                out.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            return out

        def generate_until_multi_round(self, requests) -> list[list[str]]:
            out = []
            fps = self.fps or 1.0  # a fixed rate: each round's frames extend the previous round's
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
                gen_kwargs = dict(gen_kwargs or {})
                doc = self.task_dict[task][split][doc_id]
                visuals = doc_to_visual(doc)
                session = self.engine.new_session()
                fed_until = -math.inf
                answers: list[str] = []
                info = None
                round_idx = 0
                while True:
                    if round_idx > 0:
                        visuals, context, terminal, _, info = doc_to_text(
                            doc, previous_output=list(answers), round_idx=round_idx, previous_round_info=info)
                        if terminal:
                            break
                    clip = _frames_from_visuals(visuals, num_frames=None, fps=fps)
                    if clip is not None:
                        new = clip.timestamps > fed_until + 1e-9  # the stream goes on: only later frames
                        if new.any():
                            session.add_frames(clip.frames[new], clip.timestamps[new])
                            fed_until = float(clip.timestamps[new][-1])
                    answers.append(self._ask(session, context, gen_kwargs))
                    round_idx += 1
                out.append(answers)
                self.cache_hook.add_partial("generate_until_multi_round", (context, gen_kwargs), answers)
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError(
                "ppllava_hermes does not compute loglikelihoods: it streams video into a compressed KV memory "
                "and decodes answers. Use tasks with output_type generate_until (or generate_until_multi_round)."
            )

    PPLLaVAHermesLMM.__module__ = __name__
    return PPLLaVAHermesLMM


def __getattr__(name: str):
    if name == "PPLLaVAHermesLMM":
        cls = _build_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
