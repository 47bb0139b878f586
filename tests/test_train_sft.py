"""train.finetune_pooling on tiny models: a few steps train what should train, resume restores state,
data errors are reported with file and line."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from accelerate.utils import set_seed

from ppllava_hermes.recipes.train.finetune_pooling import main, parse_args
from ppllava_hermes.training import (
    DataError,
    DataWarning,
    apply_trainable,
    collate_video_batch,
    shapesworld_examples,
    write_shapesworld_json,
)
from ppllava_hermes.training.build import build_model

torch.set_num_threads(1)

BASE = ["--model", "tiny:qwen2_5_vl", "--clip", "tiny", "--pool-kernel", "1,2,2", "--pool-adapter-dim", "8",
        "--batch-size", "2", "--lr", "1e-2", "--warmup-ratio", "0", "--threads", "1", "--log-every", "1", "--report-to", "none",
        "--no-eval-accuracy"]


def _initial(argv):
    """The model main() starts from (same seed, same construction order)."""
    set_seed(0)
    built = build_model(parse_args(argv))
    apply_trainable(built.model, built.trainable)
    return {k: v.clone() for k, v in built.model.state_dict().items()}


def test_steps_train_the_pooling_and_leave_the_vlm_frozen(tmp_path):
    argv = BASE + ["--train-data", "shapesworld:12", "--eval-data", "shapesworld:2", "--max-steps", "2",
                   "--grad-accum", "2", "--out", str(tmp_path / "run"), "--report-to", "tensorboard",
                   "--eval-accuracy"]
    result = main(argv)
    start = _initial(argv)
    end = result.model.state_dict()
    assert result.state.step == 2
    losses = [h["loss"] for h in result.state.history if isinstance(h.get("loss"), float)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    pooling = [k for k in end if k.startswith("pooling.")]
    assert pooling and all(not torch.equal(start[k], end[k]) for k in pooling), "every pooling tensor trains"
    for frozen in ("vlm.model.language_model.layers.0.self_attn.q_proj.weight", "vlm.lm_head.weight",
                   "vlm.model.visual.blocks.0.attn.qkv.weight", "vlm.model.visual.merger.mlp.0.weight",
                   "scorer.model.visual.conv1.weight"):
        assert torch.equal(start[frozen], end[frozen]), frozen
    summary = result.summary
    assert summary["before"]["eval_accuracy"] is not None and summary["after"]["visual_tokens"] == 8.0
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2"]
    assert any((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents*"))
    assert (tmp_path / "run" / "final" / "pooling" / "pooling.safetensors").is_file()


def test_resume_restores_step_optimizer_and_scheduler(tmp_path):
    out = tmp_path / "run"

    def args(steps: int) -> list[str]:
        return BASE + ["--train-data", "shapesworld:12", "--max-steps", str(steps), "--save-every", "2",
                       "--out", str(out)]

    argv = args(2)
    first = main(argv)
    ckpt = out / "checkpoints" / "step_2"
    assert ckpt.is_dir()
    opt_state = first.optimizer.state_dict()
    sched_state = first.scheduler.state_dict()
    trained = {k: v.clone() for k, v in first.model.state_dict().items() if k.startswith("pooling.")}

    resumed = main(argv + ["--resume-from", str(ckpt)])  # max-steps reached: loads and stops
    assert resumed.state.step == 2 and resumed.state.batch_in_epoch == first.state.batch_in_epoch
    assert resumed.scheduler.state_dict() == sched_state
    new_opt = resumed.optimizer.state_dict()
    assert new_opt["param_groups"] == opt_state["param_groups"]
    assert opt_state["state"].keys() == new_opt["state"].keys()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(new_opt["state"][i][k])), (i, k)
    for k, v in trained.items():
        assert torch.equal(resumed.model.state_dict()[k], v), k

    more = main(args(3) + ["--resume-from", "latest"])  # goes on from the newest checkpoint
    assert more.state.step == 3
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [r["step"] for r in rows if r["loss"]] == ["1", "2", "3"]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    good = write_shapesworld_json(root / "good.json", "train", 2)
    records = json.loads(good.read_text())
    lines = [json.dumps(records[0]), "{not json", json.dumps({**records[1], "video": "videos/nope.mp4"}),
             json.dumps({"video": records[1]["video"], "conversations": [records[1]["conversations"][0]]}),
             json.dumps(records[1])]
    path = root / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_records_are_skipped_and_counted(tmp_path, bad_data):
    argv = BASE + ["--train-data", str(bad_data), "--max-steps", "1", "--out", str(tmp_path / "run"),
                   "--on-data-error", "skip"]
    with pytest.warns(DataWarning) as caught:
        result = main(argv)
    messages = [str(w.message) for w in caught]
    assert any(f"{bad_data}:2: malformed JSON" in m for m in messages)
    assert any("3 bad record(s) skipped" in m for m in messages)  # the end-of-run summary
    errors = result.summary["data_error_examples"]
    assert result.summary["data_errors"] == 3 and result.state.step == 1
    assert errors[1].startswith(f"{bad_data}:3: missing video 'videos/nope.mp4'")
    assert errors[2].startswith(f"{bad_data}:4:") and "no answer" in errors[2]


def test_bad_records_are_fatal_on_request(tmp_path, bad_data):
    argv = BASE + ["--train-data", str(bad_data), "--max-steps", "1", "--out", str(tmp_path / "run"),
                   "--on-data-error", "fail"]
    with pytest.raises(DataError, match=rf"{bad_data}:2: malformed JSON"):
        main(argv)


def test_projector_and_lora_train_and_the_trained_folder_reloads(tmp_path):
    out = tmp_path / "run"
    argv = ["--model", "tiny:llava_onevision", "--clip", "tiny", "--pool-kernel", "1,2,2", "--pool-adapter-dim", "8",
            "--batch-size", "2", "--lr", "1e-2", "--warmup-ratio", "0", "--threads", "1", "--report-to", "none",
            "--train-data", "shapesworld:4", "--max-steps", "2", "--out", str(out), "--train-projector",
            "--lora-rank", "4"]
    result = main(argv)
    start = _initial(argv)
    end = result.model.state_dict()
    projector = [k for k in end if k.startswith("vlm.model.multi_modal_projector.")]
    lora_b = [k for k in end if "lora_B" in k]
    assert projector and all(not torch.equal(start[k], end[k]) for k in projector)
    assert lora_b and all(not torch.equal(start[k], end[k]) for k in lora_b)
    for frozen in ("vlm.model.language_model.layers.0.self_attn.q_proj.base_layer.weight",
                   "vlm.model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"):
        assert torch.equal(start[frozen], end[frozen]), frozen

    # a fresh model + the trained folder gives the trained model's outputs
    set_seed(0)
    reloaded = build_model(parse_args(argv + ["--init", str(out / "final")])).model
    examples = shapesworld_examples("test", 2)
    batch = collate_video_batch(reloaded.adapter, [e.video_input() for e in examples], [e.question for e in examples],
                                [e.clip_query for e in examples], [(i, e.answer) for i, e in enumerate(examples)])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, result.model.eval()(**batch).logits)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose precision cannot change once set: start and end clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(("env", "flag", "expected"), [("bf16", None, "bf16"), ("bf16", "no", "no"),
                                                      (None, None, "no"), (None, "bf16", "bf16")])
def test_mixed_precision_comes_from_the_launcher_unless_the_flag_is_given(tmp_path, monkeypatch,
                                                                           fresh_accelerate_state, env, flag, expected):
    from ppllava_hermes.recipes.train.finetune_pooling import build_accelerator

    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:  # what `accelerate launch --mixed_precision bf16` sets for the script
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    argv = BASE + ["--train-data", "shapesworld:2", "--out", str(tmp_path)] + (["--mixed-precision", flag] if flag else [])
    accelerator = build_accelerator(parse_args(argv), tmp_path)
    assert accelerator.mixed_precision == expected
