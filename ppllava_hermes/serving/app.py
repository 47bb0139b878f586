"""The HTTP server: bounded-memory video sessions, questions, standing queries and alerts over HTTP.

Specification (``ppllava-hermes serve``; extra ``[serve]``: FastAPI + uvicorn + prometheus-client).

Endpoints (JSON unless said; every one but ``/health`` needs ``Authorization: Bearer TOKEN`` unless the
server runs ``insecure_local``):

* ``GET /health`` -> ``{"status": "ok", "sessions", "queue"}``.
* ``POST /sessions`` ``{"memory"?, "budget"?, "chunk_frames"?}`` -> the session's info (201); at most
  ``max_sessions`` (429 after). ``GET /sessions``, ``GET /sessions/{id}``, ``DELETE /sessions/{id}``.
  Info: ``{"id", "memory", "budget", "chunk_frames", "frames_received", "frames_seen", "frames_dropped",
  "kv_bytes", "budget_kv_bytes", "memory_tokens", "queued", "watches", "alerts", "source", "last_error"}``.
* ``POST /sessions/{id}/frames?t=SECONDS`` with one JPEG/PNG image as the body (or raw RGB bytes with
  ``Content-Type: application/octet-stream`` and ``&width=W&height=H``): queued for ingest (202, with the
  queue depth); ``&wait=true`` waits until it is ingested. Timestamps must be finite and increase.
* ``WS /sessions/{id}/ws`` (the token in the ``Authorization`` header or ``?token=``): push frames over a
  WebSocket, each as a text message ``{"t": seconds, "format": "jpeg" | "png" | "raw", "width"?, "height"?}``
  followed by one binary message with the bytes; the server answers each frame with ``{"queued",
  "frames_received"}`` or ``{"error"}`` (the socket stays open), and sends ``{"alert": {...}}`` whenever
  one of the session's watches fires. Frames are checked and queued exactly like ``POST .../frames``.
* ``POST /sessions/{id}/source`` ``{"path"}`` (a file under an allow-listed folder), ``{"url"}`` (an
  rtsp/http(s) URL whose host is allow-listed) or ``{"device"}`` (an allow-listed capture device such as
  ``/dev/video0``), ``"fps"?``, ``"realtime"?``: a reader thread streams it in; a realtime source and a
  device (always live) drop chunks by the scheduler's rule when they fall behind (counted); a source that
  stalls or ends says so in the info's ``source``.
* ``POST /sessions/{id}/ask`` ``{"question", "max_new_tokens"?, "stream"?}`` -> ``{"text", "ttft_ms",
  "total_ms", "kv_bytes", "memory_tokens", "frames_seen", "last_frame_time"}``; questions run before queued
  ingest. With ``"stream": true`` the answer comes as server-sent events: ``data: {"token": text}`` per
  token as it is generated, then ``data: {"done": true, ...the fields above}``; a client that disconnects
  mid-answer costs the rest of that one generation, nothing else.
* ``POST /sessions/{id}/watches`` ``{"query", "threshold"?, "cooldown_s"?}`` -> ``{"watch_id"}``;
  ``DELETE /sessions/{id}/watches/{wid}``; ``GET /sessions/{id}/alerts`` (every alert so far, the newest
  1000); ``GET /sessions/{id}/alerts/stream``: server-sent events, one ``data: {alert}`` per alert.
* ``POST /v1/chat/completions``: OpenAI-compatible. The last user message's text is the question; a
  ``video_url`` content part (a path under an allow-listed folder) is streamed into a one-shot session
  first; or the extension field ``"session": ID`` asks that live session. ``stream`` is not supported (400).
* ``POST /sessions/{id}/snapshot`` -> ``{"path"}``: the session's whole stream state
  (``streaming.snapshot.save_session``, atomic) plus the server's own counts, in ``snapshot_dir/ID``; a
  server started with ``restore`` (``serve --restore DIR``) brings back every session found there, same id,
  same memory bit for bit, its watches still publishing alerts.
* ``GET /metrics``: Prometheus text: sessions, per-session KV bytes, frames seen / dropped, queue depth and
  ingest fps, a TTFT histogram, errors, resident memory (and device memory on a GPU).

Errors: ``{"error": reason}`` with 400 (bad input), 401 (token), 403 (a source outside the allow-lists),
404 (unknown session or watch), 413 (a frame over ``max_frame_bytes`` / ``max_frame_side``), 422 (a body
that is not the JSON asked for), 429 (too many sessions), 500 (a failure in the model: one line, the server
goes on). Never a traceback.

Sources: a path is resolved (symlinks and ``..`` included) and must lie inside an allow-listed folder; a URL
must be rtsp/http/https with an allow-listed host; a device is resolved the same way and must be one of the
allow-listed devices (``allow_devices``, each a path under ``/dev/``; a symlink such as
``/dev/v4l/by-id/...`` counts as the device it points to); ``file:`` URLs and everything else are refused.

Replicas (``serving.ray_deploy``): with ``replica_id`` set, minted session ids are ``REPLICA-HEX`` (the id
names the replica that holds the session), ``/health`` reports ``"replica"``, every HTTP response carries
``X-Replica: REPLICA`` and ``/metrics`` a ``ppllava_replica_info{replica}`` gauge. With ``session_header``
set (the header the deployment routes by), a request naming a session (``/sessions/{id}...``, the
WebSocket, or ``"session"`` of ``/v1/chat/completions``) must carry that header with the session's id,
else 400 (a request without it could reach a replica that does not hold the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import secrets
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..streaming import GenerationConfig, StreamConfig, StreamingSession, WatchConfig, WatchEvent
from .worker import DroppedJob, Scheduler

__all__ = ["ServeConfig", "create_app"]

URL_SCHEMES = ("rtsp", "rtsps", "http", "https")


@dataclass
class ServeConfig:
    """Server settings (``ppllava-hermes serve`` flags).

    Attributes:
        model: model spec (``specs.load_model``).
        memory / budget / chunk_frames: a new session's defaults (a request may choose its own).
        pool: ``none`` or a pooling mode for every session (``specs.POOL_MODES``).
        max_sessions: sessions at once.
        token: the bearer token; None with ``insecure_local`` only.
        insecure_local: no token (a loopback-only development server).
        allow_dirs: folders whose files may be sources (and ``video_url`` parts).
        allow_hosts: hosts whose rtsp/http(s) URLs may be sources.
        max_frame_bytes / max_frame_side: limits of one pushed frame.
        max_question_chars / max_new_tokens: limits of one question.
        max_queued: ingest jobs queued per session before the oldest is dropped.
        snapshot_dir: where ``POST /sessions/{id}/snapshot`` writes (None: snapshots disabled); ``serve
            --restore`` reads the same layout.
        allow_devices: capture devices (paths under ``/dev/``) that may be sources; stored resolved.
        replica_id: this server's name in a multi-replica deployment (None: a single server).
        session_header: the request header that names a request's session (None: not required).
    """

    model: str = "tiny-qwen2.5-vl"
    memory: str = "hermes"
    budget: int | None = 1024
    chunk_frames: int = 4
    pool: str = "none"
    max_sessions: int = 8
    token: str | None = None
    insecure_local: bool = False
    allow_dirs: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    max_frame_bytes: int = 8 * 2**20
    max_frame_side: int = 4096
    max_question_chars: int = 4000
    max_new_tokens: int = 256
    max_queued: int = 32
    snapshot_dir: str | None = None
    allow_devices: tuple[str, ...] = ()
    replica_id: str | None = None
    session_header: str | None = None

    def __post_init__(self) -> None:
        if not self.insecure_local and not self.token:
            raise ValueError("serve: a bearer token is required (--token or PPLLAVA_HERMES_TOKEN), "
                             "or --insecure-local for a development server")
        for name in ("max_sessions", "chunk_frames", "max_frame_bytes", "max_frame_side", "max_question_chars",
                     "max_new_tokens", "max_queued"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        self.allow_dirs = tuple(str(Path(d).expanduser().resolve()) for d in self.allow_dirs)
        self.allow_hosts = tuple(h.lower() for h in self.allow_hosts)
        devices = []
        for d in self.allow_devices:
            real = os.path.realpath(d)  # a symlink must lead to a device too, never to a file elsewhere
            if "://" in d or not os.path.normpath(d).startswith("/dev/") or not real.startswith("/dev/"):
                raise ValueError(f"serve: allowed device {d!r} is not a device path under /dev/")
            devices.append(real)
        self.allow_devices = tuple(devices)
        if self.replica_id is not None and not self.replica_id.replace("_", "").isalnum():
            raise ValueError(f"serve: replica_id {self.replica_id!r} must be letters, digits and '_'")


class NewSession(BaseModel):
    memory: str | None = None
    budget: int | None = Field(default=None, ge=1)
    chunk_frames: int | None = Field(default=None, ge=1, le=256)

class Question(BaseModel):
    question: str = Field(min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False

class NewWatch(BaseModel):
    query: str = Field(min_length=1)
    threshold: float | None = Field(default=None, gt=0, lt=1)
    cooldown_s: float | None = Field(default=None, ge=0)

class Source(BaseModel):
    path: str | None = None
    url: str | None = None
    device: str | None = None
    fps: float | None = Field(default=1.0, gt=0)
    realtime: bool = False


class ApiError(Exception):
    """An error answered as ``{"error": reason}`` with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_path(path: str, allow_dirs: tuple[str, ...]) -> Path:
    """``path`` resolved, if it lies inside an allow-listed folder (``ApiError`` 403 / 404 otherwise)."""
    if not allow_dirs:
        raise ApiError(403, "file sources are disabled (no --allow-dir)")
    if "://" in path or path.startswith("file:"):
        raise ApiError(403, f"source {path!r}: a path is a file path, not a URL")
    real = Path(path).expanduser().resolve()
    if not any(real.is_relative_to(d) for d in allow_dirs):
        raise ApiError(403, f"source {path!r}: outside the allowed folders")
    if not real.is_file():
        raise ApiError(404, f"source {path!r}: no such file")
    return real


def check_url(url: str, allow_hosts: tuple[str, ...]) -> str:
    """``url`` if its scheme is rtsp/http(s) and its host is allow-listed (``ApiError`` 403 otherwise)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in URL_SCHEMES:
        raise ApiError(403, f"source {url!r}: scheme {parts.scheme or '(none)'!r} not allowed "
                            f"(only {', '.join(URL_SCHEMES)})")
    host = (parts.hostname or "").lower()
    if not host or host not in allow_hosts:
        raise ApiError(403, f"source {url!r}: host {host or '(none)'!r} not in the allowed hosts")
    return url


def check_device(device: str, allow_devices: tuple[str, ...]) -> str:
    """``device`` resolved, if it is one of the allow-listed devices (``ApiError`` 403 / 404 otherwise)."""
    if not allow_devices:
        raise ApiError(403, "device sources are disabled (no --allow-device)")
    if "://" in device or device.startswith("file:"):
        raise ApiError(403, f"source {device!r}: a device is a path like /dev/video0, not a URL")
    real = os.path.realpath(device)
    if real not in allow_devices:
        raise ApiError(403, f"source {device!r}: not one of the allowed devices")
    if not os.path.exists(real):
        raise ApiError(404, f"source {device!r}: no such device")
    return real


def _session_in_path(path: str) -> str | None:
    """The session id a request path names (``/sessions/{id}`` or below), else None."""
    parts = path.split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "sessions" and parts[2] else None


def _header_refusal(config: ServeConfig, sid: str, value: str | None) -> str | None:
    """Why a request for session ``sid`` carrying ``value`` in the session header is refused (None: it is not)."""
    if config.session_header is None or value == sid:
        return None
    return (f"session {sid!r}: send the header {config.session_header}: {sid} with every request for this session "
            f"(it routes the request to the replica that holds the session)")


@dataclass
class ServerSession:
    """A stream the server holds: the library's session plus what the server counts about it."""

    sid: str
    session: StreamingSession
    memory: str
    budget: int | None
    budget_kv_bytes: int | None
    frames_received: int = 0
    last_enqueued_t: float | None = None
    alerts: deque = field(default_factory=lambda: deque(maxlen=1000))
    subscribers: list = field(default_factory=list)  # (loop, asyncio.Queue) of SSE clients
    source: str | None = None
    source_stop: threading.Event = field(default_factory=threading.Event)
    last_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, event: WatchEvent) -> None:
        """A watch fired (worker thread): keep it and hand it to every SSE client's queue."""
        alert = {"session": self.sid, **event.to_dict()}
        with self.lock:
            self.alerts.append(alert)
            subs = list(self.subscribers)
        for loop, queue in subs:
            loop.call_soon_threadsafe(queue.put_nowait, alert)

    def info(self, scheduler: Scheduler) -> dict[str, Any]:
        s = self.session
        return {"id": self.sid, "memory": self.memory, "budget": self.budget, "chunk_frames": s.chunk_frames,
                "frames_received": self.frames_received, "frames_seen": s.stats.frames,
                "frames_dropped": scheduler.dropped.get(self.sid, 0), "kv_bytes": s.cache.kv_bytes(),
                "budget_kv_bytes": self.budget_kv_bytes, "memory_tokens": s.cache.physical_length(),
                "queued": scheduler.depth(self.sid), "watches": [
                    {"watch_id": w.watch_id, "query": w.query, "threshold": w.config.threshold,
                     "cooldown_s": w.config.cooldown_s} for w in s.watches.values()],
                "alerts": len(self.alerts), "source": self.source, "last_error": self.last_error}


def decode_frame(body: bytes, content_type: str, width: int | None, height: int | None, config: ServeConfig) -> np.ndarray:
    """One pushed frame ``(H, W, 3)`` uint8 (``ApiError`` 400 / 413 on bad or oversized input)."""
    if not body:
        raise ApiError(400, "frame: empty body")
    if len(body) > config.max_frame_bytes:
        raise ApiError(413, f"frame: {len(body)} bytes, over the limit of {config.max_frame_bytes}")
    if content_type.startswith("application/octet-stream"):
        if not width or not height or width < 1 or height < 1:
            raise ApiError(400, "raw frame: width and height query parameters are required")
        if max(width, height) > config.max_frame_side:
            raise ApiError(413, f"frame: {width}x{height}, over the limit of {config.max_frame_side} px a side")
        if len(body) != width * height * 3:
            raise ApiError(400, f"raw frame: {len(body)} bytes is not {width}x{height}x3 RGB")
        return np.frombuffer(body, dtype=np.uint8).reshape(height, width, 3).copy()
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(body))
        if max(img.size) > config.max_frame_side:  # checked before decoding the pixels
            raise ApiError(413, f"frame: {img.size[0]}x{img.size[1]}, over the limit of {config.max_frame_side} px a side")
        return np.asarray(img.convert("RGB"))
    except ApiError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever PIL raises on a non-image
        raise ApiError(400, f"frame: not a JPEG/PNG image ({type(err).__name__})") from None


def _finite_time(t: str | None) -> float:
    try:
        value = float(t) if t is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, f"frames: t must be finite seconds >= 0, got {t!r}")
    return value


class Server:
    """The state behind the app: the model, the sessions, the scheduler, the metrics."""

    def __init__(self, config: ServeConfig, adapter=None, pooling=None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from ..specs import build_policy, load_model

        self.config = config
        self.adapter = adapter if adapter is not None else load_model(config.model)
        self.pooling = pooling
        self.build_policy = build_policy
        self.sessions: dict[str, ServerSession] = {}
        self.scheduler = Scheduler(config.max_queued)
        self.registry = CollectorRegistry()
        self.ttft = Histogram("ppllava_ttft_seconds", "time to first token of answers", registry=self.registry,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.errors = Counter("ppllava_errors", "requests answered with a 5xx error", registry=self.registry)
        self.registry.register(_SessionCollector(self))
        self._lock = threading.Lock()

    def get(self, sid: str) -> ServerSession:
        s = self.sessions.get(sid)
        if s is None:
            raise ApiError(404, f"no session {sid!r}")
        return s

    def create(self, memory: str | None, budget: int | None, chunk_frames: int | None,
               sid: str | None = None) -> ServerSession:
        from ..specs import SpecError

        memory = memory or self.config.memory
        budget = budget if budget is not None else (self.config.budget if memory != "full" else None)
        chunk = chunk_frames or self.config.chunk_frames
        with self._lock:
            if len(self.sessions) >= self.config.max_sessions:
                raise ApiError(429, f"{self.config.max_sessions} sessions already (--max-sessions)")
            try:
                policy = self.build_policy(memory, budget)
                session = StreamingSession(self.adapter, memory=policy, pooling=self.pooling,
                                           config=StreamConfig(chunk_frames=chunk))
            except (SpecError, ValueError) as err:
                raise ApiError(400, f"session: {err}") from None
            if sid is None:
                sid = f"{self.config.replica_id}-{secrets.token_hex(6)}" if self.config.replica_id else secrets.token_hex(6)
            entry_bytes = (2 * self.adapter.num_layers * self.adapter.text_config.num_key_value_heads
                           * (self.adapter.text_config.hidden_size // self.adapter.text_config.num_attention_heads)
                           * self.adapter.model.dtype.itemsize)
            srv = ServerSession(sid, session, memory, budget, budget * entry_bytes if budget else None)
            self.sessions[sid] = srv
        return srv

    def snapshot(self, s: ServerSession) -> Path:
        """Save ``s`` under ``snapshot_dir/ID`` (worker thread: nothing ingests meanwhile)."""
        from ..streaming.snapshot import save_session

        folder = Path(self.config.snapshot_dir) / s.sid
        save_session(s.session, folder)
        meta = {"memory": s.memory, "budget": s.budget, "chunk_frames": s.session.chunk_frames,
                "frames_received": s.frames_received, "last_enqueued_t": s.last_enqueued_t, "alerts": list(s.alerts)}
        tmp = folder / "server.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, folder / "server.json")
        return folder

    def restore_all(self, root: str) -> list[str]:
        """Bring back every session snapshot under ``root`` (``ValueError`` names the first that fails)."""
        from ..streaming.snapshot import restore_session

        restored = []
        for folder in sorted(p for p in Path(root).iterdir() if (p / "server.json").is_file()):
            meta = json.loads((folder / "server.json").read_text())
            s = self.create(meta["memory"], meta["budget"], meta["chunk_frames"], sid=folder.name)
            wids = json.loads((folder / "state.json").read_text()).get("watches", [])
            try:
                restore_session(s.session, folder, callbacks={w["watch_id"]: s.publish for w in wids})
            except ValueError:
                self.sessions.pop(s.sid, None)
                raise
            s.frames_received, s.last_enqueued_t = meta["frames_received"], meta["last_enqueued_t"]
            s.alerts.extend(meta["alerts"])
            restored.append(s.sid)
        return restored

    def delete(self, sid: str) -> None:
        with self._lock:
            s = self.sessions.pop(sid, None)
        if s is None:
            raise ApiError(404, f"no session {sid!r}")
        s.source_stop.set()
        self.scheduler.forget(sid)
        with s.lock:
            for loop, queue in s.subscribers:
                loop.call_soon_threadsafe(queue.put_nowait, None)  # ends the SSE streams

    def enqueue_frames(self, s: ServerSession, frames: np.ndarray, times: np.ndarray):
        """Queue frames for ingest (the scheduler's drop rule applies); returns the job's future."""

        def job() -> None:
            try:
                s.session.add_frames(frames, times)
            except Exception as err:
                s.last_error = f"ingest at {float(times[0]):.3f}s: {type(err).__name__}: {err}"
                raise

        s.frames_received += len(frames)
        s.last_enqueued_t = float(times[-1])
        return self.scheduler.ingest(s.sid, job, len(frames))

    def start_source(self, s: ServerSession, source: str, fps: float | None, realtime: bool, live: bool = False) -> None:
        """Stream ``source`` into ``s`` on a reader thread; a ``realtime`` or ``live`` source (a device) is not
        waited for, so when ingest falls behind the scheduler drops its oldest chunks (counted)."""
        from ..video import VideoError, stream_video

        try:
            clips = stream_video(source, chunk_frames=s.session.chunk_frames, fps=fps, realtime=realtime)
        except VideoError as err:
            raise ApiError(400, str(err)) from None
        s.source = f"running: {source}"
        offset = s.last_enqueued_t + 1.0 if s.last_enqueued_t is not None else 0.0

        def read() -> None:
            try:
                for clip in clips:
                    if s.source_stop.is_set():
                        s.source = f"stopped: {source}"
                        return
                    fut = self.enqueue_frames(s, clip.frames, clip.timestamps + offset)
                    if not realtime and not live:  # a file at full speed: wait (back-pressure, nothing dropped)
                        try:
                            fut.result()
                        except DroppedJob:
                            pass
                s.source = f"ended: {source}"
            except Exception as err:  # noqa: BLE001 - a stalled or broken source ends with its reason
                s.source = f"error: {source}: {' '.join(str(err).split())}"

        threading.Thread(target=read, name=f"source-{s.sid}", daemon=True).start()


class _SessionCollector:
    """Per-session gauges computed at scrape time."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sv = self.server
        sessions = list(sv.sessions.values())
        yield GaugeMetricFamily("ppllava_sessions", "sessions held", value=len(sessions))
        if sv.config.replica_id:
            info = GaugeMetricFamily("ppllava_replica_info", "the replica answering", labels=["replica"])
            info.add_metric([sv.config.replica_id], 1)
            yield info
        yield GaugeMetricFamily("ppllava_queue_depth_total", "jobs queued (questions + ingest)",
                                value=sv.scheduler.depth())
        kv = GaugeMetricFamily("ppllava_kv_bytes", "key/value bytes held", labels=["session"])
        seen = CounterMetricFamily("ppllava_frames_seen", "frames ingested", labels=["session"])
        dropped = CounterMetricFamily("ppllava_frames_dropped", "frames dropped (fell behind)", labels=["session"])
        queued = GaugeMetricFamily("ppllava_queue_depth", "ingest jobs queued", labels=["session"])
        fps = GaugeMetricFamily("ppllava_ingest_fps", "frames per second of ingest work", labels=["session"])
        for s in sessions:
            st = s.session.stats
            kv.add_metric([s.sid], s.session.cache.kv_bytes())
            seen.add_metric([s.sid], st.frames)
            dropped.add_metric([s.sid], sv.scheduler.dropped.get(s.sid, 0))
            queued.add_metric([s.sid], sv.scheduler.depth(s.sid))
            busy = st.encode_s + st.prefill_s + st.compress_s + st.watch_s
            fps.add_metric([s.sid], st.frames / busy if busy > 0 else 0.0)
        yield from (kv, seen, dropped, queued, fps)
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            yield GaugeMetricFamily("ppllava_resident_bytes", "resident memory of the server", value=rss)
        except OSError:
            pass
        import torch

        if torch.cuda.is_available():
            yield GaugeMetricFamily("ppllava_device_bytes", "device memory allocated",
                                    value=torch.cuda.memory_allocated())


def create_app(config: ServeConfig, adapter=None, pooling=None, restore: str | None = None):
    """The FastAPI app for ``config`` (``adapter``: an already loaded model adapter, else ``config.model``);
    ``restore``: a folder of session snapshots to bring back first."""
    server = Server(config, adapter, pooling)
    if restore:
        server.restore_all(restore)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for s in list(server.sessions.values()):
            s.source_stop.set()
        server.scheduler.close()

    app = FastAPI(title="ppllava-hermes", version="1", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(_request, err: ApiError):
        return JSONResponse({"error": err.reason}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _crash(_request, err: Exception):
        server.errors.inc()
        return JSONResponse({"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}, status_code=500)

    open_paths = {"/health", "/"}  # the page asks for the token itself

    @app.middleware("http")
    async def auth(request: Request, call_next):
        # before routing and body parsing, so a request without the token learns nothing else
        response = None
        if not config.insecure_local and request.url.path not in open_paths:
            header = request.headers.get("authorization", "")
            if not secrets.compare_digest(header.encode(), f"Bearer {config.token}".encode()):
                response = JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        if response is None and (sid := _session_in_path(request.url.path)) is not None:
            refusal = _header_refusal(config, sid, request.headers.get(config.session_header or ""))
            if refusal:
                response = JSONResponse({"error": refusal}, status_code=400)
        if response is None:
            response = await call_next(request)
        if config.replica_id:
            response.headers["X-Replica"] = config.replica_id
        return response

    async def run(fut):
        try:
            return await asyncio.wrap_future(fut)
        except ApiError:
            raise
        except ValueError as err:  # the library's input checks
            raise ApiError(400, " ".join(str(err).split())) from None
        except Exception as err:  # noqa: BLE001 - a failure in the model: one line, the server goes on
            server.errors.inc()
            raise ApiError(500, f"{type(err).__name__}: {' '.join(str(err).split())}") from None

    @app.get("/health")
    async def health():
        answer = {"status": "ok", "sessions": len(server.sessions), "queue": server.scheduler.depth()}
        if config.replica_id:
            answer["replica"] = config.replica_id
        return answer

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (Path(__file__).with_name("page.html")).read_text()

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import generate_latest

        return PlainTextResponse(generate_latest(server.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.post("/sessions", status_code=201)
    async def create(body: NewSession | None = None):
        body = body or NewSession()
        s = server.create(body.memory, body.budget, body.chunk_frames)
        await run(server.scheduler.question(s.session.start))  # refuses a budget below the system prompt
        return s.info(server.scheduler)

    @app.get("/sessions")
    async def list_sessions():
        return [s.info(server.scheduler) for s in server.sessions.values()]

    @app.get("/sessions/{sid}")
    async def get_session(sid: str):
        return server.get(sid).info(server.scheduler)

    @app.delete("/sessions/{sid}")
    async def delete_session(sid: str):
        server.delete(sid)
        return {"deleted": sid}

    @app.post("/sessions/{sid}/frames", status_code=202)
    async def push_frame(sid: str, request: Request, t: str | None = None, wait: bool = False,
                         width: int | None = None, height: int | None = None):
        s = server.get(sid)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_frame_bytes:
            raise ApiError(413, f"frame: {declared} bytes, over the limit of {config.max_frame_bytes}")
        time_s = _finite_time(t)
        if s.last_enqueued_t is not None and time_s <= s.last_enqueued_t:
            raise ApiError(400, f"frames: t must increase; got {time_s:g}s after {s.last_enqueued_t:g}s")
        frame = decode_frame(await request.body(), request.headers.get("content-type", ""), width, height, config)
        fut = server.enqueue_frames(s, frame[None], np.asarray([time_s]))
        if wait:
            await run(fut)
        return {"queued": server.scheduler.depth(sid), "frames_received": s.frames_received}

    @app.websocket("/sessions/{sid}/ws")
    async def frames_socket(ws: WebSocket, sid: str):
        token = ws.headers.get("authorization", "") or f"Bearer {ws.query_params.get('token', '')}"
        if not config.insecure_local and not secrets.compare_digest(token.encode(), f"Bearer {config.token}".encode()):
            await ws.close(code=4401, reason="missing or wrong bearer token")
            return
        refusal = _header_refusal(config, sid, ws.headers.get(config.session_header or ""))
        if refusal:
            await ws.close(code=4400, reason=refusal.encode()[:120].decode(errors="ignore"))  # at most 123 bytes
            return
        s = server.sessions.get(sid)
        if s is None:
            await ws.close(code=4404, reason=f"no session {sid!r}")
            return
        await ws.accept()
        alerts: asyncio.Queue = asyncio.Queue()
        sub = (asyncio.get_running_loop(), alerts)
        with s.lock:
            s.subscribers.append(sub)

        async def forward_alerts() -> None:
            while (alert := await alerts.get()) is not None:
                await ws.send_json({"alert": alert})

        sender = asyncio.create_task(forward_alerts())
        try:
            while True:
                header = await ws.receive_text()
                try:
                    meta = json.loads(header)
                    if not isinstance(meta, dict):
                        raise ValueError
                except ValueError:
                    await ws.send_json({"error": "expected a JSON header {\"t\", \"format\"} before each frame"})
                    continue
                body = await ws.receive_bytes()
                try:
                    fmt = str(meta.get("format", "jpeg"))
                    kind = "application/octet-stream" if fmt == "raw" else f"image/{fmt}"
                    time_s = _finite_time(None if meta.get("t") is None else str(meta.get("t")))
                    if s.last_enqueued_t is not None and time_s <= s.last_enqueued_t:
                        raise ApiError(400, f"frames: t must increase; got {time_s:g}s after {s.last_enqueued_t:g}s")
                    frame = decode_frame(body, kind, meta.get("width"), meta.get("height"), config)
                    server.enqueue_frames(s, frame[None], np.asarray([time_s]))
                    await ws.send_json({"queued": server.scheduler.depth(sid), "frames_received": s.frames_received})
                except ApiError as err:
                    await ws.send_json({"error": err.reason})
        except WebSocketDisconnect:
            pass
        finally:
            sender.cancel()
            with s.lock:
                if sub in s.subscribers:
                    s.subscribers.remove(sub)

    @app.post("/sessions/{sid}/source", status_code=202)
    async def attach_source(sid: str, body: Source):
        s = server.get(sid)
        if sum(x is not None for x in (body.path, body.url, body.device)) != 1:
            raise ApiError(400, "source: give exactly one of path, url and device")
        if body.path is not None:
            source = str(check_path(body.path, config.allow_dirs))
        elif body.url is not None:
            source = check_url(body.url, config.allow_hosts)
        else:
            source = check_device(body.device, config.allow_devices)
        if s.source and s.source.startswith("running"):
            raise ApiError(400, f"session {sid!r} already has a source ({s.source})")
        server.start_source(s, source, body.fps, body.realtime, live=body.device is not None)
        return s.info(server.scheduler)

    @app.post("/sessions/{sid}/ask")
    async def ask(sid: str, body: Question):
        s = server.get(sid)
        if len(body.question) > config.max_question_chars:
            raise ApiError(400, f"question: {len(body.question)} characters, over {config.max_question_chars}")
        max_new = body.max_new_tokens or min(32, config.max_new_tokens)
        if max_new > config.max_new_tokens:
            raise ApiError(400, f"max_new_tokens {max_new} over the server's {config.max_new_tokens}")
        gen = GenerationConfig(max_new_tokens=max_new)
        if body.stream:
            return StreamingResponse(_streamed_answer(server, s, body.question, gen), media_type="text/event-stream")
        ans = await run(server.scheduler.question(lambda: s.session.ask(body.question, gen)))
        server.ttft.observe(ans.ttft_s)
        return {"text": ans.text, "ttft_ms": round(ans.ttft_s * 1000, 3), "total_ms": round(ans.total_s * 1000, 3),
                "kv_bytes": ans.kv_bytes, "memory_tokens": ans.cache_tokens, "frames_seen": ans.frames_seen,
                "last_frame_time": ans.last_frame_time}

    @app.post("/sessions/{sid}/watches", status_code=201)
    async def add_watch(sid: str, body: NewWatch):
        from dataclasses import replace

        s = server.get(sid)
        cfg = server.adapter.watch_config or WatchConfig()
        if body.threshold is not None:
            cfg = replace(cfg, threshold=body.threshold)
        if body.cooldown_s is not None:
            cfg = replace(cfg, cooldown_s=body.cooldown_s)
        wid = await run(server.scheduler.question(lambda: s.session.watch(body.query, cfg, callback=s.publish)))
        return {"watch_id": wid}

    @app.delete("/sessions/{sid}/watches/{wid}")
    async def remove_watch(sid: str, wid: int):
        s = server.get(sid)
        if wid not in s.session.watches:
            raise ApiError(404, f"session {sid!r} has no watch {wid}")
        await run(server.scheduler.question(lambda: s.session.unwatch(wid)))
        return {"deleted": wid}

    @app.post("/sessions/{sid}/snapshot")
    async def snapshot(sid: str):
        s = server.get(sid)
        if not config.snapshot_dir:
            raise ApiError(400, "snapshots are disabled (start the server with --snapshot-dir)")
        folder = await run(server.scheduler.question(lambda: server.snapshot(s)))
        return {"path": str(folder)}

    @app.get("/sessions/{sid}/alerts")
    async def alerts(sid: str):
        s = server.get(sid)
        with s.lock:
            return list(s.alerts)

    @app.get("/sessions/{sid}/alerts/stream")
    async def alert_stream(sid: str, request: Request):
        s = server.get(sid)
        queue: asyncio.Queue = asyncio.Queue()
        sub = (asyncio.get_running_loop(), queue)
        with s.lock:
            s.subscribers.append(sub)

        async def events():
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        alert = await asyncio.wait_for(queue.get(), timeout=15.0)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keep-alive\n\n"
                        continue
                    if alert is None:  # the session was deleted
                        return
                    yield f"data: {json.dumps(alert)}\n\n"
            finally:
                with s.lock:
                    if sub in s.subscribers:
                        s.subscribers.remove(sub)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - not JSON at all
            raise ApiError(422, "body: not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ApiError(422, "messages: a non-empty list is required")
        if body.get("stream"):
            raise ApiError(400, "stream: not supported; ask without streaming")
        text, video = _last_user_turn(body["messages"])
        max_new = body.get("max_tokens") or body.get("max_completion_tokens") or min(32, config.max_new_tokens)
        if not isinstance(max_new, int):
            raise ApiError(422, f"max_tokens: a whole number is required, got {max_new!r}")
        if not 1 <= max_new <= config.max_new_tokens:
            raise ApiError(400, f"max_tokens {max_new}: must be in [1, {config.max_new_tokens}]")
        if body.get("session"):
            refusal = _header_refusal(config, str(body["session"]), request.headers.get(config.session_header or ""))
            if refusal:
                raise ApiError(400, refusal)
            s = server.get(str(body["session"]))
            session = s.session
        elif video is not None:
            path = check_path(video, config.allow_dirs)
            session = StreamingSession(server.adapter, memory=server.build_policy(config.memory, config.budget),
                                       pooling=server.pooling, config=StreamConfig(chunk_frames=config.chunk_frames))

            def prefill() -> None:
                from ..video import stream_video

                for clip in stream_video(path, chunk_frames=config.chunk_frames, fps=1.0):
                    session.add_frames(clip.frames, clip.timestamps)
                session.flush()

            await run(server.scheduler.question(prefill))
        else:
            raise ApiError(400, "chat: give a video_url content part or the extension field 'session'")
        ans = await run(server.scheduler.question(
            lambda: session.ask(text, GenerationConfig(max_new_tokens=max_new))))
        server.ttft.observe(ans.ttft_s)
        return {"id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or config.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ans.text},
                             "finish_reason": "length" if len(ans.token_ids) >= max_new else "stop"}],
                "usage": {"prompt_tokens": ans.cache_tokens, "completion_tokens": len(ans.token_ids),
                          "total_tokens": ans.cache_tokens + len(ans.token_ids)},
                "ppllava": {"ttft_ms": round(ans.ttft_s * 1000, 3), "kv_bytes": ans.kv_bytes,
                            "frames_seen": ans.frames_seen}}

    return app


def _answer_fields(ans) -> dict[str, Any]:
    return {"text": ans.text, "ttft_ms": round(ans.ttft_s * 1000, 3), "total_ms": round(ans.total_s * 1000, 3),
            "kv_bytes": ans.kv_bytes, "memory_tokens": ans.cache_tokens, "frames_seen": ans.frames_seen,
            "last_frame_time": ans.last_frame_time}


async def _streamed_answer(server: Server, s: ServerSession, question: str, gen: GenerationConfig):
    """Server-sent events of one answer: tokens as the worker generates them, then the answer's fields."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    tok = server.adapter.tokenizer

    ids: list[int] = []
    sent = [""]  # the text streamed so far

    def on_token(token_id: int) -> None:
        # decode the whole answer so far and send what it adds: a token may be part of a character
        ids.append(token_id)
        text = tok.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(sent[0]):
            return  # an unfinished multi-byte character: wait for the rest
        new, sent[0] = text[len(sent[0]):], text
        if new:
            loop.call_soon_threadsafe(queue.put_nowait, ("token", new))

    fut = server.scheduler.question(lambda: s.session.ask(question, gen, on_token=on_token))
    fut.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, ("done", f)))
    while True:
        kind, value = await queue.get()
        if kind == "token":
            yield f"data: {json.dumps({'token': value})}\n\n"
            continue
        try:
            ans = value.result()
        except Exception as err:  # noqa: BLE001 - the model failed mid-answer: one line, as JSON
            server.errors.inc()
            yield f"data: {json.dumps({'error': f'{type(err).__name__}: {err}'})}\n\n"
            return
        server.ttft.observe(ans.ttft_s)
        if ans.text.startswith(sent[0]) and len(ans.text) > len(sent[0]):
            yield f"data: {json.dumps({'token': ans.text[len(sent[0]):]})}\n\n"  # what was held back
        yield f"data: {json.dumps({'done': True, **_answer_fields(ans)})}\n\n"
        return


def _last_user_turn(messages: list) -> tuple[str, str | None]:
    """The last user message's text and its ``video_url`` (OpenAI content parts or a plain string)."""
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return _nonempty(content), None
        if not isinstance(content, list):
            break
        texts, video = [], None
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "video_url":
                ref = part.get("video_url")
                video = ref.get("url") if isinstance(ref, dict) else ref
        return _nonempty(" ".join(texts)), video
    raise ApiError(422, "messages: no user message with text")


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ApiError(422, "messages: the user message has no text")
    return text
