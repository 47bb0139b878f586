"""Server load: N concurrent live streams against one HTTP server, their TTFT, ingest, drops, RSS and errors.

    ppllava-hermes bench server_load                          # docs/results/server_load.{json,md,png}
    ppllava-hermes bench server_load --quick --out /tmp/sl    # a smoke run (about a minute)

Specification.

* Model: the shipped ShapesWorld VLM (``--model``: another checkpoint folder), ``--threads`` torch threads.
  Server: ``serving.app.create_app`` on it, in this process (``serving.live.LiveServer``: uvicorn in a thread on 127.0.0.1, a free port),
  bearer-token auth, sessions of memory ``hermes`` at ``--budget`` visual tokens per layer (default 256),
  chunks of 2 frames; ``max_sessions`` = the largest N. One server for the whole run, stopped cleanly at the
  end (uvicorn's exit, then the app's shutdown closes the scheduler). Before the first N, first calls off
  the clock: a throwaway session (a watch, 4 frames ingested, one question), deleted; its errors count.
* Load, for each N in ``--sessions`` (default ``1,4,8``): N sessions (``POST /sessions``), each with one
  watch registered at the start (``POST /sessions/{id}/watches``, "Tell me when a new shape appears.", the
  model's own watch settings), then N client threads, one per session, each with its own HTTP client and its
  own ShapesWorld video (``generate_world(WorldConfig(duration=...), SEED_BASE + i)``, 112 px, rendered frame
  by frame, nothing kept). Each streams ``--minutes`` (default 10) of stream time at real-time pace: frame
  ``k`` (``t = k`` s) is pushed at wall time ``t0 + i / N + k`` (the ``i / N`` staggers the clients) as a PNG
  by ``POST /sessions/{id}/frames?t=k`` without waiting for ingest; every ``--ask-every`` s of stream time
  (default 5, from t = 5 on, right after that frame is pushed) it asks ``POST /sessions/{id}/ask``
  ``{"question": "How many shapes are visible now?", "max_new_tokens": 3}`` and waits for the answer; a
  push due while a question is in flight goes out as soon as the answer is back (``max_pace_lag_ms``).
* Measured per N: every answer's server-reported ``ttft_ms`` and its client-side latency (request to
  response, ``perf_counter``); every error: any non-2xx response (status and the server's ``error``
  message) or a failed request, with the request it answered; after the streams end the server is left to
  drain its queue (the scheduler's depth, as ``/health`` reports it, down to 0, then one no-op job so the job
  in progress is done), then each
  session's ``frames_seen``, ``frames_dropped`` and ``alerts`` from ``GET /sessions/{id}``; ingest fps =
  total frames seen / wall seconds from ``t0`` to drained (the offered load is N fps); resident memory of
  this process (``/proc/self/statm``: model, server and clients together) sampled every second, ``rss_mb_start``
  once every stream has passed ``--warmup`` s (default 30) of stream time, ``rss_mb_end`` when drained, before
  the sessions are deleted (``DELETE /sessions/{id}``, every one, before the next N).
* Rows (``server_load.json`` ``rows``, one per N): ``{"sessions", "p50_ttft_ms", "p95_ttft_ms",
  "ingest_fps", "dropped_frames", "rss_mb_start", "rss_mb_end", "errors"}`` plus ``p50_client_ms``,
  ``p95_client_ms``, ``p95_push_ms`` (client latency of a frame push), ``questions_asked``,
  ``questions_answered``, ``frames_sent``, ``frames_seen``, ``alerts``, ``rss_mb_peak``,
  ``rss_drift_pct`` = (end - start) / start, ``max_pace_lag_ms``, ``wall_s``. TTFT and latency percentiles
  are over every answer of that N (linear interpolation). The JSON also holds the command, the machine, the
  settings, the targets, every answer (``answers``: time, TTFT, client latency, text), the RSS and queue
  timeline and every error message.
* Targets (the .md says for each whether it held): RSS drift <= 5% after warm-up at every N; zero errors;
  p95 TTFT at the largest N (8 by default) <= 3x p95 TTFT at 1 session (not judged when 1 is not in
  ``--sessions``). The .md also gives the command and the machine; the .png the TTFT p50 / p95 (and the
  client-side p95) against sessions.
* ``--quick``: sessions ``1,2``, 0.5 minutes, warm-up 5 s (flags given explicitly still win): a smoke run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ppllava_hermes.recipes.bench import machine_description, provenance_md
from ppllava_hermes.serving.live import LiveServer

ROW_FIELDS = ("sessions", "p50_ttft_ms", "p95_ttft_ms", "ingest_fps", "dropped_frames", "rss_mb_start",
              "rss_mb_end", "errors")
QUESTION = "How many shapes are visible now?"
WATCH_QUERY = "Tell me when a new shape appears."
MAX_NEW_TOKENS = 3
CHUNK_FRAMES = 2
FPS = 1.0
SEED_BASE = 9000  # world seeds of this benchmark (memory_recall uses 5000+, proactive 7000+)
RSS_DRIFT_TARGET = 0.05
TTFT_RATIO_TARGET = 3.0
QUICK = {"sessions": "1,2", "minutes": 0.5, "warmup": 5.0}
DEFAULTS = {"sessions": "1,4,8", "minutes": 10.0, "warmup": 30.0}


def rss_mb() -> float:
    """Resident memory of this process now (not the peak), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


@dataclass
class ClientLog:
    """What one client thread saw."""

    sid: str
    answers: list[dict] = field(default_factory=list)  # {"t", "ttft_ms", "client_ms", "text"}
    push_ms: list[float] = field(default_factory=list)
    asked: int = 0
    sent: int = 0
    max_lag_s: float = 0.0


class Errors:
    """Every non-2xx response or failed request, thread-safe."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._lock = threading.Lock()

    def call(self, client, method: str, path: str, n: int, **kw):
        """``client.request``; the response if 2xx, else None (the error is kept)."""
        try:
            r = client.request(method, path, **kw)
        except Exception as err:  # noqa: BLE001 - a failed request is an error of the run, never a crash
            self._add(n, method, path, None, f"{type(err).__name__}: {err}")
            return None
        if not 200 <= r.status_code < 300:
            try:
                msg = r.json().get("error", r.text)
            except Exception:  # noqa: BLE001 - not JSON
                msg = r.text
            self._add(n, method, path, r.status_code, str(msg)[:300])
            return None
        return r

    def _add(self, n: int, method: str, path: str, status: int | None, msg: str) -> None:
        with self._lock:
            self.items.append({"sessions": n, "request": f"{method} {path.split('?')[0]}", "status": status,
                               "error": msg})

    def count(self, n: int) -> int:
        with self._lock:
            return sum(e["sessions"] == n for e in self.items)


def client_thread(url: str, headers: dict, log: ClientLog, index: int, n: int, n_frames: int, t0: float,
                  args, errors: Errors) -> None:
    import httpx

    from ppllava_hermes.world.generator import WorldConfig, generate_world

    world = generate_world(WorldConfig(duration=n_frames / FPS, fps=FPS), SEED_BASE + index)
    ask_every = max(1, int(round(args.ask_every * FPS)))
    offset = index / n
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for k, frame in enumerate(world.frames(0, n_frames)):
            due = t0 + offset + k / FPS
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            log.max_lag_s = max(log.max_lag_s, time.perf_counter() - due)
            body = png(frame)
            start = time.perf_counter()
            r = errors.call(client, "POST", f"/sessions/{log.sid}/frames", n, params={"t": k / FPS}, content=body,
                            headers={"Content-Type": "image/png"})
            log.push_ms.append((time.perf_counter() - start) * 1000)
            log.sent += r is not None
            if k and k % ask_every == 0:
                log.asked += 1
                start = time.perf_counter()
                r = errors.call(client, "POST", f"/sessions/{log.sid}/ask", n,
                                json={"question": QUESTION, "max_new_tokens": MAX_NEW_TOKENS})
                client_ms = (time.perf_counter() - start) * 1000
                if r is not None:
                    a = r.json()
                    log.answers.append({"t": k / FPS, "ttft_ms": a["ttft_ms"], "client_ms": round(client_ms, 3),
                                        "text": a["text"]})


def warm_up(live: LiveServer, headers: dict, errors: Errors) -> None:
    """First calls off the clock: a throwaway session, 4 frames ingested, one question and a watch, deleted."""
    import httpx

    from ppllava_hermes.world.generator import WorldConfig, generate_world

    world = generate_world(WorldConfig(duration=4 / FPS, fps=FPS), SEED_BASE - 1)
    with httpx.Client(base_url=live.url, headers=headers, timeout=120) as c:
        r = errors.call(c, "POST", "/sessions", 0, json={"memory": "hermes", "chunk_frames": CHUNK_FRAMES})
        if r is None:
            return
        sid = r.json()["id"]
        errors.call(c, "POST", f"/sessions/{sid}/watches", 0, json={"query": WATCH_QUERY})
        for k, frame in enumerate(world.frames()):
            errors.call(c, "POST", f"/sessions/{sid}/frames", 0, params={"t": k / FPS, "wait": k == 3},
                        content=png(frame), headers={"Content-Type": "image/png"})
        errors.call(c, "POST", f"/sessions/{sid}/ask", 0, json={"question": QUESTION, "max_new_tokens": MAX_NEW_TOKENS})
        errors.call(c, "DELETE", f"/sessions/{sid}", 0)


def run_level(live: LiveServer, headers: dict, n: int, args, errors: Errors, timeline: list, answers: list) -> dict:
    """N sessions streamed at once (see the module docstring); returns the row."""
    import httpx

    n_frames = int(round(args.minutes * 60 * FPS))
    errors_before = len(errors.items)
    sched = live.app.state.server.scheduler
    with httpx.Client(base_url=live.url, headers=headers, timeout=120) as c:
        logs = []
        for _ in range(n):
            r = errors.call(c, "POST", "/sessions", n,
                            json={"memory": "hermes", "budget": args.budget, "chunk_frames": CHUNK_FRAMES})
            if r is None:
                continue
            sid = r.json()["id"]
            errors.call(c, "POST", f"/sessions/{sid}/watches", n, json={"query": WATCH_QUERY})
            logs.append(ClientLog(sid))
        t0 = time.perf_counter() + 0.5
        threads = [threading.Thread(target=client_thread, name=f"client-{i}", daemon=True,
                                    args=(live.url, headers, log, i, n, n_frames, t0, args, errors))
                   for i, log in enumerate(logs)]
        for t in threads:
            t.start()
        rss_start, rss_peak = None, 0.0
        warm_at = t0 + args.warmup + 1.0  # every stream (staggered by < 1 s) is past the warm-up
        while any(t.is_alive() for t in threads):
            now = time.perf_counter()
            rss = rss_mb()
            rss_peak = max(rss_peak, rss)
            timeline.append({"sessions": n, "t": round(now - t0, 2), "rss_mb": round(rss, 2),
                             "queue": sched.depth()})
            if rss_start is None and now >= warm_at:
                rss_start = rss
            time.sleep(max(0.05, 1.0 - (time.perf_counter() - now)))
        for t in threads:
            t.join()
        deadline = time.perf_counter() + 120
        while sched.depth() and time.perf_counter() < deadline:  # let the queued ingest finish
            time.sleep(0.05)
        sched.question(lambda: None).result(60)  # the job in progress is done once this one has run
        wall = time.perf_counter() - t0
        rss_end = rss_mb()
        rss_peak = max(rss_peak, rss_end)
        if rss_start is None:  # a warm-up no shorter than the stream: parse_args refuses it, but be safe
            rss_start = rss_end
        infos = []
        for log in logs:
            r = errors.call(c, "GET", f"/sessions/{log.sid}", n)
            infos.append(r.json() if r is not None else {})
        for log in logs:
            errors.call(c, "DELETE", f"/sessions/{log.sid}", n)
    answers += [{"sessions": n, "session": log.sid, **a} for log in logs for a in log.answers]
    ttft = [a["ttft_ms"] for log in logs for a in log.answers]
    client_ms = [a["client_ms"] for log in logs for a in log.answers]
    seen = sum(i.get("frames_seen", 0) for i in infos)
    return {"sessions": n, "p50_ttft_ms": percentile(ttft, 50), "p95_ttft_ms": percentile(ttft, 95),
            "ingest_fps": round(seen / wall, 3), "dropped_frames": sum(i.get("frames_dropped", 0) for i in infos),
            "rss_mb_start": round(rss_start, 2), "rss_mb_end": round(rss_end, 2),
            "errors": len(errors.items) - errors_before,
            "p50_client_ms": percentile(client_ms, 50), "p95_client_ms": percentile(client_ms, 95),
            "p95_push_ms": percentile([x for log in logs for x in log.push_ms], 95),
            "questions_asked": sum(log.asked for log in logs), "questions_answered": len(ttft),
            "frames_sent": sum(log.sent for log in logs), "frames_seen": seen,
            "alerts": sum(i.get("alerts", 0) for i in infos), "rss_mb_peak": round(rss_peak, 2),
            "rss_drift_pct": round(100 * (rss_end - rss_start) / rss_start, 3),
            "max_pace_lag_ms": round(1000 * max((log.max_lag_s for log in logs), default=0.0), 1),
            "wall_s": round(wall, 2)}


def judge(rows: list[dict], warmup_errors: int = 0) -> dict:
    """Each target: ``{"target", "held", "detail"}`` (``held`` None: not measured)."""
    drift = max(rows, key=lambda r: r["rss_drift_pct"])
    errors = sum(r["errors"] for r in rows) + warmup_errors
    one = next((r for r in rows if r["sessions"] == 1), None)
    top = max(rows, key=lambda r: r["sessions"])
    if one is None or top is one or one["p95_ttft_ms"] is None or top["p95_ttft_ms"] is None:
        ratio = {"target": "p95 TTFT at the largest N <= 3x that at 1 session", "held": None,
                 "detail": "not measured (needs 1 and a larger N in --sessions, each with answers)"}
    else:
        x = top["p95_ttft_ms"] / one["p95_ttft_ms"]
        ratio = {"target": f"p95 TTFT at {top['sessions']} sessions <= {TTFT_RATIO_TARGET:g}x that at 1",
                 "held": x <= TTFT_RATIO_TARGET, "ratio": round(x, 3),
                 "detail": f"{top['p95_ttft_ms']:.1f} ms vs {one['p95_ttft_ms']:.1f} ms: {x:.2f}x"}
    return {"rss_drift": {"target": f"RSS drift <= {100 * RSS_DRIFT_TARGET:g}% after warm-up",
                          "held": drift["rss_drift_pct"] <= 100 * RSS_DRIFT_TARGET,
                          "detail": f"largest {drift['rss_drift_pct']:+.2f}% at N={drift['sessions']} "
                                    f"({drift['rss_mb_start']:.1f} -> {drift['rss_mb_end']:.1f} MiB)"},
            "errors": {"target": "zero errors", "held": errors == 0, "detail": f"{errors} errors" + (f" ({warmup_errors} in the server warm-up)" if warmup_errors else "")},
            "ttft_ratio": ratio}


def markdown(result: dict, args, seconds: float) -> str:
    rows = result["rows"]
    ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["# Server load: concurrent live streams against one HTTP server", "",
             f"N clients at once, each its own session (memory hermes, budget {args.budget} visual tokens per layer, "
             f"chunks of {CHUNK_FRAMES}) streaming its own ShapesWorld video at real-time pace (1 frame/s as PNG, "
             f"not waiting for ingest) for {args.minutes:g} min of stream time, asking \"{QUESTION}\" "
             f"({MAX_NEW_TOKENS} tokens) every {args.ask_every:g} s, with one watch (\"{WATCH_QUERY}\"). Server "
             "(uvicorn, token auth), model and clients in one process; RSS is that process's, from "
             f"`/proc/self/statm`, start = after {args.warmup:g} s of warm-up, end = drained. "
             "Spec: `ppllava_hermes/recipes/bench/server_load.py`; every answer's figures and the RSS timeline "
             "are in `server_load.json`.", "",
             *provenance_md(result["command"], result["machine"]), "", f"Total {seconds / 60:.1f} min.", "",
             "| sessions | TTFT p50 / p95 (ms) | client p50 / p95 (ms) | answered / asked | ingest fps (offered) "
             "| frames seen / sent | dropped | RSS start -> end (MiB) | drift | alerts | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sessions']} | {ms(r['p50_ttft_ms'])} / {ms(r['p95_ttft_ms'])} | {ms(r['p50_client_ms'])} / "
                     f"{ms(r['p95_client_ms'])} | {r['questions_answered']} / {r['questions_asked']} | "
                     f"{r['ingest_fps']:.2f} ({r['sessions'] * FPS:g}) | {r['frames_seen']} / {r['frames_sent']} | "
                     f"{r['dropped_frames']} | {r['rss_mb_start']:.1f} -> {r['rss_mb_end']:.1f} | "
                     f"{r['rss_drift_pct']:+.2f}% | {r['alerts']} | {r['errors']} |")
    lines += ["", "Targets:", ""]
    for t in result["targets"].values():
        verdict = {True: "**held**", False: "**missed**", None: "not judged"}[t["held"]]
        lines.append(f"- {t['target']}: {verdict} ({t['detail']}).")
    if result["errors"]:
        lines += ["", f"Errors ({len(result['errors'])}; the first 20):", ""]
        lines += [f"- {'N=' + str(e['sessions']) if e['sessions'] else 'warm-up'} {e['request']}: {e['status'] or 'no response'} {e['error']}"
                  for e in result["errors"][:20]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["sessions"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("p50_ttft_ms", "TTFT p50 (server)", "o-"), ("p95_ttft_ms", "TTFT p95 (server)", "s-"),
                              ("p95_client_ms", "client latency p95", "^--")):
        ax.plot(x, [np.nan if r[key] is None else r[key] for r in rows], style, label=label)
    ax.set_xticks(x)
    ax.set_xlabel("concurrent sessions (1 frame/s each)")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("ShapesWorld server under load: time to first token")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ppllava-hermes bench server_load", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="ShapesWorld checkpoint folder (default: the shipped one)")
    p.add_argument("--sessions", default=None, help=f"comma-separated N (default {DEFAULTS['sessions']})")
    p.add_argument("--minutes", type=float, default=None, help=f"stream time per N (default {DEFAULTS['minutes']:g})")
    p.add_argument("--warmup", type=float, default=None,
                   help=f"stream seconds before the start RSS reading (default {DEFAULTS['warmup']:g})")
    p.add_argument("--budget", type=int, default=256, help="visual tokens per layer of the hermes memory")
    p.add_argument("--ask-every", type=float, default=5.0, help="seconds of stream time between questions")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--quick", action="store_true", help="sessions 1,2, 0.5 min, warm-up 5 s: a smoke run")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sessions {args.sessions!r}: comma-separated whole numbers expected")
    if not args.levels or min(args.levels) < 1:
        p.error(f"--sessions {args.sessions!r}: each N must be >= 1")
    if args.minutes * 60 <= args.warmup + 2:
        p.error(f"--minutes {args.minutes:g} must give more stream time than --warmup {args.warmup:g} s (+2 s)")
    if args.ask_every <= 0 or args.budget < 1 or args.threads < 1:
        p.error("--ask-every, --budget and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ppllava_hermes.serving.app import ServeConfig, create_app
    from ppllava_hermes.world.model import load_shapesworld_adapter

    torch.set_num_threads(args.threads)
    t_start = time.time()
    adapter = load_shapesworld_adapter(args.model)
    token = secrets.token_hex(16)
    config = ServeConfig(model=args.model or "shapesworld", memory="hermes", budget=args.budget,
                         chunk_frames=CHUNK_FRAMES, max_sessions=max(args.levels), token=token)
    headers = {"Authorization": f"Bearer {token}"}
    errors, timeline, answers, rows = Errors(), [], [], []
    with LiveServer(create_app(config, adapter=adapter)) as live:
        warm_up(live, headers, errors)
        for n in args.levels:
            rows.append(run_level(live, headers, n, args, errors, timeline, answers))
            r = rows[-1]
            print(json.dumps({k: r[k] for k in ROW_FIELDS + ("p95_client_ms", "questions_answered", "frames_seen",
                                                             "alerts", "rss_drift_pct", "max_pace_lag_ms")}),
                  flush=True)
    seconds = time.time() - t_start
    command = "ppllava-hermes bench server_load " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = {"command": command, "machine": machine_description(),
              "settings": {"model": args.model or "shipped ShapesWorld", "memory": "hermes", "budget": args.budget,
                           "chunk_frames": CHUNK_FRAMES, "fps": FPS, "minutes": args.minutes, "warmup_s": args.warmup,
                           "ask_every_s": args.ask_every, "question": QUESTION, "max_new_tokens": MAX_NEW_TOKENS,
                           "watch": WATCH_QUERY, "torch_threads": args.threads, "seed_base": SEED_BASE},
              "targets": judge(rows, errors.count(0)), "rows": rows, "errors": errors.items, "answers": answers,
              "timeline": timeline}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "server_load.json").write_text(json.dumps(result, indent=1))
    (out / "server_load.md").write_text(markdown(result, args, seconds))
    plot(rows, out / "server_load.png")
    for t in result["targets"].values():
        print(f"target {t['target']}: {({True: 'held', False: 'MISSED', None: 'not judged'})[t['held']]} "
              f"({t['detail']})")
    print(f"wrote {out / 'server_load.json'} ({len(rows)} rows), .md and .png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
