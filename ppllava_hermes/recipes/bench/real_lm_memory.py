"""Memory policies on real attention: SmolLM2-135M-Instruct streaming a long English text with a 1k budget.

No pretrained VLM is installable offline, so the policies are checked on the one real pretrained LM we
have. The text plays the video: chunks of ``--chunk`` tokens are the stream's "frames" (kind VISUAL,
frame id = chunk index) in the same ``MemoryCache``, so every policy runs unchanged. After each chunk
the policy compresses (HERMES with its attention probe, text versions of its two pseudo-queries;
retrieval offloads what leaves its window to a host store and brings blocks back per question).

The default setting stays inside SmolLM2's 8,192 positions (8,000 streamed tokens), so the full cache
is a valid reference and each memory can be placed on the window-to-full scale.

Measured:
- perplexity of each next chunk given the compressed memory, over the tokens after the first
  ``2 x budget`` (before that every policy still holds everything); ``full_cache_perplexity`` is the
  full cache on the same tokens. Uniform re-prefills its sampled chunks for every scored chunk, which
  is costly, so it is scored on every ``--uniform-every``-th chunk (its row's full-cache figure uses
  the same chunks).
- needles: ``--needles`` facts ("The secret code of the blue door is 4817.") planted at depths spread
  over ``--depths`` of the text, each asked at the end: greedy answer, exact match of the 4-digit code
  (``needle_accuracy``), and the teacher-forced log-probability of the code (``needle_logprob``: the
  mean over needles of the mean per-token log-probability of the code's digits given the memory, the
  question and the answer's lead "The secret code of the blue door is "). It is computed inside the
  engine's rollback (:func:`answer_logprobs`), with the policy's question-time cache (retrieval), so the
  memory is unchanged; retrieval scores its blocks with the question's tokens only, never the answer's.
- the share of the window-to-full gap a memory closes (:func:`gap_closed`),
  ``(m_policy - m_window) / (m_full - m_window)``, on the needle log-probability
  (``gap_closed_logprob``) and on log-perplexity, i.e. the mean NLL per token, on the row's scored
  tokens (``gap_closed_perplexity``): 0 is the window, 1 the full cache.
- a short-context control (each needle with ~700 tokens of surrounding text, full attention) shows what
  the model can retrieve at all, in accuracy and log-probability.
- time per policy (stream, compression, per question including retrieval) and retrieval's host bytes.

Text: the license texts Debian ships in ``/usr/share/common-licenses`` (base-files; GPL-3, GPL-2,
LGPL-2.1, GFDL-1.3, MPL-2.0, Apache-2.0, LGPL-3, Artistic), concatenated, hard line breaks joined.

    ppllava-hermes bench real_lm_memory --threads 1   # writes docs/results/real_lm_memory.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ppllava_hermes.memory import Hermes, Retrieval, TokenKind, make_policy
from ppllava_hermes.memory.policy import MemoryPolicy
from ppllava_hermes.models.text_lm import CausalLMAdapter
from ppllava_hermes.streaming.engine import Generation, GenerationConfig, KVEngine

LICENSES = ["GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3", "MPL-2.0", "Apache-2.0", "LGPL-3", "Artistic"]
LICENSE_DIR = Path("/usr/share/common-licenses")
SYSTEM = ("<|im_start|>system\nYou are a helpful assistant who remembers every detail.<|im_end|>\n"
          "<|im_start|>user\nRead this document.\n\n")
LOCAL_PROBE = "What is the passage saying right now?"
GLOBAL_PROBE = "Summarize the whole document so far, with its key facts."
COLORS = ["blue", "red", "green", "yellow", "black", "white", "orange", "purple", "silver", "golden", "brown", "grey"]
OBJECTS = ["door", "box", "car", "lamp", "chair", "boat", "clock", "gate", "bag", "bottle", "tower", "key"]
MODEL_POSITIONS = 8192  # SmolLM2's max_position_embeddings
POLICIES = ["full", "window", "sink", "snapkv", "hermes", "uniform", "retrieval", "retrieval-tokens", "novelty"]
RESULTS_VERSION = 2  # bump when the raw per-policy results change shape (invalidates --cache-dir entries)


def load_text() -> str:
    """The license texts, concatenated, one paragraph per line pair."""
    parts = []
    for name in LICENSES:
        raw = (LICENSE_DIR / name).read_text(encoding="utf-8", errors="replace")
        paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", raw)]
        parts.append("\n\n".join(p for p in paragraphs if p))
    return "\n\n".join(parts)


def plant_needles(text: str, count: int, seed: int = 0, depths: tuple[float, float] = (0.05, 0.95)
                  ) -> tuple[str, list[dict]]:
    """Insert ``count`` needle sentences at depths evenly spread over ``depths`` (share of ``text``'s
    characters), each at the next sentence end."""
    rng = np.random.default_rng(seed)
    needles = []
    for i, depth in enumerate(np.linspace(depths[0], depths[1], count)):
        color, obj = COLORS[i % len(COLORS)], OBJECTS[(i * 5) % len(OBJECTS)]
        code = str(int(rng.integers(1000, 10000)))
        needles.append({"depth": float(depth), "color": color, "object": obj, "code": code,
                        "sentence": f" The secret code of the {color} {obj} is {code}."})
    out, cursor = [], 0
    for nd in needles:
        at = max(int(nd["depth"] * len(text)), cursor)
        stop = text.find(". ", at)
        stop = len(text) if stop < 0 else stop + 1
        out += [text[cursor:stop], nd["sentence"]]
        cursor = stop
    out.append(text[cursor:])
    return "".join(out), needles


def question(nd: dict) -> str:
    """The user's question for needle ``nd``, closing the user turn and opening the answer."""
    return (f"\n\nQuestion: What is the secret code of the {nd['color']} {nd['object']}? "
            "Answer with the four-digit code only.<|im_end|>\n<|im_start|>assistant\n")


def answer_lead(nd: dict) -> str:
    """The start of the answer the code follows (the model's own phrasing: it restates the question)."""
    return f"The secret code of the {nd['color']} {nd['object']} is "


@torch.no_grad()
def answer_logprobs(engine: KVEngine, question_ids: torch.Tensor, answer_ids: torch.Tensor,
                    context_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced log-probability of each of ``answer_ids`` ``(A,)`` after the memory and the question.

    Inside :meth:`KVEngine.rollback` (the memory is bit-exactly unchanged afterwards): the policy's
    question-time cache is built as :meth:`KVEngine.generate` builds it, from the attention of
    ``question_ids`` ``(Q,)`` alone (the answer never steers a retrieval), then ``question_ids``,
    ``context_ids`` ``(C,)`` (an answer lead, optional) and ``answer_ids`` are prefilled in one segment.
    Returns ``(A,)`` float32 CPU log-probabilities.
    """
    context_ids = question_ids.new_zeros(0) if context_ids is None else context_ids
    ids = torch.cat([question_ids, context_ids, answer_ids])
    with engine.rollback():
        engine.enter_question_cache(question_ids)
        logits, _ = engine.prefill(engine.lm.text_segment(ids, engine.next_position, TokenKind.TEXT))
    first = len(question_ids) + len(context_ids)  # logits at t predict token t + 1
    logp = torch.log_softmax(logits[0, first - 1 : len(ids) - 1].float(), dim=-1)
    return logp.gather(1, answer_ids[:, None].to(logp.device)).squeeze(1).cpu()


def gap_closed(value: float | None, window: float | None, full: float | None) -> float | None:
    """Share of the window-to-full gap closed: ``(value - window) / (full - window)``.

    0 is the window, 1 the full cache (above 1: better than the full cache; below 0: worse than the
    window). None when an input is missing or the gap is zero. The metric's direction does not matter
    (log-probability: higher is better; NLL: lower is better).
    """
    if value is None or window is None or full is None or not math.isfinite(full - window) or full == window:
        return None
    return (value - window) / (full - window)


class TextMemory:
    """A text stream over the library's KV engine (:class:`~ppllava_hermes.streaming.engine.KVEngine`) with a
    causal LM: chunks are prefilled at explicit 1-D positions, the policy compresses, questions roll back."""

    def __init__(self, model, tokenizer, policy: MemoryPolicy) -> None:
        self.tok = tokenizer
        self.engine = KVEngine(CausalLMAdapter(model, tokenizer), policy)

    @property
    def cache(self):
        return self.engine.cache

    @property
    def next_position(self) -> int:
        return self.engine.next_position

    @property
    def compress_s(self) -> float:
        return self.engine.stats.compress_s

    def ids(self, text: str) -> torch.Tensor:
        return self.engine.lm.tokenize(text)

    def run(self, ids: torch.Tensor, kind: TokenKind, frame_id: int = -1):
        """Prefill ``ids (L,)``; returns ``(logits (L, V) float, None)``."""
        logits, _ = self.engine.prefill(self.engine.lm.text_segment(ids, self.engine.next_position, kind, frame_id))
        return logits[0].float(), None

    def setup(self, system: str) -> None:
        self.engine.start(system)

    def compress(self) -> None:
        self.engine.compress()

    def ask(self, text: str, max_new_tokens: int = 16) -> tuple[str, Generation]:
        """Greedy answer to ``text`` (the memory is unchanged) and the engine's record of it."""
        out = self.engine.generate(self.ids(text), GenerationConfig(max_new_tokens=max_new_tokens))
        return self.tok.decode(out.token_ids, skip_special_tokens=True), out

    def code_logprobs(self, nd: dict) -> list[float]:
        """Per-digit teacher-forced log-probabilities of needle ``nd``'s code (:func:`answer_logprobs`)."""
        q, lead, code = self.ids(question(nd)), self.ids(answer_lead(nd)), self.ids(nd["code"])
        joint = self.ids(question(nd) + answer_lead(nd) + nd["code"])
        if not torch.equal(joint, torch.cat([q, lead, code])):
            raise RuntimeError("the question, lead and code do not tokenize apart as they do together")
        return answer_logprobs(self.engine, q, code, lead).tolist()


def chunk_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood of a chunk's tokens 2..n given the memory and the tokens before them.

    (The first token is left out so that every policy, uniform included, is scored on the same tokens.)
    """
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -logp.gather(1, ids[1:, None]).sum().item(), len(ids) - 1


def correct(answer: str, nd: dict) -> bool:
    found = re.findall(r"\d{4}", answer)
    return bool(found) and found[0] == nd["code"]


def build_policy(name: str, args) -> MemoryPolicy:
    """The policy ``name`` at the benchmark's budget (HERMES and SnapKV with their text pseudo-queries)."""
    if name == "hermes":
        return Hermes(budget=args.budget, anchors=args.anchors, local_prompt=LOCAL_PROBE, global_prompt=GLOBAL_PROBE)
    if name == "snapkv":
        return make_policy("snapkv", budget=args.budget, prompt=GLOBAL_PROBE)
    if name == "full":
        return make_policy("full")
    if name.startswith("retrieval") and args.retrieve_budget is not None:
        return make_policy(name, budget=args.budget, retrieve_budget=args.retrieve_budget)
    return make_policy(name, budget=args.budget)


def needle_chunks(nd: dict, chunk: int) -> list[int]:
    """Indices of the stream chunks (= retrieval blocks' frame ids) that hold needle ``nd``'s tokens."""
    return list(range(nd["tokens"][0] // chunk, (nd["tokens"][1] - 1) // chunk + 1))


def retrieval_report(policy: Retrieval, nd: dict, chunk: int) -> dict:
    """What retrieval did for needle ``nd``'s question: blocks scored / retrieved and the needle's rank."""
    q = policy.last_question
    store_frames = [blk.frame_id for blk in policy.store]
    wanted = needle_chunks(nd, chunk)
    rank = None
    if q is not None and q.scores is not None:
        order = [store_frames[i] for i in torch.argsort(q.scores, descending=True, stable=True).tolist()]
        ranks = [order.index(f) for f in wanted if f in order]
        rank = min(ranks) + 1 if ranks else None
    return {
        "needle_chunks": wanted,
        "in_store": [f for f in wanted if f in store_frames],
        "retrieved": [] if q is None else q.frames_retrieved,
        "hit": q is not None and any(f in q.frames_retrieved for f in wanted),
        "rank": rank,
        "blocks_scored": 0 if q is None else q.blocks_scored,
        "tokens_retrieved": 0 if q is None else q.tokens_retrieved,
        "score_s": 0.0 if q is None else q.score_s,
        "build_s": 0.0 if q is None else q.build_s,
    }


def stream_policy(name: str, model, tok, chunks: list[torch.Tensor], needles: list[dict], args,
                  log) -> dict:
    """Stream all chunks through one policy; per-chunk NLL (None where not scored), needle answers,
    needle log-probabilities, timings and (retrieval) what was retrieved."""
    policy = build_policy(name, args)
    mem = TextMemory(model, tok, policy)
    mem.setup(SYSTEM)
    score_from = 2 * args.budget // args.chunk
    nll: list[tuple[float, int] | None] = [None] * len(chunks)
    t0 = time.perf_counter()
    for k, ids in enumerate(chunks):
        if name == "uniform":
            # Offline: the memory is the system prompt + uniformly sampled earlier chunks, prefilled afresh.
            if k >= score_from and (k - score_from) % args.uniform_every == 0:
                nll[k] = uniform_nll(model, tok, policy, chunks, k, args)
            continue
        logits, _ = mem.run(ids, TokenKind.VISUAL, frame_id=k)
        if k >= score_from:
            nll[k] = chunk_nll(logits, ids)
        mem.compress()
        if k % 50 == 0:
            log(f"  {name} chunk {k}/{len(chunks)} entries {mem.cache.physical_length()} "
                f"next position {mem.next_position} ({time.perf_counter() - t0:.0f} s)")
    stream_s = time.perf_counter() - t0
    kept = None if name == "uniform" else needle_retention(mem, needles)
    t1 = time.perf_counter()
    if name == "uniform":
        mem = replay_memory(model, tok, policy, chunks, len(chunks), args)
    replay_s = time.perf_counter() - t1  # uniform's re-prefill of its sampled chunks, once for all questions
    answers, question_s, retrieved = [], [], []
    for nd in needles:
        text, gen = mem.ask(question(nd))
        answers.append(text)
        question_s.append(gen.total_s)
        if isinstance(policy, Retrieval):
            retrieved.append(retrieval_report(policy, nd, args.chunk))
    t2 = time.perf_counter()
    logprobs = [mem.code_logprobs(nd) for nd in needles]
    logprob_s = time.perf_counter() - t2
    result = {
        "nll": nll, "answers": answers, "kept": kept, "logprobs": logprobs,
        "stream_s": stream_s, "compress_s": mem.compress_s if name != "uniform" else 0.0,
        "replay_s": replay_s, "question_s": question_s, "logprob_s": logprob_s,
        "cache_tokens": mem.cache.physical_length(), "kv_bytes": mem.cache.kv_bytes(),
    }
    if isinstance(policy, Retrieval):
        result.update(retrieved=retrieved, host_bytes=policy.host_bytes, summary_bytes=policy.summary_bytes,
                      stored_tokens=policy.stored_tokens)
    log(f"  {name}: stream {stream_s:.0f} s (compress {result['compress_s']:.0f} s), "
        f"question {np.mean(question_s):.2f} s each, answers {answers}, "
        f"code log-prob {np.mean([np.mean(lp) for lp in logprobs]):.3f}")
    return result


def needle_retention(mem: TextMemory, needles: list[dict]) -> list[list[float]]:
    """Per needle, per layer: the share of the needle's tokens the memory still holds as they were.

    Stream token ``i`` has uid ``system + i`` (probes and questions are rolled back, so they take no uid).
    """
    system = int((mem.cache.layers[0].kinds == int(TokenKind.SYSTEM)).sum())
    out = []
    for nd in needles:
        lo, hi = system + nd["tokens"][0], system + nd["tokens"][1]
        row = []
        for layer in mem.cache.layers:
            held = layer.uids[layer.kinds == int(TokenKind.VISUAL)]
            row.append(float(((held >= lo) & (held < hi)).sum()) / (hi - lo))
        out.append(row)
    return out


def replay_memory(model, tok, policy: MemoryPolicy, chunks: list[torch.Tensor], upto: int, args) -> TextMemory:
    """A full-cache memory of the system prompt and the chunks (before ``upto``) ``policy`` samples."""
    mem = TextMemory(model, tok, make_policy("full"))
    mem.setup(SYSTEM)
    for j in policy.question_frames(upto, args.chunk) or []:
        mem.run(chunks[j], TokenKind.VISUAL, frame_id=j)
    return mem


def uniform_nll(model, tok, policy, chunks, k, args) -> tuple[float, int]:
    mem = replay_memory(model, tok, policy, chunks, k, args)
    logits, _ = mem.run(chunks[k], TokenKind.VISUAL, frame_id=k)
    return chunk_nll(logits, chunks[k])


def short_context_control(model, tok, text: str, needles: list[dict], context_tokens: int = 700
                          ) -> tuple[float, float]:
    """Needle accuracy and mean code log-probability with full attention over ~``context_tokens`` of text
    around each needle."""
    hits, logprobs = 0, []
    for nd in needles:
        at = text.find(nd["sentence"])
        half = context_tokens * 2  # ~4 characters per token: characters on each side
        snippet = text[max(0, at - half) : at + len(nd["sentence"]) + half]
        mem = TextMemory(model, tok, make_policy("full"))
        mem.setup(SYSTEM)
        mem.run(mem.ids(snippet), TokenKind.VISUAL, frame_id=0)
        hits += correct(mem.ask(question(nd))[0], nd)
        logprobs.append(float(np.mean(mem.code_logprobs(nd))))
    return hits / len(needles), float(np.mean(logprobs))


def mean_nll(nll: list, mask: list[bool]) -> float:
    """Mean NLL per token (log-perplexity) over the chunks in ``mask`` that were scored."""
    total = sum(n[0] for n, m in zip(nll, mask, strict=True) if m and n is not None)
    count = sum(n[1] for n, m in zip(nll, mask, strict=True) if m and n is not None)
    return total / count


def perplexity(nll: list, mask: list[bool]) -> float:
    return math.exp(mean_nll(nll, mask))


def needle_logprob(res: dict) -> float:
    """Mean over needles of the mean per-digit log-probability of the code."""
    return float(np.mean([np.mean(lp) for lp in res["logprobs"]]))


def make_rows(results: dict, needles: list[dict], n_tokens: int, budget: int) -> list[dict]:
    """One JSON row per policy (the fields of ``docs/results/real_lm_memory.json``)."""
    full, window = results.get("full"), results.get("window")
    rows = []
    for name, res in results.items():
        mask = [n is not None for n in res["nll"]]
        # The gap in perplexity is on the row's own scored chunks (uniform: every n-th), for all three.
        nll_p = mean_nll(res["nll"], mask)
        nll_f = mean_nll(full["nll"], mask) if full else None
        nll_w = mean_nll(window["nll"], mask) if window else None
        lp = needle_logprob(res)
        gap_lp = gap_closed(lp, needle_logprob(window) if window else None, needle_logprob(full) if full else None)
        gap_ppl = gap_closed(nll_p, nll_w, nll_f)
        rows.append({
            "policy": name,
            "budget": None if name == "full" else budget,
            "tokens": n_tokens,
            "perplexity": round(math.exp(nll_p), 4),
            "full_cache_perplexity": round(math.exp(nll_f), 4) if full else None,
            "needle_accuracy": sum(correct(a, nd) for a, nd in zip(res["answers"], needles, strict=True)) / len(needles),
            "needle_logprob": round(lp, 4),
            "gap_closed_logprob": None if gap_lp is None else round(gap_lp, 4) + 0.0,  # no -0.0
            "gap_closed_perplexity": None if gap_ppl is None else round(gap_ppl, 4) + 0.0,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench real_lm_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--budget", type=int, default=1024, help="tokens kept per layer")
    p.add_argument("--anchors", type=int, default=64, help="HERMES anchor allowance per deep layer")
    p.add_argument("--retrieve-budget", type=int, default=None,
                   help="retrieval: entries per layer brought back per question (default: the budget)")
    p.add_argument("--chunk", type=int, default=64, help="tokens per stream unit ('frame')")
    p.add_argument("--tokens", type=int, default=8000,
                   help="stream length in tokens (default 8000: the full cache stays inside SmolLM2's 8192 positions)")
    p.add_argument("--needles", type=int, default=8)
    p.add_argument("--depths", type=float, nargs=2, default=(0.1, 0.8), metavar=("FIRST", "LAST"),
                   help="depths of the first and last needle (share of the stream)")
    p.add_argument("--uniform-every", type=int, default=8, help="score every n-th chunk for uniform")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="keep each policy's raw results here and reuse them on a rerun with the same settings")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "ppllava-hermes bench real_lm_memory " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    def log(msg: str) -> None:
        print(msg, flush=True)

    from ppllava_hermes.models.smollm2 import load_smollm2

    model, tok = load_smollm2()
    n_tokens = args.tokens // args.chunk * args.chunk
    plain = tok(load_text(), add_special_tokens=False).input_ids
    if len(plain) < n_tokens:
        raise SystemExit(f"the text has only {len(plain)} tokens, fewer than --tokens {args.tokens}")
    # Plant the needles in the part of the text that is streamed (depths relative to it); the needles
    # push the tail of the text out, so the stream stays n_tokens long and ends close to the text's cut.
    text, needles = plant_needles(tok.decode(plain[:n_tokens]), args.needles, depths=tuple(args.depths))
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids[:n_tokens], dtype=torch.long)
    chunks = list(ids.split(args.chunk))
    kept_text = tok.decode(ids)
    needles = [nd for nd in needles if nd["sentence"].strip() in kept_text]
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:n_tokens]
    for nd in needles:  # the needle's token span in the stream
        start = text.find(nd["sentence"])
        stop = start + len(nd["sentence"])
        inside = [i for i, (a, b) in enumerate(offsets) if b > start and a < stop]
        nd["tokens"] = (inside[0], inside[-1] + 1)
    if len(needles) < args.needles:
        log(f"warning: only {len(needles)} of {args.needles} needles fit in the stream")
    system_len = len(tok(SYSTEM, add_special_tokens=False).input_ids)
    longest_q = max(len(tok(question(nd) + answer_lead(nd) + nd["code"], add_special_tokens=False).input_ids)
                    for nd in needles)
    full_span = system_len + len(ids) + longest_q + 16
    if full_span > MODEL_POSITIONS:
        log(f"warning: the full cache reaches position {full_span}, past SmolLM2's {MODEL_POSITIONS}: "
            "it is no longer a valid reference")
    log(f"{len(ids)} tokens in {len(chunks)} chunks of {args.chunk}; {len(needles)} needles at tokens "
        f"{[nd['tokens'][0] for nd in needles]}; full cache up to position {full_span}")

    results = {}
    for name in args.policies:
        # Per-policy results can be kept between runs.
        key = (f"v{RESULTS_VERSION}-{name}-b{args.budget}-a{args.anchors}-r{args.retrieve_budget}-c{args.chunk}"
               f"-t{len(ids)}-n{len(needles)}-d{args.depths[0]}-{args.depths[1]}-u{args.uniform_every}")
        saved = args.cache_dir / f"{key}.json" if args.cache_dir else None
        if saved is not None and saved.is_file():
            results[name] = json.loads(saved.read_text())
            log(f"  {name}: reusing {saved}")
            continue
        results[name] = stream_policy(name, model, tok, chunks, needles, args, log)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(results[name]))
    control = short_context_control(model, tok, text, needles)
    log(f"short-context control: accuracy {control[0]:.2f}, code log-prob {control[1]:.3f}")
    rows = make_rows(results, needles, len(ids), args.budget)
    for row in rows:
        log(json.dumps(row))
    write_report(rows, results, needles, control, args, command, full_span)
    return 0


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_report(rows, results, needles, control, args, command, full_span: int) -> None:
    """``real_lm_memory.json`` (rows), ``.md`` (setting, tables, per-needle detail) and ``.png``."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    depths = ", ".join(f"{nd['depth']:.2f}" for nd in needles)
    (args.out_dir / "real_lm_memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Memory policies on real attention (SmolLM2-135M-Instruct)",
        "",
        f"A {rows[0]['tokens']}-token English text (Debian's license texts, `/usr/share/common-licenses`: "
        f"{', '.join(LICENSES)}; hard line breaks joined) streamed in chunks of {args.chunk} tokens through "
        f"each policy with a budget of {args.budget} tokens per layer (HERMES: + {args.anchors} anchors per deep "
        "layer, lazy re-indexing; window and sink: eager re-indexing; uniform: budget // chunk chunks sampled "
        "uniformly over the past, prefilled afresh; retrieval: the window resident, evicted chunks offloaded "
        "to a host store as one block per chunk, and per question the blocks the question's attention to "
        f"their summary keys ranks highest brought back, up to "
        f"{args.retrieve_budget if args.retrieve_budget is not None else args.budget} entries per layer, so "
        "its answer cache holds up to twice the others'). SmolLM2 has 30 layers and 8192 positions; the full "
        f"cache here reaches position {full_span}, so it is a valid reference.",
        "",
        f"Perplexity: of each next chunk given the memory, over the tokens after the first {2 * args.budget} "
        f"(uniform: every {args.uniform_every}th chunk from there; its `full_cache_perplexity` is on the same "
        f"chunks). Needles: {len(needles)} sentences like \"{needles[0]['sentence'].strip()}\" at depths "
        f"{depths}, each asked at the end (\"{question(needles[0]).strip()!r}\"). Accuracy: greedy answer, "
        "exact match of the code. `needle_logprob`: the code's digits teacher-forced after the question and "
        f"the answer lead \"{answer_lead(needles[0])}\", mean per-digit log-probability, mean over needles "
        "(computed inside the engine's rollback, after the policy's question-time retrieval, which sees the "
        "question's tokens only; chance is log(1/10) = -2.303 per digit).",
        "",
        "Share of the window-to-full gap closed (0: the window, 1: the full cache):",
        "",
        "- `gap_closed_logprob = (needle_logprob[policy] - needle_logprob[window]) / "
        "(needle_logprob[full] - needle_logprob[window])`",
        "- `gap_closed_perplexity = (log ppl[policy] - log ppl[window]) / (log ppl[full] - log ppl[window])`, "
        "log ppl = mean NLL per token, all three on the row's scored tokens.",
        "",
        f"Short-context control (each needle with ~700 tokens around it, full attention): accuracy "
        f"{control[0]:.2f}, needle log-prob {control[1]:.3f}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: python {platform.python_version()}, torch {torch.__version__}, CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs), "
        f"{torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}.",
        "",
        "| policy | budget | perplexity | full-cache perplexity | gap closed (ppl) | needle accuracy | "
        "needle log-prob | gap closed (log-prob) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['budget'] if r['budget'] is not None else '-'} | "
                     f"{r['perplexity']:.3f} | {r['full_cache_perplexity']} | {_fmt(r['gap_closed_perplexity'])} | "
                     f"{r['needle_accuracy']:.2f} | {r['needle_logprob']:.3f} | {_fmt(r['gap_closed_logprob'])} |")
    lines += ["", "Time (one CPU thread; stream: the whole streaming loop, compression included; question: "
              "one greedy answer of up to 16 tokens, retrieval's scoring and answer-cache build included; "
              "uniform's stream is its re-prefills for scoring, its replay the one re-prefill the questions "
              "share) and memory at the end:", "",
              "| policy | stream s | compress s | replay s | question s (mean) | entries per layer | KV bytes | "
              "host bytes |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        host = f"{res['host_bytes'] / 2**20:.1f} MiB" if "host_bytes" in res else "-"
        lines.append(f"| {name} | {res['stream_s']:.1f} | {res['compress_s']:.1f} | {res['replay_s']:.1f} | "
                     f"{np.mean(res['question_s']):.2f} | {res['cache_tokens']} | {res['kv_bytes'] / 2**20:.1f} MiB | "
                     f"{host} |")
    for rname in [n for n in ("retrieval", "retrieval-tokens") if n in results]:
        res = results[rname]
        rep = res["retrieved"]
        lines += ["", f"{rname.capitalize()} per question (host store: {res['stored_tokens']} entries per layer, "
                  f"{res['host_bytes'] / 2**20:.1f} MiB of keys and values + {res['summary_bytes'] / 2**20:.2f} MiB "
                  "of summaries; blocks = chunks, frame id = chunk index):", "",
                  "| needle depth | needle chunk(s) | rank of the needle's block | retrieved? | blocks scored | "
                  f"entries retrieved | score s | build s | code log-prob ({rname} / window / full) |",
                  "|---:|---|---:|---|---:|---:|---:|---:|---|"]
        for i, (nd, r) in enumerate(zip(needles, rep, strict=True)):
            lps = " / ".join(_fmt(float(np.mean(results[n]["logprobs"][i]))) if n in results else "-"
                             for n in (rname, "window", "full"))
            lines.append(f"| {nd['depth']:.2f} | {r['needle_chunks']} | {r['rank'] if r['rank'] else '-'} | "
                         f"{'yes' if r['hit'] else ('no' if r['in_store'] else 'resident')} | {r['blocks_scored']} | {r['tokens_retrieved']} | "
                         f"{r['score_s']:.2f} | {r['build_s']:.2f} | {lps} |")
        lines += ["", "Chunks retrieved per question:", ""]
        for nd, r in zip(needles, rep, strict=True):
            lines.append(f"- {nd['depth']:.2f} (needle in {r['needle_chunks']}): {r['retrieved']}")
        sets = [frozenset(r["retrieved"]) for r in rep]
        common = sorted(frozenset.intersection(*sets)) if sets else []
        lines += ["", f"{len(set(sets))} distinct retrieved set(s) over {len(rep)} questions; chunks retrieved "
                  f"for every question: {common}."]
    lines += ["", "Code log-probability per needle (mean per digit):", "",
              "| policy | " + " | ".join(f"{nd['depth']:.2f}" for nd in needles) + " |",
              "|---|" + "---:|" * len(needles)]
    for name, res in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(lp):.2f}" for lp in res["logprobs"]) + " |")
    lines += ["", "Needle tokens still held in the resident memory (share of the needle's tokens, averaged over "
              "needles; per layer tier for 30 layers: 0-2 / 3-20 / 21-29):", ""]
    for name, res in results.items():
        if not res.get("kept"):
            continue
        tiers = [(0, 3), (3, 21), (21, 30)]
        shares = [float(np.mean([np.mean(k[a:b]) for k in res["kept"]])) for a, b in tiers]
        lines.append(f"- {name}: " + " / ".join(f"{100 * x:.1f}%" for x in shares))
    lines += ["", "Answers per needle (depth: expected -> policy answers):", ""]
    for i, nd in enumerate(needles):
        answers = "; ".join(f"{name}: {res['answers'][i]!r}" for name, res in results.items())
        lines.append(f"- {nd['depth']:.2f} {nd['color']} {nd['object']} = {nd['code']} -> {answers}")
    lines.append("")
    (args.out_dir / "real_lm_memory.md").write_text("\n".join(lines))
    write_plot(rows, results, needles, args.budget, args.out_dir / "real_lm_memory.png")


def write_plot(rows, results, needles, budget: int, path: Path) -> bool:
    """Gap closed per policy and code log-probability by needle depth; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["policy"] for r in rows]
    x = np.arange(len(names))
    for off, key, label in ((-0.2, "gap_closed_logprob", "needle log-prob"),
                            (0.2, "gap_closed_perplexity", "log-perplexity")):
        ax1.bar(x + off, [r[key] if r[key] is not None else 0.0 for r in rows], 0.4, label=label)
    ax1.axhline(0.5, color="k", ls=":", lw=1, label="goal: 50%")
    ax1.set_xticks(x, names, rotation=30)
    ax1.set_ylabel("share of the window-to-full gap closed")
    ax1.legend(fontsize=8)
    depths = [nd["depth"] for nd in needles]
    for name, res in results.items():
        ax2.plot(depths, [np.mean(lp) for lp in res["logprobs"]], marker="o", label=name)
    ax2.axhline(math.log(0.1), color="k", ls=":", lw=1, label="chance")
    ax2.set_xlabel("needle depth in the stream")
    ax2.set_ylabel("code log-prob per digit")
    ax2.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M, {rows[0]['tokens']} tokens, budget {budget}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


if __name__ == "__main__":
    raise SystemExit(main())
