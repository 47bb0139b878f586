"""The lmms-eval wrapper, against a stub ``lmms_eval`` package (lmms-eval itself is an optional extra)."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ppllava_hermes.world import generate_world
from ppllava_hermes.world.generator import WorldConfig


class _StubLmms:
    """The part of ``lmms_eval.api.model.lmms`` the wrapper relies on."""

    def __init__(self) -> None:
        self._rank, self._world_size = 0, 1
        self.task_dict: dict = {}
        self.cache_hook = types.SimpleNamespace(calls=[], add_partial=lambda *a: self.cache_hook.calls.append(a))


class _StubManifest:
    def __init__(self, model_id, simple_class_path=None, chat_class_path=None, aliases=()):
        self.model_id, self.simple_class_path, self.aliases = model_id, simple_class_path, aliases
        self.chat_class_path = chat_class_path


@pytest.fixture
def wrapper(monkeypatch):
    mods = {name: types.ModuleType(name) for name in
            ("lmms_eval", "lmms_eval.api", "lmms_eval.api.model", "lmms_eval.models", "lmms_eval.models.registry_v2")}
    mods["lmms_eval.api.model"].lmms = _StubLmms
    mods["lmms_eval.models.registry_v2"].ModelManifest = _StubManifest
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    module = importlib.import_module("ppllava_hermes.integrations.lmms_eval")
    _drop_built_classes(module)  # built on the real lmms-eval by an earlier test, where it is installed
    yield importlib.reload(module)
    _drop_built_classes(module)  # built on the stub


def _drop_built_classes(module) -> None:
    """Forget the lazily built wrapper classes (``importlib.reload`` keeps a module's old globals)."""
    for name in ("PPLLaVAHermesLMM", "PPLLaVAHermesChatLMM", "_PPLLaVAHermesBase"):
        module.__dict__.pop(name, None)


class _Request:
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    world = generate_world(WorldConfig(duration=8.0), seed=3)
    return str(world.save_mp4(tmp_path_factory.mktemp("lmms") / "v.mp4")), world


def test_wrapper_subclasses_lmms_and_is_registered(wrapper):
    cls = wrapper.PPLLaVAHermesLMM
    assert issubclass(cls, _StubLmms) and cls.is_simple
    manifest = wrapper.manifest()
    assert manifest.model_id == "ppllava_hermes"
    module, name = manifest.simple_class_path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is cls
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '[project.entry-points."lmms_eval.models"]\nppllava_hermes = "ppllava_hermes.integrations.lmms_eval:manifest"' \
        in pyproject
    assert '\nlmms-eval = ["ppllava-hermes[eval]", "lmms-eval' in pyproject  # the optional extra
    extra = next(line for line in pyproject.splitlines() if line.startswith("lmms-eval = ["))
    assert '"filelock<4"' in extra and '"av<16"' in extra  # lmms-eval 0.7.3 exits 0 after a crash with filelock 4


def test_generate_until_and_loglikelihood(wrapper, video):
    path, world = video
    model = wrapper.PPLLaVAHermesLMM(pretrained="tiny-qwen2.5-vl", memory="window", budget="64",
                                     max_frames_num="6", max_new_tokens="3")
    model.task_dict = {"t": {"test": {0: {"video": path}, 1: {"frames": [world.render(0), world.render(1)]}}}}
    reqs = [_Request("<image>What is shown?", {"until": ["\n\n"], "max_new_tokens": 2}, lambda d: [d["video"]], 0, "t",
                     "test"),
            _Request("What colour?", {}, lambda d: d["frames"], 1, "t", "test")]
    out = model.generate_until(reqs)
    assert len(out) == 2 and all(isinstance(x, str) for x in out)
    assert [c[0] for c in model.cache_hook.calls] == ["generate_until", "generate_until"]
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        model.loglikelihood(reqs)


def test_multi_round_streams_on_between_rounds(wrapper, video, tmp_path):
    from ppllava_hermes.world.generator import save_mp4

    _, world = video
    # OVO-Bench style: round r gets the video up to its probe time, a longer prefix each time.
    prefixes = [str(save_mp4(tmp_path / f"p{k}.mp4", world.frames(0, k), world.fps)) for k in (3, 6, 8)]
    model = wrapper.PPLLaVAHermesLMM(pretrained="tiny-qwen2.5-vl", memory="full", fps="1", max_new_tokens="2")
    model.task_dict = {"t": {"test": {0: {"videos": prefixes}}}}
    sessions, seen = [], []
    make = model.engine.new_session

    def new_session(*a):
        s = make(*a)
        ask = s.ask
        s.ask = lambda q, g=None: s.flush() or seen.append([t for _, t in s.frame_log]) or ask(q, g)
        sessions.append(s)
        return s

    model.engine.new_session = new_session
    rounds = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        rounds.append((round_idx, list(previous_output)))
        if round_idx >= 3:
            return None, None, True, previous_output, None
        return [doc["videos"][round_idx]], f"Round {round_idx}?", False, previous_output, {"round": round_idx}

    (answers,) = model.generate_until_multi_round(
        [_Request("Round 0?", {"max_new_tokens": 1}, lambda d: [d["videos"][0]], doc_to_text, 0, "t", "test")])
    assert len(answers) == 3 and [r[0] for r in rounds] == [1, 2, 3] and rounds[-1][1] == answers
    assert len(sessions) == 1  # one stream for all rounds
    # each round adds only the frames after the previous round's
    assert [len(s) for s in seen] == [3, 6, 8]
    assert np.allclose(seen[-1], np.arange(8.0))


def test_manifest_lists_both_classes_in_lmms_eval_models_tables(wrapper):
    tables = sys.modules["lmms_eval.models"]
    tables.AVAILABLE_SIMPLE_MODELS, tables.AVAILABLE_CHAT_TEMPLATE_MODELS, tables.MODEL_ALIASES = {"x": "X"}, {}, {}
    manifest = wrapper.manifest()
    assert manifest.chat_class_path == "ppllava_hermes.integrations.lmms_eval.PPLLaVAHermesChatLMM"
    assert tables.AVAILABLE_SIMPLE_MODELS["ppllava_hermes"] == manifest.simple_class_path
    assert tables.AVAILABLE_CHAT_TEMPLATE_MODELS["ppllava_hermes"] == manifest.chat_class_path
    assert tables.MODEL_ALIASES["ppllava_hermes"] == ("ppllava-hermes",)
    assert not wrapper.PPLLaVAHermesChatLMM.is_simple


def test_chat_model_reads_messages_and_streams_rounds(wrapper, video, tmp_path):
    from ppllava_hermes.world.generator import save_mp4

    path, world = video
    model = wrapper.PPLLaVAHermesChatLMM(pretrained="tiny-qwen2.5-vl", memory="full", max_frames_num="8",
                                         max_new_tokens="2", fps="1")
    asked, frames = [], []
    make = model.engine.new_session

    def new_session(*a):
        s = make(*a)
        ask = s.ask
        s.ask = lambda q, g=None: s.flush() or asked.append(q) or frames.append(len(s.frame_log)) or ask(q, g)
        return s

    model.engine.new_session = new_session
    model.task_dict = {"t": {"test": {0: {"video": path}}}}

    def messages(doc, span=None):
        video = {"type": "video", "url": {"path": doc["video"], "video_start": span[0], "video_end": span[1]}
                 if span else doc["video"]}
        return [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [video, {"type": "text", "text": "What moved?"}]}]

    out = model.generate_until([_Request("ctx", lambda d: messages(d), {"max_new_tokens": 1}, 0, "t", "test"),
                                _Request("ctx", lambda d: messages(d, (2.0, 5.0)), {}, 0, "t", "test")])
    assert len(out) == 2 and all(isinstance(x, str) for x in out)
    assert asked == ["What moved?", "What moved?"]  # the user text, not the system turn
    assert frames == [8, 4]  # at 1 fps: every second of the 8 s video, then seconds 2..5

    prefixes = [str(save_mp4(tmp_path / f"p{k}.mp4", world.frames(0, k), world.fps)) for k in (3, 6)]
    asked.clear(), frames.clear()

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        r = round_idx or 0
        if r >= len(prefixes):
            return None, True, previous_output, previous_round_info
        turn = [{"role": "user", "content": [{"type": "video", "url": prefixes[r]},
                                             {"type": "text", "text": f"Round {r}?"}]}]
        if round_idx is None:
            return turn
        assert len(previous_output) == round_idx
        return turn, False, previous_output, {"round": round_idx}

    (answers,) = model.generate_until_multi_round([_Request("ctx", doc_to_messages, {}, 0, "t", "test")])
    assert len(answers) == 2 and asked == ["Round 0?", "Round 1?"]
    assert frames == [3, 6]  # one stream: round 1 adds only the frames after round 0's


def test_models_pickle_without_weights_and_rebuild_lazily(wrapper, video):
    import pickle

    path, _ = video
    model = wrapper.PPLLaVAHermesLMM(pretrained="tiny-qwen2.5-vl", memory="window", budget="64", max_frames_num="4",
                                     max_new_tokens="2")
    model.task_dict = {"t": {"test": {0: {"video": path}}}}
    blob = pickle.dumps(model)
    assert len(blob) < 100_000  # settings and task data, not the model
    clone = pickle.loads(blob)
    assert clone._engine is None and clone._adapter is None and clone.task_dict == model.task_dict
    request = _Request("What is shown?", {}, lambda d: [d["video"]], 0, "t", "test")
    assert clone.generate_until([request]) == model.generate_until([request])  # rebuilt on first use
    assert clone._engine is not None
    clone.cache_hook.add_partial("generate_until", None, "x")  # a working no-op hook after unpickling
