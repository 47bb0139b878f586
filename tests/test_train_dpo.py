"""train.dpo (TRL DPOTrainer with the video collator) on tiny models: a few steps train the pooling only,
the reward margin is TRL's, resume restores step, optimizer and scheduler."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from ppllava_hermes.integrations.trl_video import (
    VideoPreferenceCollator,
    checkpointing_kwargs,
    make_video_loader,
    preference_rows,
)
from ppllava_hermes.recipes.train.dpo import main
from ppllava_hermes.training import (
    DataError,
    DataErrorLog,
    DataWarning,
    shapesworld_examples,
    write_shapesworld_json,
)
from ppllava_hermes.training.build import load_vlm

torch.set_num_threads(1)

BASE = ["--model", "tiny:qwen2_5_vl", "--clip", "tiny", "--pool-kernel", "1,2,2", "--pool-adapter-dim", "8",
        "--batch-size", "2", "--lr", "1e-2", "--warmup-ratio", "0", "--threads", "1", "--logging-steps", "1",
        "--report-to", "none", "--train-data", "shapesworld:8", "--no-eval-accuracy"]


def test_collator_puts_chosen_rows_first_on_shared_videos():
    adapter = load_vlm("tiny:qwen2_5_vl")
    rows, store = preference_rows(shapesworld_examples("train", 3, mc_fraction=1.0))
    batch = VideoPreferenceCollator(adapter, make_video_loader(store))(rows)
    assert len(batch["videos"]) == 3 and batch["video_index"].tolist() == [0, 1, 2, 0, 1, 2]
    assert batch["input_ids"].shape[0] == 6
    # completion windows: the question's last token, then the answer; only the answer is scored
    assert (batch["completion_mask"][:, 0] == 0).all() and (batch["completion_mask"].sum(1) >= 2).all()
    chosen = adapter.tokenizer.decode(batch["input_ids"][0][batch["completion_mask"][0].bool()])
    rejected = adapter.tokenizer.decode(batch["input_ids"][3][batch["completion_mask"][3].bool()])
    assert chosen.startswith(rows[0]["chosen"]) and rejected.startswith(rows[0]["rejected"])


def test_unreadable_video_is_reported_with_its_row():
    adapter = load_vlm("tiny:qwen2_5_vl")
    rows, store = preference_rows(shapesworld_examples("train", 2, mc_fraction=1.0))
    rows[1] = {**rows[1], "video": "/nonexistent/clip.mp4", "source": "prefs.jsonl", "line": 7}
    errors = DataErrorLog("skip")
    with pytest.warns(UserWarning, match="prefs.jsonl:7: cannot read video"):
        batch = VideoPreferenceCollator(adapter, make_video_loader(store), errors)(rows)
    assert len(batch["videos"]) == 1 and errors.count == 1
    with pytest.raises(ValueError, match="prefs.jsonl:7"):
        VideoPreferenceCollator(adapter, make_video_loader(store), DataErrorLog("fail"))(rows)


# The deprecated checkpointing names (transformers 5.24) must not be used by the recipe nor by TRL on our model.
@pytest.mark.filterwarnings("error:.*(gradient_checkpointing|is_gradient_checkpointing).*:FutureWarning")
def test_dpo_steps_train_the_pooling_and_resume(tmp_path):
    out = tmp_path / "run"

    def args(steps: int) -> list[str]:
        return BASE + ["--max-steps", str(steps), "--save-every", "2", "--out", str(out), "--eval-data", "shapesworld:2"]

    first = main(args(2))
    trainer = first.trainer
    # TRL prepares the dataset its own way (EOS appended to "chosen" / "rejected", text-only tokens); the
    # collator reads the untouched copies, so its batch is the one of the original rows.
    rows, _ = preference_rows(shapesworld_examples("train", 8, mc_fraction=1.0))
    prepared = [trainer.train_dataset[i] for i in range(2)]
    assert [r["chosen_text"] for r in prepared] == [r["chosen"] for r in rows[:2]]
    collator = trainer.data_collator
    assert torch.equal(collator(prepared)["input_ids"], collator(rows[:2])["input_ids"])
    assert torch.equal(collator(prepared)["completion_mask"], collator(rows[:2])["completion_mask"])
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert first.summary["before"]["eval_rewards/margins"] == 0.0  # the policy starts as the reference
    policy = first.policy.core.state_dict()
    ref = trainer.ref_model.core.state_dict()
    pooling = [k for k in policy if k.startswith("pooling.")]
    assert pooling and all(not torch.equal(policy[k], ref[k]) for k in pooling), "every pooling tensor trains"
    # the reference shares the frozen VLM; frozen weights are bit-identical to a fresh build
    assert trainer.ref_model.core.vlm is first.policy.core.vlm
    fresh = load_vlm("tiny:qwen2_5_vl").model.state_dict()
    for name in ("model.language_model.layers.0.self_attn.q_proj.weight", "model.visual.blocks.0.attn.qkv.weight",
                 "lm_head.weight"):
        assert torch.equal(fresh[name], policy[f"vlm.{name}"]), name
    assert torch.equal(policy["scorer.model.visual.conv1.weight"], ref["scorer.model.visual.conv1.weight"])

    opt_state = copy.deepcopy(trainer.optimizer.state_dict())
    sched_state = trainer.lr_scheduler.state_dict()
    seen = AtTrainBegin()
    resumed = main(args(3) + ["--resume-from", str(out / "checkpoint-2")], callbacks=[seen])
    assert seen.step == 2 and resumed.trainer.state.global_step == 3
    assert seen.scheduler == sched_state
    assert seen.optimizer["param_groups"][0]["initial_lr"] == opt_state["param_groups"][0]["initial_lr"]
    assert seen.optimizer["state"].keys() == opt_state["state"].keys()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(seen.optimizer["state"][i][k])), (i, k)
    for k in pooling:
        assert torch.equal(seen.model[k], policy[k]), k

    # Trainer's resume calls model.load_state_dict(checkpoint, False): the trained subset loads strictly
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert set(saved) == set(first.policy.trained_state_dict())
    assert first.policy.load_state_dict(saved, False).missing_keys == []
    dropped = dict(saved)
    dropped.pop(next(k for k in saved if ".pooling." in k))
    with pytest.raises(KeyError, match="trained tensors missing"):
        first.policy.load_state_dict(dropped, False)
    with pytest.raises(KeyError, match="unexpected"):
        first.policy.load_state_dict({**saved, "backbone.core.nonsense": torch.zeros(1)}, False)


class AtTrainBegin(TrainerCallback):
    """What a resumed Trainer holds when training (re)starts: step, optimizer, scheduler, pooling."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.step = state.global_step
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.scheduler = lr_scheduler.state_dict()
        self.model = {k: v.clone() for k, v in model.core.state_dict().items() if k.startswith("pooling.")}


def test_checkpointing_flag_goes_under_the_installed_config_name_without_a_warning(tmp_path):
    from dataclasses import dataclass

    from trl import DPOConfig

    kwargs = checkpointing_kwargs(DPOConfig, False)
    names = {f.name for f in fields(DPOConfig)}
    assert list(kwargs) == ["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = DPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, **kwargs)
    assert config.gradient_checkpointing is False  # TRL's own default is True: ours wins, under either name
    assert getattr(config, "activation_checkpointing", False) is False

    @dataclass
    class Old:  # transformers < 5.24
        gradient_checkpointing: bool = False

    @dataclass
    class Neither:
        x: int = 0

    assert checkpointing_kwargs(Old, True) == {"gradient_checkpointing": True}
    with pytest.raises(TypeError, match="Neither has no activation checkpointing flag"):
        checkpointing_kwargs(Neither, False)


def test_dpo_reads_a_preference_file_and_reports_bad_rows(tmp_path):
    records = json.loads(write_shapesworld_json(tmp_path / "sw.json", "train", 3, mc_fraction=1.0).read_text())
    examples = shapesworld_examples("train", 3, mc_fraction=1.0)
    rows = [{"video": r["video"], "prompt": ex.question, "chosen": ex.answer, "rejected": ex.rejected}
            for r, ex in zip(records, examples, strict=True)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, json.dumps({**rows[0], "video": "videos/gone.mp4"}))
    lines.append(json.dumps({"video": rows[0]["video"], "prompt": "Q?", "chosen": "red"}))
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = [a for a in BASE if a not in ("--train-data", "shapesworld:8")]
    with pytest.warns(DataWarning) as caught:
        result = main(argv + ["--train-data", str(path), "--max-steps", "1", "--out", str(tmp_path / "run")])
    assert result.trainer.state.global_step == 1 and result.summary["data_errors"] == 2
    messages = [str(w.message) for w in caught]
    assert any(f"{path}:2: missing video 'videos/gone.mp4'" in m for m in messages)
    assert any(f"{path}:5:" in m and "'rejected'" in m for m in messages)
    with pytest.raises(DataError, match=rf"{path}:2: missing video"):
        main(argv + ["--train-data", str(path), "--max-steps", "1", "--out", str(tmp_path / "run2"),
                     "--on-data-error", "fail"])
