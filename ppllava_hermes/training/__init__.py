"""Training the prompt-guided pooling (SFT) and preference tuning (DPO, see ``integrations.trl_video``).

- :mod:`.data`: instruction data (LLaVA-Video / VideoChatGPT JSON, ShapesWorld), data-error policy.
- :mod:`.sequence`: the teacher-forced sequence, identical to the streaming session's at question time.
- :mod:`.model`: :class:`PooledVideoLM` (VLM + pooling + CLIP relevance) and the batch layout.
- :mod:`.trainable`: what trains, saving and loading the trained parts.
- :mod:`.evaluation`: held-out accuracy through the streaming session, and loss.
- :mod:`.build`: building the model from command-line flags.

The runnable scripts are ``train/finetune_pooling.py`` and ``train/dpo.py``.
"""

from .data import (
    DataError,
    DataErrorLog,
    DataWarning,
    FrameSampling,
    ShapesWorldDataset,
    VideoInput,
    VideoQADataset,
    VideoQAExample,
    load_instruction_file,
    question_only,
    shapesworld_examples,
    write_shapesworld_json,
)
from .evaluation import AccuracyResult, evaluate_accuracy, evaluate_loss, generate_answer
from .model import PooledVideoLM, VideoLMOutput, answer_ids, collate_video_batch
from .sequence import chunk_spans, context_sequence, encode_chunks, stack_sequences
from .trainable import TrainableConfig, apply_trainable, load_trained, save_trained, trainable_state_dict

__all__ = [
    "AccuracyResult",
    "DataError",
    "DataErrorLog",
    "DataWarning",
    "FrameSampling",
    "PooledVideoLM",
    "ShapesWorldDataset",
    "TrainableConfig",
    "VideoInput",
    "VideoLMOutput",
    "VideoQADataset",
    "VideoQAExample",
    "answer_ids",
    "apply_trainable",
    "chunk_spans",
    "collate_video_batch",
    "context_sequence",
    "encode_chunks",
    "evaluate_accuracy",
    "evaluate_loss",
    "generate_answer",
    "load_instruction_file",
    "load_trained",
    "question_only",
    "save_trained",
    "shapesworld_examples",
    "stack_sequences",
    "trainable_state_dict",
    "write_shapesworld_json",
]
