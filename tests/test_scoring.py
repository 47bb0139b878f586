"""Tests of answer scoring: choice parsing, open-answer matching, the LLM judge (fake local server), accuracy."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppllava_hermes.evaluation import QARecord, load_benchmark
from ppllava_hermes.evaluation.scoring import (
    JudgeError,
    OpenAIJudge,
    accuracy,
    normalize_answer,
    parse_choice,
    score_multiple_choice,
    score_open,
)

COLOURS = ["blue", "red", "green", "yellow"]


# ----------------------------------------------------------------------------------------- parse_choice


@pytest.mark.parametrize(
    "text",
    [
        "B", "(B)", "B.", "B)", "b", "b) red", "B: red", "B - red", "[B]", "**B**", "  (b)  ",
        "The answer is B.", "The answer is b", "The correct answer is option B", "Answer: B", "answer: (B) red",
        "Answer: (B) red", "Best option: (B)", "Option B", "I choose B", "I would pick (B).",
        "red", "Red.", "RED", "The answer is red", "Answer: red", "B red", "red (B)", "It is red, I think.",
        "<answer>B</answer>", "Answer: B, red", "Option B is right because the car is red",
    ],
)  # fmt: skip
def test_parse_choice_reads_option_b(text: str) -> None:
    assert parse_choice(text, COLOURS) == 1


@pytest.mark.parametrize(
    "text",
    [
        "A dog runs",  # leading article, no option about a dog
        "The answer is a dog",
        "I don't know",
        "",
        "   ",
        "E.",  # beyond the four options
        "blue or red",  # two options named
        "The answer is B, no wait, the answer is C",  # two explicit answers
        "(A) or (C)",  # two bracketed letters
        "purple",
    ],
)
def test_parse_choice_returns_none_when_unsure(text: str) -> None:
    assert parse_choice(text, COLOURS) is None


def test_parse_choice_article_a_versus_option_a() -> None:
    options = ["a man is cooking", "a woman is cooking", "a dog runs", "nothing happens"]
    assert parse_choice("A dog runs", options) == 2  # option text, not letter A
    assert parse_choice("A dog runs.", ["cat", "bird"]) is None
    assert parse_choice("A", options) == 0
    assert parse_choice("A.", options) == 0
    assert parse_choice("The answer is A.", options) == 0
    assert parse_choice("Answer: A man is cooking", ["a woman is cooking", "a man is cooking"]) == 1
    assert parse_choice("A red", ["red", "blue"]) == 0  # "A" followed by option A's own text
    assert parse_choice("A red", ["blue", "red"]) == 1  # here "A" is the article


def test_parse_choice_option_text_that_starts_like_a_letter() -> None:
    ego = ["C is cooking.", "C is doing laundry.", "C is cleaning the kitchen.", "C is cleaning dishes."]
    assert parse_choice("Answer: C is cleaning dishes.", ego) == 3  # EgoSchema's camera wearer "C"
    assert parse_choice("I think the answer is C is doing laundry, since ...", ego) == 1
    assert parse_choice("The answer is C.", ego) == 2
    assert parse_choice("C", ego) == 2
    seq = ["(c)(b)(a).", "(a)(b)(c).", "(a)(c)(b).", "(b)(a)(c)."]  # Video-MME order options
    assert parse_choice("Answer: (a)(b)(c).", seq) == 1
    assert parse_choice("(a)(b)(c). (B)", seq) == 1
    assert parse_choice("B. (a)(b)(c).", seq) == 1


def test_parse_choice_containment_rules() -> None:
    options = ["red", "dark red", "blue"]
    assert parse_choice("The car is dark red.", options) == 1  # the option containing the other match
    assert parse_choice("drill a hole", ["Plant a tree.", "The person is going to drill a hole.", "Paint."]) == 1
    assert parse_choice("The person", ["The person paints.", "The person drills."]) is None
    assert parse_choice("DEN", ["MIN.", "DEN.", "MIA.", "DEN."]) is None  # duplicate options (StreamingBench)
    assert parse_choice("two", ["1.", "2.", "3."]) == 1  # number words
    assert parse_choice("(c)(b)(a).", ["(c)(b)(a).", "(a)(b)(c)."]) == 0  # Video-MME sequence options


def test_parse_choice_on_real_excerpts() -> None:
    """Every record of the real multiple-choice excerpts, answered in several styles, reads back right."""
    root = Path(os.environ.get("PPLLAVA_SHARED_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"))
    files = {"ovo_bench.json": "ovo_bench", "egoschema_subset_qa.json": "egoschema", "videomme_qa.json": "videomme",
             "streamingbench_sqa.json": "streamingbench", "mlvu_needle.json": "mlvu", "lvbench_qa.json": "lvbench"}  # fmt: skip
    records = [r for f, name in files.items() if (root / f).is_file() for r in load_benchmark(name, root / f).records]
    records = [r for r in records if r.is_multiple_choice]
    if not records:
        pytest.skip(f"no real excerpts in {root}")
    for r in records:
        letter, text = r.answer_letter, r.options[r.answer]
        for answer in (letter, f"({letter})", f"The answer is {letter}.", f"Answer: ({letter}) {text}", text,
                       f"{text} ({letter})", f"I think the answer is {text}"):  # fmt: skip
            assert parse_choice(answer, r.options) == r.answer, (r.benchmark, r.qid, answer)
        assert parse_choice("A dog runs across the street.", r.options) is None


def test_parse_choice_needs_options() -> None:
    with pytest.raises(ValueError):
        parse_choice("B", [])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 8), data=st.data())
def test_parse_choice_letter_formats_property(n: int, data: st.DataObject) -> None:
    options = [f"choice number {k} text" for k in range(n)]
    k = data.draw(st.integers(0, n - 1))
    letter = chr(ord("A") + k)
    form = data.draw(st.sampled_from(["{L}", "({L})", "{L}.", "{l})", "The answer is {L}.", "Answer: ({L})",
                                      "Option {L}", "{L}. {t}", "{t}"]))  # fmt: skip
    text = form.format(L=letter, l=letter.lower(), t=options[k])
    assert parse_choice(text, options) == k


def test_score_multiple_choice() -> None:
    rec = QARecord(benchmark="t", qid="1", video="v.mp4", question="Colour?", options=COLOURS, answer=1)
    assert score_multiple_choice("The answer is (B).", rec)
    assert not score_multiple_choice("A", rec)
    assert not score_multiple_choice("I am not sure", rec)
    with pytest.raises(ValueError):
        score_multiple_choice("B", QARecord(benchmark="t", qid="2", video="v", question="q", answer="red"))


# ------------------------------------------------------------------------------------------ open answers


@pytest.mark.parametrize(
    ("text", "normalised"),
    [("The Two dogs.", "2 dogs"), ("twenty-one", "21"), ("Twenty one cats", "21 cats"), ("1,000 people", "1000 people"),
     ("3.5 m", "3.5 m"), ("don't", "dont"), ("  A  man,  an apple! ", "man apple"), ("zero", "0")],
)  # fmt: skip
def test_normalize_answer(text: str, normalised: str) -> None:
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("pred", "reference", "ok"),
    [
        ("A man.", "man", True),
        ("There are two dogs", "2", True),
        ("two", "2", True),
        ("the red car", "red car", True),
        ("No, he is not.", "no", True),
        ("Yes, but there is no hat", "no", False),
        ("It is white", "white", True),
        ("black", "white", False),
        ("", "white", False),
        ("anything", "", False),
        ("The dancers wear belly-dancing outfits.", "The women dancers are a group of five, wearing outfits.", False),
        ("The women dancers are a group of five, wearing outfits", "The women dancers are a group of five, wearing outfits.", True),
    ],
)
def test_score_open(pred: str, reference: str, ok: bool) -> None:
    assert score_open(pred, reference) is ok


# ----------------------------------------------------------------------------------------------- judge


class _FakeChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions stand-in; replies are queued by the test."""

    replies: list[tuple[int, Any]] = []
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode())
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, payload = type(self).replies.pop(0) if type(self).replies else (200, "yes")
        if isinstance(payload, str):
            payload = {"choices": [{"message": {"role": "assistant", "content": payload}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    _FakeChat.replies, _FakeChat.requests = [], []
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_judge_yes_and_score(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    _FakeChat.replies = [(200, 'Here you go: {"correct": "yes", "score": 4}')]
    judge = OpenAIJudge(fake_server, "judge-model", api_key_env="FAKE_JUDGE_KEY", retry_delay=0)
    verdict = judge.judge("What colour is the car?", "red", "It is red.")
    assert verdict.correct is True and verdict.score == 4.0
    (request,) = _FakeChat.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "judge-model"
    assert "Correct answer: red" in request["body"]["messages"][-1]["content"]


def test_judge_no_key_and_loose_reply(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_JUDGE_KEY", raising=False)
    _FakeChat.replies = [(200, "No. Score: 1")]
    rec = QARecord(benchmark="t", qid="1", video="v", question="What?", answer="a box")
    verdict = OpenAIJudge(fake_server, "m", api_key_env="FAKE_JUDGE_KEY", retry_delay=0).judge_record(rec, "a gun")
    assert verdict.correct is False and verdict.score == 1.0
    assert _FakeChat.requests[0]["auth"] is None


def test_judge_retries_server_errors_then_succeeds(fake_server: str) -> None:
    _FakeChat.replies = [(500, {"error": "busy"}), (429, {"error": "slow down"}), (200, '{"pred": "no", "score": 0}')]
    verdict = OpenAIJudge(fake_server, "m", max_retries=2, retry_delay=0).judge("q", "a", "b")
    assert verdict.correct is False and verdict.score == 0.0 and len(_FakeChat.requests) == 3


def test_judge_errors(fake_server: str) -> None:
    judge = OpenAIJudge(fake_server, "m", max_retries=1, retry_delay=0)
    _FakeChat.replies = [(400, {"error": "bad request"})]
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.judge("q", "a", "b")
    assert len(_FakeChat.requests) == 1  # client errors are not retried
    _FakeChat.replies = [(200, "I cannot decide.")]
    with pytest.raises(JudgeError, match="no yes/no verdict"):
        judge.judge("q", "a", "b")
    _FakeChat.replies = [(200, {"unexpected": True})]
    with pytest.raises(JudgeError, match="choices"):
        judge.judge("q", "a", "b")
    _FakeChat.replies = [(503, {}), (503, {})]
    with pytest.raises(JudgeError, match="failed after 2 tries"):
        judge.judge("q", "a", "b")


def test_judge_is_off_unless_configured() -> None:
    assert OpenAIJudge.from_env({}) is None
    assert OpenAIJudge.from_env({"PPLLAVA_JUDGE_BASE_URL": "http://127.0.0.1:1/v1"}) is None
    judge = OpenAIJudge.from_env({"PPLLAVA_JUDGE_BASE_URL": "http://127.0.0.1:1/v1/", "PPLLAVA_JUDGE_MODEL": "m"})
    assert judge is not None and judge.url == "http://127.0.0.1:1/v1/chat/completions"
    with pytest.raises(ValueError):
        OpenAIJudge("file:///etc/passwd", "m")


def test_parse_verdict_variants() -> None:
    assert OpenAIJudge.parse_verdict('{"correct": true, "score": 7}').score == 5.0  # clamped
    assert OpenAIJudge.parse_verdict('{"pred": "yes"}').score is None
    assert OpenAIJudge.parse_verdict("yes").correct


# -------------------------------------------------------------------------------------------- accuracy


def _rec(qid: str, task_type: str, kind: str, duration: str | None = None, **extra: Any) -> QARecord:
    return QARecord(benchmark="b", qid=qid, video="v", question="q", options=["x", "y"], answer=0,
                    task_type=task_type, task_kind=kind, duration_class=duration, extra=extra)  # fmt: skip


def test_accuracy_tables() -> None:
    results = [
        (_rec("1", "EPM", "backward"), True),
        (_rec("2", "EPM", "backward"), False),
        (_rec("3", "OCR", "realtime", "short"), True),
        (_rec("4", "reasoning", "other", "long", task_types=["reasoning", "summarization"]), False),
    ]
    report = accuracy(results)
    assert (report.overall.correct, report.overall.total) == (2, 4) and report.overall.accuracy == 0.5
    assert report.by_task_type["EPM"].accuracy == 0.5 and report.by_task_type["OCR"].accuracy == 1.0
    assert report.by_task_type["summarization"].total == 1  # multi-type records count under each type
    assert report.by_task_kind["backward"].total == 2
    assert set(report.by_duration_class) == {"short", "long"}
    assert report.macro_task_type == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    table = report.as_dict()
    assert table["overall"] == {"correct": 2, "total": 4, "accuracy": 0.5}
    json.dumps(table)  # plain numbers only
    assert accuracy([]).overall.accuracy == 0.0
