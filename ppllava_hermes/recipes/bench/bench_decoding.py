"""Decoding benchmark: seconds and peak memory of each video backend for sampled frames.

    ppllava-hermes bench bench_decoding --repeats 3

Generates (PyAV, libx264 ultrafast, x264's default GOP of 250 frames: the worst case for seeking) a long 720p video (``--long-minutes``, 25 fps) and a
short 4K 25 fps clip (``--clip-seconds``), cached under ``--work-dir``. Then, each measurement in a fresh
Python subprocess (so peak RSS, ``ru_maxrss``, belongs to that run alone):

* ``read_video(num_frames=32)`` of the 720p video per backend (``--backends``): torchcodec, PyAV
  seeking (``pyav-seek``), PyAV decoding every frame in order (``pyav-full``: the file path before
  seeking; ``--full-repeats``) and decord (only when installed);
* the same on the 4K clip per ``--clip-backends`` with ``max_side=448`` (frames shrunk right after
  decoding) and at full resolution (memory rows, ``--full-res-repeats``);
* the 4K clip streamed (``stream_video(fps=1 or 25, chunk_frames=8)``, chunks consumed and dropped),
  per backend, at full resolution and with ``max_side=448``: peak RSS must not grow with the rate
  (``--stream-repeats`` runs each, default 1: these rows are about memory).

``seconds`` is the median over ``--repeats`` subprocesses of the decode call alone (probe, packet index,
decoding, conversion; not the imports); ``peak_rss_mb`` the largest peak RSS of those runs and
``base_rss_mb`` the RSS right before the call (interpreter, torch, torchcodec, PyAV loaded).
Writes ``docs/results/decoding.json`` (rows with the fields in ``FIELDS``, plus the command and the
machine), ``decoding.md`` and, when matplotlib imports, ``decoding.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ppllava_hermes.recipes.bench import provenance_md

FIELDS = ["backend", "video", "call", "frames", "max_side", "seconds", "peak_rss_mb", "base_rss_mb", "repeats"]
BACKENDS = ("torchcodec", "pyav-seek", "pyav-full", "decord")
FPS = 25


# ---- videos ----------------------------------------------------------------------------------------
def _frames(height: int, width: int, n: int):
    """Moving blocks (a window sliding over a fixed pattern of 32-px flat blocks) with a frame-number band."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    pattern = np.repeat(np.repeat(tile, 32, axis=0), 32, axis=1)
    for k in range(n):
        dy, dx = k % 32, (3 * k) % 32
        frame = np.ascontiguousarray(pattern[dy : dy + height, dx : dx + width])
        frame[: height // 16] = (k * 37) % 256
        yield frame


def make_videos(work: Path, long_minutes: float, clip_seconds: float) -> dict[str, Path]:
    from ppllava_hermes.video import write_video

    work.mkdir(parents=True, exist_ok=True)
    specs = {
        f"720p_{long_minutes:g}min": (720, 1280, round(long_minutes * 60 * FPS)),
        f"4k_{clip_seconds:g}s": (2160, 3840, round(clip_seconds * FPS)),
    }
    out = {}
    for name, (h, w, n) in specs.items():
        path = work / f"{name}.mp4"
        if not path.exists():
            t0 = time.perf_counter()
            tmp = path.with_suffix(".part.mp4")
            write_video(tmp, _frames(h, w, n), FPS, options={"preset": "ultrafast"})
            tmp.rename(path)
            print(f"wrote {path} ({n} frames {w}x{h}) in {time.perf_counter() - t0:.1f} s", flush=True)
        out[name] = path
    return out


# ---- one measurement (child process) ---------------------------------------------------------------
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _rss_mb()


def child(backend: str, path: str, call: str, frames: int, fps: float, max_side: int | None) -> dict:
    """Run one decode in this process; returns seconds, peak and base RSS (MiB) and frames returned."""
    from ppllava_hermes.video import _torchcodec, read_video, reader, stream_video
    from ppllava_hermes.video.sampling import Sampling
    from ppllava_hermes.video.sizing import fit_size

    _torchcodec.import_torchcodec()  # every row pays the same imports before the clock starts
    base = _current_rss_mb()
    t0 = time.perf_counter()
    if call == "read":
        if backend == "pyav-full":
            probed = reader._probe(path)
            index = reader.file_index(path)
            chosen = reader.choose(index, Sampling(num_frames=frames))
            size = fit_size(probed.info.height, probed.info.width, max_side)
            clip = reader._read_pyav(probed, index, chosen, size, seek=False)
        else:
            name = "pyav" if backend == "pyav-seek" else backend
            clip = read_video(path, num_frames=frames, max_side=max_side, backend=name)
        got, shape = len(clip), list(clip.frames.shape[1:])
    else:
        name = "pyav" if backend == "pyav-seek" else backend
        got, shape = 0, []
        for chunk in stream_video(path, fps=fps, chunk_frames=8, max_side=max_side, backend=name):
            got, shape = got + len(chunk), list(chunk.frames.shape[1:])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "got": got, "shape": shape}


def measure(backend: str, path: Path, call: str, frames: int, fps: float, max_side: int | None,
            repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        cmd = [sys.executable, "-m", "ppllava_hermes.recipes.bench.bench_decoding", "--child", backend, str(path),
               call, str(frames), str(fps), str(max_side or 0)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{backend} on {path.name} failed:\n{done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "base_rss_mb": round(statistics.median(r["base_rss_mb"] for r in runs), 1),
        "got": runs[0]["got"],
        "shape": runs[0]["shape"],
    }


# ---- report --------------------------------------------------------------------------------------
def machine_description() -> str:
    import av

    parts = [f"python {platform.python_version()}, PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})"]
    try:
        import torchcodec

        parts.append(f"torchcodec {torchcodec.__version__}")
    except Exception:  # absent or unloadable
        parts.append("torchcodec not usable")
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False).stdout
        parts.append(f"system {out.splitlines()[0].split(' Copyright')[0]}" if out else "no system ffmpeg")
    except OSError:
        parts.append("no system ffmpeg")
    try:
        import decord

        parts.append(f"decord {decord.__version__}")
    except Exception:
        parts.append("decord not installed")
    lines = [", ".join(parts)]
    try:
        nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=False).stdout.strip()
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
        lines.append(f"CPU: {model}, nproc {nproc} (shared with other jobs), {platform.machine()}, "
                     f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}")
    except OSError:
        pass
    return "\n".join(lines)


def write_report(rows: list[dict], out_dir: Path, command: str, notes: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    payload = {"command": command, "machine": machine, "fields": FIELDS, "rows": rows, "checks": notes}
    (out_dir / "decoding.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# Video decoding: seconds and peak memory per backend",
        "",
        "Generated videos (libx264 ultrafast, default GOP of 250 frames, 25 fps, textured frames). "
        "`read`: `read_video(num_frames=32)`; `stream@F`: `stream_video(fps=F, chunk_frames=8)` with chunks "
        "dropped as they come. `pyav-full` decodes every frame in order (the file path before seeking). "
        "Each run is a fresh subprocess: seconds = median of the decode call over the repeats (probe, packet "
        "index, decode, conversion; no imports), peak RSS = largest `ru_maxrss` of those processes, base RSS = "
        "RSS right before the call (torch, torchcodec and PyAV already imported). torchcodec runs with "
        "`num_ffmpeg_threads=0` (FFmpeg's choice), PyAV with its default (slice threads only: one core for "
        "these files). On a CPU shared with other jobs the seconds are noisy (rows with 1 repeat most).",
        "",
        *provenance_md(command, machine),
        "",
        "| backend | video | call | frames | max_side | seconds | peak RSS MiB | base RSS MiB | repeats |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['video']} | {r['call']} | {r['frames']} | {r['max_side'] or '-'} | "
                     f"{r['seconds']} | {r['peak_rss_mb']} | {r['base_rss_mb']} | {r['repeats']} |")
    if notes:
        lines += ["", "Checks:", "", *notes]
    (out_dir / "decoding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    try:
        plot(rows, out_dir / "decoding.png")
    except ImportError:
        pass


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reads = [r for r in rows if r["call"] == "read"]
    if not reads:
        return
    labels = [f"{r['backend']}\n{r['video']}" + (f"\nmax {r['max_side']}" if r["max_side"] else "") for r in reads]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(reads)), 4.5))
    x = np.arange(len(reads))
    axes[0].bar(x, [r["seconds"] for r in reads], color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds (log)")
    axes[1].bar(x, [r["peak_rss_mb"] for r in reads], color="tab:orange")
    axes[1].set_ylabel("peak RSS MiB")
    for ax, title in zip(axes, ["32 uniformly sampled frames: time", "peak RSS"], strict=True):
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def checks(rows: list[dict]) -> list[str]:
    """Is streaming 4K at 25 fps within 2x the peak RSS of 1 fps (per backend and size)?"""
    out = []
    by = {(r["backend"], r["video"], r["call"], r["max_side"]): r for r in rows}
    for (backend, video, call, side), r in by.items():
        if call != "stream@25":
            continue
        lo = by.get((backend, video, "stream@1", side))
        if lo is None:
            continue
        ratio = r["peak_rss_mb"] / lo["peak_rss_mb"]
        out.append(f"- {backend}, {video}, max_side {side or '-'}: peak RSS at 25 fps / at 1 fps = {ratio:.2f} "
                   f"(target <= 2): {'met' if ratio <= 2 else 'NOT met'}")
    return out


def _available(backend: str) -> bool:
    if backend == "decord":
        from ppllava_hermes.video import _decord

        return _decord.import_decord() is not None
    if backend == "torchcodec":
        from ppllava_hermes.video import _torchcodec

        return _torchcodec.import_torchcodec() is not None
    return True


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        backend, path, call, frames, fps, side = argv[1:7]
        result = child(backend, path, call, int(frames), float(fps), int(side) or None)
        print(json.dumps(result), flush=True)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                   help="backends for the long 720p video")
    p.add_argument("--clip-backends", nargs="+", default=["torchcodec", "pyav-seek"], choices=BACKENDS,
                   help="backends for the 4K clip (every 4K row decodes most of the clip: slow on small CPUs)")
    p.add_argument("--full-res-repeats", type=int, default=1,
                   help="repeats of the full-resolution 4K reads (memory rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full-repeats", type=int, default=None, help="repeats of pyav-full (default: --repeats)")
    p.add_argument("--stream-repeats", type=int, default=1, help="repeats of the streaming (RSS) rows")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--long-minutes", type=float, default=10.0)
    p.add_argument("--clip-seconds", type=float, default=20.0)
    p.add_argument("--max-side", type=int, default=448)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/ppllava_hermes_bench_decoding"))
    p.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    args = p.parse_args(argv)
    command = "ppllava-hermes bench bench_decoding " + " ".join(shlex.quote(a) for a in argv)
    videos = make_videos(args.work_dir, args.long_minutes, args.clip_seconds)
    backends = [b for b in args.backends if _available(b.split("-")[0])]
    clip_backends = [b for b in args.clip_backends if _available(b.split("-")[0])]
    long_name, clip_name = list(videos)
    plan: list[tuple[str, str, str, float, int | None]] = []
    for b in backends:
        plan.append((b, long_name, "read", 0.0, None))
    for b in clip_backends:
        plan.append((b, clip_name, "read", 0.0, args.max_side))
        plan.append((b, clip_name, "read", 0.0, None))
    for b in clip_backends:
        if b == "pyav-full":
            continue  # streaming with PyAV already decodes in order
        for side in (None, args.max_side):
            for rate in (1, 25):
                plan.append((b, clip_name, f"stream@{rate}", float(rate), side))
    rows = []
    for backend, video, call, rate, side in plan:
        repeats = args.full_repeats if backend == "pyav-full" and args.full_repeats else args.repeats
        if call != "read":
            repeats = args.stream_repeats
        elif video == clip_name and side is None:
            repeats = args.full_res_repeats
        res = measure(backend, videos[video], "read" if call == "read" else "stream", args.frames, rate, side, repeats)
        rows.append({"backend": backend, "video": video, "call": call,
                     "frames": res["got"], "max_side": side, "seconds": res["seconds"],
                     "peak_rss_mb": res["peak_rss_mb"], "base_rss_mb": res["base_rss_mb"], "repeats": repeats})
        print(rows[-1], res["shape"], flush=True)
        write_report(rows, args.out_dir, command, checks(rows))  # partial results survive an interruption
    write_report(rows, args.out_dir, command, checks(rows))


if __name__ == "__main__":
    main()
