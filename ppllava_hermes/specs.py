"""What a command-line value names, resolved in one place: models, relevance models, kernels, policies.

Used by the CLI (``stream``, ``eval``), the evaluator, the training scripts, the lmms-eval wrapper and
the plugins' own commands, so ``--model`` means the same everywhere.

Model specs (``--model``, lmms-eval ``pretrained=``), one syntax:

* a registered name, optionally ``NAME:ARG`` where the entry takes an argument: ``tiny-qwen2.5-vl``,
  ``tiny-qwen3-vl``, ``tiny-llava-onevision`` (random tiny models: the pipeline and its timings, answers
  are noise), and the plugins' names, e.g. ``shapesworld`` / ``shapesworld:PATH`` (the ShapesWorld model);
* a checkpoint folder (``config.json`` with a supported ``model_type``), or a hub id ``ORG/NAME``.

Old spellings stay accepted as aliases: ``tiny:qwen2_5_vl``, ``tiny:qwen3_vl``, ``tiny:llava_onevision``.

Relevance specs (``--clip``): ``none`` (no scorer: average pooling), ``tiny`` (a random tiny open_clip),
the plugins' names (``shapesworld[:PATH]``), a folder a plugin claims, or a Hugging Face CLIP / SigLIP
folder or hub id. ``--pool prompt`` without ``--clip`` uses the model's own relevance model
(:func:`relevance_spec`) and is an error for a model that has none.

Every mistake is a :class:`SpecError` (a ``ValueError``) whose message is one line naming the input
and the reason; nothing here loads a model before the spec is known to be well formed.

What this module does not know: any plugin's models (it asks ``plugins``), how a model runs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

from .plugins import MODELS, RELEVANCE, ModelEntry, Registry, RelevanceEntry

#: ``--pool`` of the streaming commands: none; avg (3-D average pooling); prompt (PPLLaVA, needs a relevance model).
POOL_MODES = ("none", "avg", "prompt")
#: The reference pooling kernel (T, H, W) of PPLLaVA.
DEFAULT_KERNEL = (2, 3, 3)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class SpecError(ValueError):
    """A value that names no model, relevance model or setting; the message is one line, input and reason."""


class MissingCheckpointError(SpecError, FileNotFoundError):
    """A registered name whose checkpoint is not there (also a ``FileNotFoundError``, as before)."""


# ------------------------------------------------------------------------------------------- kernel


def parse_kernel(text: str) -> tuple[int, int, int]:
    """``"2,3,3"`` (or ``"2x3x3"``) -> ``(2, 3, 3)``; :class:`SpecError` unless three positive integers."""
    try:
        parts = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise SpecError(f"{text!r}: expected three positive integers T,H,W such as 2,3,3")
    return parts  # type: ignore[return-value]


def kernel_arg(text: str) -> tuple[int, int, int]:
    """argparse ``type`` of every ``--pool-kernel`` (argparse prefixes the message with the flag)."""
    try:
        return parse_kernel(text)
    except SpecError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ---------------------------------------------------------------------------------- numeric flags


def positive_int(text: str) -> int:
    """argparse ``type`` of a count that must be >= 1 (``--chunk-frames``, ``--max-frames``, ``--budget``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def _float_arg(text: str, ok, expected: str) -> float:
    """``float(text)`` if ``ok(value)`` (nan, and text that is no number, never pass), else argparse's error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type`` of a finite number > 0 (``--fps``, ``--minutes``); nan and inf are refused."""
    return _float_arg(text, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    """argparse ``type`` of a finite number >= 0 (``--temperature``: 0 is greedy); nan and inf are refused."""
    return _float_arg(text, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def open_unit_float(text: str) -> float:
    """argparse ``type`` of a probability strictly between 0 and 1 (``--watch-threshold``)."""
    return _float_arg(text, lambda v: 0.0 < v < 1.0, "a number between 0 and 1 (exclusive)")


#: The most tokens one answer may have (``--max-new-tokens``); the model's positions left may allow fewer.
MAX_NEW_TOKENS = 4096


def new_tokens_arg(text: str) -> int:
    """argparse ``type`` of ``--max-new-tokens``: 1 to :data:`MAX_NEW_TOKENS`."""
    value = positive_int(text)
    if value > MAX_NEW_TOKENS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_NEW_TOKENS} tokens per answer")
    return value


# ----------------------------------------------------------------------------------------- device


def check_device(device: str | None) -> str | None:
    """``--device`` checked before any model loads: a torch device string this machine has.

    None (CPU) passes. Raises :class:`SpecError` for a malformed name (``bogus``), a device type with
    nothing behind it here (``cuda:0`` without a GPU, ``mps`` off Apple silicon) or an index past the
    devices present.
    """
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SpecError(f"--device {device!r}: not a torch device; expected cpu, cuda, cuda:N, mps, ...") from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError(f"--device {device!r}: no CUDA GPU is available on this machine; leave --device out "
                            "for the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpecError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SpecError(f"--device {device!r}: Apple MPS is not available on this machine")
        return device
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise SpecError(f"--device {device!r}: no {dev.type} device is available on this machine")
    return device


# --------------------------------------------------------------------------------------- policies


def policy_names() -> tuple[str, ...]:
    """Names of the memory policies (``--memory`` choices), from ``memory.POLICIES``."""
    from .memory import POLICIES

    return tuple(POLICIES)


def build_policy(name: str, budget: int | None):
    """The memory policy ``name`` at ``budget`` visual tokens per layer (None: the policy's default)."""
    from .memory import make_policy

    return make_policy(name, budget=budget)


# ------------------------------------------------------------------------------------ resolution


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _suggestion(spec: str, registry: Registry[Any]) -> str | None:
    """The registered name ``spec`` is closest to: one it starts, else the closest by ``difflib`` (of the
    whole spec or of its ``NAME`` before ``:``); None when none is close."""
    spellings = registry.spellings()
    started = [s for s in spellings if len(spec) >= 4 and s.startswith(spec)]  # a name cut short
    if started:
        return registry.canonical(started[0])
    for candidate in (spec, spec.split(":", 1)[0]):
        match = difflib.get_close_matches(candidate, spellings, n=1, cutoff=0.75)
        if match:
            return registry.canonical(match[0])
    return None


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1 or "\\" in spec


def _named(spec: str, registry: Registry[Any], what: str) -> tuple[str, Any, str | None] | None:
    """``(name, entry, argument)`` when ``spec`` is a registered name or ``NAME:ARG``; None otherwise."""
    name = registry.canonical(spec)
    if name is not None:
        return name, registry.get(name), None
    head, sep, arg = spec.partition(":")
    name = registry.canonical(head) if sep else None
    if name is None:
        return None
    entry = registry.get(name)
    if entry.argument is None:
        raise SpecError(f"{what} {spec!r}: {name!r} takes no ':' argument")
    if not arg:
        raise SpecError(f"{what} {spec!r}: expected {name}:{entry.argument}")
    return name, entry, arg


def _unknown(spec: str, registry: Registry[Any], what: str, kinds: str) -> SpecError:
    close = _suggestion(spec, registry)
    if close is not None:
        return SpecError(f"{what} {spec!r}: unknown name; did you mean {close!r}?")
    if _looks_like_path(spec):
        return SpecError(f"{what} {spec!r}: no such file or folder")
    return SpecError(f"{what} {spec!r}: no such folder, not a hub id (ORG/NAME) and not a registered name "
                     f"(known: {', '.join(registry.names())}); {kinds}")


# ------------------------------------------------------------------------------------------ models


def model_entry(spec: str) -> ModelEntry | None:
    """The registry entry a model spec names (None: a checkpoint folder or hub id); :class:`SpecError`
    for a malformed ``NAME:ARG``."""
    named = _named(spec, MODELS, "model")
    return None if named is None else named[1]


def model_note(spec: str) -> str | None:
    """What the CLI prints when it loads ``spec`` (e.g. that its weights are random); None for checkpoints."""
    entry = model_entry(spec)
    return None if entry is None or entry.note is None else f"{spec} {entry.note}"


def checkpoint_type(path: Path, spec: str) -> str:
    """The ``model_type`` of a local checkpoint folder, checked before anything loads.

    Raises :class:`SpecError` for a file that is not a folder, an empty folder, a folder without
    ``config.json``, a ``config.json`` that is not JSON or has no ``model_type``, or a ``model_type``
    that no adapter supports (the message lists the supported ones).
    """
    from .models import ADAPTERS

    if not path.is_dir():
        raise SpecError(f"model {spec!r}: a file, not a checkpoint folder")
    config = path / "config.json"
    if not config.is_file():
        if not any(path.iterdir()):
            raise SpecError(f"model {spec!r}: the folder is empty (no config.json, no weights)")
        raise SpecError(f"model {spec!r}: no config.json in the folder (not a Hugging Face checkpoint)")
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"model {spec!r}: config.json is not valid JSON ({_one_line(err)})") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str):
        raise SpecError(f"model {spec!r}: config.json has no model_type")
    if model_type not in ADAPTERS:
        raise SpecError(f"model {spec!r}: model_type {model_type!r} is not supported; "
                        f"supported: {', '.join(sorted(ADAPTERS))}")
    return model_type


def _hub_type(spec: str) -> str:
    from transformers import AutoConfig

    from .models import ADAPTERS

    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise SpecError(f"model {spec!r}: no such folder, and the hub cannot give its config "
                        f"({_one_line(err)})") from None
    if config.model_type not in ADAPTERS:
        raise SpecError(f"model {spec!r}: model_type {config.model_type!r} is not supported; "
                        f"supported: {', '.join(sorted(ADAPTERS))}")
    return config.model_type


def check_model(spec: str) -> ModelEntry | None:
    """Validate a model spec without loading weights: its entry, or None for a checked folder / hub id.

    A hub id is checked by reading its config (network or cache); every failure is a :class:`SpecError`.
    """
    spec = spec.strip()
    if not spec:
        raise SpecError("model '': empty; give a checkpoint folder, a hub id or a registered name")
    entry = model_entry(spec)
    if entry is not None:
        return entry
    path = Path(spec).expanduser()
    if path.exists():
        checkpoint_type(path, spec)
        return None
    if _HUB_ID.fullmatch(spec) and _suggestion(spec, MODELS) is None:
        _hub_type(spec)
        return None
    raise _unknown(spec, MODELS, "model", "a checkpoint folder holds config.json")


def load_model(spec: str, *, device: str | None = None, dtype: Any = "auto"):
    """The adapter of a model spec (see the module docstring), on ``device`` (None: CPU).

    ``dtype`` applies to checkpoints (``"auto"``, a ``torch.dtype`` or its name); named entries choose
    their own. Raises :class:`SpecError` for every malformed, missing or unsupported spec.
    """
    spec = spec.strip()
    check_device(device)
    named = _named(spec, MODELS, "model") if spec else None
    if named is not None:
        _, entry, arg = named
        return entry.load(arg, device, dtype)
    check_model(spec)
    from .models import load_adapter

    return load_adapter(str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec,
                        device=device, dtype=dtype)


def model_help() -> str:
    """One sentence for ``--model`` help texts: the syntax and every registered name."""
    names = "; ".join(
        f"{name}{'[:' + e.argument + ']' if e.argument else ''} ({e.summary})" for name, e in MODELS.items()
    )
    return (f"checkpoint folder or hub id (ORG/NAME) of a Qwen2.5-VL / Qwen2-VL / LLaVA-OneVision model, or a "
            f"name: {names}")


# --------------------------------------------------------------------------------------- relevance


def relevance_spec(model: str, clip: str | None, *, needs: str = "--pool prompt", flag: str = "--clip") -> str:
    """The relevance spec prompt pooling uses: ``clip`` when given, else the model's own.

    Raises :class:`SpecError` naming ``flag`` when ``clip`` is None and the model has no relevance
    model of its own (a checkpoint, a tiny random model): the toy ShapesWorld CLIP is never a silent
    default for another model.
    """
    if clip is not None and clip.strip():
        return clip.strip()
    entry = model_entry(model.strip()) if model.strip() else None
    if entry is None or entry.relevance is None:
        raise SpecError(f"{needs} with model {model!r} needs {flag}: the model has no relevance model of its "
                        f"own (give a CLIP / SigLIP folder or hub id, or 'tiny' for a random one)")
    return entry.relevance


def load_relevance(spec: str, frames_per_token: int = 1):
    """The ``RelevanceScorer`` of a relevance spec (None for ``none``); :class:`SpecError` on a bad spec.

    Args:
        spec: see the module docstring.
        frames_per_token: frames of the VLM's temporal group (``adapter.frames_per_group``).
    """
    spec = spec.strip()
    named = _named(spec, RELEVANCE, "clip") if spec else None
    if named is not None:
        _, entry, arg = named
        return entry.load(arg, frames_per_token)
    path = Path(spec).expanduser()
    if path.is_dir():
        for _, entry in RELEVANCE.items():
            if entry.claims is not None and entry.claims(path):
                return entry.load(str(path), frames_per_token)
        if not (path / "config.json").is_file():
            raise SpecError(f"clip {spec!r}: no config.json in the folder (not a Hugging Face CLIP / SigLIP)")
    elif path.exists():
        raise SpecError(f"clip {spec!r}: a file, not a model folder")
    elif not _HUB_ID.fullmatch(spec) or _suggestion(spec, RELEVANCE) is not None:
        raise _unknown(spec, RELEVANCE, "clip", "a CLIP / SigLIP folder holds config.json")
    return _hf_relevance(str(path) if path.exists() else spec, frames_per_token)


def _hf_relevance(source: str, frames_per_token: int):
    from transformers import AutoModel, AutoProcessor

    from .pooling.relevance import RelevanceConfig, RelevanceScorer

    try:
        model = AutoModel.from_pretrained(source).eval()
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise SpecError(f"clip {source!r}: cannot load it as a Hugging Face CLIP / SigLIP ({_one_line(err)})") from None
    return RelevanceScorer(model, processor.tokenizer, processor,
                           config=RelevanceConfig(frames_per_token=frames_per_token))


def relevance_help() -> str:
    """One sentence for ``--clip`` help texts: the syntax and every registered name."""
    names = ", ".join(f"{name}{'[:' + e.argument + ']' if e.argument else ''} ({e.summary})"
                      for name, e in RELEVANCE.items())
    own = [f"{name} -> {e.relevance}" for name, e in MODELS.items() if e.relevance]
    return (f"relevance model for prompt pooling: a Hugging Face CLIP / SigLIP folder or hub id, or {names}. "
            f"Default: the model's own ({', '.join(own) or 'none registered'}); any other model needs --clip")


# ----------------------------------------------------------------------------------- built-in entries


def _tiny_model(family: str):
    def load(_arg: str | None, device: str | None, _dtype: Any):
        from . import testing
        from .models import adapter_for_model

        build = {"qwen2_5_vl": testing.tiny_qwen2_5_vl, "qwen3_vl": testing.tiny_qwen3_vl,
                 "llava_onevision": testing.tiny_llava_onevision}[family]
        net, tok = build()
        if device:
            net = net.to(device)
        return adapter_for_model(net, tok)

    return load


def _no_relevance(_arg: str | None, _frames_per_token: int) -> None:
    return None


def _tiny_relevance(_arg: str | None, frames_per_token: int):
    import torch

    from .pooling import RelevanceConfig, RelevanceScorer
    from .pooling.testing import tiny_open_clip

    torch.manual_seed(0)
    model, tokenizer = tiny_open_clip()
    return RelevanceScorer(model, tokenizer, config=RelevanceConfig(frames_per_token=frames_per_token))


_RANDOM = "is a tiny RANDOM model: its answers are noise; it shows the pipeline and timings."
MODELS.register("tiny-qwen2.5-vl", ModelEntry(_tiny_model("qwen2_5_vl"), "random tiny Qwen2.5-VL", note=_RANDOM),
                aliases=("tiny:qwen2_5_vl", "tiny:qwen2.5-vl"))
MODELS.register("tiny-qwen3-vl", ModelEntry(_tiny_model("qwen3_vl"), "random tiny Qwen3-VL", note=_RANDOM),
                aliases=("tiny:qwen3_vl", "tiny:qwen3-vl"))
MODELS.register("tiny-llava-onevision",
                ModelEntry(_tiny_model("llava_onevision"), "random tiny LLaVA-OneVision", note=_RANDOM),
                aliases=("tiny:llava_onevision", "tiny:llava-onevision"))
RELEVANCE.register("none", RelevanceEntry(_no_relevance, "no scorer: average pooling"))
RELEVANCE.register("tiny", RelevanceEntry(_tiny_relevance, "a random tiny open_clip"))
