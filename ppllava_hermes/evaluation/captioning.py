"""Video captioning: the prompt and the COCO caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D, METEOR).

* :data:`CAPTION_PROMPT` is the question of every caption record (MSR-VTT:
  :func:`~ppllava_hermes.evaluation.loaders.msrvtt_caption.load_msrvtt_caption`).
* :func:`caption_metrics` scores candidate captions against reference captions with **pycocoevalcap**
  (the COCO caption evaluation code that MSR-VTT results are reported with; optional dependency, a
  ``MissingExtraError`` names the extra when it is absent). Values are on pycocoevalcap's scales, as
  the COCO server reports them: BLEU, ROUGE-L and METEOR in [0, 1], CIDEr-D in [0, 10] (papers often
  print them multiplied by 100). BLEU is the corpus BLEU over all scored videos (n-gram counts and
  lengths summed, closest reference length for the brevity penalty); ROUGE-L, CIDEr-D and METEOR are
  the mean of the per-video scores; CIDEr-D's document frequencies come from the references of the
  videos scored (so it needs the whole test set to be comparable with published numbers, and is 0
  for a single video).
* Tokenisation: "ptb" is the COCO one (Stanford PTBTokenizer, lowercased, punctuation dropped), which
  runs on Java; "simple" is a regular-expression stand-in (lowercase, words and punctuation split,
  the same punctuation dropped) for machines without Java, whose scores can differ slightly from the
  official ones ("don't" stays one token, for one). "auto" uses "ptb" when ``java`` is on PATH and
  falls back to "simple" with a note if it is absent or fails.
* METEOR needs Java (and a 2 GB JVM heap): ``meteor=None`` computes it when ``java`` is found and
  otherwise leaves it None with a note; ``True`` requires it; ``False`` skips it. SPICE is not computed
  (its Stanford models are a separate download).

Videos: the candidates' ids are scored, each must have references; references without a candidate are
counted (``n_missing``) and not scored. An empty candidate is scored (it gets 0, not a crash).

**Comparing configurations** (:func:`caption_comparison`): several candidate sets of the same videos
(one per configuration) are tokenised together, once, and scored as above; against a reference set
each gets the differences of BLEU-4, ROUGE-L and CIDEr-D with paired bootstrap intervals over videos
(:mod:`.bootstrap`: the same draw of videos for both sets and all three metrics). Per resample, BLEU-4
is recomputed as the corpus BLEU of the drawn videos (pycocoevalcap's formula, from each video's n-gram
matches, candidate length and closest reference length: :func:`bleu_stats`, :func:`corpus_bleu4`);
ROUGE-L and CIDEr-D are the means of the drawn videos' own scores, CIDEr-D's document frequencies held
at those of all scored videos (so each interval is of exactly the difference the table reports).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..compat import MissingExtraError
from .records import QARecord

#: The captioning question put to the model for each video.
CAPTION_PROMPT = "Describe what happens in this video in one sentence."

#: The optional-dependency extra that installs pycocoevalcap.
CAPTIONS_EXTRA = "captions"

# pycocoevalcap's PTBTokenizer drops these tokens after tokenising; the "simple" tokenizer does too.
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                "...", ";"}  # fmt: skip
_SIMPLE_TOKEN = re.compile(r"\w+(?:['’-]\w+)*|\.\.\.|--|[^\w\s]")
TOKENIZERS = ("auto", "ptb", "simple")


@dataclass(frozen=True)
class CaptionScores:
    """Caption metrics of one set of candidates.

    Attributes:
        n: videos scored; n_missing: videos with references but no candidate (not scored).
        bleu: corpus BLEU-1 .. BLEU-4.
        rouge_l / cider / meteor: means over the videos (meteor None when not computed).
        tokenizer: "ptb" or "simple", the one used.
        notes: what was skipped or approximated, in words.
        per_video: ``{video: {"bleu4", "rouge_l", "cider", "meteor"?}}``.
    """

    n: int
    n_missing: int
    bleu: tuple[float, float, float, float]
    rouge_l: float
    cider: float
    meteor: float | None
    tokenizer: str
    notes: tuple[str, ...] = ()
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def bleu4(self) -> float:
        return self.bleu[3]

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON result files."""
        return {
            "n": self.n,
            "n_missing": self.n_missing,
            "bleu1": self.bleu[0],
            "bleu2": self.bleu[1],
            "bleu3": self.bleu[2],
            "bleu4": self.bleu[3],
            "rouge_l": self.rouge_l,
            "cider": self.cider,
            "meteor": self.meteor,
            "tokenizer": self.tokenizer,
            "notes": list(self.notes),
            "per_video": self.per_video,
        }


def _coco() -> Any:
    try:
        import pycocoevalcap
    except ModuleNotFoundError as e:
        raise MissingExtraError(
            f"caption metrics need the optional package 'pycocoevalcap': "
            f"pip install 'ppllava-hermes[{CAPTIONS_EXTRA}]'",
            name="pycocoevalcap",
        ) from e
    return pycocoevalcap


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (PTB tokenizer and METEOR need it)."""
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """The "simple" tokenisation: lowercase, words and punctuation split, COCO's punctuation dropped."""
    tokens = _SIMPLE_TOKEN.findall(text.replace("\n", " ").lower())
    return " ".join(t for t in tokens if t not in _PUNCTUATION)


def _ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Empty captions are kept out of the Java tokenizer: it drops empty lines, which would shift every
    # caption after them onto the wrong video.
    keep = {k: [{"caption": c} for c in v if c.strip()] for k, v in captions.items()}
    keep = {k: v for k, v in keep.items() if v}
    done = PTBTokenizer().tokenize(keep) if keep else {}
    out: dict[str, list[str]] = {}
    for k, v in captions.items():
        tokens = iter(done.get(k, []))
        out[k] = [next(tokens) if c.strip() else "" for c in v]
    if sum(len(v) for v in out.values()) != sum(len(v) for v in captions.values()):
        raise RuntimeError("PTB tokenizer returned a different number of captions than it was given")
    return out


def _tokenize(
    captions: Mapping[str, Sequence[str]], tokenizer: str, notes: list[str]
) -> tuple[dict[str, list[str]], str]:
    if tokenizer in ("auto", "ptb"):
        if not java_available():
            if tokenizer == "ptb":
                raise RuntimeError("tokenizer 'ptb': java is not on PATH (the PTB tokenizer runs on Java)")
            notes.append("java not found: used the 'simple' tokenizer; scores may differ slightly from COCO's")
        else:
            try:
                return _ptb_tokenize(captions), "ptb"
            except (OSError, RuntimeError, StopIteration) as e:
                if tokenizer == "ptb":
                    raise RuntimeError(f"tokenizer 'ptb' failed: {e}") from e
                notes.append(f"PTB tokenizer failed ({e}): used the 'simple' tokenizer")
    return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}, "simple"


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(gts, res)
    finally:  # the JVM holds 2 GB: stop it now rather than whenever the object is collected
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    return float(score), [float(s) for s in scores]


def caption_metrics(
    references: Mapping[str, Sequence[str]],
    candidates: Mapping[str, str],
    *,
    meteor: bool | None = None,
    tokenizer: str = "auto",
) -> CaptionScores:
    """Score ``candidates`` (``{video: caption}``) against ``references`` (``{video: [caption, ...]}``).

    See the module docstring for the metrics, tokenisation and METEOR. Raises ``ValueError`` (naming
    the video) for a candidate without references, an empty reference list or a caption that is not a
    string, and when there is no candidate at all.
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer {tokenizer!r} not in {TOKENIZERS}")
    _check_candidates(references, candidates)
    _coco()
    notes: list[str] = []
    ids = list(candidates)
    gts, used = _tokenize({v: list(references[v]) for v in ids}, tokenizer, notes)
    res, _ = _tokenize({v: [candidates[v]] for v in ids}, used, notes)
    return _scores_of_tokenized(gts, res, ids, used, notes, meteor=meteor,
                                n_missing=sum(1 for v in references if v not in candidates))


def _check_candidates(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str]) -> None:
    if not candidates:
        raise ValueError("caption_metrics: no candidate captions to score")
    for vid, cand in candidates.items():
        if not isinstance(cand, str):
            raise ValueError(f"candidate caption of {vid!r} is a {type(cand).__name__}, not a string")
        refs = references.get(vid)
        if refs is None:
            raise ValueError(f"candidate caption of {vid!r}: no reference captions for this video")
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise ValueError(f"references of {vid!r}: expected a non-empty list of non-empty strings")


def _scores_of_tokenized(gts: dict[Any, list[str]], res: dict[Any, list[str]], ids: list[str], used: str,
                         notes: list[str], *, meteor: bool | None, n_missing: int) -> CaptionScores:
    """:class:`CaptionScores` of already tokenised references (``gts``) and candidates (``res``)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    notes = list(notes)
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    if len(ids) < 2:
        notes.append("CIDEr-D is 0 for a single video: its n-gram weights come from other videos' references")
    meteor_score: float | None = None
    meteor_per: list[float] | None = None
    want = java_available() if meteor is None else meteor
    if want:
        if not java_available():
            raise RuntimeError("meteor=True: java is not on PATH (METEOR 1.5 runs on Java)")
        meteor_score, meteor_per = _meteor(gts, res)
    elif meteor is None:
        notes.append("java not found: METEOR not computed")
    per_video: dict[str, dict[str, float]] = {}
    for i, vid in enumerate(ids):
        row = {"bleu4": float(bleu_per[3][i]), "rouge_l": float(rouge_per[i]), "cider": float(cider_per[i])}
        if meteor_per is not None:
            row["meteor"] = meteor_per[i]
        per_video[vid] = row
    return CaptionScores(
        n=len(ids),
        n_missing=n_missing,
        bleu=(float(bleu[0]), float(bleu[1]), float(bleu[2]), float(bleu[3])),
        rouge_l=float(rouge),
        cider=float(cider),
        meteor=meteor_score,
        tokenizer=used,
        notes=tuple(notes),
        per_video=per_video,
    )


def caption_metrics_for_records(
    records: Sequence[QARecord], predictions: Mapping[str, str | None], **kw: Any
) -> CaptionScores:
    """:func:`caption_metrics` of a run: references from ``record.extra["references"]``, candidates from
    ``predictions`` (``{qid: caption}``; None, the model failed, scores as an empty caption).

    Records without a prediction are not scored (``n_missing``). A prediction whose qid is not among
    ``records``, or a record without references, raises ``ValueError`` naming it.
    """
    by_qid = {r.qid: r for r in records}
    for qid in predictions:
        if qid not in by_qid:
            raise ValueError(f"prediction for {qid!r}: no such caption record")
    references: dict[str, list[str]] = {}
    for r in records:
        refs = r.extra.get("references")
        if not isinstance(refs, list) or not refs:
            raise ValueError(f"record {r.qid!r}: no extra['references'] (not a caption record)")
        references[r.qid] = refs
    failed = [q for q, p in predictions.items() if p is None]
    scores = caption_metrics(references, {q: p or "" for q, p in predictions.items()}, **kw)
    if failed:
        note = f"{len(failed)} video(s) had no caption from the model and score as an empty caption"
        scores = replace(scores, notes=(*scores.notes, note))
    return scores


# ------------------------------------------------------------------------------ comparing configurations

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap BleuScorer's guards against 0 / 0


def bleu_stats(references: Sequence[Sequence[str]], candidates: Sequence[str]) -> np.ndarray:
    """``(n, 10)`` per-video BLEU statistics of tokenised captions, as pycocoevalcap's ``BleuScorer`` cooks
    them: candidate length, closest reference length, n-gram guesses (n = 1..4), clipped matches (1..4)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for refs, cand in zip(references, candidates, strict=True):
        cooked = cook_test(cand, cook_refs(list(refs)), eff="closest")
        rows.append([cooked["testlen"], cooked["reflen"], *cooked["guess"], *cooked["correct"]])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 10)


def corpus_bleu4(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 of summed :func:`bleu_stats` (``(..., 10)``: any leading shape), pycocoevalcap's formula:
    the geometric mean of the four smoothed precisions times the brevity penalty ``exp(1 - r / c)`` when
    the candidates are shorter than the closest references."""
    totals = np.asarray(totals, dtype=np.float64)
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2:6], totals[..., 6:10]
    bleu = np.prod((correct + _TINY) / (guess + _SMALL), axis=-1) ** 0.25
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    return np.where(ratio < 1, bleu * np.exp(1 - 1 / ratio), bleu)


def caption_comparison(
    references: Mapping[str, Sequence[str]],
    candidates: Mapping[str, Mapping[str, str]],
    reference: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    tokenizer: str = "auto",
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Caption metrics of several candidate sets of the same videos, and paired intervals against one.

    ``candidates`` maps a label (a configuration) to ``{video: caption}``; every set must caption the same
    videos as ``candidates[reference]``. Returns ``{label: {"scores": CaptionScores.as_dict(),
    "vs_reference": {"bleu4" | "rouge_l" | "cider": {"diff", "ci95"}}}}`` (``vs_reference`` empty for the
    reference itself); see the module docstring for how each interval is resampled. METEOR is not
    computed here. ``ValueError`` as :func:`caption_metrics`, and for a set of other videos or an unknown
    ``reference``.
    """
    from .bootstrap import percentile_interval, resample_indices

    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer {tokenizer!r} not in {TOKENIZERS}")
    if reference not in candidates:
        raise ValueError(f"caption_comparison: reference {reference!r} is not among {sorted(candidates)}")
    ids = list(candidates[reference])
    for label, cands in candidates.items():
        _check_candidates(references, cands)
        if set(cands) != set(ids):
            raise ValueError(f"caption_comparison: {label!r} captions other videos than {reference!r}")
    _coco()
    notes: list[str] = []
    merged: dict[Any, list[str]] = {("ref", v): list(references[v]) for v in ids}
    merged.update({("cand", label, v): [cands[v]] for label, cands in candidates.items() for v in ids})
    tokens, used = _tokenize(merged, tokenizer, notes)
    gts = {v: tokens[("ref", v)] for v in ids}
    out: dict[str, dict[str, Any]] = {}
    per: dict[str, dict[str, np.ndarray]] = {}
    for label in candidates:
        res = {v: tokens[("cand", label, v)] for v in ids}
        scores = _scores_of_tokenized(gts, res, ids, used, notes, meteor=False, n_missing=0)
        out[label] = {"scores": scores.as_dict(), "vs_reference": {}}
        per[label] = {
            "bleu": bleu_stats([gts[v] for v in ids], [res[v][0] for v in ids]),
            "rouge_l": np.asarray([scores.per_video[v]["rouge_l"] for v in ids]),
            "cider": np.asarray([scores.per_video[v]["cider"] for v in ids]),
        }
    idx = resample_indices(len(ids), n_boot, seed)
    base = per[reference]
    for label in candidates:
        if label == reference:
            continue
        mine = per[label]
        a, b = out[reference]["scores"], out[label]["scores"]
        bleu = corpus_bleu4(mine["bleu"][idx].sum(axis=1)) - corpus_bleu4(base["bleu"][idx].sum(axis=1))
        vs = {"bleu4": {"diff": b["bleu4"] - a["bleu4"], "ci95": percentile_interval(bleu, level)}}
        for metric in ("rouge_l", "cider"):
            diffs = (mine[metric] - base[metric])[idx].mean(axis=1)
            vs[metric] = {"diff": b[metric] - a[metric], "ci95": percentile_interval(diffs, level)}
        out[label]["vs_reference"] = vs
    return out
