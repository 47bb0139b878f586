"""The HTTP server against a real uvicorn on 127.0.0.1: every endpoint, auth, allow-lists, bad input, a
failing model call, alerts over server-sent events, the OpenAI-compatible endpoint, the scheduler."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from ppllava_hermes.serving.app import ServeConfig, create_app  # noqa: E402
from ppllava_hermes.serving.live import LiveServer  # noqa: E402
from ppllava_hermes.serving.worker import Scheduler  # noqa: E402
from ppllava_hermes.video import write_video  # noqa: E402

from .helpers import random_frames, tiny_adapter  # noqa: E402

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATE: dict = {}  # the running app's server object, to inject faults


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    frames, _ = random_frames(8, size=56, seed=2)
    write_video(folder / "clip.mp4", frames, fps=2.0)
    (tmp_path_factory.mktemp("outside") / "secret.mp4").write_bytes(b"x")
    return folder


@pytest.fixture(scope="module")
def base_url(media):
    config = ServeConfig(token=TOKEN, allow_dirs=(str(media),), allow_hosts=("cameras.example",), max_sessions=3,
                         budget=64, chunk_frames=2, max_frame_bytes=100_000, max_new_tokens=16,
                         allow_devices=("/dev/null", "/dev/video-ppllava-absent", "/dev/video0"))
    app = create_app(config, adapter=tiny_adapter("qwen2_5_vl"))
    STATE["server"] = app.state.server
    with LiveServer(app) as live:
        yield live.url


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=60) as c:
        yield c


def new_session(client, **body) -> str:
    r = client.post("/sessions", json=body or None)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def push(client, sid: str, frames: np.ndarray, t0: float = 0.0, wait_last: bool = True) -> None:
    for i, f in enumerate(frames):
        last = wait_last and i == len(frames) - 1
        r = client.post(f"/sessions/{sid}/frames", params={"t": t0 + 0.5 * i, "wait": last}, content=png(f),
                        headers={"Content-Type": "image/png"})
        assert r.status_code == 202, r.text


def test_health_needs_no_token_and_everything_else_does(base_url):
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"
    for method, path in [("get", "/sessions"), ("post", "/sessions"), ("get", "/metrics"),
                         ("post", "/v1/chat/completions")]:
        r = httpx.request(method.upper(), f"{base_url}{path}")
        assert r.status_code == 401 and r.json() == {"error": "missing or wrong bearer token"}
    r = httpx.get(f"{base_url}/sessions", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_push_frames_then_ask(client):
    sid = new_session(client)
    frames, _ = random_frames(6, size=56, seed=3)
    push(client, sid, frames)
    ans = client.post(f"/sessions/{sid}/ask", json={"question": "what is moving?", "max_new_tokens": 3}).json()
    assert ans["frames_seen"] == 6 and ans["last_frame_time"] == 2.5 and ans["kv_bytes"] > 0 and ans["ttft_ms"] > 0
    info = client.get(f"/sessions/{sid}").json()
    assert info["frames_received"] == 6 and info["frames_seen"] == 6 and info["frames_dropped"] == 0
    assert info["memory"] == "hermes" and info["budget"] == 64
    raw = client.post(f"/sessions/{sid}/frames", params={"t": 9, "width": 56, "height": 56, "wait": True},
                      content=frames[0].tobytes(), headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 202
    assert sid in {s["id"] for s in client.get("/sessions").json()}
    assert client.delete(f"/sessions/{sid}").json() == {"deleted": sid}
    assert client.get(f"/sessions/{sid}").status_code == 404


def test_a_streamed_answer_comes_token_by_token_then_its_fields(client, base_url):
    sid = new_session(client)
    push(client, sid, random_frames(4, size=56, seed=5)[0])
    plain = client.post(f"/sessions/{sid}/ask", json={"question": "what?", "max_new_tokens": 5}).json()
    events = []
    with httpx.stream("POST", f"{base_url}/sessions/{sid}/ask", headers=AUTH, timeout=60,
                      json={"question": "what?", "max_new_tokens": 5, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    *tokens, done = events
    assert done["done"] and done["text"] == plain["text"] and done["frames_seen"] == 4
    assert 1 <= len(tokens) <= 5 and "".join(t["token"] for t in tokens) == plain["text"]
    # a client that goes away mid-answer: the server goes on serving
    with httpx.stream("POST", f"{base_url}/sessions/{sid}/ask", headers=AUTH, timeout=60,
                      json={"question": "what?", "max_new_tokens": 16, "stream": True}) as r:
        next(r.iter_lines())
    assert client.post(f"/sessions/{sid}/ask", json={"question": "again?", "max_new_tokens": 2}).status_code == 200
    client.delete(f"/sessions/{sid}")


def test_frames_over_a_websocket_with_alerts_back(client, base_url):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sid = new_session(client)
    client.post(f"/sessions/{sid}/watches", json={"query": "tell me when it moves", "threshold": 0.001})
    ws_url = base_url.replace("http://", "ws://") + f"/sessions/{sid}/ws"
    frames, _ = random_frames(4, size=56, seed=6)
    replies, alerts = [], []
    with connect(ws_url, additional_headers=AUTH) as ws:
        for i, f in enumerate(frames):
            ws.send(json.dumps({"t": i * 0.5, "format": "png"}))
            ws.send(png(f))
            replies.append(json.loads(ws.recv(timeout=30)))
        ws.send(json.dumps({"t": 0.1, "format": "png"}))  # not after the last one: an error, the socket stays
        ws.send(png(frames[0]))
        replies.append(json.loads(ws.recv(timeout=30)))
        ws.send(json.dumps({"t": 9, "format": "raw", "width": 56, "height": 56}))
        ws.send(frames[0].tobytes())
        for _ in range(10):  # the alert and the last reply, in either order
            msg = json.loads(ws.recv(timeout=30))
            (alerts if "alert" in msg else replies).append(msg)
            if alerts and len(replies) == 6:
                break
    assert [r.get("frames_received") for r in replies[:4]] == [1, 2, 3, 4]
    assert "t must increase" in replies[4]["error"] and replies[5]["frames_received"] == 5
    assert alerts and alerts[0]["alert"]["query"] == "tell me when it moves"
    with pytest.raises(InvalidStatus, match="HTTP 403"):  # no token: the handshake is refused
        connect(ws_url)
    client.delete(f"/sessions/{sid}")


def test_watch_alerts_arrive_over_server_sent_events(client, base_url):
    sid = new_session(client)
    wid = client.post(f"/sessions/{sid}/watches", json={"query": "tell me when it moves", "threshold": 0.001}).json()
    got: list[dict] = []

    def listen() -> None:
        with httpx.stream("GET", f"{base_url}/sessions/{sid}/alerts/stream", headers=AUTH, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(0.5)
    frames, _ = random_frames(4, size=56, seed=4)
    push(client, sid, frames)
    t.join(30)
    (alert,) = got
    assert alert["query"] == "tell me when it moves" and alert["watch_id"] == wid["watch_id"] and alert["time"] == 0.5
    assert client.get(f"/sessions/{sid}/alerts").json() == [alert]
    assert client.delete(f"/sessions/{sid}/watches/{wid['watch_id']}").status_code == 200
    assert client.delete(f"/sessions/{sid}/watches/{wid['watch_id']}").status_code == 404
    client.delete(f"/sessions/{sid}")


@pytest.mark.parametrize("body, status, message", [
    ({"path": "../outside/secret.mp4"}, 403, "outside the allowed folders"),
    ({"path": "/etc/passwd"}, 403, "outside the allowed folders"),
    ({"url": "rtsp://evil.example/cam"}, 403, "host 'evil.example' not in the allowed hosts"),
    ({"url": "file:///etc/passwd"}, 403, "scheme 'file' not allowed"),
    ({"path": "file:///etc/passwd"}, 403, "a path is a file path, not a URL"),
    ({"path": "x", "url": "rtsp://cameras.example/a"}, 400, "exactly one of path, url and device"),
])
def test_sources_outside_the_allow_lists_are_refused(client, media, body, status, message):
    sid = new_session(client)
    if "path" in body and body["path"].startswith(".."):
        body = {"path": str(media / body["path"])}
    r = client.post(f"/sessions/{sid}/source", json=body)
    client.delete(f"/sessions/{sid}")
    assert r.status_code == status and message in r.json()["error"]


def _wait_for_source(client, sid: str, prefix: str, seconds: float = 20.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        info = client.get(f"/sessions/{sid}").json()
        if (info["source"] or "").startswith(prefix) or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


@pytest.mark.parametrize("body, status, message", [
    ({"device": "/dev/video9"}, 403, "not one of the allowed devices"),
    ({"device": "/dev/../etc/passwd"}, 403, "not one of the allowed devices"),
    ({"device": "/dev/null/../../etc/passwd"}, 403, "not one of the allowed devices"),
    ({"device": "v4l2:///dev/null"}, 403, "a device is a path like /dev/video0, not a URL"),
    ({"device": "file:///dev/null"}, 403, "a device is a path like /dev/video0, not a URL"),
    ({"device": "/dev/video-ppllava-absent"}, 404, "no such device"),  # listed, but not plugged in
    ({"path": "/dev/null"}, 403, "outside the allowed folders"),  # a listed device is never a file source
    ({"device": "/dev/null", "url": "rtsp://cameras.example/a"}, 400, "exactly one of path, url and device"),
])
def test_device_sources_outside_the_allow_list_are_refused(client, body, status, message):
    sid = new_session(client)
    r = client.post(f"/sessions/{sid}/source", json=body)
    client.delete(f"/sessions/{sid}")
    assert r.status_code == status and message in r.json()["error"], r.text


def test_an_allow_listed_device_is_attached_by_name_or_through_a_symlink(client, tmp_path):
    # /dev/null stands in for a camera: allow-listed, opened by the reader thread, holds no video
    link = tmp_path / "camera"
    link.symlink_to("/dev/null")
    for device in ("/dev/null", str(link)):
        sid = new_session(client)
        r = client.post(f"/sessions/{sid}/source", json={"device": device})
        assert r.status_code == 202, r.text
        assert r.json()["source"].split(": ")[1] == "/dev/null"  # the resolved, allow-listed device
        info = _wait_for_source(client, sid, "error")
        assert info["source"].startswith("error: /dev/null: ") and "cannot open" in info["source"]
        assert client.get("/health").json()["status"] == "ok"  # the server goes on
        client.delete(f"/sessions/{sid}")


def test_an_allowed_device_must_be_a_device_path():
    for bad in ("/etc/passwd", "relative/video0", "rtsp://cam/dev/video0", "/dev/../etc/passwd"):
        with pytest.raises(ValueError, match="not a device path under /dev/"):
            ServeConfig(insecure_local=True, allow_devices=(bad,))


@pytest.mark.skipif(not os.access("/dev/video0", os.R_OK),
                    reason="no readable capture device /dev/video0 on this machine")
def test_a_real_capture_device_streams_frames_in(client):
    sid = new_session(client)
    r = client.post(f"/sessions/{sid}/source", json={"device": "/dev/video0", "fps": 2.0})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while (info := client.get(f"/sessions/{sid}").json())["frames_seen"] < 2 and time.monotonic() < deadline:
        assert not info["source"].startswith("error"), info["source"]
        time.sleep(0.2)
    client.delete(f"/sessions/{sid}")
    assert info["frames_seen"] >= 2


def test_a_file_source_streams_in_and_ends(client, media):
    sid = new_session(client)
    r = client.post(f"/sessions/{sid}/source", json={"path": str(media / "clip.mp4"), "fps": 2.0})
    assert r.status_code == 202
    for _ in range(200):
        info = client.get(f"/sessions/{sid}").json()
        if info["source"].startswith("ended") and info["queued"] == 0:
            break
        time.sleep(0.05)
    assert info["source"] == f"ended: {media / 'clip.mp4'}" and info["frames_seen"] == 8
    client.delete(f"/sessions/{sid}")


def test_bad_requests_are_one_line_json_errors(client):
    sid = new_session(client)
    frame = random_frames(1, size=56)[0][0]
    cases = [
        (client.get("/sessions/nope"), 404, "no session 'nope'"),
        (client.post("/sessions", content=b"{not json", headers={"Content-Type": "application/json"}), 422, ""),
        (client.post(f"/sessions/{sid}/ask", json={"question": ""}), 422, "question"),
        (client.post(f"/sessions/{sid}/ask", json={"question": "x", "max_new_tokens": 10_000}), 400, "max_new_tokens"),
        (client.post(f"/sessions/{sid}/frames", params={"t": 0}, content=b"not an image"), 400, "not a JPEG/PNG"),
        (client.post(f"/sessions/{sid}/frames", params={"t": "nan"}, content=png(frame)), 400, "t must be finite"),
        (client.post(f"/sessions/{sid}/frames", params={"t": 0}, content=b"\0" * 200_000), 413, "over the limit"),
        (client.post(f"/sessions/{sid}/watches", json={"query": "x", "threshold": 2}), 422, "threshold"),
        (client.post("/sessions", json={"memory": "bogus"}), 400, "bogus"),
    ]
    for r, status, message in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert message in r.json()["error"] and "Traceback" not in r.text
    assert client.post(f"/sessions/{sid}/frames", params={"t": 1, "wait": True}, content=png(frame)).status_code == 202
    r = client.post(f"/sessions/{sid}/frames", params={"t": 1}, content=png(frame))
    assert r.status_code == 400 and "t must increase" in r.json()["error"]
    client.delete(f"/sessions/{sid}")


def test_too_many_sessions_and_a_failing_model_call(client, base_url):
    ids = [new_session(client) for _ in range(3)]
    r = client.post("/sessions")
    assert r.status_code == 429 and "3 sessions already" in r.json()["error"]
    server = STATE["server"]  # the app's state, to break one session's model call

    def boom(*_a, **_k):
        raise RuntimeError("CUDA out of memory (injected)")

    server.sessions[ids[0]].session.ask = boom
    r = client.post(f"/sessions/{ids[0]}/ask", json={"question": "x", "max_new_tokens": 2})
    assert r.status_code == 500 and r.json() == {"error": "RuntimeError: CUDA out of memory (injected)"}
    push(client, ids[1], random_frames(2, size=56)[0])  # the others go on
    assert client.post(f"/sessions/{ids[1]}/ask", json={"question": "x", "max_new_tokens": 2}).status_code == 200
    assert "ppllava_errors_total 1.0" in client.get("/metrics").text
    for sid in ids:
        client.delete(f"/sessions/{sid}")


def test_metrics_in_prometheus_format(client):
    sid = new_session(client)
    push(client, sid, random_frames(4, size=56)[0])
    client.post(f"/sessions/{sid}/ask", json={"question": "x", "max_new_tokens": 1})
    text = client.get("/metrics").text
    assert f'ppllava_kv_bytes{{session="{sid}"}}' in text and f'ppllava_frames_seen_total{{session="{sid}"}} 4.0' in text
    assert "ppllava_ttft_seconds_bucket" in text and "ppllava_resident_bytes" in text
    client.delete(f"/sessions/{sid}")


def test_openai_chat_completions_on_a_file_and_on_a_live_session(client, media):
    r = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3, "messages": [
        {"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(media / "clip.mp4")}},
                                     {"type": "text", "text": "what happens?"}]}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and isinstance(out["choices"][0]["message"]["content"], str)
    assert out["ppllava"]["frames_seen"] == 4  # 4 s of video sampled at 1 fps
    sid = new_session(client)
    push(client, sid, random_frames(2, size=56)[0])
    r = client.post("/v1/chat/completions", json={"session": sid, "messages": [{"role": "user", "content": "now?"}]})
    assert r.status_code == 200 and r.json()["ppllava"]["frames_seen"] == 2
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "/etc/passwd"}}, {"type": "text", "text": "x"}]}]})
    assert r.status_code == 403
    client.delete(f"/sessions/{sid}")


def test_the_standard_openai_client_talks_to_it(client, base_url, media):
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=f"{base_url}/v1", api_key=TOKEN, max_retries=0)
    out = oa.chat.completions.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": str(media / "clip.mp4")}}, {"type": "text", "text": "what?"}]}])
    assert out.object == "chat.completion" and isinstance(out.choices[0].message.content, str)
    sid = new_session(client)
    push(client, sid, random_frames(2, size=56)[0])
    out = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "now?"}],
                                     extra_body={"session": sid})
    assert out.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], extra_body={"session": sid})
    client.delete(f"/sessions/{sid}")


def test_the_scheduler_puts_questions_first_and_drops_the_oldest_ingest():
    sched = Scheduler(max_queued=2)
    gate = threading.Event()
    order: list[str] = []
    blocker = sched.ingest("a", gate.wait)  # holds the worker
    time.sleep(0.05)
    futs = [sched.ingest("a", lambda i=i: order.append(f"a{i}"), frames=4) for i in range(3)]
    futs.append(sched.ingest("b", lambda: order.append("b0"), frames=4))
    q = sched.question(lambda: order.append("q"))
    gate.set()
    blocker.result(5)
    q.result(5)
    for f in futs[1:]:
        f.result(5)
    with pytest.raises(RuntimeError, match="fell behind"):
        futs[0].result(5)
    assert order[0] == "q" and order[1:] == ["a1", "b0", "a2"]  # questions first, then round-robin
    assert sched.dropped["a"] == 4
    sched.close()


def test_cli_serve_refuses_to_run_without_a_token(monkeypatch, capsys):
    from ppllava_hermes.cli import main

    monkeypatch.delenv("PPLLAVA_HERMES_TOKEN", raising=False)
    assert main(["serve"]) == 2
    assert "a bearer token is required (--token or PPLLAVA_HERMES_TOKEN)" in capsys.readouterr().err
    assert main(["serve", "--insecure-local", "--host", "0.0.0.0"]) == 2
    assert "only on 127.0.0.1" in capsys.readouterr().err


def test_cli_serve_starts_answers_health_and_stops(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PPLLAVA_HERMES_TOKEN": "t0k"}
    proc = subprocess.Popen([sys.executable, "-m", "ppllava_hermes.cli", "serve", "--port", str(port),
                             "--allow-dir", str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for _ in range(300):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert r.json()["status"] == "ok"
        r = httpx.post(f"http://127.0.0.1:{port}/sessions", headers={"Authorization": "Bearer t0k"})
        assert r.status_code == 201
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "serving tiny-qwen2.5-vl on http://127.0.0.1" in out and "Traceback" not in err


def test_the_web_page_is_served_without_a_token(base_url):
    r = httpx.get(f"{base_url}/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    for hook in ('id="create"', "/alerts/stream", "/sessions/${sid}/frames", "Authorization"):
        assert hook in r.text


def _start_cli_server(port: int, *extra: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PPLLAVA_HERMES_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "ppllava_hermes.cli", "serve", "--port", str(port),
                             "--budget", "64", "--chunk-frames", "2", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(proc.communicate()[1]) from None
            time.sleep(0.1)
    raise AssertionError("server did not start")


def test_kill_9_then_restore_gives_the_same_answer_and_the_same_cache(tmp_path):
    import signal

    from safetensors.torch import load_file

    snaps = tmp_path / "snaps"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = _start_cli_server(port, "--snapshot-dir", str(snaps))
    question = {"question": "what is moving?", "max_new_tokens": 6}
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
            sid = new_session(c)
            c.post(f"/sessions/{sid}/watches", json={"query": "tell me when it moves", "threshold": 0.999})
            push(c, sid, random_frames(9, size=56, seed=8)[0])  # the ninth waits for its group partner
            assert c.post(f"/sessions/{sid}/snapshot").json() == {"path": str(snaps / sid)}
            before = c.post(f"/sessions/{sid}/ask", json=question).json()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    saved = load_file(snaps / sid / "cache.safetensors")
    proc = _start_cli_server(port, "--restore", str(snaps))
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
            info = c.get(f"/sessions/{sid}").json()
            assert info["frames_seen"] == 8 and info["frames_received"] == 9
            assert [w["query"] for w in info["watches"]] == ["tell me when it moves"]
            after = c.post(f"/sessions/{sid}/ask", json=question).json()
            assert after["text"] == before["text"] and after["kv_bytes"] == before["kv_bytes"]
            c.post(f"/sessions/{sid}/snapshot")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    again = load_file(snaps / sid / "cache.safetensors")
    assert saved.keys() == again.keys() and all(torch_equal(saved[k], again[k]) for k in saved)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
