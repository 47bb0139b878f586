"""MSR-VTT captioning: the loader on our fixture and the COCO caption metrics against hand-computed values.

The fixture ``fixtures/msrvtt_caption_sample.json`` is in the ``test_videodatainfo.json`` format:
video7010 (3 references, out of sen_id order), video7011 (2 good references and one without caption),
video7012 (no reference: skipped), a video without video_id (skipped), video7010 again (skipped), a
train video, and a sentence naming no listed video.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from ppllava_hermes.evaluation.captioning import (
    CAPTION_PROMPT,
    caption_metrics,
    caption_metrics_for_records,
    java_available,
    simple_tokenize,
)
from ppllava_hermes.evaluation.loaders import load_benchmark, load_msrvtt_caption
from ppllava_hermes.evaluation.loaders._common import MalformedRecordWarning

FIXTURE = Path(__file__).parent / "fixtures" / "msrvtt_caption_sample.json"


def load(**kw: Any):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRecordWarning)
        return load_msrvtt_caption(FIXTURE, **kw)


# ---------------------------------------------------------------------------------------------- loader


def test_one_caption_record_per_video_with_all_references() -> None:
    records = {r.qid: r for r in load().records}
    assert list(records) == ["video7010", "video7011", "video0"]
    r = records["video7010"]
    assert r.benchmark == "msrvtt_caption" and r.video == "video7010.mp4" and r.question == CAPTION_PROMPT
    assert r.options == [] and r.task_type == "caption" and r.task_kind == "open" and r.timestamp is None
    assert r.extra["references"] == ["A man sings a song loudly.", "a singer performs in front of a crowd",
                                     "a man is singing on a stage"]  # fmt: skip  (sen_id order)
    assert r.answer == "A man sings a song loudly."
    assert (r.start, r.end) == (None, None)  # the clip files already are the segment
    assert (r.extra["source_start"], r.extra["source_end"], r.extra["split"]) == (137.72, 149.44, "test")
    assert records["video7011"].extra["references"] == ["two dogs run on the grass", "dogs are playing in a park"]


def test_malformed_videos_and_sentences_are_reported() -> None:
    with pytest.warns(MalformedRecordWarning) as caught:
        result = load_msrvtt_caption(FIXTURE)
    assert [(s.index, s.qid, s.reason) for s in result.skipped] == [
        (2, "video7012", "video 'video7012' has no reference caption"),
        (3, None, "missing field 'video_id'"),
        (4, "video7010", "duplicate qid 'video7010'"),
    ]
    messages = [str(w.message) for w in caught]
    assert any("1 malformed sentence(s) left out and 1 sentence(s) name no listed video; "
               "first bad sentence index 5" in m for m in messages)  # fmt: skip


def test_split_filter_registry_and_bad_files(tmp_path: Path) -> None:
    assert [r.qid for r in load(subset="train").records] == ["video0"]
    assert [r.qid for r in load(subset="test").records] == ["video7010", "video7011"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRecordWarning)
        assert len(load_benchmark("msrvtt-caption", FIXTURE, subset="test")) == 2
    with pytest.raises(ValueError, match=r"unknown MSR-VTT split 'val'"):
        load_msrvtt_caption(FIXTURE, subset="val")
    bad = tmp_path / "test_videodatainfo.json"
    bad.write_text('{"videos": []}')
    with pytest.raises(ValueError, match=r"test_videodatainfo.json: expected an object with 'videos' and 'sentences'"):
        load_msrvtt_caption(bad)
    bad.write_text("[]")
    with pytest.raises(ValueError, match=r"expected a top-level JSON dict, found list"):
        load_msrvtt_caption(bad)


# --------------------------------------------------------------------------------------------- metrics

# v1: the candidate is the reference minus its last word; v2: the candidate is the reference.
REFS = {"v1": ["A man is singing loudly."], "v2": ["Two dogs run on the grass"]}
CANDS = {"v1": "a man is singing", "v2": "Two dogs run on the grass."}
BETA = 1.2  # pycocoevalcap's ROUGE-L beta


def _rouge_l(p: float, r: float) -> float:
    return (1 + BETA**2) * p * r / (r + BETA**2 * p)


def _expected_cider_v1() -> float:
    # Every n-gram of v1's reference appears in no other video's reference, so all weigh the same
    # (log(2 videos / 1)); the candidate's n-grams all appear in the reference, so the clipped cosine
    # for n is sqrt(candidate n-grams / reference n-grams). Length penalty exp(-(4-5)^2 / (2 * 6^2)).
    cos = [math.sqrt(h / r) for h, r in ((4, 5), (3, 4), (2, 3), (1, 2))]
    return 10 * sum(cos) / 4 * math.exp(-1 / 72)


@pytest.mark.parametrize("tokenizer", ["simple", "ptb"])
def test_metrics_match_hand_computed_values(tokenizer: str) -> None:
    pytest.importorskip("pycocoevalcap")
    if tokenizer == "ptb" and not java_available():
        pytest.skip("the PTB tokenizer needs java")
    s = caption_metrics(REFS, CANDS, meteor=False, tokenizer=tokenizer)
    assert s.tokenizer == tokenizer and s.n == 2 and s.n_missing == 0 and s.meteor is None
    # corpus BLEU: every n-gram precision is 1 (v1's n-grams are all in its reference); the brevity
    # penalty is exp(1 - reference length / candidate length) = exp(1 - 11/10)
    assert s.bleu == pytest.approx((math.exp(-0.1),) * 4, abs=1e-6)
    assert s.bleu4 == pytest.approx(math.exp(-0.1), abs=1e-6)
    assert s.per_video["v2"]["bleu4"] == pytest.approx(1.0, abs=1e-6)  # a candidate equal to its reference
    assert s.per_video["v1"]["bleu4"] == pytest.approx(math.exp(1 - 5 / 4), abs=1e-6)
    # ROUGE-L: v1 LCS 4 of 4 candidate / 5 reference tokens
    assert s.per_video["v1"]["rouge_l"] == pytest.approx(_rouge_l(1.0, 0.8))
    assert s.per_video["v2"]["rouge_l"] == pytest.approx(1.0)
    assert s.rouge_l == pytest.approx((_rouge_l(1.0, 0.8) + 1.0) / 2)
    # CIDEr-D (x10): 10 for the exact candidate
    assert s.per_video["v2"]["cider"] == pytest.approx(10.0)
    assert s.per_video["v1"]["cider"] == pytest.approx(_expected_cider_v1())
    assert s.cider == pytest.approx((_expected_cider_v1() + 10.0) / 2)
    assert s.as_dict()["bleu4"] == s.bleu4


def test_metrics_edge_cases() -> None:
    pytest.importorskip("pycocoevalcap")
    s = caption_metrics({"a": ["a cat sits on the mat"], "b": ["a dog barks"], "c": ["x y"]},
                        {"a": "", "b": "completely unrelated words here"}, meteor=False, tokenizer="simple")  # fmt: skip
    assert s.n == 2 and s.n_missing == 1  # "c" has references but no candidate: not scored
    assert s.bleu4 == pytest.approx(0.0, abs=1e-6) and s.cider == 0.0 and s.rouge_l == 0.0
    single = caption_metrics({"a": ["a cat sits"]}, {"a": "a cat sits"}, meteor=False, tokenizer="simple")
    assert single.cider == 0.0 and any("single video" in n for n in single.notes)
    with pytest.raises(ValueError, match=r"candidate caption of 'z': no reference captions for this video"):
        caption_metrics(REFS, {"z": "a"}, meteor=False)
    with pytest.raises(ValueError, match=r"references of 'v1': expected a non-empty list"):
        caption_metrics({"v1": []}, {"v1": "a"}, meteor=False)
    with pytest.raises(ValueError, match=r"no candidate captions"):
        caption_metrics(REFS, {}, meteor=False)
    with pytest.raises(ValueError, match=r"tokenizer 'nltk' not in"):
        caption_metrics(REFS, CANDS, tokenizer="nltk")


def test_ptb_tokenizer_keeps_empty_candidates_on_their_video() -> None:
    pytest.importorskip("pycocoevalcap")
    if not java_available():
        pytest.skip("the PTB tokenizer needs java")
    s = caption_metrics({"a": ["a cat sits on the mat"], "b": ["a dog barks loudly at night"]},
                        {"a": "", "b": "a dog barks loudly at night"}, meteor=False, tokenizer="ptb")  # fmt: skip
    assert s.per_video["a"]["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert s.per_video["b"]["bleu4"] == pytest.approx(1.0, abs=1e-6)


def test_without_java_falls_back_with_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pycocoevalcap")
    from ppllava_hermes.evaluation import captioning

    monkeypatch.setattr(captioning, "java_available", lambda: False)
    s = caption_metrics(REFS, CANDS)  # tokenizer "auto", meteor None
    assert s.tokenizer == "simple" and s.meteor is None
    assert any("used the 'simple' tokenizer" in n for n in s.notes)
    assert any("METEOR not computed" in n for n in s.notes)
    with pytest.raises(RuntimeError, match=r"tokenizer 'ptb': java is not on PATH"):
        caption_metrics(REFS, CANDS, tokenizer="ptb")
    with pytest.raises(RuntimeError, match=r"meteor=True: java is not on PATH"):
        caption_metrics(REFS, CANDS, meteor=True, tokenizer="simple")


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from ppllava_hermes.compat import MissingExtraError

    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'ppllava-hermes\[captions\]'"):
        caption_metrics(REFS, CANDS, meteor=False)


def test_simple_tokenizer() -> None:
    assert simple_tokenize("A man, singing... LOUDLY!\nOn stage-left.") == "a man singing loudly on stage-left"


def test_metrics_of_a_run_over_loaded_records() -> None:
    pytest.importorskip("pycocoevalcap")
    records = load(subset="test").records
    preds = {"video7010": "A man sings a song loudly.", "video7011": None}  # video7011: the model failed
    s = caption_metrics_for_records(records, preds, meteor=False, tokenizer="simple")
    assert s.n == 2 and s.per_video["video7010"]["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert s.per_video["video7011"]["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert any("1 video(s) had no caption" in n for n in s.notes)
    with pytest.raises(ValueError, match=r"prediction for 'video9': no such caption record"):
        caption_metrics_for_records(records, {"video9": "x"})


@pytest.mark.slow
def test_meteor_when_java_is_present() -> None:
    pytest.importorskip("pycocoevalcap")
    if not java_available():
        pytest.skip("METEOR needs java")
    s = caption_metrics(REFS, CANDS, meteor=True, tokenizer="ptb")
    assert s.per_video["v2"]["meteor"] == pytest.approx(1.0)
    assert 0.0 < s.per_video["v1"]["meteor"] < 1.0 and s.meteor is not None
