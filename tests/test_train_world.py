"""The ShapesWorld VLM training script: dense token supervision, stage 0 (vision alone) and stage 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppllava_hermes.recipes.train import train_world
from ppllava_hermes.world.labels import LABEL_SIZES
from ppllava_hermes.world.model import build_model, build_tokenizer
from ppllava_hermes.world.tasks import iter_short_clip_worlds

torch.set_num_threads(1)


def test_token_probe_loss_and_accuracy():
    probe = train_world.TokenProbe(8, {"shape": 2.0})
    tokens = torch.randn(2, 2, 4, 4, 8)
    labels = {k: torch.randint(0, n, (2, 2, 4, 4)) for k, n in LABEL_SIZES.items()}
    labels["direction"][0] = -100  # ignored tokens do not count
    loss, acc = probe.loss(tokens, labels)
    manual = sum(
        w * torch.nn.functional.cross_entropy(probe.heads[k](tokens).flatten(0, -2), labels[k].flatten(),
                                              ignore_index=-100)
        for k, w in (("color", 1.0), ("shape", 2.0), ("direction", 1.0))
    )
    assert torch.allclose(loss, manual)
    assert set(acc) == set(LABEL_SIZES) and all(0.0 <= v <= 1.0 for v in acc.values())


def test_vision_tokens_follow_the_grid():
    """Merged tokens come back in (t, h, w) raster order, so token labels line up with them."""
    from ppllava_hermes.models.qwen2_5_vl import default_video_processor

    tok = build_tokenizer(["a b c"])
    model = build_model(tok, hidden=32, layers=1, vision_depth=1, vision_hidden=32)
    proc = default_video_processor(model.config)
    frames = [f for _, f, _ in iter_short_clip_worlds("train", 2)]
    inputs = proc(videos=frames, return_tensors="pt")
    _, tokens = train_world.vision_tokens(model, inputs, 2)
    assert tokens.shape == (2, 2, 4, 4, 32)
    # changing one 28x28 cell of frames 0-1 changes exactly that token of group 0
    edited = [frames[0].copy(), frames[1]]
    edited[0][:2, 28:56, 56:84] = 255 - edited[0][:2, 28:56, 56:84]
    _, tokens2 = train_world.vision_tokens(model, proc(videos=edited, return_tensors="pt"), 2)
    changed = (tokens2 - tokens).abs().amax(-1)[0] > 1e-6
    # a depth-1 tower with full attention mixes all tokens; the raster position must still change most
    diff = (tokens2 - tokens).abs().amax(-1)[0]
    assert diff[0].argmax() == 1 * 4 + 2 and changed[0, 1, 2]
    assert torch.equal(tokens2[1], tokens[1])


def spy_on_losses(module, monkeypatch) -> tuple[list[float], list[dict]]:
    """Wrap ``module.run_training``: every step's loss (one list over all its calls) and each call's settings."""
    from ppllava_hermes.recipes.train import run_training

    losses: list[float] = []
    calls: list[dict] = []

    def spy(step_fn, *args, **kwargs):
        calls.append(kwargs)
        def recorded(step):
            loss, info = step_fn(step)
            losses.append(loss.item())
            return loss, info

        return run_training(recorded, *args, **kwargs)

    monkeypatch.setattr(module, "run_training", spy)
    return losses, calls


def test_train_world_smoke(tmp_path, monkeypatch):
    losses, calls = spy_on_losses(train_world, monkeypatch)
    out = tmp_path / "vlm"
    train_world.main([
        "--out", str(out), "--steps", "2", "--vision-steps", "2", "--batch-size", "2", "--hidden", "32",
        "--layers", "1", "--vision-depth", "1", "--vision-hidden", "32", "--eval-every", "2", "--eval-clips", "2",
        "--final-eval-clips", "4", "--threads", "1",
    ])
    assert len(losses) == 2 + 2 and all(np.isfinite(losses))  # stage 0's steps, then stage 1's
    vision, answers = ({k: c.get(k) for k in ("lr", "warmup", "betas", "log_every", "max_minutes")} for c in calls)
    assert vision == {"lr": 1e-3, "warmup": 50, "betas": None, "log_every": 50, "max_minutes": None}  # AdamW's betas
    assert answers == {"lr": 5e-4, "warmup": 100, "betas": (0.9, 0.98), "log_every": 50, "max_minutes": 21.0}
    report = json.loads((out / "training_report.json").read_text())
    assert set(report) == {"steps", "train_minutes", "parameters", "runs", "test"}
    run = report["runs"][-1]
    assert set(run) == {"steps", "train_minutes", "args", "vision_log", "val_log"} and run["steps"] == 2
    assert [e["step"] for e in run["val_log"]] == [2] and run["val_log"][0]["n"] == 2
    assert run["args"]["steps"] == 2 and run["args"]["lr"] == 5e-4
    assert report["steps"] == 2 and len(run["vision_log"]) == 0  # logs every 50 vision steps
    assert 0.0 <= report["test"]["short_accuracy"] <= 1.0 and report["test"]["n"] == 4
    from ppllava_hermes.world.model import load_shapesworld_adapter

    adapter = load_shapesworld_adapter(out)
    assert adapter.model.config.vision_config.hidden_size == 32
    assert not any("heads" in k for k in adapter.model.state_dict()), "probe heads are not saved"
    assert np.isfinite(report["train_minutes"])


def test_warmup_cosine_schedule():
    from ppllava_hermes.recipes.train import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup=4, steps=10)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.25 * 1.0)  # (s + 1) / warmup at s = 0, cosine 1
    assert lrs[3] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.3)))  # warm-up done at s = 3
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))


def test_train_world_stream_smoke(tmp_path, monkeypatch):
    from ppllava_hermes.recipes.train import train_world_stream as stream
    from ppllava_hermes.world.model import VLM_DIR

    losses, calls = spy_on_losses(stream, monkeypatch)
    out = tmp_path / "vlm"
    stream.main(["--init", str(VLM_DIR), "--out", str(out), "--steps", "2", "--batch-size", "2", "--final-n", "2",
                 "--eval-n", "2", "--eval-every", "2", "--threads", "1"])
    assert len(losses) == 2 and all(np.isfinite(losses))
    settings = {k: calls[0].get(k) for k in ("lr", "warmup", "betas", "log_every", "max_minutes", "eval_every")}
    assert settings == {"lr": 3e-4, "warmup": 50, "betas": None, "log_every": 25, "max_minutes": 5.0, "eval_every": 2}
    report = json.loads((out / "stream_training_report.json").read_text())
    assert set(report) == {"steps", "train_minutes", "args", "val_log", "test"} and np.isfinite(report["train_minutes"])
    assert [e["step"] for e in report["val_log"]] == [2] and set(report["val_log"][0]) == {"step", "none", "avg"}
    assert report["args"]["lr"] == 3e-4 and report["args"]["max_minutes"] == 5.0
    assert report["steps"] == 2 and set(report["test"]) >= {"none", "avg"}
    assert (out / "training_report.json").read_text() == (VLM_DIR / "training_report.json").read_text()
    from ppllava_hermes.world.model import load_shapesworld_adapter

    load_shapesworld_adapter(out)


def reference_loop(params, loss_fn, steps: int, lr: float, warmup: int, betas) -> None:
    """What the trainers' loops did before :func:`run_training`: AdamW, warmup_cosine, clip 1.0."""
    from ppllava_hermes.recipes.train import warmup_cosine

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=betas)
    sched = warmup_cosine(opt, warmup, steps)
    for step in range(1, steps + 1):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()


@pytest.mark.parametrize("betas", [(0.9, 0.98), (0.9, 0.999)])
def test_run_training_is_the_trainers_loop(betas, capsys):
    from ppllava_hermes.recipes.train import run_training

    target = torch.linspace(-3, 3, 6)

    def loss_fn(step):
        return 100.0 * ((params[0] - target * step) ** 2).sum()  # gradient norm far above 1: clipped

    params = [torch.nn.Parameter(torch.zeros(6))]
    reference_loop(params, loss_fn, 7, 0.1, 3, betas)
    expected = params[0].detach().clone()

    params = [torch.nn.Parameter(torch.zeros(6))]
    model = torch.nn.Linear(1, 1)
    logged, modes = [], []

    def step_fn(step):
        modes.append(model.training)
        return loss_fn(step), {"step": step}

    def evaluate(step):
        model.eval()  # as the trainers' evaluations do; the next step trains again
        return {"score": step / 10}

    log, done = run_training(step_fn, params, steps=7, lr=0.1, warmup=3, betas=betas, model=model, log_every=2,
                             on_log=lambda *a: logged.append(a), eval_every=3, evaluate=evaluate)
    torch.testing.assert_close(params[0].detach(), expected, rtol=0, atol=0)
    assert params[0].grad.norm() <= 1.0 + 1e-6  # the last step's gradient, clipped
    assert done == 7 and log == [{"step": 3, "score": 0.3}, {"step": 6, "score": 0.6}]
    assert modes == [True] * 7  # each step trains, also those after an evaluation
    assert [a[0] for a in logged] == [2, 4, 6] and [a[2] for a in logged] == [{"step": 2}, {"step": 4}, {"step": 6}]
    factor = 0.5 * (1 + np.cos(np.pi * 2 / 7))  # after step 2 the schedule is at s = 2, warm-up done
    assert logged[0][3] == pytest.approx(0.1 * factor) and all(a[4] >= 0 for a in logged)
    assert capsys.readouterr().out.splitlines() == ['  val: {"score": 0.3}', '  val: {"score": 0.6}']


def test_run_training_time_limit(capsys):
    from ppllava_hermes.recipes.train import run_training

    p = torch.nn.Parameter(torch.ones(2))
    log, done = run_training(lambda step: ((p**2).sum(), None), [p], steps=5, lr=0.1, warmup=1, max_minutes=0.0)
    assert (log, done) == ([], 1) and capsys.readouterr().out == "stopping at step 1: time limit 0.0 min\n"
    _, done = run_training(lambda step: ((p**2).sum(), None), [p], steps=5, lr=0.1, warmup=1, max_minutes=0.0,
                           stop_message="stopping at step {step}: time limit")
    assert done == 1 and capsys.readouterr().out == "stopping at step 1: time limit\n"


def test_run_training_lr_at_replaces_the_schedule_and_after_step_runs_each_step():
    """Stages 3-5: ``lr_at(step)`` is the rate of that step (no scheduler); ``after_step`` sees every step."""
    from ppllava_hermes.recipes.train import run_training

    w = torch.nn.Parameter(torch.ones(3))
    seen, values = [], []

    def step_fn(step):
        return (w * torch.tensor([1.0, 2.0, 3.0])).sum(), None

    def after(step):
        seen.append(step)
        values.append(w.detach().clone())

    _, done = run_training(step_fn, [w], steps=3, lr=1.0, warmup=1, lr_at=lambda s: 0.0 if s == 1 else 0.1,
                           after_step=after)
    assert done == 3 and seen == [1, 2, 3]
    assert torch.equal(values[0], torch.ones(3)), "a rate of 0 at step 1 must leave the parameter as it was"
    assert bool((values[1] < values[0]).all()) and bool((values[2] < values[1]).all())
