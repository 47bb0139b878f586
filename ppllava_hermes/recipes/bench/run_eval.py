"""Evaluate configurations on a benchmark: ``ppllava-hermes bench run_eval --benchmark ... --out DIR``.

The same command as ``ppllava-hermes eval`` (``--help`` lists every flag); the work is in
``ppllava_hermes.evaluation``. Shard over processes or GPUs with
``accelerate launch -m evaluate.run_eval ...``: each process answers its share of the videos and the
main process merges the results and writes the report.
"""

from __future__ import annotations

import sys

from ppllava_hermes.evaluation.command import build_parser, run_eval_command


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser("ppllava-hermes bench run_eval").parse_args(argv)
    return run_eval_command(args, ["eval", *argv])


if __name__ == "__main__":
    sys.exit(main())
