"""Answer scoring: multiple-choice parsing, open-answer matching, an optional LLM judge, accuracy tables.

* :func:`parse_choice` reads which option a model's free text picks, or ``None`` when it cannot tell.
* :func:`normalize_answer` / :func:`score_open` give a deterministic open-answer match (the literature
  uses an LLM judge for open QA; :class:`OpenAIJudge` is that judge, off unless configured).
* :func:`accuracy` aggregates ``(record, correct)`` pairs overall and by task type / kind / duration.

Everything here uses the standard library only, so scoring runs anywhere the records load.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import QARecord

# ------------------------------------------------------------------------------------- normalisation

_ARTICLES = {"a", "an", "the"}
_UNITS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    word: 10 * k for k, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
}


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a / an / the, write number words as digits.

    "The Two dogs." -> "2 dogs"; "twenty-one" -> "21"; "1,000" -> "1000"; "3.5" keeps its point;
    "don't" -> "dont". Whitespace is collapsed.
    """
    t = str(text).lower()
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # thousands separators
    t = re.sub(r"['’`]", "", t)  # contractions stay one word
    t = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", t)  # full stops go, decimal points stay
    t = re.sub(r"[^\w\s.]|_", " ", t)
    out: list[str] = []
    tens_pending = False  # the previous token was "twenty", "thirty", ...: "twenty one" -> 21
    for tok in t.split():
        if tok in _ARTICLES:
            tens_pending = False
            continue
        if tok in _UNITS and tens_pending and 0 < _UNITS[tok] < 10:
            out[-1] = str(int(out[-1]) + _UNITS[tok])
            tens_pending = False
            continue
        if tok in _TENS:
            out.append(str(_TENS[tok]))
            tens_pending = True
            continue
        out.append(str(_UNITS[tok]) if tok in _UNITS else tok)
        tens_pending = False
    return " ".join(out)


# ------------------------------------------------------------------------------------ multiple choice

# Capitals that, followed by more words, are more likely English ("A dog", "I think") than option letters.
_WORDLIKE_LETTERS = {"A", "I"}
_LETTER_TOKEN = (
    r"(?P<tok>\(\s*(?P<paren>[A-Za-z])\s*\)|\[\s*(?P<square>[A-Za-z])\s*\]|\b(?P<bare>[A-Za-z])\b)"
)
# Explicit statements, strongest first; each is followed by a letter token.
_EXPLICIT = [
    re.compile(
        r"\b(?:correct|right|best|final)?\s*answer\s*(?:is|would\s+be|should\s+be|will\s+be|[:=\-])?\s*"
        r"(?:probably\s+|likely\s+)?(?:option|choice)?\s*[:\-]?\s*" + _LETTER_TOKEN,
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:i\s+(?:would\s+|will\s+|')?(?:choose|chose|pick|select|go\s+with))\s+(?:option\s+|choice\s+)?"
        + _LETTER_TOKEN,
        re.IGNORECASE,
    ),
    re.compile(r"\b(?:option|choice)\s*(?:is\s*)?[:\-]?\s*" + _LETTER_TOKEN, re.IGNORECASE),
]
_LEADING_PAREN = re.compile(r"^[(\[]\s*([A-Za-z])\s*[)\]]")
_LEADING_BARE = re.compile(r"^([A-Za-z])(?:\s*[.:)\],;]|\s+[-–]\s|\s*$)")
_LEADING_SPACED = re.compile(r"^([A-Za-z])\s+(\S.*)$", re.DOTALL)
_PAREN_ANYWHERE = re.compile(r"\(\s*([A-Z])\s*\)")
_TRAILING_LETTER = re.compile(r"[\s,;:\-]*[(\[]\s*([A-Za-z])\s*[)\]]\s*\.?$")
_ANSWER_PREFIX = re.compile(
    r"^(?:(?:the\s+)?(?:correct\s+|right\s+|best\s+|final\s+)?(?:answer|option|choice)\s*(?:is|would\s+be|[:=\-])?\s*)+",
    re.IGNORECASE,
)


def _clean(text: str) -> str:
    t = re.sub(r"</?\s*answer\s*>", " ", str(text), flags=re.IGNORECASE)
    t = t.replace("**", "").replace("__", "").replace("`", "")
    return t.strip().strip("\"'“”‘’").strip()


def _index(letter: str, n: int) -> int | None:
    i = ord(letter.upper()) - ord("A")
    return i if 0 <= i < n else None


def _starts_with_option(rest: str, option_norm: str) -> bool:
    rest_norm = normalize_answer(rest)
    return bool(option_norm) and (rest_norm == option_norm or rest_norm.startswith(option_norm + " "))


def _option_at(tail: str, options: Sequence[str], norms: Sequence[str]) -> int | None:
    """The option whose text ``tail`` is or begins with (the longest such option, if only one is)."""
    hit = _text_match(tail, options, norms)
    if hit is not None:
        return hit
    t = normalize_answer(tail)
    starts = [i for i, o in enumerate(norms) if o and (t == o or t.startswith(o + " "))]
    if not starts:
        return None
    longest = max(len(norms[i]) for i in starts)
    best = [i for i in starts if len(norms[i]) == longest]
    return best[0] if len(best) == 1 else None


def _explicit_letter(m: re.Match[str], text: str, options: Sequence[str], norms: Sequence[str]) -> int | None:
    """The option named after an explicit "answer is" / "option" pattern, if it really names one."""
    # The token may be the start of an option's own text rather than a letter: EgoSchema calls the
    # camera wearer "C" ("Answer: C is cooking."), Video-MME has options like "(a)(b)(c).".
    own = _option_at(text[m.start("tok") :], options, norms)
    if own is not None:
        return own
    if m.group("paren") or m.group("square"):
        return _index(m.group("paren") or m.group("square"), len(norms))
    letter = m.group("bare")
    i = _index(letter, len(norms))
    if i is None:
        return None
    after = text[m.end() :]
    if not after.strip() or re.match(r"^\s*[.,:;!?)\]]", after):
        return i  # "answer is B." / "answer: b"
    # Followed by more words: "answer is B red" is a letter, "answer is a dog" is English, unless the
    # words are that option's own text ("answer is A red" with option A "red").
    if letter.isupper() and letter not in _WORDLIKE_LETTERS:
        return i
    return i if _starts_with_option(after, norms[i]) else None


def _unique(indices: Iterable[int | None]) -> int | None | bool:
    """The single distinct index, None if none, False if several disagree."""
    found = {i for i in indices if i is not None}
    if len(found) == 1:
        return found.pop()
    return False if found else None


def _loose(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip().casefold()


def _text_match(text: str, options: Sequence[str], norms: Sequence[str]) -> int | None:
    """The one option whose text the answer is: literally (case, spaces, final dot aside), else
    normalised. Literal first because normalising can merge options ("(a)(b)" and "(b)(a)")."""
    loose = _loose(text)
    hits = [i for i, o in enumerate(options) if loose and _loose(o) == loose]
    if len(hits) == 1:
        return hits[0]
    t = normalize_answer(text)
    hits = [i for i, o in enumerate(norms) if t and o == t]
    return hits[0] if len(hits) == 1 else None


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The 0-based option a model's answer picks, or ``None`` when it cannot be told.

    Rules, in order (the first that decides wins; "decides" includes finding two different answers,
    which gives ``None``):

    1. the whole answer is one option's text (compared literally but for case, spaces and a final dot,
       then normalised: punctuation, articles, number words), possibly followed by that option's
       bracketed letter ("red (B)");
    2. a leading letter set off by brackets or punctuation: "B", "(B)", "B.", "b) ...", "B: red" (but
       "(A) or (C)", naming another bracketed letter, is ``None``); or a leading letter followed by that
       option's own text ("B red");
    3. an explicit statement: "the answer is B", "Answer: (B) red", "I choose C", "Option B",
       "Best option: (B)". A bare "A" / "I" (or lowercase letter) followed by more words counts only
       when those words are that option's text, so "The answer is a dog" is not option A;
    4. the answer with any "Answer:" prefix and letter marker removed is one option's text ("Answer: red");
    5. exactly one bracketed capital letter anywhere ("red (B)", "I think (C) is right");
    6. exactly one option's text is contained in the answer (as whole words; when several are, the one
       containing all the others, "dark red" over "red"), or the answer is contained in exactly one
       option's text.

    Letters beyond the number of options are ignored. "A dog runs" with no option about a dog -> None.
    """
    n = len(options)
    if n == 0:
        raise ValueError("parse_choice needs at least one option")
    text = _clean(text)
    if not text:
        return None
    norms = [normalize_answer(o) for o in options]

    # 1. whole text is an option, or an option followed by its own letter: "red (B)"
    hit = _text_match(text, options, norms)
    if hit is not None:
        return hit
    m = _TRAILING_LETTER.search(text)
    if (
        m
        and (hit := _text_match(text[: m.start()], options, norms)) is not None
        and hit == _index(m.group(1), n)
    ):
        return hit

    # 2. leading letter
    m = _LEADING_PAREN.match(text) or _LEADING_BARE.match(text)
    if m and (i := _index(m.group(1), n)) is not None:
        others = {_index(x, n) for x in _PAREN_ANYWHERE.findall(text[m.end() :])} - {None, i}
        return None if others else i  # "(A) or (C)" hedges between two options
    m = _LEADING_SPACED.match(text)
    if m and (i := _index(m.group(1), n)) is not None and _starts_with_option(m.group(2), norms[i]):
        return i

    # 3. explicit statements, strongest pattern first
    for pattern in _EXPLICIT:
        found = _unique(_explicit_letter(m, text, options, norms) for m in pattern.finditer(text))
        if found is False:
            return None
        if found is not None:
            return found

    # 4. text after an answer prefix / letter marker
    rest = _ANSWER_PREFIX.sub("", text).strip()
    rest = re.sub(r"^(?:[(\[]\s*[A-Za-z]\s*[)\]]|[A-Za-z]\s*[.:)])\s*", "", rest)
    if rest != text and (hit := _text_match(rest, options, norms)) is not None:
        return hit

    # 5. one bracketed capital letter anywhere
    found = _unique(_index(letter, n) for letter in _PAREN_ANYWHERE.findall(text))
    if found is False:
        return None
    if found is not None:
        return found

    # 6. containment
    pred = f" {normalize_answer(rest or text)} "
    if not pred.strip():
        return None
    inside = [i for i, o in enumerate(norms) if o and f" {o} " in pred]
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        widest = [i for i in inside if all(norms[j] in norms[i] for j in inside)]
        return widest[0] if len(widest) == 1 else None
    around = [i for i, o in enumerate(norms) if o and pred in f" {o} "]
    return around[0] if len(around) == 1 else None


def score_multiple_choice(pred_text: str, record: QARecord) -> bool:
    """Whether ``pred_text`` picks ``record``'s right option (an unreadable answer is wrong)."""
    if not record.is_multiple_choice:
        raise ValueError(f"record {record.qid!r} is an open question; use score_open")
    return parse_choice(pred_text, record.options) == record.answer


def score_answer(record: QARecord, prediction: str, judge: Any = None) -> bool:
    """Whether ``prediction`` answers ``record``: multiple choice, the parsed option is the right one; open,
    a normalised match (:func:`score_open`), or the judge's verdict when a judge is given (its failure
    falls back on the normalised match). The one scoring rule of the evaluator, the recipes and the demo."""
    if record.options:
        return parse_choice(prediction, record.options) == record.answer
    if judge is not None:
        try:
            return bool(judge.judge_record(record, prediction).correct)
        except JudgeError:
            pass
    return score_open(prediction, str(record.answer))


# ---------------------------------------------------------------------------------------- open answers

#: References of at most this many normalised words are matched by containment (see score_open).
SHORT_REFERENCE_WORDS = 3


def score_open(pred: str, reference: str) -> bool:
    """Deterministic open-answer match.

    Both texts are normalised (:func:`normalize_answer`). The prediction is right when
    - it equals the reference; or
    - the reference is "yes" or "no" and the first yes/no word of the prediction is the same
      ("No, he is not." is right for "no"; "Yes, there is no ..." is not);
    - the reference is short (at most :data:`SHORT_REFERENCE_WORDS` words, typical of MSVD / MSRVTT /
      ActivityNet-QA) and every one of its words occurs in the prediction ("2 dogs" for "two").
    Long references (VCGBench sentences) only match exactly: use an LLM judge for those. Negations
    ("not red" for "red") are not detected.
    """
    ref, hyp = normalize_answer(reference), normalize_answer(pred)
    if not ref:
        return False
    if hyp == ref:
        return True
    words = hyp.split()
    if ref in ("yes", "no"):
        first = next((w for w in words if w in ("yes", "no")), None)
        return first == ref
    ref_words = ref.split()
    return len(ref_words) <= SHORT_REFERENCE_WORDS and set(ref_words) <= set(words)


# --------------------------------------------------------------------------------------------- judge


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered something that is not a verdict."""


@dataclass(frozen=True)
class JudgeVerdict:
    """An LLM judge's decision: ``correct`` (yes/no accuracy) and ``score`` (0-5, None if not given)."""

    correct: bool
    score: float | None
    raw: str = ""


_JUDGE_SYSTEM = (
    "You grade answers to questions about videos. Decide whether the predicted answer means the same as "
    "the correct answer: paraphrases and synonyms count as a match; contradictions, wrong facts or a "
    "missing key point do not. Reply with JSON only, in the form "
    '{"correct": "yes" or "no", "score": an integer from 0 (unrelated) to 5 (perfect match)}.'
)


class OpenAIJudge:
    """Yes/no + 0-5 judge over an OpenAI-compatible ``/chat/completions`` endpoint (standard library only).

    Nothing is sent unless an instance is created with an endpoint and a model (or
    :meth:`from_env` finds ``PPLLAVA_JUDGE_BASE_URL`` and ``PPLLAVA_JUDGE_MODEL``). The API key is read
    from the environment variable named ``api_key_env`` at each call and sent as a Bearer token if set
    (local servers often need none); it is never stored on the instance or put in error messages.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 2,
        retry_delay: float = 1.0,
        temperature: float = 0.0,
    ) -> None:
        if not re.match(r"^https?://", base_url):
            raise ValueError(f"judge base_url must be http(s)://..., got {base_url!r}")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.temperature = temperature

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OpenAIJudge | None:
        """A judge configured by ``PPLLAVA_JUDGE_BASE_URL`` / ``_MODEL`` / ``_API_KEY_ENV``, else None."""
        env = os.environ if environ is None else environ
        url, model = env.get("PPLLAVA_JUDGE_BASE_URL"), env.get("PPLLAVA_JUDGE_MODEL")
        if not url or not model:
            return None
        return cls(url, model, api_key_env=env.get("PPLLAVA_JUDGE_API_KEY_ENV", "OPENAI_API_KEY"))

    def messages(self, question: str, reference: str, prediction: str) -> list[dict[str, str]]:
        user = f"Question: {question}\nCorrect answer: {reference}\nPredicted answer: {prediction}"
        return [{"role": "system", "content": _JUDGE_SYSTEM}, {"role": "user", "content": user}]

    def judge(self, question: str, reference: str, prediction: str) -> JudgeVerdict:
        """Ask the endpoint; raises :class:`JudgeError` when it fails or answers no verdict."""
        payload = {
            "model": self.model,
            "messages": self.messages(question, reference, prediction),
            "temperature": self.temperature,
        }
        body = self._post(payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"judge reply from {self.url} has no choices[0].message.content") from e
        return self.parse_verdict(str(content))

    def judge_record(self, record: QARecord, prediction: str) -> JudgeVerdict:
        if record.is_multiple_choice:
            raise ValueError(f"record {record.qid!r} is multiple choice; use score_multiple_choice")
        return self.judge(record.question, str(record.answer), prediction)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(payload).encode("utf-8")
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                last = e
                if e.code != 429 and e.code < 500:  # client errors will not get better by retrying
                    raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code}") from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = e
            except json.JSONDecodeError as e:
                raise JudgeError(f"judge endpoint {self.url} did not answer JSON") from e
            if attempt < self.max_retries:
                time.sleep(self.retry_delay * 2**attempt)
        raise JudgeError(f"judge endpoint {self.url} failed after {self.max_retries + 1} tries: {last}")

    @staticmethod
    def parse_verdict(content: str) -> JudgeVerdict:
        """Read ``{"correct": "yes", "score": 4}`` (also "pred" for the key, or loose "yes ... score: 4")."""
        decision: Any = None
        score: Any = None
        m = re.search(r"\{.*\}", content, re.DOTALL)
        if m:
            try:
                obj = json.loads(m.group(0))
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                decision = next((obj[k] for k in ("correct", "pred", "match") if k in obj), None)
                score = obj.get("score")
        if decision is None:
            w = re.search(r"\b(yes|no)\b", content, re.IGNORECASE)
            decision = w.group(1) if w else None
        if score is None:
            s = re.search(r"score\W{0,4}(\d+(?:\.\d+)?)", content, re.IGNORECASE)
            score = s.group(1) if s else None
        if isinstance(decision, bool):
            correct = decision
        elif isinstance(decision, str) and decision.strip().lower() in ("yes", "no", "true", "false"):
            correct = decision.strip().lower() in ("yes", "true")
        else:
            raise JudgeError(f"judge reply has no yes/no verdict: {content[:200]!r}")
        try:
            value = None if score is None else min(5.0, max(0.0, float(score)))
        except (TypeError, ValueError):
            value = None
        return JudgeVerdict(correct=correct, score=value, raw=content)


# ------------------------------------------------------------------------------------------- accuracy


@dataclass
class AccuracyStat:
    """Correct / total counts of one group."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def add(self, ok: bool) -> None:
        self.correct += int(bool(ok))
        self.total += 1


@dataclass
class AccuracyReport:
    """Overall accuracy and per-group tables; ``macro_task_type`` is the mean over task types
    (MLVU's M-avg, StreamingBench / OVO-Bench task averages)."""

    overall: AccuracyStat = field(default_factory=AccuracyStat)
    by_task_type: dict[str, AccuracyStat] = field(default_factory=dict)
    by_task_kind: dict[str, AccuracyStat] = field(default_factory=dict)
    by_duration_class: dict[str, AccuracyStat] = field(default_factory=dict)
    by_benchmark: dict[str, AccuracyStat] = field(default_factory=dict)

    @property
    def macro_task_type(self) -> float:
        stats = [s.accuracy for s in self.by_task_type.values() if s.total]
        return sum(stats) / len(stats) if stats else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, for JSON result files."""

        def table(groups: dict[str, AccuracyStat]) -> dict[str, dict[str, float]]:
            return {
                k: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy}
                for k, s in sorted(groups.items())
            }

        return {
            "overall": {
                "correct": self.overall.correct,
                "total": self.overall.total,
                "accuracy": self.overall.accuracy,
            },
            "macro_task_type": self.macro_task_type,
            "by_task_type": table(self.by_task_type),
            "by_task_kind": table(self.by_task_kind),
            "by_duration_class": table(self.by_duration_class),
            "by_benchmark": table(self.by_benchmark),
        }


def accuracy(results: Iterable[tuple[QARecord, bool]]) -> AccuracyReport:
    """Aggregate ``(record, correct)`` pairs.

    A record whose ``extra["task_types"]`` lists several types (LVBench) counts once under each of them
    in ``by_task_type`` and once in every other table. Records without a duration class are left out
    of ``by_duration_class``.
    """
    report = AccuracyReport()
    for record, ok in results:
        report.overall.add(ok)
        types = record.extra.get("task_types") or [record.task_type]
        for task_type in dict.fromkeys(str(t) for t in types):
            report.by_task_type.setdefault(task_type, AccuracyStat()).add(ok)
        report.by_task_kind.setdefault(record.task_kind, AccuracyStat()).add(ok)
        report.by_benchmark.setdefault(record.benchmark, AccuracyStat()).add(ok)
        if record.duration_class:
            report.by_duration_class.setdefault(record.duration_class, AccuracyStat()).add(ok)
    return report
