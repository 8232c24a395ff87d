"""The text side of an engine: chat messages to the prompt string, its token count, token ids to text.

    chat = TransformersChatText(processor)          # the checkpoint's processor (torch, ONNX engines)
    chat = LlamaCppChatText(runner, export_dir)     # a GGUF export: llama.cpp's vocabulary, no transformers
    text = chat.render([{"role": "user", "content": "<image>\\nWhat is it?"}])
    chat.encode(text), chat.decode(ids), chat.image_tokens()

Both render the checkpoint's own chat template the way transformers does: the llama.cpp one through
llama-cpp-python's `Jinja2ChatFormatter` (jinja2's sandbox with transformers' settings and
extensions), fed the template the GGUF file carries and the special-token strings of the export's
tokenizer_config.json. Its token counts and text come from the GGUF vocabulary, which is the one
that tokenises the prompt on llama.cpp anyway; so a GGUF export is served with llama.cpp, numpy,
Pillow and jinja2, and neither PyTorch nor transformers is imported (tests/test_serve_gguf.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from distill.chat_template import bos_first, render_prompt, shaped, template_kind


class ChatText(Protocol):
    image_text: str  # what stands for one image in a message ("<image>")

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for messages with string contents, the assistant's reply header appended and the
        bos token first where the tokenizer has one (distill/chat_template.py: templates that read
        contents as lists of parts get them so)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of text (special tokens written in it are read as such), images not expanded."""

    def decode(self, tokens: list[int]) -> str:
        """The text of generated ids, special tokens left out ("\\ufffd" where a character is incomplete)."""

    def image_tokens(self) -> int:
        """Tokens one image takes in the prompt."""


class TransformersChatText:
    """A LlavaProcessor's tokenizer and chat template."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_text = processor.image_token
        self.render([{"role": "user", "content": "?"}])  # a template the kit cannot drive fails at load
        self._image_tokens = image_tokens_of(processor)

    def render(self, messages: list[dict[str, str]]) -> str:
        return render_prompt(self.tokenizer, messages, self.image_text)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def image_tokens(self) -> int:
        return self._image_tokens


def image_tokens_of(processor: Any) -> int:
    """As the processor expands `<image>`: one per patch of the image it makes (a square resize, or a
    resize and centre crop as CLIP's), plus CLS unless the default strategy drops it."""
    pixels = processor.image_processor(images=[Image.new("RGB", (64, 48))], return_tensors="np")
    height, width = pixels["pixel_values"].shape[-2:]
    count = (height // processor.patch_size) * (width // processor.patch_size)
    count += processor.num_additional_image_tokens
    return count - (1 if processor.vision_feature_select_strategy == "default" else 0)


def special_token_strings(export_dir: Path) -> dict[str, str]:
    """tokenizer_config.json's special tokens (bos_token, eos_token, pad_token, ...) as the strings a chat
    template reads; transformers hands a template the same ones."""
    config_file = export_dir / "tokenizer_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{export_dir}: no tokenizer_config.json (the processor is saved beside the GGUF files)"
        )
    config = json.loads(config_file.read_text())
    strings = {}
    for key, value in config.items():
        if key.endswith("_token") and key != "image_token":
            content = value.get("content") if isinstance(value, dict) else value
            if isinstance(content, str):
                strings[key] = content
    return strings


class LlamaCppChatText:
    """A GGUF export's chat template and llama.cpp's vocabulary, without transformers."""

    def __init__(self, runner: Any, export_dir: Path) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.runner = runner
        self.image_text = runner.image_text
        template = runner.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{export_dir}: the GGUF file carries no chat template (re-export it)")
        self.template = template
        tokens = special_token_strings(export_dir)
        self.bos_text = tokens.pop("bos_token", "")
        self.formatter = Jinja2ChatFormatter(
            template, eos_token=tokens.pop("eos_token", ""), bos_token=self.bos_text
        )
        self.other_tokens = tokens
        self.render([{"role": "user", "content": "?"}])  # a template the kit cannot drive fails at load
        # counted once here, before any request: mtmd's tokenizer then never runs beside a decode
        self._image_tokens = runner.image_token_count() if runner.mtmd is not None else None

    def render(self, messages: list[dict[str, str]]) -> str:
        kind = template_kind(self.template, lambda shaped_messages: self._format(shaped_messages))
        return bos_first(self._format(shaped(messages, kind, self.image_text)), self.bos_text)

    def _format(self, messages: list[dict[str, Any]]) -> str:
        return self.formatter(messages=messages, **self.other_tokens).prompt

    def encode(self, text: str) -> list[int]:
        return self.runner.llm.tokenize(text.encode(), add_bos=False, special=True)

    def decode(self, tokens: list[int]) -> str:
        return self.runner.llm.detokenize(tokens, special=False).decode("utf-8", errors="replace")

    def image_tokens(self) -> int:
        """What llama.cpp's mtmd makes of one image (the mmproj resizes every image alike)."""
        if self._image_tokens is None:
            return self.runner.image_token_count()  # raises: the export has no mmproj
        return self._image_tokens
