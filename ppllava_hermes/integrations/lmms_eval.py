"""lmms-eval model wrappers: run lmms-eval's video tasks with this project's streaming memory and pooling.

Install with ``pip install 'ppllava-hermes[lmms-eval]'``; the package registers itself through the
``lmms_eval.models`` entry point (see pyproject.toml), so::

    lmms-eval --model ppllava_hermes \\
        --model_args pretrained=/path/to/Qwen2.5-VL-7B-Instruct,memory=hermes,budget=4096,pooling=avg \\
        --tasks videomme,ovo_forward --batch_size 1
    lmms-eval models | grep ppllava_hermes     # listed as "chat+simple"

Two classes share one implementation: :class:`PPLLaVAHermesChatLMM` (``is_simple = False``, what lmms-eval
0.7 picks by default and recommends: requests carry the task's ``doc_to_messages``) and
:class:`PPLLaVAHermesLMM` (``is_simple = True``, ``doc_to_visual`` / ``doc_to_text`` requests; chosen
with ``--force_simple``). Both stream the request's video into a fresh session and ask its text.

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
* Pickling (process pools, accelerate / multiprocessing launchers) keeps the settings, rank and task
  data, not the model: an unpickled wrapper rebuilds its model and engine on first use. The cache hook
  is not carried (lmms-eval sets it again with ``set_cache_hook``).

lmms-eval 0.7.3 lists only its built-in models in ``lmms-eval models``: :func:`manifest` (called by
lmms-eval's registry while it loads entry points) also enters ``ppllava_hermes`` into the tables that
command prints, with the full class paths, the way lmms-eval's own plugin loader does.

lmms-eval is imported only when a wrapper class is first used (module ``__getattr__``), so this
module imports without it. The lmms-eval API used: ``lmms_eval.api.model.lmms`` (subclassed),
``Instance.args``, ``self.task_dict[task][split][doc_id]``, ``self.cache_hook.add_partial``,
``lmms_eval.models.registry_v2.ModelManifest`` (entry-point payload, lmms-eval >= 0.5), chat messages
as ``[{"role", "content": [{"type": "video" | "image" | "text", "url" | "text"}]}]`` (0.7).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

MODEL_ID = "ppllava_hermes"
ALIASES = ("ppllava-hermes",)
SIMPLE_CLASS = "PPLLaVAHermesLMM"
CHAT_CLASS = "PPLLaVAHermesChatLMM"


def manifest():
    """The ``lmms_eval.models`` entry-point payload: where lmms-eval finds the wrapper classes.

    Also lists the model in ``lmms-eval models`` (see the module docstring) when lmms-eval's model
    tables are loaded, which they are whenever lmms-eval's registry calls this.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    simple_path, chat_path = f"{__name__}.{SIMPLE_CLASS}", f"{__name__}.{CHAT_CLASS}"
    _list_in_lmms_eval(simple_path, chat_path)
    return ModelManifest(model_id=MODEL_ID, simple_class_path=simple_path, chat_class_path=chat_path,
                         aliases=ALIASES)


def _list_in_lmms_eval(simple_path: str, chat_path: str) -> None:
    """Enter the model into the tables ``lmms-eval models`` prints (lmms-eval 0.7: ``AVAILABLE_SIMPLE_MODELS``,
    ``AVAILABLE_CHAT_TEMPLATE_MODELS``, ``MODEL_ALIASES``); a no-op where lmms-eval has none of them."""
    import sys

    models = sys.modules.get("lmms_eval.models")
    if models is None:
        return
    for table, path in (("AVAILABLE_SIMPLE_MODELS", simple_path), ("AVAILABLE_CHAT_TEMPLATE_MODELS", chat_path)):
        entries = getattr(models, table, None)
        if isinstance(entries, dict):
            entries.setdefault(MODEL_ID, path)
    aliases = getattr(models, "MODEL_ALIASES", None)
    if isinstance(aliases, dict):
        aliases.setdefault(MODEL_ID, ALIASES)


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


def _video_from_messages(messages: Any) -> tuple[list[Any], str]:
    """``(visuals, text)`` of lmms-eval 0.7 chat messages: video paths (or ``{"path"/"url", "video_start",
    "video_end"}`` dicts) and images of every turn, and the text of the user turns joined by newlines
    (system turns are left out: the adapter has its own system prompt)."""
    if messages is None:
        return [], ""
    turns = messages.messages if hasattr(messages, "messages") else messages
    if isinstance(turns, dict):
        turns = [turns]
    visuals: list[Any] = []
    texts: list[str] = []
    for turn in turns:
        role = turn.get("role") if isinstance(turn, dict) else getattr(turn, "role", "user")
        content = turn.get("content") if isinstance(turn, dict) else getattr(turn, "content", [])
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for item in content or []:
            kind = item.get("type") if isinstance(item, dict) else getattr(item, "type", None)
            if kind == "text":
                if role != "system":
                    texts.append(item.get("text") if isinstance(item, dict) else item.text)
            elif kind in ("video", "image"):
                visuals.append(item.get("url") if isinstance(item, dict) else item.url)
            elif kind == "audio":
                raise ValueError("ppllava_hermes reads video and images; this request has audio")
    return visuals, "\n".join(t for t in texts if t)


def _clip_from_chat_visuals(visuals: list[Any], *, num_frames: int | None, fps: float | None):
    """A clip from chat visuals: one video (a path, or a dict with ``video_start`` / ``video_end`` s to keep
    that span) or images; None without visuals."""
    if len(visuals) == 1 and isinstance(visuals[0], dict):
        item = visuals[0]
        path = item.get("path") or item.get("url") or item.get("video")
        clip = _frames_from_visuals([path], num_frames=num_frames, fps=fps)
        start, end = item.get("video_start"), item.get("video_end")
        if clip is not None and (start is not None or end is not None):
            keep = np.ones(len(clip.timestamps), dtype=bool)
            if start is not None:
                keep &= clip.timestamps >= float(start)
            if end is not None:
                keep &= clip.timestamps <= float(end)
            from ..video import VideoClip

            clip = VideoClip(clip.frames[keep], clip.timestamps[keep], clip.source)
        return clip
    return _frames_from_visuals(visuals, num_frames=num_frames, fps=fps)


def _build_classes() -> dict[str, type]:
    try:
        from lmms_eval.api import model as lmms_model
        from lmms_eval.api.model import lmms
    except ImportError as err:
        raise ImportError(
            "the lmms-eval wrapper needs lmms-eval: pip install 'ppllava-hermes[lmms-eval]'"
        ) from err

    class _NoCacheHook:
        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            pass

    # lmms-eval's no-op hook where it has one (what lmms.__init__ sets)
    no_cache_hook = (lambda: lmms_model.CacheHook(None)) if hasattr(lmms_model, "CacheHook") else _NoCacheHook

    from ..evaluation.protocols import Engine, MethodConfig, ProtocolConfig
    from ..evaluation.runner import process_shard
    from ..streaming import GenerationConfig

    class _PPLLaVAHermesBase(lmms):
        """What both wrappers share: settings, the engine (built lazily after unpickling), asking, pickling."""

        _RUNTIME = ("_adapter", "_engine")  # rebuilt, not pickled

        def __init__(self, pretrained: str = "shapesworld", memory: str = "hermes", budget: Any = None,
                     pooling: str = "none", pool_kernel: Any = "2,3,3", clip: str | None = None,
                     max_frames_num: Any = 32, fps: Any = None, chunk_frames: Any = 8, max_new_tokens: Any = 128,
                     device: str | None = None, batch_size: Any = 1, **kwargs: Any) -> None:
            super().__init__()
            if int(batch_size) != 1:
                raise ValueError("ppllava_hermes answers one request at a time: use --batch_size 1")
            self.batch_size = 1
            self._rank, self._world_size = process_shard()
            self.pretrained, self.device = str(pretrained), _parse_none(device)
            budget = _parse_none(budget)
            self.method = MethodConfig(name=str(memory), memory=str(memory),
                                       budget=None if budget is None else int(budget),
                                       pooling=str(pooling), kernel=_kernel(pool_kernel))
            self.clip = _parse_none(clip)
            self.max_frames_num = int(max_frames_num)
            self.fps = None if _parse_none(fps) is None else float(fps)
            self.max_new_tokens = int(max_new_tokens)
            self.settings = ProtocolConfig(protocol="streaming", chunk_frames=int(chunk_frames),
                                           max_new_tokens=self.max_new_tokens)
            self.extra_args = kwargs  # lmms-eval passes its own (e.g. device_map); unused
            self._adapter = self._engine = None
            self._build()  # fail here on a bad checkpoint or setting, not at the first request

        def _build(self) -> None:
            from ..specs import load_model, load_relevance, relevance_spec

            self._adapter = load_model(self.pretrained, device=self.device)
            scorer = None
            if self.method.pooling == "prompt":
                spec = relevance_spec(self.pretrained, self.clip, needs="pooling=prompt", flag="clip=")
                scorer = load_relevance(spec, frames_per_token=self._adapter.frames_per_group)
            self._engine = Engine(self._adapter, self.method, self.settings, scorer=scorer)

        @property
        def adapter(self):
            """The model adapter (built on first use after unpickling)."""
            if self._adapter is None:
                self._build()
            return self._adapter

        @property
        def engine(self) -> Engine:
            """The streaming engine (built on first use after unpickling)."""
            if self._engine is None:
                self._build()
            return self._engine

        # ---- pickling ----------------------------------------------------------------------------
        def __getstate__(self) -> dict[str, Any]:
            state = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME and k != "cache_hook"}
            return {**state, "_adapter": None, "_engine": None}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self.cache_hook = no_cache_hook()

        # ---- helpers ---------------------------------------------------------------------------
        def _generation(self, gen_kwargs: dict[str, Any]) -> GenerationConfig:
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            sample = bool(gen_kwargs.get("do_sample", False)) and temperature > 0
            return GenerationConfig(max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                                    do_sample=sample, temperature=temperature if sample else 1.0,
                                    top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0) if sample else 1.0)

        def _ask(self, session, context: str, gen_kwargs: dict[str, Any]) -> str:
            question = (context or "").replace("<image>", "").replace("<video>", "").strip() or "Describe the video."
            answer = session.ask(question, self._generation(gen_kwargs))
            return _cut(answer.text, gen_kwargs.get("until"))

        def _answer(self, clip, context: str, gen_kwargs: dict[str, Any]) -> str:
            session = self.engine.new_session()
            if clip is not None:
                session.add_frames(clip.frames, clip.timestamps)
            return self._ask(session, context, gen_kwargs)

        def _stream_rounds(self, rounds) -> list[str]:
            """Answer rounds on one stream. ``rounds(answers)`` yields ``(clip_or_None, context)`` per round,
            reading the answers so far; each round adds only the frames after those already ingested."""
            session = self.engine.new_session()
            fed_until = -math.inf
            answers: list[str] = []
            for clip, context, gen_kwargs in rounds(answers):
                if clip is not None:
                    new = clip.timestamps > fed_until + 1e-9  # the stream goes on: only later frames
                    if new.any():
                        session.add_frames(clip.frames[new], clip.timestamps[new])
                        fed_until = float(clip.timestamps[new][-1])
                answers.append(self._ask(session, context, gen_kwargs))
            return answers

        def loglikelihood(self, requests):
            raise NotImplementedError(
                "ppllava_hermes does not compute loglikelihoods: it streams video into a compressed KV memory "
                "and decodes answers. Use tasks with output_type generate_until (or generate_until_multi_round)."
            )

    class PPLLaVAHermesLMM(_PPLLaVAHermesBase):
        """ppllava_hermes as a "simple" lmms-eval model: ``doc_to_visual`` / text requests (module doc)."""

        is_simple = True

        def generate_until(self, requests) -> list[str]:
            out = []
            for request in requests:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                gen_kwargs = dict(gen_kwargs or {})
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                clip = _frames_from_visuals(visuals, num_frames=self.max_frames_num, fps=self.fps)
                text = self._answer(clip, context, gen_kwargs)
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

                def rounds(answers, doc=doc, context=context, gen_kwargs=gen_kwargs, doc_to_text=doc_to_text,
                           doc_to_visual=doc_to_visual):
                    visuals, text, info, round_idx = doc_to_visual(doc), context, None, 0
                    while True:
                        if round_idx > 0:
                            visuals, text, terminal, _, info = doc_to_text(
                                doc, previous_output=list(answers), round_idx=round_idx, previous_round_info=info)
                            if terminal:
                                return
                        yield _frames_from_visuals(visuals, num_frames=None, fps=fps), text, gen_kwargs
                        round_idx += 1

                answers = self._stream_rounds(rounds)
                out.append(answers)
                self.cache_hook.add_partial("generate_until_multi_round", (context, gen_kwargs), answers)
            return out

    class PPLLaVAHermesChatLMM(_PPLLaVAHermesBase):
        """ppllava_hermes as an lmms-eval 0.7 chat model: requests carry ``doc_to_messages`` (module doc)."""

        is_simple = False

        def generate_until(self, requests) -> list[str]:
            out = []
            for request in requests:
                context, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
                gen_kwargs = dict(gen_kwargs or {})
                visuals, text = _video_from_messages(doc_to_messages(self.task_dict[task][split][doc_id]))
                clip = _clip_from_chat_visuals(visuals, num_frames=self.max_frames_num, fps=self.fps)
                answer = self._answer(clip, text or context, gen_kwargs)
                out.append(answer)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), answer)
            return out

        def generate_until_multi_round(self, requests) -> list[list[str]]:
            out = []
            fps = self.fps or 1.0
            for request in requests:
                context, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
                gen_kwargs = dict(gen_kwargs or {})
                doc = self.task_dict[task][split][doc_id]

                def rounds(answers, doc=doc, context=context, gen_kwargs=gen_kwargs, doc_to_messages=doc_to_messages):
                    info, round_idx = None, 0
                    while True:
                        if round_idx == 0:
                            messages = doc_to_messages(doc)
                        else:
                            payload = doc_to_messages(doc, round_idx=round_idx, previous_output=list(answers),
                                                      previous_round_info=info)
                            if not (isinstance(payload, tuple) and len(payload) == 4):
                                return
                            messages, terminal, _, info = payload
                            if terminal:
                                return
                        visuals, text = _video_from_messages(messages)
                        clip = _clip_from_chat_visuals(visuals, num_frames=None, fps=fps)
                        yield clip, text or (context if round_idx == 0 else ""), gen_kwargs
                        round_idx += 1

                answers = self._stream_rounds(rounds)
                out.append(answers)
                self.cache_hook.add_partial("generate_until_multi_round", (context, gen_kwargs), answers)
            return out

    classes = {SIMPLE_CLASS: PPLLaVAHermesLMM, CHAT_CLASS: PPLLaVAHermesChatLMM}
    for cls in (_PPLLaVAHermesBase, *classes.values()):
        cls.__module__ = __name__
    _PPLLaVAHermesBase.__qualname__ = _PPLLaVAHermesBase.__name__
    for name, cls in classes.items():
        cls.__qualname__ = name  # picklable by reference: module attribute of this name
    return {"_PPLLaVAHermesBase": _PPLLaVAHermesBase, **classes}


def __getattr__(name: str):
    if name in (SIMPLE_CLASS, CHAT_CLASS, "_PPLLaVAHermesBase"):
        globals().update(_build_classes())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
