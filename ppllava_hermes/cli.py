"""The ``ppllava-hermes`` command: stream a video through a VLM with memory and pooling, ask timed questions.

Subcommands:
    stream  VIDEO --model M --ask "12.5:what is happening?" --watch "tell me when a person enters" ...
    demo    a generated ShapesWorld video through the shipped model (the README's first command)
    eval    run an evaluation (see ``ppllava_hermes.evaluation``)

This module only parses arguments and prints; the work lives in the library.

Errors: every bad input is one line naming the input and the reason, exit status 2 (usage: flags, paths,
model specs) or 1 (a failure at run time); Ctrl-C is one line and status 130. ``--debug`` (before or
after the subcommand) shows the traceback instead.

``--ask`` times: ``SECONDS:QUESTION`` (``12.5:what?``) or a clock time ``M:SS:QUESTION`` / ``H:MM:SS:QUESTION``
(``1:05:what?`` is 65 s, ``1:02:03:what?`` 3723 s). The rule that keeps them apart: a clock time has
two-digit seconds (and two-digit minutes after hours), each below 60; the longest clock time at the start
wins; a start that looks like a clock time but is not one (``0:5:``, ``1:75:``) is refused, never read as
seconds plus a question beginning with digits. To ask at plain seconds a question that itself starts
with ``NN:``, write the seconds with a decimal point: ``12.0:30: is that the time?``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from . import plugins
from .compat import EXTRA_OF_MODULE, MissingExtraError, missing_extra_message
from .specs import (
    POOL_MODES,
    SpecError,
    build_policy,
    kernel_arg,
    model_help,
    new_tokens_arg,
    nonnegative_float,
    open_unit_float,
    policy_names,
    positive_float,
    positive_int,
    relevance_help,
)
from .streaming.timed import TimedQuestion

__all__ = ["build_adapter", "build_policy", "kernel_arg", "main", "parse_timed_question"]

_HMS = re.compile(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d*)?):(.*)", re.S)
_MS = re.compile(r"(\d+):([0-5]\d(?:\.\d*)?):(.*)", re.S)
_CLOCKISH = re.compile(r"\d+:\d+(?:\.\d*)?:")
_CLOCK_ONLY = re.compile(r"\d+(?::\d+)+(?:\.\d*)?:?")
_ASK_FORMS = "SECONDS:QUESTION, M:SS:QUESTION or H:MM:SS:QUESTION, e.g. '12.5:what is happening?' or '1:05:what?'"


def parse_timed_question(spec: str) -> TimedQuestion:
    """``"12.5:what is happening?"`` -> TimedQuestion(12.5, ...); ``"1:05:what?"`` -> 65 s; ``"1:02:03:q"`` -> 3723 s.

    See the module docstring for the rule that tells clock times from seconds; anything else is an
    ``argparse.ArgumentTypeError`` naming the value and the forms accepted.
    """
    text = spec.strip()
    m = _HMS.fullmatch(text)
    if _CLOCK_ONLY.fullmatch(text):  # before the clock forms: "1:02:03" is a time, not "03" asked at 62 s
        raise argparse.ArgumentTypeError(f"{spec!r}: a time with no question; expected {_ASK_FORMS}")
    if m:
        t, question = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]), m[4]
    elif (m := _MS.fullmatch(text)) is not None:
        t, question = int(m[1]) * 60 + float(m[2]), m[3]
    elif _CLOCKISH.match(text):
        raise argparse.ArgumentTypeError(
            f"{spec!r}: not a clock time (seconds and minutes after hours need two digits, each below 60, "
            f"e.g. 0:05); expected {_ASK_FORMS}")
    else:
        head, sep, question = text.partition(":")
        try:
            t = float(head)
        except ValueError:
            t = math.nan
        if not sep or not math.isfinite(t) or t < 0:
            raise argparse.ArgumentTypeError(f"{spec!r}: expected {_ASK_FORMS}, with a finite time >= 0")
    if not question.strip():
        raise argparse.ArgumentTypeError(f"{spec!r}: the question after the time is empty; expected {_ASK_FORMS}")
    return TimedQuestion(float(t), question.strip())


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``ppllava-hermes stream: error: argument --fps: ...`` (status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def check_output_file(path: str, flag: str = "--json") -> Path:
    """A file the command writes at the end, checked before any work: its folder exists and is writable."""
    out = Path(path)
    if out.is_dir():
        raise SpecError(f"{flag} {path}: is a folder, expected a file name")
    parent = out.parent
    if not parent.exists():
        raise SpecError(f"{flag} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise SpecError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or out.exists() and not os.access(out, os.W_OK):
        raise SpecError(f"{flag} {path}: not writable")
    return out


def build_adapter(model: str, *, device: str | None = None, dtype: str = "auto"):
    """Resolve ``--model`` (``specs.load_model``), printing the model's note (e.g. random weights)."""
    from .specs import check_device, load_model, model_note

    check_device(device)  # a --device this machine lacks: one line before anything loads
    note = model_note(model)
    if note:
        print(f"note: {note}")
    return load_model(model, device=device, dtype=dtype)


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def run_stream(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .streaming import GenerationConfig, StreamConfig, StreamingSession
    from .streaming.timed import run_timed_questions
    from .video import VideoError, probe, stream_video

    source = args.video
    try:  # output paths first: nothing is lost at the end
        if args.json:
            check_output_file(args.json)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # bad input fails here, before any model is loaded
        info = probe(source) if Path(source).is_file() else None
        clips = stream_video(source, chunk_frames=args.chunk_frames, fps=args.fps, realtime=args.realtime,
                             max_frames=args.max_frames)
    except VideoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # a --model / --clip mistake is one line, before anything loads
        relevance = _relevance(args)
        adapter = build_adapter(args.model, device=args.device)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # a configuration the model cannot run (budget below the system prompt, no RoPE, ...)
        session = StreamingSession(
            adapter,
            memory=build_policy(args.memory, args.budget),
            pooling=build_pooling(args, adapter, relevance),
            config=StreamConfig(chunk_frames=args.chunk_frames, max_new_tokens=args.max_new_tokens),
        )
        session.start()
    except ValueError as err:
        print(f"error: {_with_budget_hint(err, args, adapter, relevance)}", file=sys.stderr)
        return 2
    limit = getattr(session.rope, "max_position_embeddings", None)
    if limit:  # an answer must fit in the positions the system prompt leaves
        left = int(limit) - int(session.engine.next_position)
        if args.max_new_tokens >= left:
            print(f"error: --max-new-tokens {args.max_new_tokens}: the model has {limit} positions and the system "
                  f"prompt takes {session.engine.next_position}; use at most {max(1, left - 1)}", file=sys.stderr)
            return 2
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                           temperature=args.temperature if args.temperature > 0 else 1.0, seed=args.seed)
    questions = args.ask or []
    results = []
    alerts: list[dict] = []
    total = None
    if info is not None and info.duration:
        total = int(info.duration * args.fps) if args.fps else info.num_frames
    try:
        for query in args.watch:
            session.watch(query, _watch_config(args, adapter), callback=lambda ev: _alert(ev, alerts, bar))
    except ValueError as err:
        print(f"error: --watch: {err}", file=sys.stderr)
        return 2
    if args.watch:
        print(f"watching {len(args.watch)} quer{'y' if len(args.watch) == 1 else 'ies'}: a decision every "
              f"{session.chunk_frames / args.fps:g} s of video ({session.chunk_frames} frames)")
    bar = tqdm(total=total, unit="frame", desc="ingest", disable=args.quiet)

    def report(q: TimedQuestion, ans) -> None:
        bar.clear()
        row = {
            "time": q.time, "question": q.text, "answer": ans.text,
            "ttft_ms": round(ans.ttft_s * 1000, 2), "total_ms": round(ans.total_s * 1000, 2),
            "kv_bytes": ans.kv_bytes, "memory_tokens": ans.cache_tokens,
            "visual_tokens_seen": ans.visual_tokens_seen, "frames_seen": ans.frames_seen,
            "last_frame_time": ans.last_frame_time,
        }
        if q.note:
            row.update(asked_for=q.asked_for, note=q.note)
        results.append(row)
        if q.note:
            print(f"[{q.time:8.2f}s] note: {q.note}")
        print(f"[{q.time:8.2f}s] Q: {q.text}\n{'':11} A: {ans.text!r}\n{'':11} TTFT {row['ttft_ms']:.1f} ms, "
              f"total {row['total_ms']:.1f} ms, KV {_format_bytes(ans.kv_bytes)} ({ans.cache_tokens} entries/layer), "
              f"{ans.visual_tokens_seen} visual tokens seen, {ans.frames_seen} frames")
        bar.refresh()

    try:
        run_timed_questions(session, clips, questions, gen, on_answer=report, on_frames=bar.update)
    except VideoError as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
    st = session.stats
    print(f"ingested {st.frames} frames in {st.chunks} chunks: {st.visual_tokens} visual tokens into the LLM, "
          f"encode {st.encode_s:.2f}s, prefill {st.prefill_s:.2f}s, compress {st.compress_s:.2f}s, "
          f"peak KV {_format_bytes(st.peak_kv_bytes)}")
    if args.watch:
        print(f"watches: {st.watch_decisions} decisions, {st.watch_s * 1000 / max(1, st.chunks):.1f} ms per chunk "
              f"(ingest {(st.encode_s + st.prefill_s + st.compress_s) * 1000 / max(1, st.chunks):.1f} ms per chunk), "
              f"{len(alerts)} alert{'s' if len(alerts) != 1 else ''}")
    if args.json:
        try:
            Path(args.json).write_text(json.dumps({"questions": results, "alerts": alerts, "stats": {
                k: v for k, v in asdict(st).items() if k != "compress_log"}}, indent=2))
        except OSError as err:
            print(f"error: --json {args.json}: {err.strerror or err}", file=sys.stderr)
            return 1
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .compat import require

    require("uvicorn", "ppllava-hermes serve")
    require("fastapi", "ppllava-hermes serve")
    import uvicorn

    from .serving.app import ServeConfig, create_app

    token = args.token or os.environ.get("PPLLAVA_HERMES_TOKEN")
    if args.insecure_local and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"error: --insecure-local serves without a token: only on 127.0.0.1, not {args.host!r}", file=sys.stderr)
        return 2
    try:
        config = ServeConfig(model=args.model, memory=args.memory, budget=args.budget, chunk_frames=args.chunk_frames,
                             max_sessions=args.max_sessions, token=token, insecure_local=args.insecure_local,
                             allow_dirs=tuple(args.allow_dir), allow_hosts=tuple(args.allow_host),
                             allow_devices=tuple(args.allow_device), max_new_tokens=args.max_new_tokens,
                             snapshot_dir=args.snapshot_dir or args.restore)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for d in config.allow_dirs:
        if not Path(d).is_dir():
            print(f"error: --allow-dir {d!r}: not a folder", file=sys.stderr)
            return 2
    if args.ray:
        return _run_serve_ray(args, config)
    relevance = _relevance(args)
    adapter = build_adapter(args.model, device=args.device)
    if args.restore and not Path(args.restore).is_dir():
        print(f"error: --restore {args.restore!r}: not a folder", file=sys.stderr)
        return 2
    try:
        app = create_app(config, adapter=adapter, pooling=build_pooling(args, adapter, relevance), restore=args.restore)
    except ValueError as err:
        print(f"error: --restore: {err}", file=sys.stderr)
        return 2
    print(f"serving {args.model} on http://{args.host}:{args.port} ({'no token' if config.insecure_local else 'bearer token'}"
          f", memory {args.memory}, budget {args.budget}, up to {args.max_sessions} sessions)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _run_serve_ray(args: argparse.Namespace, config) -> int:
    """``serve --ray``: the same server as Ray Serve replicas behind Ray's HTTP proxy (serving.ray_deploy)."""
    import time

    try:
        from ray import serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise MissingExtraError("ppllava-hermes serve --ray needs Ray Serve: pip install 'ppllava-hermes[ray]'",
                                name=exc.name) from None
    if args.restore:
        print("error: --restore with --ray: a restored session's id names the replica that held it; restore "
              "snapshots into a single server (serve --restore DIR)", file=sys.stderr)
        return 2
    from .serving.ray_deploy import SESSION_HEADER, PoolingSpec, start
    from .specs import model_note

    relevance = _relevance(args)
    pooling = None if args.pool == "none" else PoolingSpec(args.pool, args.pool_kernel, args.standing_query, relevance)
    note = model_note(args.model)
    if note:
        print(f"note: {note}")
    try:
        url, replicas = start(config, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
                              cpus_per_replica=args.cpus_per_replica, device=args.device, pooling=pooling,
                              host=args.host, port=args.port, address=args.ray_address)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"serving {args.model} on {url} with Ray Serve: {replicas} replica{'s' if replicas != 1 else ''} "
          f"({'no token' if config.insecure_local else 'bearer token'}, memory {args.memory}, budget {args.budget}, "
          f"up to {args.max_sessions} sessions each; send {SESSION_HEADER}: ID with every request for a session)",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


def _watch_config(args: argparse.Namespace, adapter):
    """The adapter's watch settings (or the defaults) with ``--watch-threshold`` / ``--watch-cooldown``."""
    from dataclasses import replace

    from .streaming import WatchConfig

    config = adapter.watch_config or WatchConfig()
    if args.watch_threshold is not None:
        config = replace(config, threshold=args.watch_threshold)
    if args.watch_cooldown is not None:
        config = replace(config, cooldown_s=args.watch_cooldown)
    return config


def _alert(event, alerts: list[dict], bar) -> None:
    """Print an alert as it fires (above the progress bar) and keep it for ``--json``."""
    bar.clear()
    alerts.append(event.to_dict())
    print(f"[{event.time:8.2f}s] ALERT {event.query!r}: {event.text!r} (score {event.score:.2f})", flush=True)
    bar.refresh()


def _with_budget_hint(err: ValueError, args: argparse.Namespace, adapter, relevance: str | None) -> str:
    """The session's message; when the memory's positions do not fit the model, plus the largest
    ``--budget`` that does (found by starting sessions, halving the interval)."""
    from .streaming import StreamConfig, StreamingSession

    message = str(err)
    if "positions do not fit" not in message or args.memory == "full":
        return message

    def error(budget: int) -> str | None:
        try:
            StreamingSession(adapter, memory=build_policy(args.memory, budget),
                             pooling=build_pooling(args, adapter, relevance),
                             config=StreamConfig(chunk_frames=args.chunk_frames,
                                                 max_new_tokens=args.max_new_tokens)).start()
        except ValueError as err:
            return str(err)
        return None

    def too_big(budget: int) -> bool:
        return "positions do not fit" in (error(budget) or "")

    hi = args.budget if args.budget is not None else getattr(build_policy(args.memory, None), "budget", None)
    if not isinstance(hi, int) or hi < 2 or too_big(1):
        return message
    lo = 1  # not too_big(lo), too_big(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if not too_big(mid) else (lo, mid)
    if error(lo) is not None:
        return f"{message}; no --budget of {args.memory} fits this model"
    return f"{message}; the largest --budget that fits is {lo}"


def _relevance(args: argparse.Namespace) -> str | None:
    """The relevance spec ``--pool prompt`` uses (``--clip``, else the model's own); None for other modes."""
    from .specs import check_model, relevance_spec

    check_model(args.model)
    if getattr(args, "pool", "none") != "prompt":
        return None
    return relevance_spec(args.model, args.clip)


def build_pooling(args: argparse.Namespace, adapter, relevance: str | None = None):
    """The pooling stage for ``--pool`` (None: no pooling); ``relevance`` is the spec of its scorer."""
    if getattr(args, "pool", "none") == "none":
        return None
    from .specs import load_relevance, relevance_spec
    from .streaming.pooling_stage import make_pooling_stage

    scorer = None
    if args.pool == "prompt":
        spec = relevance if relevance is not None else relevance_spec(args.model, args.clip)
        scorer = load_relevance(spec, frames_per_token=adapter.frames_per_group)
    return make_pooling_stage(adapter, mode=args.pool, kernel=args.pool_kernel,
                              standing_query=args.standing_query, scorer=scorer)


def add_model_args(p: argparse.ArgumentParser, default_model: str) -> None:
    p.add_argument("--model", default=default_model, help=f"{model_help()}. Default: {default_model}")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: CPU)")
    p.add_argument("--memory", default="hermes", choices=list(policy_names()),
                   help="KV memory policy (default: hermes); merge = DMC-style merging then HERMES at --budget")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="visual tokens kept per layer by the memory policy (default: the policy's own)")
    p.add_argument("--pool", default="none", choices=list(POOL_MODES),
                   help="token pooling before the LLM: none; avg (plain 3-D average pooling, no query); "
                        "prompt (PPLLaVA prompt-guided pooling against --standing-query)")
    p.add_argument("--pool-kernel", type=kernel_arg, default=(2, 3, 3),
                   help="pooling kernel T,H,W over the model's token grid (default 2,3,3, the reference)")
    p.add_argument("--standing-query", default=None,
                   help="query given at session start: each incoming chunk is pooled against it (--pool prompt)")
    p.add_argument("--clip", default=None, help=f"--pool prompt: {relevance_help()}")
    p.add_argument("--chunk-frames", type=positive_int, default=8, help="frames per prefill chunk (default 8)")
    p.add_argument("--max-new-tokens", type=new_tokens_arg, default=32,
                   help="answer length limit, 1 to 4096 and below the model's positions left (default 32)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.0,
                   help="0 = greedy (default); > 0 samples; negative values are refused")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def _add_debug(p: argparse.ArgumentParser, default=False) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the Python traceback of an error instead of its one-line message")


def main(argv: list[str] | None = None) -> int:
    """The ``ppllava-hermes`` command; returns its exit status (2: usage error, 1: run-time failure, 130: Ctrl-C)."""
    parser = _Parser(prog="ppllava-hermes", description=__doc__.split("\n")[0])
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stream", help="stream a video (file, URL, device or image folder) and ask timed questions")
    _add_debug(p, argparse.SUPPRESS)
    p.add_argument("video", help="video file, folder of images, or any URL / device PyAV opens (rtsp://, /dev/video0)")
    add_model_args(p, "tiny-qwen2.5-vl")
    p.add_argument("--ask", action="append", type=parse_timed_question, metavar="SECONDS:QUESTION",
                   help="ask QUESTION when the stream reaches SECONDS (repeatable); also M:SS:QUESTION and "
                        "H:MM:SS:QUESTION with two-digit seconds (1:05:what? = 65 s); past the end of the stream "
                        "a question is answered and reported at the last frame, with a note")
    p.add_argument("--watch", action="append", default=[], metavar="QUERY",
                   help="a standing query decided after every chunk (repeatable): an alert is printed, with its "
                        "stream time, when it fires; the decision interval is --chunk-frames / --fps")
    p.add_argument("--watch-threshold", type=open_unit_float, default=None,
                   help="fire when P(positive answer) reaches this (default: the model's own, else 0.5)")
    p.add_argument("--watch-cooldown", type=nonnegative_float, default=None,
                   help="stream seconds after an alert before the same watch may fire again (default: the "
                        "model's own, else 10)")
    p.add_argument("--fps", type=positive_float, default=1.0, help="frames sampled per second of video (default 1)")
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
    p.add_argument("--realtime", action="store_true", help="pace a file at real time, like a live stream")
    p.add_argument("--json", default=None, help="also write answers and statistics to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_stream)

    for name, command in plugins.COMMANDS.items():  # the plugins' commands (ShapesWorld: demo)
        c = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(c)
        c.set_defaults(func=command.run)

    v = sub.add_parser("serve", help="serve bounded-memory streaming sessions over HTTP (extra [serve])",
                       description="Serve bounded-memory video sessions over HTTP: frames, questions, watches and "
                                   "alerts, an OpenAI-compatible endpoint, Prometheus metrics, a web page at /.")
    _add_debug(v, argparse.SUPPRESS)
    add_model_args(v, "tiny-qwen2.5-vl")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=positive_int, default=8000)
    v.add_argument("--max-sessions", type=positive_int, default=8)
    v.add_argument("--token", default=None,
                   help="bearer token every endpoint but /health requires (default: $PPLLAVA_HERMES_TOKEN)")
    v.add_argument("--insecure-local", action="store_true", help="no token (development on 127.0.0.1 only)")
    v.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="a folder whose video files may be session sources (repeatable)")
    v.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="a host whose rtsp/http(s) streams may be session sources (repeatable)")
    v.add_argument("--allow-device", action="append", default=[], metavar="DEVICE",
                   help="a capture device (a path under /dev/, e.g. /dev/video0) that may be a session source "
                        "(repeatable); any other device is refused")
    v.add_argument("--snapshot-dir", default=None, help="where POST /sessions/ID/snapshot saves sessions")
    v.add_argument("--restore", default=None, metavar="DIR",
                   help="bring back the sessions snapshotted in DIR (same ids, same memory) before serving")
    rg = v.add_argument_group("Ray Serve (extra [ray]): replicas of the server, requests routed by session id")
    rg.add_argument("--ray", action="store_true",
                   help="serve as a Ray Serve application: one server per replica behind Ray's HTTP proxy on "
                        "--host/--port; every request for a session carries the header x-session-id: ID")
    rg.add_argument("--replicas", type=positive_int, default=None,
                   help="replicas (default: one per GPU of the Ray cluster, else 1)")
    rg.add_argument("--gpus-per-replica", type=nonnegative_float, default=None,
                   help="GPUs each replica holds (default: 1 on a cluster with GPUs, else 0)")
    rg.add_argument("--cpus-per-replica", type=nonnegative_float, default=1.0,
                   help="CPUs each replica holds (default 1)")
    rg.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto, or ray://HOST:10001; default: $RAY_ADDRESS, else a "
                        "local Ray started here)")
    v.set_defaults(func=run_serve)

    from .evaluation.command import add_eval_arguments, run_eval_command

    e = sub.add_parser("eval", help="evaluate configurations on a benchmark: accuracy and efficiency in one run",
                       description="Evaluate a VLM with memory and pooling configurations on a benchmark "
                                   "(offline or streaming protocol); writes JSON, Markdown and PNG plots.")
    add_eval_arguments(e)
    _add_debug(e, argparse.SUPPRESS)
    e.set_defaults(func=lambda a: run_eval_command(a, argv))

    from . import recipes

    for kind, what in recipes.KINDS.items():
        names = ", ".join(recipes.available(kind))
        r = sub.add_parser(kind, help=f"run one of the {what}: {names}", description=f"Run one of the {what}.")
        r.add_argument("name", help=f"one of: {names}")
        r.add_argument("args", nargs=argparse.REMAINDER, help="the recipe's own flags (NAME --help lists them)")
        r.set_defaults(func=lambda a, kind=kind: _run_recipe(kind, a.name, a.args))

    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if not debug:  # warnings (a damaged frame, a truncated file, a resized frame) as one line each
        warnings.formatwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except SpecError as err:  # a --model / --clip / kernel mistake anywhere below: one line
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency: say which extra brings it
        message = str(exc) if isinstance(exc, MissingExtraError) else missing_extra_message(exc.name or "")
        if debug:
            raise
        print(f"error: {message or ' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a failure at run time (the model, a file, the machine): one line
        if debug:
            raise
        text = " ".join(str(err).split()) or "no message"
        print(f"error: {type(err).__name__}: {text} (--debug shows the traceback)", file=sys.stderr)
        return 1


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def _run_recipe(kind: str, name: str, args: list[str]) -> int:
    from . import recipes

    try:
        result = recipes.run(kind, name, args)
    except ValueError as err:
        if name not in recipes.available(kind):  # an unknown recipe: one line; errors from inside propagate
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise
    except ModuleNotFoundError as exc:  # a recipe's optional dependency: the extra of its kind brings it
        top = (exc.name or "").split(".")[0]
        if top not in EXTRA_OF_MODULE:
            raise
        # the kind's extra brings what every recipe of that kind needs; gguf, smollm2 and lmms-eval have their own
        own = EXTRA_OF_MODULE[top]
        extra = own if own not in ("clip", "train", "eval") else ("train" if kind == "train" else "eval")
        print(f"error: the {kind} recipe {name!r} needs the optional package {top!r}: "
              f"pip install 'ppllava-hermes[{extra}]'", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
