"""Asymmetric text-position extension (77 -> 248, SigLIP 64 -> 196) and prompt tokenisation."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

from ppllava_hermes.pooling import (
    RelevanceScorer,
    TextExtensionConfig,
    extend_text_context,
    interpolate_positions,
    is_extended,
    text_context_length,
    tokenize_prompts,
)
from ppllava_hermes.pooling.testing import WordTokenizer, tiny_hf_clip, tiny_open_clip, tiny_siglip


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)


def words(n: int, swap: int | None = None) -> str:
    """``n`` one-token words; ``swap`` replaces the word at that index (to probe late positions)."""
    out = ["word"] * n
    if swap is not None:
        out[swap] = "cat"
    return " ".join(out)


def no_warnings():
    catcher = warnings.catch_warnings()
    catcher.__enter__()
    warnings.simplefilter("error")
    return catcher


# --- the interpolation itself -----------------------------------------------------------------


@pytest.mark.parametrize("length, expected", [(77, 248), (64, 196)])
def test_interpolation_keeps_head_and_interpolates_tail_four_times(length, expected):
    table = torch.randn(length, 8)
    new = interpolate_positions(table, keep=20, factor=4)
    assert new.shape == (expected, 8)
    assert TextExtensionConfig().extended_length(length) == expected
    assert torch.equal(new[:20], table[:20])  # bit for bit
    tail, old = new[20:], table[20:]
    m = old.shape[0]
    torch.testing.assert_close(tail[0 : 4 * (m - 1) : 4], old[: m - 1], atol=0, rtol=0)  # on the old points
    torch.testing.assert_close(tail[2 : 4 * (m - 1) : 4], (old[:-1] + old[1:]) / 2)  # midpoints
    torch.testing.assert_close(tail[4 * (m - 1)], old[-1])
    step = old[-1] - old[-2]
    torch.testing.assert_close(tail[-1], old[-1] + 0.75 * step)  # linear extrapolation past the end


def test_extension_config_validation():
    with pytest.raises(ValueError, match="factor"):
        TextExtensionConfig(factor=0)
    with pytest.raises(ValueError, match="nothing to interpolate"):
        TextExtensionConfig(keep=20).extended_length(21)


# --- open_clip --------------------------------------------------------------------------------


@pytest.fixture
def open_clip_pair():
    torch.manual_seed(0)
    return tiny_open_clip()


def test_open_clip_extension_patches_table_mask_and_tokenizer(open_clip_pair):
    model, tokenizer = open_clip_pair
    original = model.positional_embedding.detach().clone()
    assert extend_text_context(model, tokenizer) == 248
    assert is_extended(model) and text_context_length(model) == 248
    assert model.context_length == tokenizer.context_length == 248
    table = model.positional_embedding
    assert table.shape == (248, original.shape[1])
    assert torch.equal(table[:20], original[:20])  # first 20 positions unchanged
    mask = model.attn_mask
    assert mask.shape == (248, 248)
    assert torch.equal(mask, torch.full((248, 248), float("-inf")).triu(1))
    trainable = {n: p.shape for n, p in model.named_parameters() if n.startswith("parametrizations.")}
    assert trainable == {"parametrizations.positional_embedding.original": (228, original.shape[1])}
    with pytest.raises(ValueError, match="already extended"):
        extend_text_context(model)


def test_open_clip_encodes_a_200_token_prompt_only_after_extension(open_clip_pair):
    model, tokenizer = open_clip_pair
    prompt, late_change = words(198), words(198, swap=190)  # 198 words + SOT + EOT = 200 tokens
    assert len(tokenizer.encode(prompt)) == 198
    scorer = RelevanceScorer(model, tokenizer)
    with pytest.warns(UserWarning, match=r"200 tokens, 123 dropped"), torch.no_grad():
        before = scorer.encode_text([prompt, late_change])
    torch.testing.assert_close(before[0], before[1])  # token 190 was cut off: same feature

    extend_text_context(model, tokenizer)
    ids, mask = tokenize_prompts(tokenizer, [prompt], scorer.context_length)
    assert ids.shape == (1, 248) and int(mask.sum()) == 200
    assert ids[0, 199] == tokenizer.eot_token_id and not ids[0, 200:].any()
    catcher = no_warnings()
    try:
        with torch.no_grad():
            after = scorer.encode_text([prompt, late_change])
    finally:
        catcher.__exit__(None, None, None)
    assert (after[0] - after[1]).abs().max() > 1e-4  # token 190 now reaches the EOT feature


def test_open_clip_over_long_prompt_is_truncated_with_a_warning(open_clip_pair):
    model, tokenizer = open_clip_pair
    extend_text_context(model, tokenizer)
    with pytest.warns(UserWarning, match=r"300 tokens, 52 dropped"):
        ids, mask = tokenize_prompts(tokenizer, [words(298), "short"], 248)
    assert ids[0, -1] == tokenizer.eot_token_id and bool(mask[0].all())  # EOT kept at the end
    assert int(mask[1].sum()) == 3
    with torch.no_grad():
        assert model.encode_text(ids).shape == (2, 16)


def test_gradients_reach_only_positions_from_20_on(open_clip_pair):
    model, tokenizer = open_clip_pair
    extend_text_context(model, tokenizer)
    before = model.positional_embedding.detach().clone()
    ids, _ = tokenize_prompts(tokenizer, [words(120)], 248)
    model.encode_text(ids).pow(2).sum().backward()

    param = model.parametrizations.positional_embedding
    tail, frozen = param.original, param[0].frozen
    assert tail.grad is not None and tail.grad[: 122 - 20].abs().sum(dim=1).gt(0).all()  # every used row
    assert not frozen.requires_grad and frozen.grad is None
    assert all(p is not frozen for p in model.parameters())

    # an optimizer over *all* parameters, weight decay included, cannot move the frozen head
    torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5).step()
    after = model.positional_embedding.detach()
    assert torch.equal(after[:20], before[:20])
    assert (after[20:122] - before[20:122]).abs().sum(dim=1).gt(0).all()


def test_extended_state_dict_round_trips(open_clip_pair):
    model, tokenizer = open_clip_pair
    extend_text_context(model, tokenizer)
    with torch.no_grad():
        model.parametrizations.positional_embedding.original.add_(0.1)  # a fine-tuned tail
    state = model.state_dict()
    torch.manual_seed(1)
    fresh, _ = tiny_open_clip()
    extend_text_context(fresh)
    fresh.load_state_dict(state, strict=True)
    ids, _ = tokenize_prompts(tokenizer, [words(150)], 248)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_text(ids), model.encode_text(ids), atol=0, rtol=0)


def test_frozen_tail_option():
    model, tokenizer = tiny_open_clip()
    extend_text_context(model, tokenizer, TextExtensionConfig(trainable=False))
    assert not model.parametrizations.positional_embedding.original.requires_grad


# --- Hugging Face CLIP and SigLIP -------------------------------------------------------------


def test_hf_clip_extension_and_200_token_prompt():
    torch.manual_seed(0)
    model = tiny_hf_clip()
    _, tokenizer = tiny_open_clip()  # OpenAI BPE ids, as HF's CLIPTokenizer
    embeddings = model.text_model.embeddings
    original = embeddings.position_embedding.weight.detach().clone()
    assert extend_text_context(model, tokenizer) == 248
    assert embeddings.position_embedding.weight.shape == (248, original.shape[1])
    assert torch.equal(embeddings.position_embedding.weight[:20], original[:20])
    assert embeddings.position_ids.shape == (1, 248)
    assert model.config.text_config.max_position_embeddings == 248
    assert model.text_model.config.max_position_embeddings == 248
    assert tokenizer.context_length == 248

    scorer = RelevanceScorer(model, tokenizer)
    catcher = no_warnings()
    try:
        feats = scorer.encode_text([words(198), words(198, swap=190)])
    finally:
        catcher.__exit__(None, None, None)
    assert (feats[0] - feats[1]).abs().max() > 1e-4

    feats.pow(2).sum().backward()
    param = embeddings.position_embedding.parametrizations.weight
    assert param.original.shape == (228, original.shape[1]) and param.original.grad is not None
    assert param.original.grad[: 200 - 20].abs().sum(dim=1).gt(0).all()
    assert not param[0].frozen.requires_grad and param[0].frozen.grad is None


def test_siglip_extends_64_to_196():
    model = tiny_siglip()
    tokenizer = WordTokenizer(model.config.text_config.vocab_size)
    original = model.text_model.embeddings.position_embedding.weight.detach().clone()
    assert extend_text_context(model) == 196
    assert torch.equal(model.text_model.embeddings.position_embedding.weight[:20], original[:20])
    scorer = RelevanceScorer(model, tokenizer)
    assert scorer.context_length == 196
    catcher = no_warnings()
    try:
        with torch.no_grad():
            feats = scorer.encode_text([words(150), words(150, swap=140)])
    finally:
        catcher.__exit__(None, None, None)
    assert (feats[0] - feats[1]).abs().max() > 1e-4
    with pytest.warns(UserWarning, match=r"205 tokens, 9 dropped"), torch.no_grad():
        scorer.encode_text(words(204))


# --- tokenisation paths -----------------------------------------------------------------------


def _hf_word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, "word": 3, "cat": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )


def test_hf_tokenizer_and_processor_paths_pad_and_truncate():
    hf = _hf_word_tokenizer()
    processor = SimpleNamespace(tokenizer=hf)  # what a processor exposes
    for tok in (hf, processor):
        with pytest.warns(UserWarning, match=r"13 tokens, 3 dropped"):
            ids, mask = tokenize_prompts(tok, [words(12), "cat"], 10)
        assert ids.shape == (2, 10)
        assert ids[0, -1] == 1 and bool(mask[0].all())  # EOS kept by the tokenizer's truncation
        assert ids[1].tolist() == [4, 1] + [0] * 8 and mask[1].tolist() == [1, 1] + [0] * 8


def test_callable_tokenizer_path():
    tok = WordTokenizer(100)
    ids, mask = tokenize_prompts(tok, ["a b"], 6)
    assert ids[0].tolist() == [tok.lookup("a"), tok.lookup("b"), 1, 0, 0, 0]
    with pytest.warns(UserWarning, match=r"1 prompt\(s\).*8 tokens, 2 dropped"):
        ids, _ = tokenize_prompts(tok, [words(7)], 6)
    assert ids[0, -1] == tok.eos_token_id


def test_unsupported_models_and_tokenizers():
    with pytest.raises(TypeError, match="not a supported"):
        extend_text_context(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="unsupported tokenizer"):
        tokenize_prompts(object(), ["a"], 8)
