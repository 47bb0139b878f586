"""train.dpo (TRL DPOTrainer with the video collator) on tiny models: a few steps train the pooling only,
the reward margin is TRL's, resume restores step, optimizer and scheduler."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import TrainerCallback

from ppllava_hermes.integrations.trl_video import VideoPreferenceCollator, make_video_loader, preference_rows
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
pytestmark = pytest.mark.filterwarnings("ignore:.*(gradient_checkpointing|is_gradient_checkpointing).*:FutureWarning")

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


def test_dpo_steps_train_the_pooling_and_resume(tmp_path):
    out = tmp_path / "run"

    def args(steps: int) -> list[str]:
        return BASE + ["--max-steps", str(steps), "--save-every", "2", "--out", str(out), "--eval-data", "shapesworld:2"]

    first = main(args(2))
    trainer = first.trainer
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


class AtTrainBegin(TrainerCallback):
    """What a resumed Trainer holds when training (re)starts: step, optimizer, scheduler, pooling."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.step = state.global_step
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.scheduler = lr_scheduler.state_dict()
        self.model = {k: v.clone() for k, v in model.core.state_dict().items() if k.startswith("pooling.")}


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
