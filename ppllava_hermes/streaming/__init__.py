"""Streaming: the KV engine (`engine`, no frames), the video session on top (`session`), chunking (`chunks`).

``watch`` holds standing queries ("tell me when ...") decided after every chunk; ``sparsity`` holds the gates that keep unchanged or irrelevant frames out of the model.
"""

from .engine import EngineStats, Generation, KVEngine
from .session import Answer, GenerationConfig, IngestStats, StreamConfig, StreamingSession
from .sparsity import NoveltyGate, RelevanceGate
from .watch import WatchConfig, WatchEvent

__all__ = ["Answer", "EngineStats", "Generation", "GenerationConfig", "IngestStats", "KVEngine", "NoveltyGate",
           "RelevanceGate", "StreamConfig", "StreamingSession", "WatchConfig", "WatchEvent"]
