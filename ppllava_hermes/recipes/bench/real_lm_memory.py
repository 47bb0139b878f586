"""Memory policies on real attention: SmolLM2-135M-Instruct streaming a long English text with a 1k budget.

No pretrained VLM is installable offline, so the policies are checked on the one real pretrained LM we
have. The text plays the video: chunks of ``--chunk`` tokens are the stream's "frames" (kind VISUAL,
frame id = chunk index) in the same ``MemoryCache``, so every policy runs unchanged. After each chunk
the policy compresses (HERMES with its attention probe, text versions of its two pseudo-queries).

Measured:
- perplexity of each next chunk given the compressed memory, over the tokens after the first
  ``2 x budget`` (before that every policy still holds everything); ``full_cache_perplexity`` is the
  full cache on the same tokens. Uniform re-prefills its sampled chunks for every scored chunk, which
  is costly, so it is scored on every ``--uniform-every``-th chunk (its row's full-cache figure uses
  the same chunks).
- needles: ``--needles`` facts ("The secret code of the blue door is 4817.") planted at depths spread
  over the text, each asked at the end (greedy, exact match of the 4-digit code). A short-context
  control (each needle with ~700 tokens of surrounding text, full attention) shows what the model can
  retrieve at all.

Text: the license texts Debian ships in ``/usr/share/common-licenses`` (base-files; GPL-3, GPL-2,
LGPL-2.1, GFDL-1.3, MPL-2.0, Apache-2.0, LGPL-3, Artistic), concatenated, hard line breaks joined.

    ppllava-hermes bench real_lm_memory            # writes docs/results/real_lm_memory.{json,md}
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

from ppllava_hermes.memory import Hermes, TokenKind, make_policy
from ppllava_hermes.memory.policy import MemoryPolicy
from ppllava_hermes.models.smollm2 import load_smollm2
from ppllava_hermes.models.text_lm import CausalLMAdapter
from ppllava_hermes.streaming.engine import GenerationConfig, KVEngine

LICENSES = ["GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3", "MPL-2.0", "Apache-2.0", "LGPL-3", "Artistic"]
LICENSE_DIR = Path("/usr/share/common-licenses")
SYSTEM = ("<|im_start|>system\nYou are a helpful assistant who remembers every detail.<|im_end|>\n"
          "<|im_start|>user\nRead this document.\n\n")
LOCAL_PROBE = "What is the passage saying right now?"
GLOBAL_PROBE = "Summarize the whole document so far, with its key facts."
COLORS = ["blue", "red", "green", "yellow", "black", "white", "orange", "purple", "silver", "golden", "brown", "grey"]
OBJECTS = ["door", "box", "car", "lamp", "chair", "boat", "clock", "gate", "bag", "bottle", "tower", "key"]
MODEL_POSITIONS = 8192  # SmolLM2's max_position_embeddings
POLICIES = ["full", "hermes", "window", "sink", "snapkv", "uniform"]


def load_text() -> str:
    parts = []
    for name in LICENSES:
        raw = (LICENSE_DIR / name).read_text(encoding="utf-8", errors="replace")
        paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", raw)]
        parts.append("\n\n".join(p for p in paragraphs if p))
    return "\n\n".join(parts)


def plant_needles(text: str, count: int, seed: int = 0) -> tuple[str, list[dict]]:
    """Insert ``count`` needle sentences at depths 5%..95%, each at the next sentence end."""
    rng = np.random.default_rng(seed)
    needles = []
    for i, depth in enumerate(np.linspace(0.05, 0.95, count)):
        color, obj = COLORS[i % len(COLORS)], OBJECTS[(i * 5) % len(OBJECTS)]
        code = str(int(rng.integers(1000, 10000)))
        needles.append({"depth": float(depth), "color": color, "object": obj, "code": code,
                        "sentence": f" The secret code of the {color} {obj} is {code}."})
    out, cursor = [], 0
    for nd in needles:
        at = int(nd["depth"] * len(text))
        stop = text.find(". ", at)
        stop = len(text) if stop < 0 else stop + 1
        out += [text[cursor:stop], nd["sentence"]]
        cursor = stop
    out.append(text[cursor:])
    return "".join(out), needles


def question(nd: dict) -> str:
    return (f"\n\nQuestion: What is the secret code of the {nd['color']} {nd['object']}? "
            "Answer with the four-digit code only.<|im_end|>\n<|im_start|>assistant\n")


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

    def ask(self, text: str, max_new_tokens: int = 16) -> str:
        out = self.engine.generate(self.ids(text), GenerationConfig(max_new_tokens=max_new_tokens))
        return self.tok.decode(out.token_ids, skip_special_tokens=True)


def chunk_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood of a chunk's tokens 2..n given the memory and the tokens before them.

    (The first token is left out so that every policy, uniform included, is scored on the same tokens.)
    """
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -logp.gather(1, ids[1:, None]).sum().item(), len(ids) - 1


def correct(answer: str, nd: dict) -> bool:
    found = re.findall(r"\d{4}", answer)
    return bool(found) and found[0] == nd["code"]


def stream_policy(name: str, model, tok, chunks: list[torch.Tensor], needles: list[dict], args,
                  log) -> dict:
    """Stream all chunks through one policy; per-chunk NLL (None where not scored) and needle answers."""
    if name == "hermes":
        policy = Hermes(budget=args.budget, anchors=args.anchors, local_prompt=LOCAL_PROBE, global_prompt=GLOBAL_PROBE)
    elif name == "snapkv":
        policy = make_policy("snapkv", budget=args.budget, prompt=GLOBAL_PROBE)
    elif name == "full":
        policy = make_policy("full")
    elif name == "uniform":
        policy = make_policy("uniform", budget=args.budget)
    else:
        policy = make_policy(name, budget=args.budget)
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
    kept = None if name == "uniform" else needle_retention(mem, needles)
    if name == "uniform":
        mem = replay_memory(model, tok, policy, chunks, len(chunks), args)
    answers = [mem.ask(question(nd)) for nd in needles]
    log(f"  {name}: {time.perf_counter() - t0:.0f} s, compress {mem.compress_s:.0f} s, answers {answers}")
    return {"nll": nll, "answers": answers, "kept": kept}


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
    mem = TextMemory(model, tok, make_policy("full"))
    mem.setup(SYSTEM)
    for j in policy.question_frames(upto, args.chunk) or []:
        mem.run(chunks[j], TokenKind.VISUAL, frame_id=j)
    return mem


def uniform_nll(model, tok, policy, chunks, k, args) -> tuple[float, int]:
    mem = replay_memory(model, tok, policy, chunks, k, args)
    logits, _ = mem.run(chunks[k], TokenKind.VISUAL, frame_id=k)
    return chunk_nll(logits, chunks[k])


def short_context_control(model, tok, text: str, needles: list[dict], context_tokens: int = 700) -> float:
    """Needle accuracy with full attention over ~``context_tokens`` of text around each needle."""
    hits = 0
    for nd in needles:
        at = text.find(nd["sentence"])
        half = context_tokens * 2  # ~4 characters per token: characters on each side
        snippet = text[max(0, at - half) : at + len(nd["sentence"]) + half]
        mem = TextMemory(model, tok, make_policy("full"))
        mem.setup(SYSTEM)
        mem.run(mem.ids(snippet), TokenKind.VISUAL, frame_id=0)
        hits += correct(mem.ask(question(nd)), nd)
    return hits / len(needles)


def perplexity(nll: list, mask: list[bool]) -> float:
    total = sum(n[0] for n, m in zip(nll, mask, strict=True) if m and n is not None)
    count = sum(n[1] for n, m in zip(nll, mask, strict=True) if m and n is not None)
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench real_lm_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", nargs="+", default=POLICIES, choices=POLICIES)
    p.add_argument("--budget", type=int, default=1024, help="tokens kept per layer")
    p.add_argument("--anchors", type=int, default=64, help="HERMES anchor allowance per deep layer")
    p.add_argument("--chunk", type=int, default=64, help="tokens per stream unit ('frame')")
    p.add_argument("--tokens", type=int, default=24000, help="stream length in tokens (>= 20k)")
    p.add_argument("--needles", type=int, default=10)
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

    model, tok = load_smollm2()
    n_tokens = args.tokens // args.chunk * args.chunk
    plain = tok(load_text(), add_special_tokens=False).input_ids
    if len(plain) < n_tokens:
        raise SystemExit(f"the text has only {len(plain)} tokens, fewer than --tokens {args.tokens}")
    # Plant the needles in the part of the text that is streamed (depths relative to it); the needles
    # push the tail of the text out, so the stream stays n_tokens long and ends close to the text's cut.
    text, needles = plant_needles(tok.decode(plain[:n_tokens]), args.needles)
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
    log(f"{len(ids)} tokens in {len(chunks)} chunks of {args.chunk}; {len(needles)} needles")

    results = {}
    for name in args.policies:
        # Per-policy results can be kept between runs (the full cache alone takes ~25 min on one core).
        key = f"{name}-b{args.budget}-a{args.anchors}-c{args.chunk}-t{len(ids)}-n{len(needles)}-u{args.uniform_every}"
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
    log(f"short-context control accuracy {control:.2f}")
    full = results.get("full")
    rows = []
    for name, res in results.items():
        mask = [n is not None for n in res["nll"]]
        row = {
            "policy": name,
            "budget": None if name == "full" else args.budget,
            "tokens": len(ids),
            "perplexity": round(perplexity(res["nll"], mask), 4),
            "full_cache_perplexity": round(perplexity(full["nll"], mask), 4) if full else None,
            "needle_accuracy": sum(correct(a, nd) for a, nd in zip(res["answers"], needles, strict=True)) / len(needles),
        }
        rows.append(row)
        log(json.dumps(row))
    write_report(rows, results, needles, control, args, command)
    return 0


def write_report(rows, results, needles, control, args, command) -> None:
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
        "uniformly over the past, prefilled afresh). SmolLM2 has 30 layers; 8192 positions: the full cache "
        "runs past them (RoPE extrapolation), the other policies stay under.",
        "",
        f"Perplexity: of each next chunk given the memory, over the tokens after the first {2 * args.budget} "
        f"(uniform: every {args.uniform_every}th chunk from there; its `full_cache_perplexity` is on the same "
        f"chunks). Needles: {len(needles)} sentences like \"{needles[0]['sentence'].strip()}\" at depths "
        f"{depths}, each asked at the end; greedy answer, exact match "
        f"of the code. Short-context control (each needle with ~700 tokens around it, full attention): "
        f"{control:.2f}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: python {platform.python_version()}, torch {torch.__version__}, CPU, "
        f"{torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}.",
        "",
        "| policy | budget | tokens | perplexity | full-cache perplexity | needle accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['budget'] if r['budget'] is not None else '-'} | {r['tokens']} | "
                     f"{r['perplexity']:.3f} | {r['full_cache_perplexity']} | {r['needle_accuracy']:.2f} |")
    limit, first = MODEL_POSITIONS, 2 * args.budget
    lines += ["", f"Perplexity by stream range (the full cache's positions pass SmolLM2's {limit} near token {limit}; "
              "the other policies stay under):", "",
              f"| policy | tokens {first}-{limit - 1} | tokens {limit}-end |", "|---|---:|---:|"]
    for name, res in results.items():
        spans = []
        for lo, hi in ((first, limit), (limit, 10**9)):
            mask = [lo <= k * args.chunk < hi for k in range(len(res["nll"]))]
            try:
                spans.append(f"{perplexity(res['nll'], mask):.3f}")
            except ZeroDivisionError:
                spans.append("-")
        lines.append(f"| {name} | {spans[0]} | {spans[1]} |")
    lines += ["", "Needle tokens still held (share of the needle's tokens, averaged over needles before depth 0.9; "
              "per layer tier for 30 layers: 0-2 / 3-20 / 21-29):", ""]
    for name, res in results.items():
        if not res.get("kept"):
            continue
        old = [k for k, nd in zip(res["kept"], needles, strict=True) if nd["depth"] < 0.9]
        tiers = [(0, 3), (3, 21), (21, 30)]
        shares = [float(np.mean([np.mean(k[a:b]) for k in old])) for a, b in tiers]
        lines.append(f"- {name}: " + " / ".join(f"{100 * x:.1f}%" for x in shares))
    lines += ["", "Answers per needle (depth: expected -> policy answers):", ""]
    for i, nd in enumerate(needles):
        answers = "; ".join(f"{name}: {res['answers'][i]!r}" for name, res in results.items())
        lines.append(f"- {nd['depth']:.2f} {nd['color']} {nd['object']} = {nd['code']} -> {answers}")
    lines.append("")
    (args.out_dir / "real_lm_memory.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
