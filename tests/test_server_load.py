"""The server-load benchmark: its arguments, error log and targets, and a short --quick run (real uvicorn)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from ppllava_hermes.recipes.bench import server_load as sl  # noqa: E402
from ppllava_hermes.world.model import has_shipped_model  # noqa: E402

needs_model = pytest.mark.skipif(not has_shipped_model(), reason="no shipped ShapesWorld checkpoint")


def test_quick_defaults_and_explicit_flags():
    a = sl.parse_args(["--quick"])
    assert (a.levels, a.minutes, a.warmup) == ([1, 2], 0.5, 5.0)
    b = sl.parse_args(["--quick", "--sessions", "3", "--minutes", "0.2"])
    assert (b.levels, b.minutes, b.warmup) == ([3], 0.2, 5.0)
    c = sl.parse_args([])
    assert (c.levels, c.minutes, c.warmup, c.budget, c.out) == ([1, 4, 8], 10.0, 30.0, 256, "docs/results")
    for bad in (["--sessions", "0"], ["--sessions", "a"], ["--minutes", "0.5"]):  # 0.5 min is within the warm-up
        with pytest.raises(SystemExit):
            sl.parse_args(bad)


def test_errors_keep_every_non_2xx_with_its_message():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ok":
            return httpx.Response(202, json={})
        return httpx.Response(429, json={"error": "8 sessions already (--max-sessions)"})

    errors = sl.Errors()
    with httpx.Client(base_url="http://x", transport=httpx.MockTransport(answer)) as c:
        assert errors.call(c, "POST", "/ok", 1) is not None
        assert errors.call(c, "POST", "/sessions?x=1", 4) is None
    assert errors.items == [{"sessions": 4, "request": "POST /sessions", "status": 429,
                             "error": "8 sessions already (--max-sessions)"}]
    assert errors.count(4) == 1 and errors.count(1) == 0


def test_targets():
    def row(n, p95, start, end, errors=0):
        return {"sessions": n, "p95_ttft_ms": p95, "rss_mb_start": start, "rss_mb_end": end, "errors": errors,
                "rss_drift_pct": 100 * (end - start) / start}

    t = sl.judge([row(1, 10.0, 100, 101), row(8, 29.0, 101, 105)])
    assert t["rss_drift"]["held"] and t["errors"]["held"] and t["ttft_ratio"]["held"] and t["ttft_ratio"]["ratio"] == 2.9
    t = sl.judge([row(1, 10.0, 100, 106), row(8, 31.0, 101, 105, errors=2)])
    assert not t["rss_drift"]["held"] and not t["errors"]["held"] and not t["ttft_ratio"]["held"]
    assert sl.judge([row(2, 10.0, 100, 100)], warmup_errors=1)["errors"]["held"] is False
    assert sl.judge([row(2, 10.0, 100, 100)])["ttft_ratio"]["held"] is None  # no 1-session level


@needs_model
def test_short_quick_run_writes_the_three_files(tmp_path):
    assert sl.main(["--quick", "--sessions", "2", "--minutes", "0.2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "server_load.json").read_text())
    (row,) = result["rows"]
    assert set(sl.ROW_FIELDS) <= set(row) and row["sessions"] == 2
    # 12 frames each at 1 fps, chunks of 2; questions at t = 5 and 10
    assert row["errors"] == 0 and result["errors"] == [] and row["frames_sent"] == 24
    assert row["frames_seen"] + row["dropped_frames"] == 24 and row["questions_answered"] == 4
    assert 0 < row["p50_ttft_ms"] <= row["p95_ttft_ms"] and row["p95_client_ms"] >= row["p50_ttft_ms"]
    assert row["rss_mb_start"] > 0 and row["rss_mb_end"] > 0 and row["ingest_fps"] > 0
    assert result["targets"]["errors"]["held"] and result["targets"]["ttft_ratio"]["held"] is None
    md = (tmp_path / "server_load.md").read_text()
    assert "ppllava-hermes bench server_load --quick" in md and "Machine:" in md and "zero errors: **held**" in md
    assert (tmp_path / "server_load.png").stat().st_size > 1000
