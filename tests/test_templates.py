"""Chat formats: the stream's prompt pieces are cut from the chat template the HF processor renders."""

from __future__ import annotations

import numpy as np
import pytest

from ppllava_hermes.models.templates import (
    LLAVA_ONEVISION_CHAT_TEMPLATE,
    QWEN2_VL_CHAT_TEMPLATE,
    conversation,
    prompt_frame,
)
from ppllava_hermes.testing import byte_tokenizer

from .helpers import tiny_adapter

CHATML_PREFIX = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
ANSWER_OPEN = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(("template", "video", "after"), [
    (QWEN2_VL_CHAT_TEMPLATE, "<|vision_start|><|video_pad|><|vision_end|>", ""),
    (LLAVA_ONEVISION_CHAT_TEMPLATE, "<video>", "\n"),
])
def test_published_formats_cut_into_prefix_after_video_and_answer_opening(template, video, after):
    tok = byte_tokenizer()
    frame = prompt_frame(tok, template, video, "Be brief.")
    assert (frame.prefix, frame.after_video, frame.answer_open) == (CHATML_PREFIX, after, ANSWER_OPEN)
    # the pieces rebuild the one-shot rendering of any number of videos
    for videos in (1, 3):
        whole = tok.apply_chat_template(conversation("Be brief.", videos, "Why?"), chat_template=template,
                                        tokenize=False, add_generation_prompt=True)
        assert whole == frame.prefix + (video + frame.after_video) * videos + "Why?" + frame.answer_open


def test_a_template_that_writes_different_text_after_each_video_is_refused():
    numbered = QWEN2_VL_CHAT_TEMPLATE.replace("<|vision_start|><|video_pad|><|vision_end|>",
                                "<|vision_start|><|video_pad|><|vision_end|>{{ video_count.value }}")
    with pytest.raises(ValueError, match=r"writes '1' after one video and '2' before the question"):
        prompt_frame(byte_tokenizer(), numbered, "<|vision_start|><|video_pad|><|vision_end|>", "s")
    with pytest.raises(ValueError, match=r"expected two '<video>' parts before the question"):
        prompt_frame(byte_tokenizer(), QWEN2_VL_CHAT_TEMPLATE, "<video>", "s")


def test_a_checkpoint_template_replaces_the_family_format():
    """A checkpoint whose template writes two newlines after a video: each chunk carries them."""
    custom = LLAVA_ONEVISION_CHAT_TEMPLATE.replace("'<video>\n'", "'<video>\n\n'")
    assert custom != LLAVA_ONEVISION_CHAT_TEMPLATE
    default = tiny_adapter("llava_onevision")
    ad = tiny_adapter("llava_onevision")
    ad.chat_template = custom
    assert ad.prompt_frame.after_video == "\n\n" and default.prompt_frame.after_video == "\n"
    frames = np.zeros((2, 56, 56, 3), dtype=np.uint8)
    times = np.array([0.0, 0.5])
    extra = ad.encode_frames(frames, times, 0).num_tokens - default.encode_frames(frames, times, 0).num_tokens
    assert extra == 1
    assert ad.question_text("Q") == "Q" + ANSWER_OPEN
