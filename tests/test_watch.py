"""Standing queries: decisions after every chunk that never change the memory, firing, cooldown, several
watches, and the decision's score equal to the question's own first-token distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppllava_hermes.memory import make_policy
from ppllava_hermes.streaming import GenerationConfig, StreamConfig, StreamingSession, WatchConfig

from .helpers import random_frames, tiny_adapter

torch.set_num_threads(1)


def states_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def states_close(a, b) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(
            torch.equal(x[k], y[k]) if not x[k].is_floating_point() else torch.allclose(x[k], y[k], atol=1e-5, rtol=0)
            for k in x) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("policy", ["full", "hermes", "retrieval"])
def test_decisions_leave_the_memory_as_without_them(policy, fused):
    """Separate decisions: bit-exact; fused into the chunk's forward: the same up to float rounding (the
    same entries, kinds and positions; keys and values within 1e-5)."""
    adapter = tiny_adapter("qwen2_5_vl")
    frames, times = random_frames(24, seed=3)

    def run(watches: int) -> StreamingSession:
        s = StreamingSession(adapter, make_policy(policy, budget=60) if policy != "full" else None,
                             config=StreamConfig(chunk_frames=2, fused_watch=fused))
        for i in range(watches):
            s.watch(f"tell me when thing {i} happens", WatchConfig(threshold=0.01, cooldown_s=0))
        for k in range(0, 24, 3):
            s.add_frames(frames[k : k + 3], times[k : k + 3])
        s.flush()
        return s

    plain, watched = run(0), run(2)
    exact = not fused or policy == "retrieval"  # retrieval answers from a question cache: never fused
    assert (states_equal if exact else states_close)(plain.cache.state(), watched.cache.state())
    assert plain.next_position == watched.next_position
    assert watched.stats.watch_decisions == 2 * watched.stats.chunks == 2 * 12
    assert all(w.decisions == 12 for w in watched.watches.values())
    assert watched.stats.watch_s > 0 and plain.stats.watch_s == 0
    assert plain.stats.prefill_s > 0
    if policy != "full":
        assert plain.stats.compress_log and max(r.evicted for r in plain.stats.compress_log) > 0


@pytest.mark.parametrize("fused", [False, True])
def test_the_score_is_the_questions_first_token_distribution(fused):
    adapter = tiny_adapter("qwen2_5_vl")
    frames, times = random_frames(4, seed=4)
    s = StreamingSession(adapter, config=StreamConfig(chunk_frames=4, fused_watch=fused))
    cfg = WatchConfig(template="Q: {query}?", threshold=0.99)
    wid = s.watch("a red ball", cfg)
    s.add_frames(frames, times)
    (t, score), = s.watches[wid].scores
    ans = s.ask("Q: a red ball?", GenerationConfig(max_new_tokens=1), return_logits=True)
    p = torch.softmax(ans.question_logits[-1], -1)
    y, n = p[s.watches[wid].positive_ids].sum(), p[s.watches[wid].negative_ids].sum()
    assert t == times[-1]
    assert score == pytest.approx(float(y / (y + n)), abs=1e-5)


class Scripted:
    """Replaces the engine's decision step: the positive logit follows a script over stream time."""

    def __init__(self, session: StreamingSession, positive_after: dict[str, float | list[tuple[float, float]]]):
        self.session, self.script = session, positive_after
        self.vocab = session.adapter.model.config.get_text_config().vocab_size

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        now = self.session.frame_log[-1][1]
        prompt = self.session.adapter.tokenizer.decode(ids)
        w = next(w for w in self.session.watches.values() if w.query in prompt)
        spec = self.script[w.query]
        on = now >= spec if isinstance(spec, float) else any(a <= now <= b for a, b in spec)
        logits = torch.zeros(self.vocab)
        logits[w.positive_ids[0]] = 5.0 if on else -5.0
        return logits


def stream(session: StreamingSession, seconds: int) -> None:
    frames, _ = random_frames(seconds, size=28, seed=0)
    for k in range(0, seconds, 2):
        session.add_frames(frames[k : k + 2], np.arange(k, k + 2, dtype=np.float64))


def test_a_watch_fires_at_the_event_once_and_not_before():
    adapter = tiny_adapter("qwen2_5_vl")
    s = StreamingSession(adapter, config=StreamConfig(chunk_frames=2, fused_watch=False))  # scripted decisions
    got = []
    s.watch("the door opens", WatchConfig(cooldown_s=5.0), callback=got.append)
    s.engine.next_token_logits = Scripted(s, {"the door opens": 13.0})
    stream(s, 40)
    (ev,) = got  # true from 13 s to the end: reported once (disarmed until the score drops)
    assert ev.time == 13.0 and ev.query == "the door opens" and ev.score > 0.98 and ev.text == "y"
    assert s.events() == [ev] and s.events() == []
    assert [round(x) for x, sc in s.watches[0].scores if sc >= 0.5][0] == 13


def test_cooldown_and_rearming_with_several_watches():
    adapter = tiny_adapter("qwen2_5_vl")
    s = StreamingSession(adapter, config=StreamConfig(chunk_frames=2, fused_watch=False))  # scripted decisions
    a = s.watch("flicker", WatchConfig(cooldown_s=10.0))
    b = s.watch("twice", WatchConfig(cooldown_s=0.0))
    s.engine.next_token_logits = Scripted(s, {"flicker": [(5, 5), (9, 9), (17, 17)], "twice": [(3, 7), (21, 23)]})
    stream(s, 30)
    fired = {(e.watch_id, e.time) for e in s.events()}
    # flicker: 5 fires, 9 is inside the cooldown, 17 fires; twice: each rising edge once, however long it lasts
    assert fired == {(a, 5.0), (a, 17.0), (b, 3.0), (b, 21.0)}
    s.unwatch(a)
    with pytest.raises(ValueError, match="no watch 0"):
        s.unwatch(a)
    assert list(s.watches) == [b]


def test_watch_input_errors():
    adapter = tiny_adapter("qwen2_5_vl")
    s = StreamingSession(adapter)
    with pytest.raises(ValueError, match="query is empty"):
        s.watch("  ")
    with pytest.raises(ValueError, match="share a first token"):
        s.watch("x", WatchConfig(positive=("now",), negative=("no",)))  # byte tokens: both start with "n"
    with pytest.raises(ValueError, match="threshold must be in"):
        WatchConfig(threshold=1.0)
    with pytest.raises(ValueError, match="cooldown_s"):
        WatchConfig(cooldown_s=float("nan"))
    with pytest.raises(ValueError, match="must contain"):
        WatchConfig(template="no query here")
    offline = StreamingSession(adapter, make_policy("uniform", budget=60))
    with pytest.raises(ValueError, match="builds its cache per question"):
        offline.watch("x")


def test_cli_watch_prints_alerts_and_writes_them(tmp_path, capsys):
    from ppllava_hermes.cli import main
    from ppllava_hermes.video import write_video

    frames, _ = random_frames(12, size=56, seed=1)
    path = write_video(tmp_path / "v.mp4", frames, fps=2.0)
    out_json = tmp_path / "out.json"
    # a threshold far below any score: the first decision fires, and the watch stays disarmed after it
    code = main(["stream", str(path), "--model", "tiny-qwen2.5-vl", "--memory", "hermes", "--budget", "64",
                 "--fps", "2", "--chunk-frames", "4", "--watch", "tell me when it moves", "--watch-threshold",
                 "0.001", "--quiet", "--json", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    assert "a decision every 2 s of video (4 frames)" in out and "ALERT 'tell me when it moves'" in out
    data = json.loads(out_json.read_text())
    (alert,) = data["alerts"]
    assert alert["time"] == 1.5 and alert["query"] == "tell me when it moves"  # frames 0 .. 1.5 s
    assert data["stats"]["watch_decisions"] == 3 and data["stats"]["watch_s"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--watch-threshold", "1.5"], "--watch-threshold: '1.5': expected a number between 0 and 1"),
    (["--watch-cooldown", "-2"], "--watch-cooldown: '-2': expected a finite number >= 0"),
    (["--memory", "uniform", "--budget", "64"], "--watch: watch(): memory policy 'uniform' builds its cache per question"),
])
def test_cli_watch_flag_errors(tmp_path, capsys, flags, message):
    from ppllava_hermes.cli import main
    from ppllava_hermes.video import write_video

    frames, _ = random_frames(4, size=56, seed=1)
    path = write_video(tmp_path / "v.mp4", frames, fps=2.0)
    try:
        code = main(["stream", str(path), "--model", "tiny-qwen2.5-vl", "--watch", "x", "--quiet", *flags])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_an_answer_word_outside_the_vocabulary_is_refused():
    from ppllava_hermes.world.model import has_shipped_model, load_shapesworld_adapter

    if not has_shipped_model():
        pytest.skip("no shipped ShapesWorld model")
    s = StreamingSession(load_shapesworld_adapter())
    with pytest.raises(ValueError, match="positive word 'banana' is not in this model's vocabulary"):
        s.watch("x", WatchConfig(template="{query}", positive=("banana",), negative=("no",)))
    wid = s.watch("Tell me when a new shape appears.")  # the model's own settings: "now" / "no"
    assert s.watches[wid].config.positive == ("now",)


def test_the_demo_streams_asks_and_watches(capsys):
    from ppllava_hermes.cli import main
    from ppllava_hermes.world.model import has_shipped_model

    if not has_shipped_model():
        pytest.skip("no shipped ShapesWorld model")
    assert main(["demo", "--minutes", "0.5", "--questions", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy " in out and "watch 'Tell me when a new shape appears.':" in out
    assert "appearances reported; decisions" in out
