"""Standing queries ("tell me when ...") on a live stream: a cheap decision after every ingested chunk.

Specification.

* :meth:`StreamingSession.watch` registers a query with a :class:`WatchConfig`; several may be active. After
  each chunk the session ingests, every watch makes one *decision*: inside a rollback of the engine (the
  same one ``ask`` uses, so the memory afterwards is bit-exactly the memory before, and the policy's
  question-time cache, if it has one, is used as for a question) the prompt ``template.format(query=...)``
  is prefilled as a question, and the next-token distribution after it is read at the answer words:
  ``score = P(positive) / (P(positive) + P(negative))``, each side summed over its words' first tokens.
  One question prefill per watch per chunk and no decoding: the cost is recorded in
  ``session.stats.watch_s`` / ``watch_decisions``.
* Firing: a decision with ``score >= threshold`` fires when the watch is *armed* and at least
  ``cooldown_s`` of stream time has passed since it last fired. Firing disarms it; it re-arms at the first
  decision below the threshold. So an event that stays true ("the circle is gone") is reported once,
  and a flickering score does not fire twice within the cooldown.
* A fired watch emits a :class:`WatchEvent` ``{watch_id, query, time, text, score}``: ``time`` is the stream
  time of the newest frame the decision saw; ``text`` is a short greedy answer to the prompt
  (``text_tokens`` tokens, 0: the positive word itself), decoded inside the same rollback, only when
  firing. Events go to the watch's callback and to the session's queue (:meth:`StreamingSession.events`).
* Decisions happen at chunk ends, so the decision interval is the chunk's length: an event is reported
  at most ``chunk_frames / fps`` seconds late, and a scoring tolerance shorter than that misses events
  no model could catch. ``StreamConfig(chunk_frames=2)`` (one Qwen temporal group) decides every 2 s at 1 fps.
* Offline policies (the memory stores frames and builds the cache at question time) refuse watches: a
  decision per chunk would replay the whole video per chunk.

Defaults (ours): the template asks a yes/no question of a chat model; the ShapesWorld model is trained to
answer its forward prompts with ``now`` / ``no`` (:data:`ppllava_hermes.world.model.WATCH`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Watch", "WatchConfig", "WatchEvent", "replay_firings"]


@dataclass(frozen=True)
class WatchConfig:
    """How a watch decides.

    Attributes:
        template: the decision prompt; ``{query}`` is replaced by the watch's query (ours).
        positive: answer words meaning "it happened" (each one's first token counts) (ours).
        negative: answer words meaning "not yet" (ours).
        threshold: fire when ``score >= threshold``, in (0, 1) (ours: 0.5, the argmax of the two sides).
        cooldown_s: stream seconds after a firing before the watch may fire again (ours: 10).
        text_tokens: tokens of the event's text, decoded greedily when firing (0: the positive word).
    """

    template: str = "{query} Has it just happened? Answer yes or no."
    positive: tuple[str, ...] = ("yes", "Yes")
    negative: tuple[str, ...] = ("no", "No")
    threshold: float = 0.5
    cooldown_s: float = 10.0
    text_tokens: int = 0

    def __post_init__(self) -> None:
        if "{query}" not in self.template:
            raise ValueError(f"watch template {self.template!r} must contain '{{query}}'")
        if not self.positive or not self.negative:
            raise ValueError("watch: positive and negative answer words must not be empty")
        if set(self.positive) & set(self.negative):
            raise ValueError(f"watch: a word is both positive and negative: {set(self.positive) & set(self.negative)}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"watch threshold must be in (0, 1), got {self.threshold}")
        if not self.cooldown_s >= 0:  # also refuses NaN
            raise ValueError(f"watch cooldown_s must be >= 0 seconds, got {self.cooldown_s}")
        if self.text_tokens < 0:
            raise ValueError(f"watch text_tokens must be >= 0, got {self.text_tokens}")


@dataclass(frozen=True)
class WatchEvent:
    """A watch that fired: its query, the stream time of the newest frame seen, the text and the score."""

    watch_id: int
    query: str
    time: float
    text: str
    score: float

    def to_dict(self) -> dict:
        return {"watch_id": self.watch_id, "query": self.query, "time": self.time, "text": self.text,
                "score": self.score}


@dataclass
class Watch:
    """One standing query and its state (the session owns it; read it, don't change it)."""

    watch_id: int
    query: str
    config: WatchConfig
    callback: Callable[[WatchEvent], None] | None = None
    prompt_ids: torch.Tensor | None = None  # (L,) the decision prompt as a question
    positive_ids: list[int] = field(default_factory=list)
    negative_ids: list[int] = field(default_factory=list)
    armed: bool = True
    last_fired: float | None = None
    decisions: int = 0
    scores: list[tuple[float, float]] = field(default_factory=list)  # (time, score) of every decision
    fired: list[WatchEvent] = field(default_factory=list)

    def score(self, logits: torch.Tensor) -> float:
        """``P(positive) / (P(positive) + P(negative))`` from next-token ``(V,)`` logits."""
        probs = torch.softmax(logits.float(), dim=-1)
        pos, neg = float(probs[self.positive_ids].sum()), float(probs[self.negative_ids].sum())
        return pos / (pos + neg) if pos + neg > 0 else 0.0

    def should_fire(self, time: float, score: float) -> bool:
        """Apply threshold, arming and cooldown to one decision (updates the state)."""
        self.decisions += 1
        self.scores.append((time, score))
        if score < self.config.threshold:
            self.armed = True
            return False
        cooled = self.last_fired is None or time - self.last_fired >= self.config.cooldown_s
        if not (self.armed and cooled):
            return False
        self.armed = False
        self.last_fired = time
        return True


def replay_firings(scores: list[tuple[float, float]], config: WatchConfig) -> list[float]:
    """Stream times at which a watch with ``config`` fires on a recorded ``(time, score)`` sequence: the
    same rule as the session's (threshold, arming, cooldown), so a threshold can be chosen after one run."""
    w = Watch(-1, "", config)
    return [t for t, sc in scores if w.should_fire(t, sc)]


def first_token_ids(tokenize: Callable[[str], torch.Tensor], words: tuple[str, ...], what: str,
                    unk_id: int | None = None) -> list[int]:
    """The first token of each answer word (duplicates once); ``ValueError`` if a word tokenizes to nothing
    or to the unknown token."""
    ids: list[int] = []
    for w in words:
        t = tokenize(w)
        if not len(t) or (unk_id is not None and int(t[0]) == unk_id):
            raise ValueError(f"watch: {what} word {w!r} is not in this model's vocabulary")
        if int(t[0]) not in ids:
            ids.append(int(t[0]))
    return ids
