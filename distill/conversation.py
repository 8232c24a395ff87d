"""Encode one LLaVA-format conversation into token ids and labels.

A conversation is rendered with the model's own chat template; the character spans of the
assistant replies are found by rendering each prefix of the conversation (so any template that
renders prefixes as prefixes works: ChatML, Vicuna, Llama-3, ...), and the tokens whose first
character falls inside a reply are supervised. Everything else gets the label -100. The prefix
renders are made once per sequence of roles, with placeholder contents, where the template lays
contents in verbatim (distill/template_skeleton.py): one render per conversation instead of ~3 per
turn pair, with the same spans (the first conversation of each sequence of roles is checked
against the per-prefix renders).

    encoder = ConversationEncoder(tokenizer)
    ids, labels = encoder.encode([{"from": "human", "value": "<image>\\nWhat color?"},
                                  {"from": "gpt", "value": "red"}])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from distill.chat_template import render_chat, render_prompt
from distill.template_skeleton import SkeletonCache

IGNORE_INDEX = -100
REPLY_MARK = "\ue002reply\ue002"  # private-use characters (the skeletons' placeholders use others)
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


class DataError(ValueError):
    """A record cannot be used; the message names the file, the record index and the problem."""


def to_messages(conversations: Any, require_reply: bool = True) -> list[dict[str, str]]:
    """LLaVA `conversations` -> chat messages, checking the structure (a prompt needs no reply)."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError("'conversations' must be a non-empty list")
    messages = []
    for turn_index, turn in enumerate(conversations):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("value"), str)
            or not isinstance(turn.get("from"), str)
            or turn["from"] not in ROLES
        ):
            raise DataError(
                f"turn {turn_index} must be {{'from': human|gpt|system, 'value': str}}, got {str(turn)[:80]!r}"
            )
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if not roles or roles[0] != "user" or any(a == b for a, b in itertools.pairwise(roles)):
        raise DataError("turns must alternate human, gpt, human, ... starting with human")
    if require_reply and "assistant" not in roles:
        raise DataError("the conversation has no gpt turn to learn from")
    return messages


def generation_prompt(tokenizer: Any, content: str) -> str:
    """A first user turn ("<image>\\n..." included when there is an image) rendered by the chat
    template, ready for the model's reply, with the bos token first as training has it; tokenize it
    with `prompt_inputs` (no special tokens added)."""
    messages = to_messages([{"from": "human", "value": content}], require_reply=False)
    return render_prompt(tokenizer, messages)


def prompt_inputs(processor: Any, images: list[Any], texts: list[str], return_tensors: str = "pt") -> Any:
    """The processor's inputs for prompts from `generation_prompt` (images: one per `<image>`, in order;
    None entries are skipped), left as the text has them: no special token added, so the ids are the
    ones training encodes for the same turn."""
    present = [image for image in images if image is not None]
    return processor(
        images=present or None,
        text=texts,
        return_tensors=return_tensors,
        padding=True,
        add_special_tokens=False,
    )


class ConversationEncoder:
    """Chat template + tokenizer -> (input_ids, labels) with exactly the assistant replies supervised."""

    def __init__(self, tokenizer: Any, image_token: str = "<image>") -> None:
        if tokenizer.chat_template is None:
            raise DataError("the tokenizer has no chat template; save one with the processor")
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.bos_token = tokenizer.bos_token
        self.skeletons = SkeletonCache(self.render)
        # the sequences of roles whose skeleton spans were checked against the exact ones
        self.checked_roles: set[tuple[str, ...]] = set()

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt, self.image_token)

    def assistant_spans(self, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of each assistant reply (and its end-of-turn marker) in `text`."""
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start_text = self.render(messages[:i], add_generation_prompt=True)
            end_text = self.render(messages[: i + 1]).rstrip()
            if not text.startswith(end_text):
                raise DataError(
                    "the chat template does not render a conversation's prefix as a prefix of the whole; "
                    "assistant turns cannot be located"
                )
            start = len(start_text) if text.startswith(start_text) else self.reply_start(messages, i, text)
            spans.append((start, len(end_text)))
        return spans

    def reply_start(self, messages: list[dict[str, str]], i: int, text: str) -> int:
        """Where reply i begins in `text`, for a template whose generation prompt is not the header it
        writes before a reply (llava-hf's Qwen templates: `assistant\\n` to generate, `assistant \\n`
        before a reply): the conversation up to it rendered with a marker for the reply, which must
        lie before the reply in `text` exactly as rendered."""
        marked = self.render([*messages[:i], {**messages[i], "content": REPLY_MARK}])
        start = marked.find(REPLY_MARK)
        if (
            start < 0
            or not text.startswith(marked[:start])
            or not text.startswith(messages[i]["content"], start)
        ):
            raise DataError(
                "the chat template writes a reply neither after its own generation prompt nor verbatim; "
                "assistant turns cannot be located"
            )
        return start

    def instruction_spans(
        self, messages: list[dict[str, str]], text: str, turn_start: Callable[[int], int] | None = None
    ) -> list[tuple[int, int]]:
        """Character spans of the text of each user turn (the image placeholder left out);
        `turn_start(i)` is len(render(messages[:i])), rendered here unless given."""
        turn_start = turn_start or (lambda i: len(self.render(messages[:i])))
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "user":
                continue
            question = message["content"].replace(self.image_token, "").strip()
            start = text.find(question, turn_start(i) if i else 0) if question else -1
            if start >= 0:
                spans.append((start, start + len(question)))
        return spans

    def exact_spans(
        self, messages: list[dict[str, str]], text: str
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(assistant spans, instruction spans) from rendering every prefix of the conversation."""
        return self.assistant_spans(messages, text), self.instruction_spans(messages, text)

    def spans(
        self, messages: list[dict[str, str]], text: str
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(assistant spans, instruction spans) of the rendered conversation `text`: from the
        skeleton of its sequence of roles where that applies, else `exact_spans`."""
        prefixes = self.skeletons.prefixes(messages, text)
        if prefixes is None:
            return self.exact_spans(messages, text)
        replies = [
            (prefixes.generation_prompt_end(i), len(text[: prefixes.end(i + 1)].rstrip()))
            for i, message in enumerate(messages)
            if message["role"] == "assistant"
        ]
        found = replies, self.instruction_spans(messages, text, prefixes.end)
        roles = tuple(message["role"] for message in messages)
        if roles not in self.checked_roles:
            self.checked_roles.add(roles)
            exact = self.exact_spans(messages, text)
            if exact != found:
                self.skeletons.forget(roles)
                return exact
        return found

    def encode(self, conversations: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return int32 input_ids and labels (IGNORE_INDEX outside the assistant replies)."""
        ids, labels, _ = self.encode_with_instruction(conversations)
        return ids, labels

    def encode_with_instruction(self, conversations: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """input_ids, labels, and a bool mask of the instruction tokens (the users' text, which
        IVA's attention weights are read from)."""
        messages = to_messages(conversations)
        text = self.render(messages)
        replies, questions = self.spans(messages, text)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(encoding["input_ids"], dtype=np.int32)
        starts = np.asarray([start for start, _ in encoding["offset_mapping"]], dtype=np.int64)
        supervised, instruction = within(starts, replies), within(starts, questions)
        if self.bos_token is not None and not text.startswith(self.bos_token):
            ids = np.concatenate([np.asarray([self.tokenizer.bos_token_id], dtype=np.int32), ids])
            supervised, instruction = (
                np.concatenate([[False], supervised]),
                np.concatenate([[False], instruction]),
            )
        labels = np.where(supervised, ids, IGNORE_INDEX).astype(np.int32)
        return ids, labels, instruction


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokens generation stops at: the end-of-sequence token, and ChatML's end-of-turn and
    end-of-text tokens where the vocabulary has them (the kit's generation configs)."""
    stops = [tokenizer.eos_token_id]
    for token in ("<|endoftext|>", "<|im_end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in stops:
            stops.append(token_id)
    return stops


def reply_stop_warning(tokenizer: Any) -> str | None:
    """A warning where the chat template ends a reply without a token generation stops at, else None:
    the supervised tokens are the reply and what the template writes after it, so a student trained
    under such a template (llava-hf's LLaVA-1.5: `ASSISTANT: red ` and the next turn) never learns to
    stop and answers until max_new_tokens."""
    if tokenizer.eos_token_id is None:
        return None
    encoder = ConversationEncoder(tokenizer)
    ids, labels = encoder.encode([{"from": "human", "value": "?"}, {"from": "gpt", "value": "a"}])
    supervised = ids[labels != IGNORE_INDEX]
    if set(stop_token_ids(tokenizer)) & set(supervised.tolist()):
        return None
    return (
        f"warning: the chat template ends a reply without the end-of-sequence token {tokenizer.eos_token!r} "
        f"(a reply 'a' is supervised as {tokenizer.decode(supervised.tolist())!r}): a student trained on it "
        "does not learn to stop; use a template that writes it after each reply, on both models"
    )


def within(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Bool mask of the offsets that fall inside any of the [start, end) spans."""
    inside = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        inside |= (offsets >= start) & (offsets < end)
    return inside


def encode_instruction_prompt(encoder: ConversationEncoder, content: str) -> tuple[np.ndarray, np.ndarray]:
    """One user turn ending in the generation prompt -> (int32 input_ids, bool instruction mask).

    The instruction is the user's text after the image placeholder (the question with its
    answer-format suffix), located by character offsets in the rendered template, so the
    template's own tokens (role headers, end-of-turn markers) and the image are not part of it."""
    text = encoder.render([{"role": "user", "content": content}], add_generation_prompt=True)
    question = content.replace(encoder.image_token, "").strip()
    start = text.rfind(question)
    if not question or start < 0:
        raise DataError(f"the chat template does not render the question verbatim: {question!r}")
    encoding = encoder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    instruction = [start <= a < start + len(question) for a, _ in encoding["offset_mapping"]]
    if encoder.bos_token is not None and not text.startswith(encoder.bos_token):
        ids.insert(0, encoder.tokenizer.bos_token_id)
        instruction.insert(0, False)
    return np.asarray(ids, dtype=np.int32), np.asarray(instruction, dtype=bool)


def expand_image_tokens(
    input_ids: np.ndarray, labels: np.ndarray, image_token_id: int, num_image_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each image placeholder by `num_image_tokens` copies (never supervised)."""
    repeats = np.where(input_ids == image_token_id, num_image_tokens, 1)
    expanded_ids = np.repeat(input_ids, repeats)
    expanded_labels = np.repeat(labels, repeats)
    expanded_labels[expanded_ids == image_token_id] = IGNORE_INDEX
    return expanded_ids, expanded_labels


def expand_mask(
    mask: np.ndarray, input_ids: np.ndarray, image_token_id: int, num_image_tokens: int
) -> np.ndarray:
    """A per-token bool mask expanded as expand_image_tokens expands the ids (False on image tokens)."""
    repeats = np.where(input_ids == image_token_id, num_image_tokens, 1)
    return np.repeat(mask & (input_ids != image_token_id), repeats)
