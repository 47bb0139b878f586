"""The ShapesWorld CLIP (``ppllava_hermes.world.clip``) and its training script (``train/train_clip.py``).

Fast checks: the save/load round trip, RelevanceScorer compatibility, the tokenizer, a 2-step training
smoke run, and (when the trained model is shipped) its held-out text-to-region retrieval accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppllava_hermes.pooling.relevance import RelevanceScorer
from ppllava_hermes.pooling.text_extension import tokenize_prompts
from ppllava_hermes.world.clip import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WorldTokenizer,
    build_world_clip,
    has_world_clip,
    load_world_clip,
    patch_features,
    save_world_clip,
)
from ppllava_hermes.world.generator import WorldConfig, generate_world


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    world = generate_world(WorldConfig(duration=4.0), seed=123)
    return np.stack(list(world.frames()))  # (4, 112, 112, 3)


def test_tokenizer_eos_is_the_highest_id_and_unknown_words_map_to_unk():
    tok = WorldTokenizer()
    (ids,) = tok(["A red circle, zebra!"])
    assert ids[-1] == tok.eos_token_id == tok.vocab_size - 1
    assert ids[:-1] == [tok.encode("a")[0], tok.encode("red")[0], tok.encode("circle")[0], tok.unk_token_id]
    assert max(ids[:-1]) < tok.eos_token_id  # open_clip's argmax pooling finds the EOS
    assert WorldTokenizer.from_dict(tok.to_dict()).words == tok.words
    ids, mask = tokenize_prompts(tok, ["a red circle"], 24)
    assert ids.shape == (1, 24) and mask.sum() == 4 and ids[0, 4:].eq(tok.pad_token_id).all()


def test_avg_pooled_image_feature_is_the_mean_of_patch_features():
    model, _ = build_world_clip()
    x = torch.randn(2, 3, 112, 112)
    patches = patch_features(model, x)
    assert patches.shape == (2, 8, 8, 64)
    torch.testing.assert_close(patches.mean(dim=(1, 2)), model.encode_image(x), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_gives_identical_features(tmp_path, frames):
    model, tok = build_world_clip(seed=3)
    save_world_clip(model, tok, tmp_path, extra={"note": "test"})
    assert (tmp_path / WEIGHTS_FILE).is_file() and has_world_clip(tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["note"] == "test"
    loaded, tok2 = load_world_clip(tmp_path)
    assert tok2.words == tok.words
    a, b = RelevanceScorer(model, tok), RelevanceScorer(loaded, tok2)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_text(["a red circle"]), b.encode_text(["a red circle"]), rtol=0, atol=0)
        torch.testing.assert_close(a.encode_video(frames).features, b.encode_video(frames).features, rtol=0, atol=0)


def test_loaded_model_works_in_relevance_scorer(tmp_path, frames):
    model, tok = build_world_clip()
    save_world_clip(model, tok, tmp_path)
    scorer = RelevanceScorer(*load_world_clip(tmp_path))
    with torch.no_grad():
        w = scorer.score(["What colour is the circle now?", "a red square"], frames)
        g = scorer.score("a blue cross", frames, grid=(2, 4, 4))
    assert w.shape == (2, 4, 8, 8) and torch.allclose(w.flatten(1).sum(-1), torch.ones(2))
    assert g.shape == (1, 2, 4, 4) and torch.isclose(g.sum(), torch.tensor(1.0))


def test_missing_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.train_clip"):
        load_world_clip(tmp_path / "nothing")


def test_training_script_runs_two_steps(tmp_path):
    from ppllava_hermes.recipes.train.train_clip import main

    out = tmp_path / "clip"
    report = main(
        ["--out", str(out), "--steps", "2", "--regions-per-caption", "1", "--frames", "2", "--variants", "2",
         "--warmup", "1", "--log-every", "1", "--eval-pools", "1", "--eval-patch-frames", "4"]
    )
    assert np.isfinite(report["final_loss"]) and report["steps"] == 2
    assert 0.0 <= report["clip_text_to_region_top1"] <= 1.0
    assert json.loads((out / "clip_report.json").read_text())["steps"] == 2
    model, tok = load_world_clip(out)
    assert RelevanceScorer(model, tok).score("a red circle", np.zeros((1, 112, 112, 3), np.uint8)).shape == (1, 1, 8, 8)


@pytest.mark.skipif(not has_world_clip(), reason="no shipped ShapesWorld CLIP (ppllava-hermes train train_clip)")
def test_shipped_clip_retrieves_regions_of_held_out_frames():
    from ppllava_hermes.recipes.train.train_clip import evaluate

    model, tok = load_world_clip()
    report = evaluate(model, tok, n_pools=4, patch_frames=20)
    assert report["n_text_queries"] == 96
    assert report["clip_text_to_region_top1"] >= 0.8
    assert report["clip_region_to_text_top1"] >= 0.8
