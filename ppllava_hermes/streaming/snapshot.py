"""Session snapshots: save a streaming session's whole stream state to a folder, restore it after a restart.

Specification.

* :func:`save_session` writes one folder; :func:`restore_session` loads it into a *freshly constructed*
  :class:`~.session.StreamingSession` built with the same adapter (model), memory policy, pooling, gate
  and ``chunk_frames``. Afterwards the restored session is the saved one: ``cache.state()`` is equal
  tensor for tensor (``torch.equal``), ``next_position`` is equal, the same question gets the same
  answer and the same further frames give the same memory. A server killed with ``kill -9`` and
  restored from its last snapshot loses exactly what came after that snapshot.
* What is saved:

  - the memory (``cache.safetensors``): per layer ``i`` the tensors ``layer{i}.keys`` / ``layer{i}.values``
    ``(batch, kv_heads, N, head_dim)`` (absent for a layer that was never written) and the metadata
    ``layer{i}.positions`` ``(pos_dims, N)`` long, ``layer{i}.frame_ids`` / ``kinds`` / ``segments`` /
    ``uids`` ``(N,)`` long and ``layer{i}.counts`` ``(N,)`` float32, in their own dtypes;
  - frames (``frames.safetensors``, uint8): the frames still waiting for a full temporal group
    (``pending.{j}``) and, for policies that store frames (``uniform``), the stored frames
    (``store.{j}``), each as runs of equal-sized frames ``(n, H, W, 3)``;
  - the engine: ``next_position``, ``started``, the positions warning flag;
  - the session: the frame log, the pending frames' times, the statistics (``IngestStats``, its
    ``compress_log`` included), the events not yet collected, ``_next_watch_id``, ``_tokens_per_frame``
    and the resize-warning flag; every watch (id, query, :class:`~.watch.WatchConfig` fields, and its
    state: armed, last_fired, decisions, scores, fired events), in registration order;
  - the memory policy's own state, and the gate's: generically, every entry of the object's ``__dict__``
    (configuration and state alike: HERMES has only configuration, ``retrieval`` its host ``store`` of
    blocks and committed-position records, ``merge`` its spatial codes and last-seen uid, a novelty gate
    its reference frame). Allowed values: ``None``, bool, int, float, str, tensors and numpy arrays
    (into ``state.safetensors``, named ``policy.<attribute path>`` / ``gate.<attribute path>``, with
    their device), lists, tuples, dicts, and dataclass instances whose fields are again allowed values
    (recursively; a dataclass is rebuilt from its module and qualified name, without ``__init__``).
    Anything else raises ``ValueError("cannot snapshot policy 'x': attribute 'y' of type Z")`` when
    saving: nothing is silently dropped. The one exception is an attribute that is configuration the
    constructor re-supplies and that cannot be serialised: a class lists those in a ``snapshot_exclude``
    class attribute (and :class:`~.sparsity.RelevanceGate`'s ``scorer``, a CLIP model, is listed here);
    they are not saved and the fresh session's own are kept.

* Format. ``state.json`` holds everything that is not a tensor, with ``format``
  (``"ppllava-hermes/session-snapshot"``) and ``version`` (:data:`VERSION`), the model identity, and a
  manifest of the three ``.safetensors`` files (size and SHA-256). Tensors are saved contiguous, on the
  CPU; on restore a tensor saved from the CPU goes to the CPU and one saved from an accelerator goes to
  the restoring model's device (so ``cuda:1`` may become ``cuda:0``); host tensors that were pinned are
  pinned again when CUDA is available.
* Compatibility. :func:`restore_session` refuses, with a one-line ``ValueError`` naming both values, a
  snapshot whose format version, model identity (adapter family and class, the configs' model type,
  layers, hidden size, heads, vocabulary, position limit, ``pos_dims``, ``frames_per_group``, dtype, a
  fingerprint of the first and last weights and of the system prompt's tokens), ``chunk_frames``, memory
  policy (name, class, budget, then every constructor option, nested ones by dotted name), gate class and
  options, or pooling class differs from the session's. It also refuses a session that is not fresh
  (started, holding frames or watches), and a folder that is missing, truncated or corrupt (a file absent,
  of the wrong size or hash, unreadable JSON or safetensors): the session is not modified by a refused
  restore, since everything is read and checked before anything is applied.
* Atomic write. The snapshot is written into a temporary sibling folder (``.NAME.tmp-<pid>-<random>``),
  every file fsync'ed, then swapped in: an existing snapshot is renamed to ``.NAME.previous``, the new
  folder renamed to ``NAME``, the previous one deleted. A crash while writing leaves the previous
  snapshot untouched (a crash by signal may leave the temporary folder behind: it is never read); a crash
  between the two renames leaves no ``NAME`` but a complete ``.NAME.previous``, which
  :func:`restore_session` then reads. An exception while writing removes the temporary folder. An
  existing ``NAME`` that is neither a snapshot nor empty is never replaced (``ValueError``). One writer
  per folder: concurrent saves to the same folder are not coordinated.
* Not saved: watch callbacks (functions cannot be serialised: restored watches have ``callback=None``;
  pass ``callbacks={watch_id: fn}`` to :func:`restore_session` to attach new ones); the logits log of
  ``StreamConfig(record_logits=True)``; the adapter, the model, the pooling stage and the RoPE spec
  (``session.rope``: rebuilt from the model; a rope set by hand must be set again); a question-time cache
  (a snapshot cannot be taken inside a question or a watch decision: ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .sparsity import RelevanceGate
from .watch import WatchConfig, WatchEvent

if TYPE_CHECKING:
    from .session import StreamingSession

__all__ = ["FORMAT", "VERSION", "model_identity", "restore_session", "save_session"]

FORMAT = "ppllava-hermes/session-snapshot"
VERSION = 1
CACHE_FILE, FRAMES_FILE, STATE_TENSORS_FILE, STATE_FILE = (
    "cache.safetensors", "frames.safetensors", "state.safetensors", "state.json")
_TENSOR_FILES = (CACHE_FILE, FRAMES_FILE, STATE_TENSORS_FILE)
_LAYER_FIELDS = ("positions", "frame_ids", "kinds", "counts", "segments", "uids")

# Attributes that are configuration objects the constructor re-supplies and that cannot be serialised
# (a class may also declare them itself in a ``snapshot_exclude`` class attribute).
_CONSTRUCTOR_ONLY: dict[type, tuple[str, ...]] = {RelevanceGate: ("scorer",)}


# ---- generic object state: JSON tree + tensors ---------------------------------------------------
def _class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _excluded(obj: Any) -> tuple[str, ...]:
    out = tuple(getattr(type(obj), "snapshot_exclude", ()))
    for cls, names in _CONSTRUCTOR_ONLY.items():
        if isinstance(obj, cls):
            out += names
    return out


def _attributes(obj: Any) -> dict[str, Any]:
    """What an object's state is: its ``__dict__`` (a slots dataclass: its fields)."""
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


class _Encoder:
    """Turns an object's attributes into a JSON tree; tensors go to ``tensors`` under ``prefix.path``."""

    def __init__(self, kind: str, owner: str, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        self.kind, self.owner, self.prefix, self.tensors = kind, owner, prefix, tensors

    def fail(self, path: str, value: Any) -> ValueError:
        return ValueError(f"cannot snapshot {self.kind} {self.owner!r}: attribute {path!r} of type "
                          f"{type(value).__qualname__}")

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):  # IntEnum values come back as plain ints
            return int(value)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float)):
            return value.item()  # numpy scalars come back as Python numbers
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise self.fail(path, value)
            node = self.tensor(torch.from_numpy(np.ascontiguousarray(value)), path)
            return {"__ndarray__": node}
        if isinstance(value, list):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            items = []
            for i, (k, v) in enumerate(value.items()):
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise self.fail(f"{path} (a key)", k)
                items.append([k, self.encode(v, f"{path}.{i}")])
            return {"__dict__": items}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {"__dataclass__": _class_path(value), "fields": self.attributes(value, path)}
        raise self.fail(path, value)

    def tensor(self, value: torch.Tensor, path: str) -> dict:
        name = f"{self.prefix}.{path}"
        if name in self.tensors:  # cannot happen with paths from attribute names, but never overwrite
            raise ValueError(f"cannot snapshot {self.kind} {self.owner!r}: two tensors named {name!r}")
        pinned = value.device.type == "cpu" and torch.cuda.is_available() and value.is_pinned()
        # A private contiguous CPU copy: views sharing storage and non-contiguous tensors are not saved as such.
        self.tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name, "device": str(value.device), "pinned": bool(pinned)}

    def attributes(self, obj: Any, path: str = "") -> dict[str, Any]:
        skip = _excluded(obj)
        return {k: self.encode(v, f"{path}.{k}" if path else k)
                for k, v in _attributes(obj).items() if k not in skip}


def _encode_object(obj: Any, kind: str, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    owner = getattr(obj, "name", None) or type(obj).__name__
    return {"class": _class_path(obj), "attributes": _Encoder(kind, str(owner), prefix, tensors).attributes(obj)}


def _resolve_class(path: str, where: str) -> type:
    """The dataclass named ``module:qualname``: from a loaded module, or imported from this package."""
    module_name, _, qualname = path.partition(":")
    module = sys.modules.get(module_name)
    if module is None and module_name.split(".")[0] == "ppllava_hermes":
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
    if module is None:  # a snapshot never triggers imports outside this package
        raise ValueError(f"{where}: class {path!r} comes from a module that is not loaded")
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"{where}: {path!r} is not a dataclass in this version of the code")
    return cls


class _Decoder:
    """The inverse of :class:`_Encoder`, over the loaded tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device, where: str) -> None:
        self.tensors, self.device, self.where = tensors, device, where

    def decode(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "__tensor__" in node:
            return self.tensor(node)
        if "__ndarray__" in node:
            return self.tensor(node["__ndarray__"]).numpy()
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            return {k: self.decode(v) for k, v in node["__dict__"]}
        if "__dataclass__" in node:
            cls = _resolve_class(node["__dataclass__"], self.where)
            obj = cls.__new__(cls)  # no __init__/__post_init__: the state is set as it was
            for k, v in node["fields"].items():
                object.__setattr__(obj, k, self.decode(v))
            return obj
        raise ValueError(f"{self.where}: state.json holds an unknown node {sorted(node)}")

    def tensor(self, node: dict) -> torch.Tensor:
        name = node["__tensor__"]
        if name not in self.tensors:
            raise ValueError(f"{self.where}: {STATE_TENSORS_FILE} lacks tensor {name!r}")
        t = self.tensors[name]
        if node.get("device", "cpu") != "cpu":
            t = t.to(self.device)
        elif node.get("pinned") and torch.cuda.is_available():
            t = t.pin_memory()
        return t


def _options(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Constructor options of a dataclass, flattened by dotted name (nested dataclasses recursively);
    values that are not plain JSON are represented by their type's name."""
    if obj is None or not dataclasses.is_dataclass(obj):
        return {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value, name = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[name] = _class_path(value)
            out.update(_options(value, f"{name}."))
        elif _plain(value):
            out[name] = value
        else:
            out[name] = f"<{type(value).__qualname__}>"
    return json.loads(json.dumps(out))  # tuples -> lists: the form a snapshot reads back


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return False


# ---- model identity -------------------------------------------------------------------------------
def model_identity(adapter) -> dict[str, Any]:
    """What a snapshot's model must match, cheaply: configuration numbers, the dtype, a fingerprint of the
    first and last weights (256 values each, as float32) and of the system prompt's token ids."""
    cfg = adapter.model.config
    text = adapter.text_config
    weights = hashlib.sha256()
    params = [p for _, p in adapter.model.named_parameters()]
    for p in (params[0], params[-1]) if params else ():
        weights.update(p.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    prefix = adapter.tokenize(adapter.prefix_text()).to(torch.long).cpu().numpy().tobytes()
    return {
        "family": getattr(adapter, "family", ""),
        "adapter": _class_path(adapter),
        "model_type": getattr(cfg, "model_type", None),
        "text_model_type": getattr(text, "model_type", None),
        "num_layers": int(adapter.num_layers),
        "hidden_size": getattr(text, "hidden_size", None),
        "num_attention_heads": getattr(text, "num_attention_heads", None),
        "num_key_value_heads": getattr(text, "num_key_value_heads", None),
        "vocab_size": getattr(text, "vocab_size", None),
        "max_position_embeddings": getattr(text, "max_position_embeddings", None),
        "pos_dims": int(adapter.pos_dims),
        "frames_per_group": int(getattr(adapter, "frames_per_group", 1)),
        "dtype": str(adapter.dtype),
        "weights_sha256": weights.hexdigest(),
        "prefix_sha256": hashlib.sha256(prefix).hexdigest(),
    }


# ---- save -----------------------------------------------------------------------------------------
def _frame_runs(frames: list[np.ndarray], prefix: str, out: dict[str, torch.Tensor]) -> list[int]:
    """Stack consecutive frames of one size into ``(n, H, W, 3)`` uint8 tensors; returns the run lengths."""
    runs: list[int] = []
    start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i].shape != frames[start].shape:
            out[f"{prefix}.{len(runs)}"] = torch.from_numpy(np.stack(frames[start:i]).astype(np.uint8, copy=True))
            runs.append(i - start)
            start = i
    return runs


def _watch_state(w) -> dict[str, Any]:
    return {
        "watch_id": int(w.watch_id),
        "query": w.query,
        "config": json.loads(json.dumps(dataclasses.asdict(w.config))),
        "prompt_ids": [int(i) for i in w.prompt_ids.tolist()] if w.prompt_ids is not None else None,
        "armed": bool(w.armed),
        "last_fired": w.last_fired,
        "decisions": int(w.decisions),
        "scores": [[float(t), float(s)] for t, s in w.scores],
        "fired": [e.to_dict() for e in w.fired],
    }


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_snapshot(folder: Path) -> bool:
    """Whether ``folder`` holds a snapshot (complete or not): its ``state.json`` names this format."""
    try:
        with open(folder / STATE_FILE, "rb") as f:
            return FORMAT.encode() in f.read(4096)
    except OSError:
        return False


def _backup_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.previous"


def save_session(session: StreamingSession, folder: str | os.PathLike) -> Path:
    """Write ``session``'s whole stream state to ``folder`` (replaced atomically if it exists); returns it.

    Raises ``ValueError`` inside a question or a watch decision, or when the policy or the gate holds an
    attribute that cannot be saved (module docstring); nothing is written then.
    """
    folder = Path(folder)
    engine = session.engine
    if engine._rollback_depth:
        raise ValueError("save_session(): called inside a question or a watch decision (the memory holds "
                         "question-time entries); save between chunks")
    cache = engine.cache
    for i, layer in enumerate(cache.layers):
        if layer.get_seq_length() != len(layer):
            raise ValueError(f"save_session(): cache layer {i} holds uncommitted entries")

    cache_tensors: dict[str, torch.Tensor] = {}
    layers = []
    for i, layer in enumerate(cache.layers):
        written = bool(layer.is_initialized and layer.keys is not None)
        for name in _LAYER_FIELDS:
            cache_tensors[f"layer{i}.{name}"] = getattr(layer, name).detach().to("cpu", copy=True).contiguous()
        if written:
            cache_tensors[f"layer{i}.keys"] = layer.keys.detach().to("cpu", copy=True).contiguous()
            cache_tensors[f"layer{i}.values"] = layer.values.detach().to("cpu", copy=True).contiguous()
        layers.append({"written": written, "device": str(layer.keys.device) if written else "cpu"})

    frame_tensors: dict[str, torch.Tensor] = {}
    pending_runs = _frame_runs(list(session._pending_frames), "pending", frame_tensors)
    store_runs = _frame_runs(list(getattr(session, "_frame_store", [])), "store", frame_tensors)

    state_tensors: dict[str, torch.Tensor] = {}
    policy = session.memory
    state: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_identity(session.adapter),
        "stream": {"chunk_frames": int(session.chunk_frames), "config": dataclasses.asdict(session.config)},
        "policy": {
            "name": policy.name,
            "class": _class_path(policy),
            "budget": getattr(policy, "budget", None),
            "options": _options(policy),
            "state": _encode_object(policy, "policy", "policy", state_tensors),
        },
        "gate": None if session.gate is None else {
            "class": _class_path(session.gate),
            "options": _options(session.gate),
            "state": _encode_object(session.gate, "gate", "gate", state_tensors),
        },
        "pooling": None if session.pooling is None else _class_path(session.pooling),
        "engine": {"next_position": int(engine.next_position), "started": bool(engine.started),
                   "positions_warned": bool(engine._positions_warned)},
        "cache": {"num_layers": cache.num_layers, "pos_dims": cache.pos_dims, "layers": layers},
        "session": {
            "frame_log": [[int(f), float(t)] for f, t in session.frame_log],
            "pending_times": [float(t) for t in session._pending_times],
            "pending_runs": pending_runs,
            "store_runs": store_runs,
            "tokens_per_frame": getattr(session, "_tokens_per_frame", None),
            "resize_warned": bool(session._resize_warned),
            "next_watch_id": int(session._next_watch_id),
            "events": [e.to_dict() for e in session._events],
            "stats": _encode_object(session.stats, "stats", "stats", state_tensors),
        },
        "watches": [_watch_state(w) for w in session.watches.values()],
    }

    if folder.exists() and not (folder.is_dir() and (_is_snapshot(folder) or not any(folder.iterdir()))):
        raise ValueError(f"save_session(): {str(folder)!r} exists and is not a session snapshot; refusing to "
                         "replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {}
        for name, tensors in ((CACHE_FILE, cache_tensors), (FRAMES_FILE, frame_tensors),
                              (STATE_TENSORS_FILE, state_tensors)):
            save_file(tensors, str(tmp / name), metadata={"format": FORMAT, "version": str(VERSION)})
            _fsync(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        state["files"] = files
        _write_file(tmp / STATE_FILE, json.dumps(state, indent=1).encode())
        _fsync(tmp)
        # The swap: the previous snapshot steps aside, the new one takes its name, then the previous goes.
        backup = _backup_path(folder)
        if folder.exists():
            if backup.exists():
                shutil.rmtree(backup)
            os.rename(folder, backup)
        os.rename(tmp, folder)
        _fsync(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(_backup_path(folder), ignore_errors=True)
    return folder


# ---- restore --------------------------------------------------------------------------------------
def _mismatch(what: str, saved: Any, here: Any) -> ValueError:
    return ValueError(f"restore_session(): snapshot {what} is {saved!r}, this session's is {here!r}")


def _read_state(folder: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """``state.json`` and the three tensor files, checked against the manifest (``ValueError`` if not)."""
    where = f"snapshot {str(folder)!r}"
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except FileNotFoundError:
        raise ValueError(f"{where} is incomplete: {STATE_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} is corrupt: {STATE_FILE} is unreadable ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{where} is not a session snapshot ({STATE_FILE} has no format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise _mismatch("format version", state.get("version"), VERSION)
    files = state.get("files")
    if not isinstance(files, dict) or set(files) != set(_TENSOR_FILES):
        raise ValueError(f"{where} is corrupt: {STATE_FILE} has no manifest of {list(_TENSOR_FILES)}")
    tensors = {}
    for name in _TENSOR_FILES:
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{where} is incomplete: {name} is missing")
        size = path.stat().st_size
        if size != files[name].get("bytes"):
            raise ValueError(f"{where} is truncated or corrupt: {name} has {size} bytes, the manifest says "
                             f"{files[name].get('bytes')}")
        if _sha256(path) != files[name].get("sha256"):
            raise ValueError(f"{where} is corrupt: {name} does not match its SHA-256 in the manifest")
        try:
            tensors[name] = load_file(str(path))
        except Exception as err:  # safetensors' own error type; any failure to read is a corrupt file
            raise ValueError(f"{where} is corrupt: {name} is unreadable ({err})") from None
    return state, tensors


def _check_compatible(session: StreamingSession, state: dict) -> None:
    here = model_identity(session.adapter)
    saved = state.get("model", {})
    for key in here:
        if saved.get(key) != here[key]:
            raise _mismatch(f"model {key}", saved.get(key), here[key])
    if state["stream"]["chunk_frames"] != session.chunk_frames:
        raise _mismatch("chunk_frames", state["stream"]["chunk_frames"], session.chunk_frames)
    policy, sp = session.memory, state["policy"]
    if sp["name"] != policy.name:
        raise _mismatch("memory policy", sp["name"], policy.name)
    if sp["class"] != _class_path(policy):
        raise _mismatch("memory policy class", sp["class"], _class_path(policy))
    if sp["budget"] != getattr(policy, "budget", None):
        raise _mismatch(f"policy {policy.name!r} budget", sp["budget"], getattr(policy, "budget", None))
    _check_options(f"policy {policy.name!r} option", sp["options"], _options(policy))
    gate, sg = session.gate, state["gate"]
    gate_class = None if gate is None else _class_path(gate)
    if (sg and sg["class"]) != gate_class:
        raise _mismatch("gate", sg and sg["class"], gate_class)
    if sg is not None:
        _check_options("gate option", sg["options"], _options(gate))
    pooling = None if session.pooling is None else _class_path(session.pooling)
    if state["pooling"] != pooling:
        raise _mismatch("pooling stage", state["pooling"], pooling)


def _check_options(what: str, saved: dict, here: dict) -> None:
    for key in sorted(set(saved) | set(here)):
        if saved.get(key) != here.get(key):
            raise _mismatch(f"{what} {key!r}", saved.get(key), here.get(key))


def _check_fresh(session: StreamingSession) -> None:
    held = []
    if session.started:
        held.append("it is started")
    if session.frame_log or session._pending_frames or getattr(session, "_frame_store", None):
        held.append("it holds frames")
    if session.watches:
        held.append(f"it has watches {sorted(session.watches)}")
    if session.cache.physical_length():
        held.append("its memory is not empty")
    if held:
        raise ValueError(f"restore_session(): the session is not fresh ({', '.join(held)}); restore into a newly "
                         "constructed session")


def _frames(tensors: dict[str, torch.Tensor], prefix: str, runs: list[int], where: str) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for j, n in enumerate(runs):
        t = tensors.get(f"{prefix}.{j}")
        if t is None or t.dtype != torch.uint8 or t.ndim != 4 or t.shape[0] != n:
            raise ValueError(f"{where} is corrupt: {FRAMES_FILE} lacks {n} frames {prefix}.{j}")
        out.extend(t.numpy())
    return out


def _event(d: dict) -> WatchEvent:
    return WatchEvent(int(d["watch_id"]), d["query"], float(d["time"]), d["text"], float(d["score"]))


def restore_session(session: StreamingSession, folder: str | os.PathLike, *,
                    callbacks: Mapping[int, Callable[[WatchEvent], None]] | None = None) -> None:
    """Load the snapshot in ``folder`` into ``session``, a freshly constructed session built with the same
    adapter, policy (name, budget, options), gate, pooling and ``chunk_frames``.

    Watches come back with ``callback=None``, or the callback ``callbacks`` gives for their id. Raises a
    one-line ``ValueError`` on an incompatible, missing, truncated or corrupt snapshot, or a session that is
    not fresh; the session is then unchanged.
    """
    folder = Path(folder)
    _check_fresh(session)
    if not folder.exists() and _backup_path(folder).exists():
        folder = _backup_path(folder)  # a save died between its two renames: the previous snapshot is complete
    if not folder.is_dir():
        raise ValueError(f"restore_session(): no snapshot at {str(folder)!r}")
    state, files = _read_state(folder)
    where = f"snapshot {str(folder)!r}"
    try:
        _check_compatible(session, state)
        prepared = _prepare(session, state, files, where)
    except (KeyError, TypeError, IndexError) as err:  # a state.json with a field missing or of the wrong type
        raise ValueError(f"{where} is corrupt: {STATE_FILE} is malformed ({type(err).__name__}: {err})") from None
    callbacks = dict(callbacks or {})
    unknown = sorted(set(callbacks) - {w.watch_id for w in prepared["watches"]})
    if unknown:
        raise ValueError(f"restore_session(): callbacks for watches {unknown} that the snapshot does not have "
                         f"(it has {[w.watch_id for w in prepared['watches']]})")
    _apply(session, prepared, callbacks)


def _prepare(session: StreamingSession, state: dict, files: dict[str, dict[str, torch.Tensor]],
             where: str) -> dict[str, Any]:
    """Everything decoded and checked, the session untouched."""
    device = session.adapter.device
    cache, sc = session.cache, state["cache"]
    if sc["num_layers"] != cache.num_layers or sc["pos_dims"] != cache.pos_dims:
        raise _mismatch("cache layers x pos_dims", (sc["num_layers"], sc["pos_dims"]),
                        (cache.num_layers, cache.pos_dims))
    ct = files[CACHE_FILE]
    layers = []
    for i, info in enumerate(sc["layers"]):
        names = list(_LAYER_FIELDS) + (["keys", "values"] if info["written"] else [])
        missing = [n for n in names if f"layer{i}.{n}" not in ct]
        if missing:
            raise ValueError(f"{where} is corrupt: {CACHE_FILE} lacks layer{i}.{missing[0]}")
        entry = {n: ct[f"layer{i}.{n}"] for n in names}
        n = entry["frame_ids"].shape[0]
        if any(entry[k].shape[-1] != n for k in _LAYER_FIELDS) or (
                info["written"] and n and entry["keys"].shape[-2] != n):
            raise ValueError(f"{where} is corrupt: layer {i}'s tensors have different lengths")
        if info["written"]:
            dev = torch.device("cpu") if info["device"] == "cpu" else device
            entry["keys"], entry["values"] = entry["keys"].to(dev), entry["values"].to(dev)
        layers.append(entry)
    if len({e["frame_ids"].shape[0] for e in layers}) > 1:
        raise ValueError(f"{where} is corrupt: cache layers have different lengths")

    decoder = _Decoder(files[STATE_TENSORS_FILE], device, where)
    ss = state["session"]
    policy_state = _decode_object(session.memory, state["policy"]["state"], decoder, "policy", where)
    gate_state = None if state["gate"] is None else _decode_object(session.gate, state["gate"]["state"],
                                                                   decoder, "gate", where)
    stats_state = _decode_object(session.stats, ss["stats"], decoder, "stats", where)

    ft = files[FRAMES_FILE]
    pending = _frames(ft, "pending", ss["pending_runs"], where)
    store = _frames(ft, "store", ss["store_runs"], where)
    if len(pending) != len(ss["pending_times"]):
        raise ValueError(f"{where} is corrupt: {len(pending)} pending frames but {len(ss['pending_times'])} times")

    # Watches are registered through session.watch() (which derives their prompt ids from the tokenizer)
    # into a scratch dict, so a failure leaves the session's own untouched.
    watches, next_id = session.watches, session._next_watch_id
    session.watches = {}
    try:
        for ws in state["watches"]:
            config = WatchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ws["config"].items()})
            session._next_watch_id = ws["watch_id"]
            session.watch(ws["query"], config)
        built = list(session.watches.values())
    finally:
        session.watches, session._next_watch_id = watches, next_id
    for w, ws in zip(built, state["watches"], strict=True):
        if ws["prompt_ids"] is not None and w.prompt_ids.tolist() != ws["prompt_ids"]:
            raise ValueError(f"restore_session(): watch {w.watch_id}'s prompt tokenizes differently in this session "
                             "(the snapshot comes from another tokenizer)")
        w.armed, w.last_fired, w.decisions = bool(ws["armed"]), ws["last_fired"], int(ws["decisions"])
        w.scores = [(float(t), float(s)) for t, s in ws["scores"]]
        w.fired = [_event(e) for e in ws["fired"]]
    se = state["engine"]
    return {
        "layers": layers, "policy": policy_state, "gate": gate_state, "stats": stats_state, "watches": built,
        "next_position": int(se["next_position"]), "started": bool(se["started"]),
        "positions_warned": bool(se["positions_warned"]),
        "frame_log": [(int(f), float(t)) for f, t in ss["frame_log"]],
        "pending": pending, "pending_times": [float(t) for t in ss["pending_times"]], "store": store,
        "tokens_per_frame": None if ss["tokens_per_frame"] is None else int(ss["tokens_per_frame"]),
        "resize_warned": bool(ss["resize_warned"]), "events": [_event(e) for e in ss["events"]],
        "next_watch_id": int(ss["next_watch_id"]),
    }


def _decode_object(target: Any, node: dict, decoder: _Decoder, kind: str, where: str) -> dict[str, Any]:
    if node["class"] != _class_path(target):
        raise _mismatch(f"{kind} class", node["class"], _class_path(target))
    return {k: decoder.decode(v) for k, v in node["attributes"].items()}


def _set_attributes(target: Any, attributes: dict[str, Any]) -> None:
    for k, v in attributes.items():
        object.__setattr__(target, k, v)


def _apply(session: StreamingSession, prepared: dict[str, Any],
           callbacks: dict[int, Callable[[WatchEvent], None]]) -> None:
    """Write the prepared state into the session (assignments only: nothing here fails)."""
    engine = session.engine
    for layer, entry in zip(engine.cache.layers, prepared["layers"], strict=True):
        for name in _LAYER_FIELDS:
            setattr(layer, name, entry[name])
        if "keys" in entry:
            layer.keys, layer.values = entry["keys"], entry["values"]
            layer.is_initialized, layer.device = True, entry["keys"].device
        else:
            layer.keys = layer.values = None
            layer.is_initialized = False
    engine.next_position, engine.started = prepared["next_position"], prepared["started"]
    engine._positions_warned = prepared["positions_warned"]
    _set_attributes(session.memory, prepared["policy"])
    if prepared["gate"] is not None:
        _set_attributes(session.gate, prepared["gate"])
    _set_attributes(session.stats, prepared["stats"])  # the engine shares this object: updated in place
    session.frame_log = prepared["frame_log"]
    session._pending_frames, session._pending_times = prepared["pending"], prepared["pending_times"]
    if hasattr(session, "_frame_store"):  # the uniform baseline's stored frames
        session._frame_store = prepared["store"]
        session._tokens_per_frame = prepared["tokens_per_frame"]
    session._resize_warned = prepared["resize_warned"]
    session._events = prepared["events"]
    session.watches = {}
    for w in prepared["watches"]:
        w.callback = callbacks.get(w.watch_id)
        session.watches[w.watch_id] = w
    session._next_watch_id = prepared["next_watch_id"]
