"""``ppllava_hermes.specs`` and ``plugins``: one resolver for --model / --clip / --pool-kernel, its
one-line errors, the registries and how the ShapesWorld plugin is found."""

from __future__ import annotations

import json

import pytest

from ppllava_hermes import plugins, specs
from ppllava_hermes.cli import main
from ppllava_hermes.specs import SpecError

from .helpers import random_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from ppllava_hermes.video import write_video

    frames, _ = random_frames(4, size=56, seed=0)
    return str(write_video(tmp_path_factory.mktemp("v") / "v.mp4", frames, fps=2.0))


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks the hub (or transformers) for a config."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"hub request for {args}")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def _stream_error(capsys, video: str, *flags: str) -> str:
    assert main(["stream", video, "--quiet", "--max-new-tokens", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ---- --model mistakes: one line each, through the CLI ------------------------------------------------


def test_missing_path(capsys, video, tmp_path, no_hub):
    missing = str(tmp_path / "no" / "such" / "ckpt")
    err = _stream_error(capsys, video, "--model", missing)
    assert f"model {missing!r}: no such file or folder" in err and "Repo id" not in err


def test_empty_folder(capsys, video, tmp_path, no_hub):
    err = _stream_error(capsys, video, "--model", str(tmp_path))
    assert str(tmp_path) in err and "the folder is empty" in err


def test_folder_without_config(capsys, video, tmp_path, no_hub):
    (tmp_path / "weights.bin").write_bytes(b"0")
    err = _stream_error(capsys, video, "--model", str(tmp_path))
    assert "no config.json in the folder" in err


def test_broken_config_json(capsys, video, tmp_path, no_hub):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl",')
    err = _stream_error(capsys, video, "--model", str(tmp_path))
    assert str(tmp_path) in err and "config.json is not valid JSON" in err


def test_config_without_model_type(capsys, video, tmp_path, no_hub):
    (tmp_path / "config.json").write_text("[1, 2]")
    assert "config.json has no model_type" in _stream_error(capsys, video, "--model", str(tmp_path))


def test_unsupported_model_type_lists_the_supported(capsys, video, tmp_path, no_hub):
    from ppllava_hermes.models import ADAPTERS

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    err = _stream_error(capsys, video, "--model", str(tmp_path))
    assert "model_type 'bert' is not supported" in err
    assert all(name in err for name in ADAPTERS)


@pytest.mark.parametrize(("typo", "meant"), [("tiny-qwen2.5", "tiny-qwen2.5-vl"), ("tiny-llava", "tiny-llava-onevision"),
                                             ("shapeworld", "shapesworld"), ("tiny:qwen2_5", "tiny-qwen2.5-vl")])
def test_typo_suggests_the_close_name_without_a_hub_request(capsys, video, no_hub, typo, meant):
    err = _stream_error(capsys, video, "--model", typo)
    assert f"model {typo!r}: unknown name; did you mean {meant!r}?" in err


def test_a_name_that_takes_no_argument(no_hub):
    with pytest.raises(SpecError, match="'tiny-qwen2.5-vl' takes no ':' argument"):
        specs.load_model("tiny-qwen2.5-vl:extra")


def test_hub_failure_is_one_line(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nto load this file.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(SpecError) as info:
        specs.load_model("Qwen/Qwen2.5-VL-999B")
    text = str(info.value)
    assert text.startswith("model 'Qwen/Qwen2.5-VL-999B': no such folder, and the hub cannot give its config")
    assert "\n" not in text


def test_spec_errors_are_value_errors_for_the_other_commands(capsys):
    assert issubclass(SpecError, ValueError)
    assert main(["eval", "--model", "tiny-qwen2.5", "--world-videos", "1", "--world-duration", "4", "--quiet"]) == 2
    assert "did you mean 'tiny-qwen2.5-vl'" in capsys.readouterr().err


# ---- one syntax, old spellings accepted ------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "name"), [("tiny:qwen2_5_vl", "tiny-qwen2.5-vl"),
                                             ("tiny:llava_onevision", "tiny-llava-onevision")])
def test_old_spellings_are_aliases(alias, name):
    assert plugins.MODELS.canonical(alias) == name
    assert specs.model_entry(alias) is specs.model_entry(name)


def test_shapesworld_with_a_path_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ShapesWorld checkpoint in"):  # also a SpecError
        specs.load_model(f"shapesworld:{tmp_path}")
    with pytest.raises(SpecError, match="expected shapesworld:PATH"):
        specs.load_model("shapesworld:")


def test_kernel_parser_is_shared():
    assert specs.parse_kernel("2,3,3") == specs.parse_kernel("2x3x3") == (2, 3, 3)
    for bad in ("2,3", "0,1,1", "a,b,c"):
        with pytest.raises(SpecError, match="three positive integers"):
            specs.parse_kernel(bad)
    with pytest.raises(SystemExit):
        main(["stream", "x.mp4", "--pool-kernel", "2,3"])


# ---- --pool prompt and the model's own relevance model -------------------------------------------------


def test_prompt_pooling_without_clip_needs_the_flag(capsys, video):
    err = _stream_error(capsys, video, "--model", "tiny-qwen2.5-vl", "--pool", "prompt")
    assert "--pool prompt with model 'tiny-qwen2.5-vl' needs --clip" in err


def test_eval_prompt_pooling_without_clip_needs_the_flag():
    from ppllava_hermes.evaluation.runner import EvalConfig, build_scorer

    config = EvalConfig(config="pooling", pool_mode="prompt")
    with pytest.raises(SpecError, match="--pool-mode prompt with model 'tiny-qwen2.5-vl' needs --clip"):
        build_scorer(config, adapter=None)


def test_the_shapesworld_model_brings_its_own_clip():
    from ppllava_hermes.pooling import RelevanceScorer
    from ppllava_hermes.world.clip import CLIP_DIR

    assert specs.relevance_spec("shapesworld", None) == "shapesworld"
    assert specs.relevance_spec("shapesworld", "tiny") == "tiny"  # --clip wins
    assert isinstance(specs.load_relevance("shapesworld", frames_per_token=2), RelevanceScorer)
    assert isinstance(specs.load_relevance(str(CLIP_DIR), frames_per_token=2), RelevanceScorer)  # a claimed folder
    assert specs.load_relevance("none") is None


def test_clip_help_says_what_the_default_is(capsys):
    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Default: the model's own (shapesworld -> shapesworld); any other model needs --clip" in out


def test_clip_mistakes_are_one_line(tmp_path, no_hub):
    with pytest.raises(SpecError, match="did you mean 'shapesworld'"):
        specs.load_relevance("shapeworld")
    with pytest.raises(SpecError, match="no config.json in the folder"):
        specs.load_relevance(str(tmp_path))


# ---- registries and plugin discovery ---------------------------------------------------------------------


def test_world_registers_its_entries():
    for registry, name in ((plugins.MODELS, "shapesworld"), (plugins.RELEVANCE, "shapesworld"),
                           (plugins.BENCHMARKS, "shapesworld"), (plugins.PROMPT_STYLES, "words"),
                           (plugins.FRAME_SOURCES, "shapesworld"), (plugins.COMMANDS, "demo")):
        assert name in registry, (registry.kind, name)
    assert plugins.BENCHMARKS.get("shapesworld").prompt_style == "words"
    assert plugins.MODELS.get("shapesworld").relevance == "shapesworld"


def test_plugins_come_from_entry_points_with_an_in_tree_fallback(monkeypatch):
    import importlib.metadata

    called: list[str] = []

    class EntryPoint:
        def __init__(self, value: str) -> None:
            self.value = value

        def load(self):
            return lambda: called.append(f"entry point {self.value}")

    monkeypatch.setattr(plugins, "_call", lambda value: called.append(f"fallback {value}"))
    (in_tree,) = plugins.IN_TREE_PLUGINS
    # installed: the metadata lists the plugin, so it is loaded from there and not imported again
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [EntryPoint(in_tree)])
    monkeypatch.setattr(plugins, "_loaded", False)
    assert plugins.load_plugins() and called == [f"entry point {in_tree}"]
    assert not plugins.load_plugins()  # once
    # a checkout run without installing: no metadata, the in-tree plugin is imported by name
    called.clear()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(plugins, "_loaded", False)
    assert plugins.load_plugins() and called == [f"fallback {in_tree}"]


def test_a_registry_miss_loads_plugins_then_answers_none(monkeypatch):
    registry = plugins.Registry("thing")
    registry.register("a", 1, aliases=("alpha",))
    assert registry.get("alpha") == 1 and registry.get("b") is None and "a" in registry
    registry.register("a", 1)  # the same entry again: fine
    with pytest.raises(ValueError, match="thing 'alpha' is already registered"):
        registry.register("b", 2, aliases=("alpha",))


def test_plugin_commands_are_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--minutes" in out and "--pool" in out
