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


def test_train_world_smoke(tmp_path):
    out = tmp_path / "vlm"
    train_world.main([
        "--out", str(out), "--steps", "2", "--vision-steps", "2", "--batch-size", "2", "--hidden", "32",
        "--layers", "1", "--vision-depth", "1", "--vision-hidden", "32", "--eval-every", "100",
        "--final-eval-clips", "4", "--threads", "1",
    ])
    report = json.loads((out / "training_report.json").read_text())
    run = report["runs"][-1]
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


def test_train_world_stream_smoke(tmp_path):
    from ppllava_hermes.recipes.train import train_world_stream as stream
    from ppllava_hermes.world.model import VLM_DIR

    out = tmp_path / "vlm"
    stream.main(["--init", str(VLM_DIR), "--out", str(out), "--steps", "2", "--batch-size", "2", "--final-n", "2",
                 "--eval-n", "2", "--threads", "1"])
    report = json.loads((out / "stream_training_report.json").read_text())
    assert report["steps"] == 2 and set(report["test"]) >= {"none", "avg"}
    assert (out / "training_report.json").read_text() == (VLM_DIR / "training_report.json").read_text()
    from ppllava_hermes.world.model import load_shapesworld_adapter

    load_shapesworld_adapter(out)
