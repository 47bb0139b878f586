"""The server's web page in a real headless Chromium: token, session, a local ShapesWorld video played in a
<video> element and pushed to the server at 1 fps, a watch with a threshold, a question, alerts over SSE.

Needs Debian's chromium (``apt-get install chromium``; another binary with ``PPLLAVA_CHROMIUM=PATH``) and the
Python ``playwright`` package, driving that binary (``executable_path``; Playwright's own browser download is
not used). Skips, with the reason, when either is missing. ``PPLLAVA_SCREENSHOT=1`` also writes
``docs/server_page.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    pytest.skip("the playwright package is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = os.environ.get("PPLLAVA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no chromium binary (apt-get install chromium, or set PPLLAVA_CHROMIUM)", allow_module_level=True)

from ppllava_hermes.serving.app import ServeConfig, create_app  # noqa: E402
from ppllava_hermes.serving.live import LiveServer  # noqa: E402
from ppllava_hermes.video import write_video  # noqa: E402
from ppllava_hermes.world.generator import WorldConfig, generate_world  # noqa: E402

from .helpers import tiny_adapter  # noqa: E402

TOKEN = "browser-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "server_page.png"
# as root in a closed network: no sandbox, no GPU, and none of Chromium's own calls home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def base_url():
    config = ServeConfig(token=TOKEN, max_sessions=3, budget=64, chunk_frames=2, max_new_tokens=8)
    app = create_app(config, adapter=tiny_adapter("qwen2_5_vl"))
    with LiveServer(app) as live:
        yield live.url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        # launch() starts Chromium with a fresh, temporary --user-data-dir of its own
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def world_video(folder: Path, h264_ok: bool) -> Path:
    """A 20 s ShapesWorld video at 1 fps: H.264 mp4, or VP9 WebM where the browser can't play H.264."""
    world = generate_world(WorldConfig(duration=20.0), 7)
    if h264_ok:
        return world.save_mp4(folder / "world.mp4")
    return write_video(folder / "world.webm", world.frames(), world.fps, codec="libvpx-vp9",
                       options={"crf": "30", "b:v": "0"})


def test_page_streams_a_local_video_asks_and_shows_alerts(base_url, browser, tmp_path):
    t_start = time.monotonic()
    page_errors: list[str] = []
    # no token: the server's 401 reason is shown on the page
    page = browser.new_page()
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.goto(base_url + "/")
    expect(page).to_have_title("ppllava-hermes")
    page.click("#create")
    expect(page.locator("#chat .err").first).to_contain_text("missing or wrong bearer token")
    page.close()

    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.on("pageerror", lambda err: page_errors.append(str(err)))
    page.goto(base_url + "/")
    page.fill("#token", TOKEN)
    page.click("#create")
    expect(page.locator("#sid")).to_contain_text("session ")
    sid = page.locator("#sid").get_attribute("data-sid")
    assert sid

    h264 = page.evaluate("() => document.getElementById('video').canPlayType('video/mp4; codecs=\"avc1.640014\"')")
    video = world_video(tmp_path, h264_ok=bool(h264))
    page.set_input_files("#file", str(video))
    # the video really plays (decoded frames with a size, time advancing), not just loads
    page.wait_for_function("() => { const v = document.getElementById('video');"
                           " return v.videoWidth > 0 && v.currentTime > 1 && !v.paused; }", timeout=20_000)

    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client:
        info = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = client.get(f"/sessions/{sid}").json()
            if info["frames_seen"] >= 2:
                break
            time.sleep(0.25)
        assert info["frames_seen"] >= 2, info
        assert info["frames_dropped"] == 0 and info["last_error"] is None, info
        expect(page.locator("#frames")).not_to_contain_text("frames: 0 received", timeout=5_000)
        # the pushed JPEGs are real picture content (the canvas holds the last frame sent), not black frames
        lit = page.evaluate("""() => { const c = document.getElementById('canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) n += (d[i] + d[i + 1] + d[i + 2]) > 60; return n; }""")
        assert lit > 100, lit

        # a watch with a very low threshold: the random tiny model's "yes" probability passes it
        page.fill("#query", "Tell me when a new shape appears.")
        page.fill("#threshold", "0.001")
        page.click("#watch")
        expect(page.locator("#alerts div").first).to_contain_text("watching #")
        watches = client.get(f"/sessions/{sid}").json()["watches"]
        assert [w["threshold"] for w in watches] == [0.001]

        page.fill("#question", "What is happening?")
        page.click("#ask")
        answer = page.locator("#chat div", has_text="Q: What is happening?")
        expect(answer).to_have_count(1, timeout=30_000)
        expect(answer).to_contain_text("A: ")
        frames_in_answer = int(answer.inner_text().split(" frames,")[0].rsplit(" ", 1)[1])
        assert frames_in_answer >= 2

        alert = page.locator("#alerts .alert").first
        expect(alert).to_contain_text("ALERT Tell me when a new shape appears.", timeout=30_000)
        server_alerts = client.get(f"/sessions/{sid}/alerts").json()
        assert server_alerts and server_alerts[0]["query"] == "Tell me when a new shape appears."

    assert not page.locator(".err", has_text="frame:").count(), page.locator("#chat").inner_text()
    assert not page.locator(".err", has_text="video:").count(), page.locator("#chat").inner_text()
    assert page_errors == []
    if os.environ.get("PPLLAVA_SCREENSHOT") == "1":
        page.wait_for_timeout(1500)  # one more refresh of the counters
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.close()
    print(f"browser test: {time.monotonic() - t_start:.1f} s")
