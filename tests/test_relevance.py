"""RelevanceScorer: CLIP-family backends, grid resampling, caching, and prompt-guided pooling end to end.

The end-to-end tests build tiny CLIPs whose weights are *set* so that the real code path computes a
colour detector: the image tower's patch embedding reads each patch's mean chroma (R, G, B minus grey)
into feature dims 0, 1, 2 and every residual branch is off (blocks are the identity), so a patch's
feature is its layer-normed colour; the text tower's attention is uniform with identity values, so the pooled text
feature is the layer-normed embedding of the colour word, which puts "red" on dim 0, "green" on dim 1
and "blue" on dim 2. Asking "red" must then single out the red patch, through tokenizer, both towers,
final norms, projections, resampling, the softmax and the pooling windows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ppllava_hermes.pooling import (
    PromptGuidedPooling,
    RelevanceConfig,
    RelevanceScorer,
    VideoPatchFeatures,
)
from ppllava_hermes.pooling.relevance import OPENAI_MEAN, OPENAI_STD, SIGLIP_MEAN, SIGLIP_STD
from ppllava_hermes.pooling.testing import WordTokenizer, tiny_hf_clip, tiny_open_clip, tiny_siglip

IMAGE, PATCH = 48, 8  # 6 x 6 CLIP patch grid
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
WORDS = ("red", "green", "blue")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)


def _identity_(linear: nn.Linear) -> None:
    linear.weight.copy_(torch.eye(*linear.weight.shape))
    if linear.bias is not None:
        linear.bias.zero_()


def _zero_(*modules: nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.zero_()


def _colour_patch_embedding_(conv: nn.Conv2d, bias: torch.Tensor, mean, std) -> None:
    """Patch embedding that reads colour: dims 0-2 = the patch's mean chroma (raw channel minus the
    grey level, undoing the model's mean/std normalisation), dim 3 = a constant -0.5 so that grey
    patches are a fixed "colourless" direction rather than a zero vector. The constant part goes into
    ``bias`` (the position embedding, added to every patch), since CLIP's patch conv has no bias."""
    area = conv.weight.shape[-1] * conv.weight.shape[-2]
    conv.weight.zero_()
    for c in range(3):
        for c2 in range(3):
            conv.weight[c, c2] = ((c == c2) - 1 / 3) * std[c2] / area
    if conv.bias is not None:
        conv.bias.zero_()
    bias.zero_()
    bias[..., :3] = torch.tensor(mean) - sum(mean) / 3
    bias[..., 3] = -0.5


@torch.no_grad()
def colour_open_clip():
    model, tokenizer = tiny_open_clip(IMAGE, PATCH)
    visual, width = model.visual, model.visual.conv1.out_channels
    _colour_patch_embedding_(visual.conv1, visual.positional_embedding, OPENAI_MEAN, OPENAI_STD)
    for block in visual.transformer.resblocks:
        _zero_(block.attn.out_proj, block.mlp.c_proj)
    visual.proj.copy_(torch.eye(width))
    for block in model.transformer.resblocks:
        attn = block.attn  # uniform causal attention (q = k = 0) with identity values and output
        attn.in_proj_weight.zero_()
        attn.in_proj_weight[2 * width :] = torch.eye(width)
        attn.in_proj_bias.zero_()
        _identity_(attn.out_proj)
        _zero_(block.mlp.c_proj)
    model.positional_embedding.zero_()
    model.token_embedding.weight.zero_()
    for dim, word in enumerate(WORDS):
        model.token_embedding.weight[tokenizer.encode(word)[0], dim] = 1.0
    model.text_projection.copy_(torch.eye(width))
    model.logit_scale.fill_(math.log(100.0))  # a trained CLIP's scale
    return model, tokenizer


@torch.no_grad()
def _colour_hf(model: nn.Module, word_ids: list[int], mean, std) -> None:
    vision, text = model.vision_model, model.text_model
    embeddings = vision.embeddings
    _colour_patch_embedding_(embeddings.patch_embedding, embeddings.position_embedding.weight, mean, std)
    for layer in vision.encoder.layers:
        _zero_(layer.self_attn.out_proj, layer.mlp.fc2)
    for layer in text.encoder.layers:
        _zero_(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.fc2)
        _identity_(layer.self_attn.v_proj)
        _identity_(layer.self_attn.out_proj)
    text.embeddings.position_embedding.weight.zero_()
    text.embeddings.token_embedding.weight.zero_()
    for dim, token in enumerate(word_ids):
        text.embeddings.token_embedding.weight[token, dim] = 1.0
    model.logit_scale.fill_(math.log(100.0))


def colour_hf_clip():
    model = tiny_hf_clip(IMAGE, PATCH)
    _, tokenizer = tiny_open_clip(IMAGE, PATCH)  # OpenAI BPE ids, as HF's CLIPTokenizer
    _colour_hf(model, [tokenizer.encode(w)[0] for w in WORDS], OPENAI_MEAN, OPENAI_STD)
    with torch.no_grad():
        _identity_(model.visual_projection)
        _identity_(model.text_projection)
    return model, tokenizer


def colour_siglip():
    model = tiny_siglip(IMAGE, PATCH)
    tokenizer = WordTokenizer(model.config.text_config.vocab_size)
    _colour_hf(model, [tokenizer.lookup(w) for w in WORDS], SIGLIP_MEAN, SIGLIP_STD)
    with torch.no_grad():
        _identity_(model.text_model.head)
        model.logit_bias.fill_(-10.0)
    return model, tokenizer


BUILDERS = {"open_clip": colour_open_clip, "hf_clip": colour_hf_clip, "siglip": colour_siglip}


def video_with_squares(frames: int = 2, scale: int = 1) -> tuple[np.ndarray, dict[str, tuple[int, int, int]]]:
    """Grey frames with one coloured patch-sized square per colour; returns frames and (t, row, col)."""
    places = {"red": (1, 4, 1), "blue": (0, 1, 5), "green": (1, 0, 3)}
    video = np.full((frames, IMAGE * scale, IMAGE * scale, 3), 128, dtype=np.uint8)
    p = PATCH * scale
    for colour, (t, r, c) in places.items():
        video[t, r * p : (r + 1) * p, c * p : (c + 1) * p] = COLOURS[colour]
    return video, places


# --- prompt-guided pooling end to end ---------------------------------------------------------


@pytest.mark.parametrize("family", list(BUILDERS))
def test_prompt_selects_its_patch_inside_the_window(family):
    model, tokenizer = BUILDERS[family]()
    scorer = RelevanceScorer(model, tokenizer)
    video, places = video_with_squares()
    grid = (2, 6, 6)  # VLM grid = CLIP grid here; resampling is tested below
    cached = scorer.encode_video(video)
    pool = PromptGuidedPooling()  # (2, 3, 3), tau 0.01 (ref)
    x = torch.eye(math.prod(grid)).view(1, *grid, -1)  # one-hot features read out window weights
    for word, (t, r, c) in places.items():
        weights = scorer.score(f"where is the {word} square?", cached, grid=grid)
        out = pool(x, weights)
        window = (t // 2, r // 3, c // 3)
        k = (t % 2) * 9 + (r % 3) * 3 + (c % 3)
        p = t * 36 + r * 6 + c
        assert out.window_weights[(0, *window, k)] >= 0.99, (family, word)
        assert out.features[(0, *window, p)] >= 0.99
        assert int(out.source_index[(0, *window)]) == p
        assert int(weights.flatten().argmax()) == p  # the most relevant token of the whole video


def test_prompt_selection_survives_resampling_to_a_coarser_vlm_grid():
    model, tokenizer = colour_open_clip()
    scorer = RelevanceScorer(model, tokenizer, config=RelevanceConfig(frames_per_token=2))
    video, places = video_with_squares(frames=4, scale=2)  # 96 x 96 frames, resized inside
    weights = scorer.score("red", video, grid=(2, 3, 3))  # 4 frames -> 2 tokens, 6x6 -> 3x3
    t, r, c = places["red"]
    assert weights.shape == (1, 2, 3, 3)
    assert int(weights.flatten().argmax()) == (t // 2) * 9 + (r // 2) * 3 + (c // 2)


# --- backends against their libraries' own code -----------------------------------------------


def test_open_clip_patch_features_are_ln_post_and_proj_of_every_patch():
    # with pool_type="avg", open_clip's image feature = mean over patches of ln_post(x) @ proj
    model, tokenizer = tiny_open_clip(IMAGE, PATCH, pool_type="avg")
    scorer = RelevanceScorer(model, tokenizer)
    pixels = torch.randn(3, 3, IMAGE, IMAGE)
    with torch.no_grad():
        patches = scorer._backend.encode_patches(pixels)
        torch.testing.assert_close(patches.mean(dim=(1, 2)), model.encode_image(pixels), atol=1e-5, rtol=1e-5)
        assert patches.shape == (3, 6, 6, 16)
        ids = tokenizer(["a cat on a mat"])
        torch.testing.assert_close(
            scorer.encode_text("a cat on a mat"), model.encode_text(ids, normalize=True), atol=1e-6, rtol=1e-5
        )


def test_hf_clip_text_matches_get_text_features_and_patches_use_post_layernorm():
    model = tiny_hf_clip(IMAGE, PATCH)
    _, tokenizer = tiny_open_clip(IMAGE, PATCH)
    scorer = RelevanceScorer(model, tokenizer)
    ids = tokenizer(["a dog running"])
    with torch.no_grad():
        # transformers 5: get_text_features returns a model output; the projected feature is pooler_output
        reference = model.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(
            scorer.encode_text("a dog running"),
            nn.functional.normalize(reference, dim=-1),
            atol=1e-6,
            rtol=1e-5,
        )
        pixels = torch.randn(2, 3, IMAGE, IMAGE)
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        expected = model.visual_projection(model.vision_model.post_layernorm(hidden[:, 1:]))
        torch.testing.assert_close(scorer._backend.encode_patches(pixels), expected.view(2, 6, 6, -1))
        # the CLS path through the same norm + projection is HF's own image feature
        torch.testing.assert_close(
            model.visual_projection(model.vision_model.post_layernorm(hidden[:, 0])),
            model.get_image_features(pixel_values=pixels).pooler_output,
        )


def test_siglip_patch_head_on_a_single_patch_is_the_image_embedding():
    model = tiny_siglip(image_size=PATCH, patch_size=PATCH)  # 1 x 1 patch grid
    scorer = RelevanceScorer(model, WordTokenizer(), config=RelevanceConfig(siglip_patch_head=True))
    pixels = torch.randn(2, 3, PATCH, PATCH)
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        torch.testing.assert_close(
            scorer._backend.encode_patches(pixels)[:, 0, 0], pooled, atol=1e-5, rtol=1e-5
        )
    plain = RelevanceScorer(model, WordTokenizer())
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state  # already post-layernormed
        torch.testing.assert_close(plain._backend.encode_patches(pixels)[:, 0, 0], hidden[:, 0])


# --- resampling, softmax, batching ------------------------------------------------------------


@pytest.fixture(scope="module")
def random_scorer():
    model, tokenizer = tiny_open_clip(IMAGE, PATCH)
    return RelevanceScorer(model, tokenizer, config=RelevanceConfig(frames_per_token=2, frame_batch_size=3))


def test_resampling_is_frame_pair_average_then_area(random_scorer):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)  # odd count: last frame repeated
    with torch.no_grad():
        sim = random_scorer.similarity("a person", video)[0]  # (5, 6, 6)
        weights = random_scorer.score("a person", video, grid=(3, 3, 2))[0]
    paired = torch.stack([(sim[0] + sim[1]) / 2, (sim[2] + sim[3]) / 2, (sim[4] + sim[4]) / 2])
    area = paired.view(3, 3, 2, 2, 3).mean(dim=(2, 4))  # 6x6 -> 3x2 blocks of 2x3
    scale = random_scorer.model.logit_scale.exp()
    expected = (area * scale).flatten().softmax(0).view(3, 3, 2)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_cached_features_rescore_without_reencoding(random_scorer, monkeypatch):
    video = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    cached = random_scorer.encode_video(video)
    assert isinstance(cached, VideoPatchFeatures) and cached.grid == (4, 6, 6)
    calls = []
    original = random_scorer._backend.encode_patches
    monkeypatch.setattr(random_scorer._backend, "encode_patches", lambda px: calls.append(1) or original(px))
    with torch.no_grad():
        a = random_scorer.score("first question", cached, grid=(2, 6, 6))
        b = random_scorer.score("another question", cached, grid=(2, 6, 6))
        assert not calls  # no vision forward for either question
        fresh = random_scorer.score("first question", video, grid=(2, 6, 6))
    assert calls  # frames were encoded on that call
    torch.testing.assert_close(a, fresh, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a, b)


def test_many_prompts_for_one_video_and_float_frames(random_scorer):
    video = np.random.default_rng(2).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    as_float = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        both = random_scorer.score(["a cat", "a dog"], video)
        single = random_scorer.score("a dog", as_float)
    assert both.shape == (2, 1, 6, 6)
    torch.testing.assert_close(both[1:], single, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both.sum(dim=(1, 2, 3)), torch.ones(2))


@pytest.mark.parametrize("prompt", ["", "   \n", []])
def test_empty_prompt_is_a_clear_error(random_scorer, prompt):
    with pytest.raises(ValueError, match=r"empty|no prompt"):
        random_scorer.score(prompt, np.zeros((2, 48, 48, 3), dtype=np.uint8))


def test_bad_frames_and_batch_mismatch_are_errors(random_scorer):
    with pytest.raises(ValueError, match=r"uint8"):
        random_scorer.encode_video(np.zeros((2, 48, 48, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"channels-first"):
        random_scorer.encode_video(torch.zeros(2, 48, 48, 3))
    two_videos = random_scorer.encode_video(np.zeros((2, 2, 48, 48, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"3 prompts for 2 videos"):
        random_scorer.score(["a", "b", "c"], two_videos)


def test_unsupported_model_is_a_type_error():
    with pytest.raises(TypeError, match=r"unsupported CLIP model"):
        RelevanceScorer(nn.Linear(2, 2), WordTokenizer())


def test_over_long_prompt_warns_through_the_scorer(random_scorer):
    with pytest.warns(UserWarning, match=r"23 dropped"), torch.no_grad():
        random_scorer.encode_text("word " * 98)  # 98 + SOT + EOT = 100 tokens for 77 positions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            random_scorer.encode_text("word " * 75)  # exactly 77: no warning
