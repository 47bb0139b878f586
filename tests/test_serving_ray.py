"""The Ray Serve deployment (``serve --ray``): two CPU replicas of the tiny model behind Ray's HTTP proxy,
every request for a session routed to the replica that holds it; and the router's rule on its own."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ppllava_hermes.serving import ray_deploy  # noqa: E402
from ppllava_hermes.serving.app import ServeConfig  # noqa: E402

from .helpers import random_frames  # noqa: E402

TOKEN = "ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEADER = ray_deploy.SESSION_HEADER


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # address="local": a Ray of its own, never one this machine already runs
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        config = ServeConfig(token=TOKEN, budget=64, chunk_frames=2, max_new_tokens=8, max_sessions=4)
        address, replicas = ray_deploy.start(config, replicas=2, cpus_per_replica=1, port=free_port())
        assert replicas == 2
        deadline = time.monotonic() + 30  # until the proxy's router knows both replicas
        while len({httpx.get(f"{address}/health").json()["replica"] for _ in range(4)}) < 2:
            assert time.monotonic() < deadline, "the proxy never routed to the second replica"
            time.sleep(0.2)
        yield address
    finally:
        serve.shutdown()
        ray.shutdown()


def for_session(sid: str) -> dict[str, str]:
    return {**AUTH, HEADER: sid}


def test_sessions_stay_on_their_replica_and_spread_over_both(url):
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
        sids = []
        for _ in range(4):
            r = c.post("/sessions")
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert r.headers["x-replica"] == ray_deploy.owner_of(sid)  # the id names the replica that made it
            sids.append(sid)
        owners = {sid: ray_deploy.owner_of(sid) for sid in sids}
        assert len(set(owners.values())) == 2  # spread over both replicas

        frames, _ = random_frames(4, size=56, seed=1)
        for sid in sids:
            seen = set()
            for i, f in enumerate(frames):
                r = c.post(f"/sessions/{sid}/frames", params={"t": 0.5 * i, "wait": i == len(frames) - 1},
                           content=png(f), headers={**for_session(sid), "Content-Type": "image/png"})
                assert r.status_code == 202, r.text
                seen.add(r.headers["x-replica"])
            r = c.post(f"/sessions/{sid}/ask", json={"question": "what is moving?", "max_new_tokens": 4},
                       headers=for_session(sid))
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-replica"])
            ans = r.json()
            assert isinstance(ans["text"], str) and ans["frames_seen"] == 4 and ans["kv_bytes"] > 0
            info = c.get(f"/sessions/{sid}", headers=for_session(sid))
            seen.add(info.headers["x-replica"])
            assert info.json()["frames_received"] == 4 and info.json()["frames_seen"] == 4
            assert seen == {owners[sid]}, (sid, seen)  # every request of the session reached its replica

        # tokens streamed as server-sent events through Ray's proxy
        sid = sids[0]
        with c.stream("POST", f"/sessions/{sid}/ask", headers=for_session(sid),
                      json={"question": "what?", "max_new_tokens": 3, "stream": True}) as r:
            assert r.headers["x-replica"] == owners[sid]
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1]["done"] and events[-1]["frames_seen"] == 4

        # a request for a session without the routing header: a JSON 400 that says what to send
        r = c.get(f"/sessions/{sid}")
        assert r.status_code == 400 and f"{HEADER}: {sid}" in r.json()["error"]
        # unknown sessions: JSON 404, whether the id names no replica or a live one
        for unknown in ("nope", f"{owners[sid]}-000000000000"):
            r = c.get(f"/sessions/{unknown}", headers=for_session(unknown))
            assert r.status_code == 404 and r.json() == {"error": f"no session {unknown!r}"}
        assert httpx.get(f"{url}/sessions/x", headers={HEADER: "y"}).status_code == 401  # the token is checked first

        health = {c.get("/health").json()["replica"] for _ in range(4)}
        assert health == set(owners.values())  # session-less requests take turns

        for sid in sids:
            r = c.delete(f"/sessions/{sid}", headers=for_session(sid))
            assert r.json() == {"deleted": sid} and r.headers["x-replica"] == owners[sid]
            assert c.get(f"/sessions/{sid}", headers=for_session(sid)).status_code == 404


def test_a_websocket_reaches_the_replica_of_its_session(url):
    websockets = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import InvalidStatus
    with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
        sid = c.post("/sessions").json()["id"]
        ws_url = url.replace("http://", "ws://") + f"/sessions/{sid}/ws"
        frame = random_frames(1, size=56, seed=4)[0][0]
        with websockets.connect(ws_url, additional_headers=for_session(sid)) as ws:
            ws.send(json.dumps({"t": 0.0, "format": "png"}))
            ws.send(png(frame))
            assert json.loads(ws.recv(timeout=60))["frames_received"] == 1
        with pytest.raises(InvalidStatus, match="HTTP 403"):  # no routing header: the handshake is refused
            websockets.connect(ws_url, additional_headers=AUTH)
        assert c.delete(f"/sessions/{sid}", headers=for_session(sid)).status_code == 200


def _replica(uid: str, room: int = 1) -> SimpleNamespace:
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=uid), routing_stats={"room": room})


def _pending(session_id: str = "") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(session_id=session_id),
                           routing_context=SimpleNamespace(should_backoff=False))


def test_the_router_sends_a_session_to_its_owner_and_new_work_round_robin():
    import asyncio

    router = ray_deploy.SessionRouter.__new__(ray_deploy.SessionRouter)  # its rule alone, no Ray cluster
    router.initialize_state()
    a, b, c = _replica("aaa"), _replica("bbb"), _replica("ccc", room=0)

    def choose(pending):
        return asyncio.run(router.choose_replicas([c, b, a], pending))

    pending = _pending("bbb-0123456789ab")
    assert choose(pending) == [[b]] and pending.routing_context.should_backoff  # only the owner; waits if busy
    assert choose(_pending("gone-0123456789ab")) == [[c, b, a]]  # owner gone: any replica (it answers 404)
    firsts = [choose(_pending())[0][0].replica_id.unique_id for _ in range(4)]
    assert firsts == ["aaa", "bbb", "aaa", "bbb"]  # round robin; "ccc" reports no room, so it comes last
    assert choose(_pending())[-1] == [c]
    assert choose(None) == [[c, b, a]]
    assert ray_deploy.owner_of("r1x-00ff") == "r1x" and ray_deploy.owner_of("plain") == "plain"


def test_the_deployment_refuses_what_the_cluster_cannot_hold(url):
    with pytest.raises(ValueError, match="3 replicas x 1 CPUs, but the Ray cluster has 2 CPUs"):
        ray_deploy._resources(3, None, 1.0)
    with pytest.raises(ValueError, match="1 replicas x 1 GPUs, but the Ray cluster has 0 GPUs"):
        ray_deploy._resources(1, 1.0, 1.0)
    assert ray_deploy._resources(None, None, 1.0) == (1, 0.0, 1.0)  # no GPUs: one CPU replica by default


def test_cli_serve_ray_refuses_restore(tmp_path, capsys):
    from ppllava_hermes.cli import main

    assert main(["serve", "--insecure-local", "--ray", "--restore", str(tmp_path)]) == 2
    assert "--restore with --ray" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serve_ray_two_replicas_answer_and_stop(tmp_path):
    # its own Ray (a minute or two on two CPUs): ppllava-hermes serve --ray --replicas 2, then Ctrl-C
    port = free_port()
    env = {**os.environ, "PPLLAVA_HERMES_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:  # files: Ray's logs would fill a pipe
        proc = subprocess.Popen([sys.executable, "-m", "ppllava_hermes.cli", "serve", "--ray", "--replicas", "2",
                                 "--port", str(port), "--budget", "64", "--chunk-frames", "2"], env=env,
                                stdout=out, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 300
        while "with Ray Serve: 2 replicas" not in out_path.read_text():  # printed once both replicas are up
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-3000:]
            time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=120) as c:
            sids = [c.post("/sessions").json()["id"] for _ in range(2)]
            assert len({ray_deploy.owner_of(sid) for sid in sids}) == 2
            for sid in sids:
                r = c.post(f"/sessions/{sid}/frames", params={"t": 0, "wait": True}, headers={
                    **for_session(sid), "Content-Type": "image/png"}, content=png(random_frames(1, size=56)[0][0]))
                assert r.status_code == 202 and r.headers["x-replica"] == ray_deploy.owner_of(sid)
                r = c.post(f"/sessions/{sid}/ask", json={"question": "what?", "max_new_tokens": 2},
                           headers=for_session(sid))
                assert r.status_code == 200 and r.headers["x-replica"] == ray_deploy.owner_of(sid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0, err_path.read_text()[-3000:]
