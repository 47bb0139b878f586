"""Paired comparison of trained poolings on the same test clips (McNemar's exact test).

    ppllava-hermes bench paired_pooling --before none --after runs/sft_shapesworld/final --key sft \
        --results docs/results/training.json

Each pooling answers the same held-out ShapesWorld clips through the streaming session; the counts of
answers that went wrong -> right and right -> wrong, and the exact two-sided McNemar p-value, are
written into ``--results`` under ``[key]["paired_test"]``. ``--before none`` is the untrained pooling
(the state every training run starts from).
"""

from __future__ import annotations

import argparse
import json
from math import comb
from pathlib import Path

import torch

from ppllava_hermes.training import load_trained, shapesworld_examples
from ppllava_hermes.training.build import add_model_arguments, build_model
from ppllava_hermes.training.evaluation import generate_answer, is_correct


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def answers_right(args: argparse.Namespace, folder: str | None, examples) -> list[bool]:
    args = argparse.Namespace(**{**vars(args), "init": None})
    model = build_model(args).model
    if folder and folder != "none":
        load_trained(model, folder)
    model.eval()
    return [is_correct(generate_answer(model, ex)[0], ex) for ex in examples]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(p)
    p.add_argument("--before", required=True, help="trained folder, or none (the untrained pooling)")
    p.add_argument("--after", required=True, help="trained folder")
    p.add_argument("--n", type=int, default=400, help="test-split clips (default 400, as the training evals)")
    p.add_argument("--key", required=True, help="entry of --results to add paired_test to (sft, dpo)")
    p.add_argument("--results", default="docs/results/training.json")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    examples = shapesworld_examples("test", args.n)
    before = answers_right(args, args.before, examples)
    after = answers_right(args, args.after, examples)
    b = sum(not x and y for x, y in zip(before, after, strict=True))
    c = sum(x and not y for x, y in zip(before, after, strict=True))
    row = {"wrong_to_right": b, "right_to_wrong": c, "mcnemar_exact_p_two_sided": round(mcnemar_exact(b, c), 3),
           "n": len(examples), "accuracy_before": sum(before) / len(before), "accuracy_after": sum(after) / len(after),
           "note": f"{args.before} vs {args.after} on the same {len(examples)} test-split clips"}
    path = Path(args.results)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(args.key, {})["paired_test"] = row
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
