"""The ShapesWorld VLM: a tiny Qwen2.5-VL (the real HF class) with a word-level tokenizer.

What this module knows: the model and tokenizer configuration, how a ShapesWorld question is put
to the model (:func:`prompt_for`), and where the shipped checkpoint lives. Training is in the recipes
``train_world`` (short clips), ``train_world_stream`` (streams and pooled input) and
``train_world_memory`` (backward questions on 1-4 minute streams); streaming and pooling are the
library's own, unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..evaluation.records import QARecord
from ..streaming.watch import WatchConfig

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
VLM_DIR = CHECKPOINT_DIR / "vlm"
CLIP_DIR = CHECKPOINT_DIR / "clip"
SYSTEM_PROMPT = "You watch a video of coloured shapes and answer with one word."
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>", "[UNK]"]
# How the ShapesWorld model is asked a standing query (stage 4, ``train_world_memory --watch-streams``): the
# forward question itself, answered "now" at the chunk that shows the event and "no" before it (ours).
WATCH = WatchConfig(template="{query}", positive=("now",), negative=("no",), threshold=0.5, cooldown_s=10.0)
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """How the word-level tokenizer splits text (lowercase words, digits runs, single punctuation)."""
    return _WORD.findall(text.lower())


def prompt_for(record: QARecord) -> str:
    """The question text shown to the model; multiple choice lists the options' words.

    The model answers with a word; multiple choice is scored by matching that word to an option
    (``evaluation.scoring.parse_choice``), which is what letter-free small models can learn.
    """
    if record.options:
        return f"{record.question} Options: {', '.join(record.options)}."
    return record.question


def answer_text(record: QARecord) -> str:
    """The word the model is trained to say."""
    return record.options[record.answer] if record.options else str(record.answer)


def build_tokenizer(corpus: Iterable[str]):
    """A word-level tokenizer whose vocabulary is every word of ``corpus`` (sorted, deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = sorted({w for text in corpus for w in words(text)})
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in vocab_words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[a-z0-9]+|[^a-z0-9]"), behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[1:7]})
    return fast


def build_model(tokenizer, *, hidden: int = 128, layers: int = 4, vision_depth: int = 2, vision_hidden: int = 64,
                seed: int = 0):
    """A randomly initialised tiny Qwen2.5-VL sized for ShapesWorld (112x112 frames, 16 tokens per group)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    head_dim = hidden // 4
    half = head_dim // 2
    t_sec = half // 4
    h_sec = (half - t_sec) // 2
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [t_sec, h_sec, half - t_sec - h_sec]},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_heads=4,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=112,
            out_hidden_size=hidden, fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


def load_shapesworld_adapter(path: str | Path | None = None, device: str | None = None):
    """The shipped ShapesWorld model wrapped in its adapter (``FileNotFoundError`` if not trained yet)."""
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration

    from ..models.qwen2_5_vl import Qwen2_5_VLAdapter, default_video_processor

    path = Path(path) if path is not None else VLM_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"ShapesWorld model {str(path)!r}: no checkpoint (train one with `ppllava-hermes train train_world`)"
        )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    if device:
        model = model.to(device)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    adapter = Qwen2_5_VLAdapter(model, tokenizer, default_video_processor(model.config), system_prompt=SYSTEM_PROMPT)
    adapter.watch_config = WATCH
    return adapter


def has_shipped_model() -> bool:
    return (VLM_DIR / "config.json").exists()
