"""Streaming engine: a session that ingests frames into a KV memory and answers questions.

``sparsity`` holds the gates that keep unchanged or irrelevant frames out of the model.
"""

from .session import Answer, GenerationConfig, IngestStats, StreamConfig, StreamingSession
from .sparsity import NoveltyGate, RelevanceGate

__all__ = ["Answer", "GenerationConfig", "IngestStats", "NoveltyGate", "RelevanceGate", "StreamConfig",
           "StreamingSession"]
