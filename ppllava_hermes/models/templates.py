"""Chat formats: the prompt pieces a stream needs, cut from the checkpoint's own chat template.

A stream is a prompt the model never sees whole. The session prefills, in order: the *prefix* (the
system turn and the opening of the user turn), then each chunk as one video of the family's layout,
each followed by the text the format writes after a video (*after_video*), and at a question the
question followed by *answer_open* (closing the user turn, opening the assistant's). A one-shot
prompt of the same chunks, rendered by the HF processor's chat template with one video part per
chunk, is then the same token sequence.

:func:`prompt_frame` renders a chat template around two placeholder videos and a sentinel question
and cuts it into those three pieces; it refuses a template that writes different text after
different videos (a stream could not be laid out chunk by chunk).

The template comes from the checkpoint (its processor's ``chat_template``) when it ships one; tiny
test models and checkpoints without one use the family's published format (the layout the released
checkpoints were trained with; transcribed below as constants):

* Qwen2-VL / Qwen2.5-VL: ChatML; a video is ``<|vision_start|><|video_pad|><|vision_end|>`` written
  where the video part stands, text parts follow directly (nothing after a video).
* LLaVA-OneVision: ChatML; all videos of a turn first, each written ``<video>`` plus a newline, then the
  turn's text.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Qwen2-VL / Qwen2.5-VL chat format (the checkpoints' ``chat_template``; vision ids numbering omitted
#: unless ``add_vision_id``).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: LLaVA-OneVision chat format (the converted checkpoints' ``chat_template``).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SENTINEL = "\u2063QUESTION\u2063"  # text no template writes by itself


@dataclass(frozen=True)
class PromptFrame:
    """The text a stream's prompt is made of (module docstring).

    Attributes:
        prefix: system turn and user-turn opening, up to the first video.
        after_video: text the format writes after each video ("" for Qwen2.5-VL, "\\n" for LLaVA-OneVision).
        answer_open: text after the question: the user turn's close and the assistant turn's opening.
    """

    prefix: str
    after_video: str
    answer_open: str


def conversation(system_prompt: str, videos: int, question: str) -> list[dict]:
    """The messages of a one-shot prompt: a system turn, then ``videos`` video parts and the question."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [*({"type": "video"} for _ in range(videos)), {"type": "text", "text": question}]},
    ]


def prompt_frame(tokenizer, chat_template: str, video_text: str, system_prompt: str) -> PromptFrame:
    """Cut ``chat_template`` (Jinja, rendered by ``tokenizer.apply_chat_template``) into the stream's pieces.

    ``video_text`` is what the template writes for one video part (``<|vision_start|><|video_pad|><|vision_end|>``,
    ``<video>``); the adapter emits that part itself as the chunk's tokens.
    """
    text = tokenizer.apply_chat_template(conversation(system_prompt, 2, _SENTINEL), chat_template=chat_template,
                                         tokenize=False, add_generation_prompt=True)
    parts = text.split(video_text)
    if len(parts) != 3 or text.count(_SENTINEL) != 1 or _SENTINEL not in parts[2]:
        raise ValueError(f"chat template: expected two {video_text!r} parts before the question, got {text!r}")
    prefix, between, rest = parts
    after_video, answer_open = rest.split(_SENTINEL)
    if between != after_video:
        raise ValueError(f"chat template writes {between!r} after one video and {after_video!r} before the question: "
                         "a stream cannot be laid out chunk by chunk")
    return PromptFrame(prefix=prefix, after_video=after_video, answer_open=answer_open)
