"""KV memory of a stream: storage (``cache``), policies that keep it within a budget, and RoPE re-indexing.

memory/ knows nothing of video, pooling or a specific model family: it sees keys, values, positions
and per-entry metadata (frame id, kind, count). One policy per file:

- ``policy.FullCache`` ("full"): keep everything.
- ``window.RecentWindow`` ("window"): newest frames only (SimpleStream).
- ``sink.StreamingLLM`` ("sink"): attention sinks + recent window.
- ``hermes.Hermes`` ("hermes"): hierarchical memory with per-tier importance and anchors.
- ``uniform.UniformSampling`` ("uniform"): offline: re-encode uniformly sampled frames per question.
- ``snapkv.SnapKV`` ("snapkv"): attention of a pseudo-query, pooled (the attention-only ablation).
- ``retrieval.Retrieval`` ("retrieval"): the window on the accelerator, evicted frames offloaded to host
  memory and retrieved by the question's attention (ReKV-style); ``retrieval.TokenRetrieval``
  ("retrieval-tokens") ranks a stored frame by its best entry instead of its mean key.
- ``novelty.NoveltyKV`` ("novelty"): the newest frames plus the entries least like anything older in memory
  (event-aware importance: one copy of each distinct thing the stream showed).
- ``merge.TokenMerge`` / ``merge.MergeThenEvict`` ("merge"): DMC-style append-or-merge, then HERMES
  when a budget is given; ``proportional`` adds log(count) to attention.
"""

from __future__ import annotations

from .cache import MemoryCache, MemoryLayer, TokenKind, TokenMeta
from .hermes import Hermes
from .merge import KeyDimDecider, MergeThenEvict, SimilarityDecider, TokenMerge, merge_policy
from .novelty import NoveltyKV
from .policy import AttentionProbe, CompressResult, FullCache, MemoryPolicy, QuestionProbe
from .retrieval import HostBlock, QuestionReport, Retrieval, TokenRetrieval
from .sink import StreamingLLM
from .snapkv import SnapKV
from .uniform import UniformSampling
from .window import RecentWindow

POLICIES: dict[str, type[MemoryPolicy]] = {
    "full": FullCache,
    "window": RecentWindow,
    "sink": StreamingLLM,
    "hermes": Hermes,
    "uniform": UniformSampling,
    "snapkv": SnapKV,
    "merge": MergeThenEvict,
    "retrieval": Retrieval,
    "retrieval-tokens": TokenRetrieval,
    "novelty": NoveltyKV,
}


def make_policy(name: str, budget: int | None = None, **kwargs) -> MemoryPolicy:
    """Build a policy by name; ``budget`` is the visual tokens kept per layer (None: the policy's default).

    ``full`` ignores the budget. Other keyword arguments go to the policy's dataclass.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown memory policy {name!r}; choose one of {sorted(POLICIES)}")
    cls = POLICIES[name]
    if name == "full":
        if kwargs:
            raise ValueError(f"memory policy 'full' takes no options, got {sorted(kwargs)}")
        return cls()
    if name == "merge":  # merge only, or merge then HERMES at the budget
        return merge_policy(budget=budget, **kwargs)
    if budget is not None:
        kwargs["budget"] = budget
    return cls(**kwargs)


__all__ = [
    "POLICIES",
    "AttentionProbe",
    "CompressResult",
    "FullCache",
    "Hermes",
    "HostBlock",
    "KeyDimDecider",
    "MemoryCache",
    "MemoryLayer",
    "MemoryPolicy",
    "MergeThenEvict",
    "NoveltyKV",
    "QuestionProbe",
    "QuestionReport",
    "RecentWindow",
    "Retrieval",
    "SimilarityDecider",
    "SnapKV",
    "StreamingLLM",
    "TokenKind",
    "TokenMerge",
    "TokenRetrieval",
    "TokenMeta",
    "UniformSampling",
    "make_policy",
]
