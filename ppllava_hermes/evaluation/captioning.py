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
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
    _coco()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    notes: list[str] = []
    ids = list(candidates)
    gts, used = _tokenize({v: list(references[v]) for v in ids}, tokenizer, notes)
    res, _ = _tokenize({v: [candidates[v]] for v in ids}, used, notes)
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
        n_missing=sum(1 for v in references if v not in candidates),
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
