"""The ``ppllava-hermes eval`` command (also ``ppllava-hermes bench run_eval``): arguments and the run.

``--suite brief`` runs the brief's three benchmarks for several configurations instead and writes
``OUT/brief_suite.json`` / ``.md`` (:mod:`.suite`).

Parsing needs no torch (only the registries of ``plugins`` and ``specs``), so ``--help`` is quick; the
model, torch and the protocols load when a run starts. Under ``accelerate launch`` each process answers its share of
the videos and the main process writes the report.

Nothing answered is lost: a record that fails is reported as that record's result and the run goes on; every
result is appended to ``OUT/results.jsonl`` as it comes (``OUT/results.rankN.jsonl`` for the other processes of a
sharded run), so after a crash, a kill or Ctrl-C ``--resume`` continues without asking any record twice. Output
paths are checked before the model loads.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict

from .. import plugins
from ..specs import (
    kernel_arg,
    model_help,
    new_tokens_arg,
    nonnegative_float,
    positive_float,
    positive_int,
    relevance_help,
)

CONFIG_NAMES = "full, uniform (or uniform-N for N frames), window, sink, hermes, retrieval, pooling, hermes+pooling"


def _csv(kind):
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        try:
            return [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {kind.__name__}") from None

    return parse


def _budget(text: str) -> int | None:
    return None if text.lower() in ("none", "default") else int(text)


def _max_pixels(text: str) -> int | None:
    from .frames import parse_max_pixels

    try:
        return parse_max_pixels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of the eval command, documented."""
    data = p.add_argument_group("benchmark")
    data.add_argument("--benchmark", default="shapesworld",
                      help="benchmark name: streamingbench(_real/_omni/_sqa/_proactive), ovo_bench, egoschema, mvbench, "
                           "videomme, mlvu, lvbench, activitynet_qa, msvd_qa, msrvtt_qa, vcgbench(_generic/_temporal/"
                           "_consistency), or shapesworld (default; generated unless --annotations is given)")
    data.add_argument("--annotations", default=None,
                      help="the benchmark's annotation file (ShapesWorld: a JSON list of records)")
    data.add_argument("--videos", default=None, help="folder the records' video paths are relative to")
    data.add_argument("--answers", default=None, help="separate answers file (EgoSchema, ActivityNet-QA)")
    data.add_argument("--subset", default=None, help="StreamingBench / VCGBench subset (default: from the file name)")
    data.add_argument("--task-kinds", type=_csv(str), default=[],
                      help="only these task kinds, comma-separated: short, backward, realtime, forward, open, other")
    data.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N records")
    data.add_argument("--world-videos", type=positive_int, default=2, help="ShapesWorld: videos to generate (default 2)")
    data.add_argument("--world-duration", type=positive_float, default=60.0,
                      help="ShapesWorld: seconds per generated video (default 60)")
    data.add_argument("--world-split", default="test", choices=["train", "val", "test"],
                      help="ShapesWorld: seed range of the generated videos (default test)")
    data.add_argument("--world-seed", type=int, default=0, help="ShapesWorld: first video index (default 0)")
    data.add_argument("--frame-source", default="auto", choices=["auto", "world", "file"],
                      help="ShapesWorld frames: auto/world render from the world; file writes and reads mp4s "
                           "through the video reader (default auto)")

    model = p.add_argument_group("model and configurations")
    model.add_argument("--model", default="tiny-qwen2.5-vl", help=f"{model_help()}. Default: tiny-qwen2.5-vl")
    model.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: CPU)")
    model.add_argument("--configs", type=_csv(str), default=["full"],
                       help=f"configurations to compare, comma-separated: {CONFIG_NAMES} (default full)")
    model.add_argument("--budgets", type=_csv(_budget), default=[None],
                       help="memory budgets (visual tokens kept per layer), comma-separated; each budgeted "
                            "configuration runs at each (default: the policies' own)")
    model.add_argument("--memory", default=None, choices=["full", "window", "sink", "hermes", "retrieval", "uniform"],
                       help="override the configurations' memory policy")
    model.add_argument("--pool-mode", default="avg", choices=["avg", "prompt"],
                       help="pooling of the pooling configurations: avg (3-D average) or prompt (PPLLaVA prompt-"
                            "guided; offline re-pools per question, streaming uses --standing-query or a generic "
                            "prompt). Default avg")
    model.add_argument("--pool-kernel", type=kernel_arg, default=(2, 3, 3),
                       help="pooling kernel T,H,W over the model's token grid (default 2,3,3, the reference)")
    model.add_argument("--clip", default=None, help=f"--pool-mode prompt: {relevance_help()}")
    model.add_argument("--standing-query", default=None, help="streaming prompt pooling against this query")

    proto = p.add_argument_group("protocol")
    proto.add_argument("--protocol", default="offline", choices=["offline", "streaming"],
                       help="offline: the video up to the question, sampled and encoded at once; streaming: one "
                            "session per video, each question asked at its time (default offline)")
    proto.add_argument("--frames", type=positive_int, default=32,
                       help="offline: frames sampled uniformly (with --fps: a cap; default 32)")
    proto.add_argument("--fps", type=positive_float, default=None,
                       help="offline: sample at this rate instead of --frames; streaming: stream rate "
                            "(default: every frame of the video)")
    proto.add_argument("--chunk-frames", type=positive_int, default=8, help="frames per prefill chunk (default 8)")
    proto.add_argument("--max-new-tokens", type=new_tokens_arg, default=16, help="answer length limit (default 16)")
    proto.add_argument("--poll-frames", type=positive_int, default=None,
                       help="streaming: poll forward questions after this many new frames (default: one "
                            "temporal group of the model)")
    proto.add_argument("--forward-mode", default="poll", choices=["poll", "watch"],
                       help="streaming forward records: poll (ask again every --poll-frames, fire on 'now'/'yes') "
                            "or watch (a standing query scored after every chunk; default poll)")
    proto.add_argument("--forward-tolerance", type=nonnegative_float, default=2.0,
                       help="seconds after the event a forward answer may come (a record's own wins; default 2)")
    proto.add_argument("--prompt-style", default="auto", choices=["auto", "letters", *plugins.PROMPT_STYLES.names(), "plain"],
                       help="how options are shown: letters ('A. text' lines), words (ShapesWorld), plain (none); "
                            "auto: words for ShapesWorld, letters otherwise")
    proto.add_argument("--judge", action="store_true",
                       help="score open answers with the LLM judge at PPLLAVA_JUDGE_BASE_URL / PPLLAVA_JUDGE_MODEL "
                            "(--suite: StreamBench is judged after the run, yes/no and 0-5)")
    proto.add_argument("--context-window", type=positive_float, default=None, metavar="SECONDS",
                       help="offline: a question at time t sees only [t - SECONDS, t], not the whole prefix "
                            "(StreamingBench's leaderboard uses 60: its eval.sh --context_time; default: all)")
    proto.add_argument("--max-pixels", type=_max_pixels, default=None, metavar="N|PRESET",
                       help="shrink frames (aspect kept) to at most N pixels before the model's processor: a "
                            "number, AxB, or a preset: qwen-vl-utils (768*28*28, Qwen2-VL/2.5-VL video default), "
                            "qwen2-vl-example (360*420, the Qwen2-VL README's video example). Default: as stored")
    proto.add_argument("--threads", type=positive_int, default=None,
                       help="torch CPU threads (default: torch's own choice)")

    suite = p.add_argument_group("suite (--suite brief: StreamBench, MSR-VTT captioning, EgoSchema; see "
                                 "ppllava_hermes.evaluation.suite)")
    suite.add_argument("--suite", default=None, choices=["brief"],
                       help="run a suite of benchmarks for --suite-configs and write OUT/brief_suite.json and .md "
                            "(quality against full context with paired 95%% intervals, and the speed-up)")
    suite.add_argument("--suite-configs", type=_csv(str), default=["full", "hermes", "hermes+pooling", "retrieval"],
                       help="configurations the suite compares, comma-separated; the last is the 'best memory' "
                            "(default full,hermes,hermes+pooling,retrieval)")
    suite.add_argument("--suite-benchmarks", type=_csv(str), default=["streambench", "msrvtt_caption", "egoschema"],
                       help="which benchmarks of the suite to run (default all three)")
    suite.add_argument("--data", default="shapesworld",
                       help="shapesworld (default: write ShapesWorld videos and the three benchmarks' files, "
                            "--world-videos per benchmark) or a folder laid out as "
                            "ppllava_hermes.evaluation.brief_data says (the real benchmarks)")
    suite.add_argument("--suite-details", default="runs/brief_suite",
                       help="folder for the suite's per-benchmark reports, logs, EgoSchema predictions files and "
                            "generated data (default runs/brief_suite)")
    suite.add_argument("--bootstrap", type=positive_int, default=1000,
                       help="bootstrap resamples of the paired intervals (default 1000)")
    suite.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")

    out = p.add_argument_group("output")
    out.add_argument("--out", default="runs/eval",
                     help="folder for results.json, summary.md and the plots (default runs/eval)")
    out.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from OUT/results.jsonl: records answered there are not "
                          "asked again (the same flags are required); without it the log starts afresh")
    out.add_argument("--title", default=None, help="report title (default: the benchmark and protocol)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


#: EvalConfig fields whose flag has another name or shape (every other field is the flag of its own name).
_FROM_ARGS = {
    "config": lambda a: a.configs[0],
    "budget": lambda a: a.budgets[0] if a.budgets else None,
    "num_frames": lambda a: a.frames,
    "task_kinds": lambda a: tuple(a.task_kinds),
}


def config_from_args(args: argparse.Namespace):
    """The base :class:`~.runner.EvalConfig` of a run: each field from its flag (:data:`_FROM_ARGS` for the
    few whose flag differs); the run's other configurations and budgets vary it (``comparison_configs``)."""
    from dataclasses import fields

    from .runner import EvalConfig

    return EvalConfig(**{f.name: _FROM_ARGS[f.name](args) if f.name in _FROM_ARGS else getattr(args, f.name)
                         for f in fields(EvalConfig)})


def log_header(args: argparse.Namespace, base) -> dict:
    """What an evaluation's results log is written for: resuming needs the same (the device may change)."""
    config = {k: v for k, v in asdict(base).items() if k != "device"}
    return {"version": 1, "config": config, "configs": list(args.configs), "budgets": list(args.budgets)}


def _resume_hint(words: list[str]) -> str:
    words = [w for w in words if w != "--resume"] + ["--resume"]
    return "ppllava-hermes " + " ".join(shlex.quote(w) for w in words)


def run_eval_command(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Run the comparison the arguments describe and write the report; returns an exit status.

    2: a usage error (flags, configuration names, output paths), before any model call; 130: interrupted
    (the answered records are kept in the results log, ``--resume`` continues); 0 otherwise. A record that
    fails is that record's result, not the run's end.
    """
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "suite", None):
        from .suite import run_suite_command

        return run_suite_command(args, argv)
    from ..specs import check_device
    from .report import LOG_NAME, OutputPathError, ResultsLog, check_output_dir, markdown, write_report
    from .runner import process_shard, run_comparison

    words = list(argv if argv is not None else sys.argv[1:])
    try:
        base = config_from_args(args)
        from .runner import comparison_configs

        comparison_configs(base, args.configs, args.budgets)  # every configuration name checked up front
        check_device(args.device)
        out = check_output_dir(args.out)  # before any work: a bad --out would lose all of it
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank, world_size = process_shard()
    name = LOG_NAME if rank == 0 else f"results.rank{rank}.jsonl"
    try:
        log = ResultsLog(out, log_header(args, base), resume=getattr(args, "resume", False), name=name)
    except OutputPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept = log.count
    if kept and not args.quiet:
        print(f"resuming: {kept} answered records kept from {log.path}")
    try:
        runs = run_comparison(base, args.configs, args.budgets, progress=not args.quiet,
                              shard=(rank, world_size), done={k: list(v) for k, v in log.done.items()},
                              on_result=log.append)
    except KeyboardInterrupt:
        log.close()
        print(f"\ninterrupted: {log.count} answered records kept in {log.path}; continue with: "
              f"{_resume_hint(words)}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        log.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.close()
    if rank != 0:
        return 0
    command = "ppllava-hermes " + " ".join(shlex.quote(w) for w in words if w != "--resume") if words else None
    title = args.title or f"{base.benchmark} ({base.protocol} protocol)"
    paths = write_report(runs, args.out, title=title, command=command, plots=not args.no_plots)
    paths["log"] = log.path
    print(markdown(runs, title=title))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser(prog: str = "ppllava-hermes eval") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate a VLM with memory and pooling configurations on a "
                                "benchmark: accuracy and efficiency in one run.")
    add_eval_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_eval_command(args, ["eval", *(argv if argv is not None else sys.argv[1:])])
