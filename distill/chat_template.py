"""Chat templates of both kinds: those that read a message's content as a string, and those that read
it as a list of typed parts.

    text = render_chat(tokenizer, [{"role": "user", "content": "<image>\\nWhat color?"}], add_generation_prompt=True)

    kind = template_kind(template, render)        # "string" or "parts"; render(messages) -> str
    render(shaped(messages, kind, "<image>"))      # for a renderer of its own (llama.cpp's formatter)
    bos_first(text, tokenizer.bos_token)           # a prompt starts with the bos token, as in training

The kit writes every message with a string content, `<image>` where an image goes, as LLaVA's data
does. Its ChatML template and most LLMs' read that as it is. llava-hf's checkpoints carry a template
that reads a list of parts instead (LLaVA-1.5's `USER: <image>\\n... ASSISTANT:`: images first, then
each text part), and renders a string content as nothing at all: the question would vanish from the
prompt without an error. `template_kind` finds out once per template which kind it is, by rendering a
probe message both ways; `shaped` gives each template the messages it reads: a string content split
at each `<image>` into an image part and text parts (the whitespace that joins a text to an image
left to the template).

A prompt for generation starts with the tokenizer's bos token where it has one, whether the template
writes it (Llama-3's) or not (Vicuna's, LLaVA-1.5's): the training data is encoded that way
(distill/conversation.py). The prompt text carries it, and every runtime tokenizes prompts without
adding special tokens of its own, so a tokenizer whose post-processor adds a bos never doubles the
template's, and one whose post-processor does not add it still gets it.

Pure Python (jinja2's error type only), so the GGUF engine, which imports neither PyTorch nor
transformers, renders through it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import TemplateError

KINDS = ("string", "parts")
PROBE = "chat-template-probe-question"
_kind_of_template: dict[str, str] = {}


class ChatTemplateError(ValueError):
    """A chat template the kit cannot drive; the message says why."""


def to_parts(content: str, image_text: str) -> list[dict[str, str]]:
    """'<image>\\nWhat color?' -> [{'type': 'image'}, {'type': 'text', 'text': 'What color?'}]; an empty
    content is one empty text part (an empty reply still gets the framing its template writes)."""
    if not content:
        return [{"type": "text", "text": ""}]
    parts: list[dict[str, str]] = []
    pieces = content.split(image_text)
    for index, piece in enumerate(pieces):
        if index:
            parts.append({"type": "image"})
            piece = piece.lstrip()
        if index + 1 < len(pieces):
            piece = piece.rstrip()
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def shaped(messages: list[dict[str, Any]], kind: str, image_text: str) -> list[dict[str, Any]]:
    """The messages as a template of this kind reads them."""
    if kind == "string":
        return messages
    return [{**message, "content": to_parts(message["content"], image_text)} for message in messages]


def template_kind(template: str, render: Callable[[list[dict[str, Any]]], str]) -> str:
    """'string' or 'parts': whichever way of writing one user message makes `render` show its text."""
    key = str(template)  # a tokenizer may hold named templates in a dict
    if key not in _kind_of_template:
        for kind in KINDS:
            try:
                text = render(shaped([{"role": "user", "content": PROBE}], kind, "<image>"))
            except (TemplateError, TypeError, KeyError, AttributeError):  # it reads the other kind
                continue
            if PROBE in text:
                _kind_of_template[key] = kind
                break
        else:
            raise ChatTemplateError(
                "the chat template shows a user message's text neither from a string content nor from "
                "a list of {'type': 'text', 'text': ...} parts; the kit cannot write prompts with it"
            )
    return _kind_of_template[key]


def bos_first(text: str, bos_token: str | None) -> str:
    """The text with the bos token in front, unless there is none or the template already wrote it."""
    if bos_token and not text.startswith(bos_token):
        return bos_token + text
    return text


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], image_text: str = "<image>") -> str:
    """The prompt for generation: the messages, the reply header, the bos token first as training has it."""
    return bos_first(render_chat(tokenizer, messages, True, image_text), tokenizer.bos_token)


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool, image_text: str = "<image>"
) -> str:
    """The tokenizer's chat template applied to string-content messages, whichever kind it is."""
    if tokenizer.chat_template is None:
        raise ChatTemplateError(
            "the tokenizer has no chat template (nor its processor); save one with the processor"
        )

    def render(shaped_messages: list[dict[str, Any]], add: bool = False) -> str:
        return tokenizer.apply_chat_template(shaped_messages, tokenize=False, add_generation_prompt=add)

    kind = template_kind(tokenizer.chat_template, render)
    return render(shaped(messages, kind, image_text), add_generation_prompt)
