"""Streaming engine: a session that ingests frames into a KV memory and answers questions."""

from .session import Answer, GenerationConfig, IngestStats, StreamConfig, StreamingSession

__all__ = ["Answer", "GenerationConfig", "IngestStats", "StreamConfig", "StreamingSession"]
