"""Where the replies sit in a rendered conversation, from one chat-template render per conversation.

    skeletons = SkeletonCache(render)                 # render(messages, add_generation_prompt) -> str
    prefixes = skeletons.prefixes(messages, text)     # None: fall back to rendering every prefix
    prefixes.generation_prompt_end(i), prefixes.end(i)  # len(render(messages[:i], True)), len(render(messages[:i]))

The template-agnostic way to find an assistant reply is to render the conversation's prefixes
(distill/conversation.py): about three renders per turn pair, each of a longer prefix, so a
ten-turn LLaVA conversation costs thirty renders. Most chat templates lay each message's content
into fixed text that depends only on the sequence of roles, so all conversations with the same
roles render alike around their contents. Once per sequence of roles, `SkeletonCache` renders the
conversation with a placeholder as each content, and every prefix of it; a real conversation's
prefix lengths are then the skeleton's shifted by the length differences of the contents before
them. The record's own full render is still made, and it must equal the skeleton with the contents
laid in; where it does not (a template that trims, escapes or branches on the content) the caller
falls back to rendering the prefixes, as it does for the first conversation of each sequence of
roles, whose spans the caller checks against the exact ones (`ConversationEncoder`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

PLACEHOLDER_OPEN, PLACEHOLDER_CLOSE = "\ue000", "\ue001"  # Unicode private use: in no real text


def placeholder(index: int) -> str:
    return f"{PLACEHOLDER_OPEN}{index}{PLACEHOLDER_CLOSE}"


@dataclass(frozen=True)
class Skeleton:
    """One sequence of roles rendered with placeholder contents."""

    pieces: list[str]  # the text between the contents: len(messages) + 1 pieces
    slot_ends: list[int]  # where each placeholder ends in the skeleton text
    prefix_ends: list[int]  # len(render(messages[:i])), i = 0..len(messages)
    # len(render(messages[:i], add_generation_prompt=True)) where message i is a reply, else -1
    generation_prompt_ends: list[int]

    def fill(self, contents: list[str]) -> str:
        parts = [self.pieces[0]]
        for content, piece in zip(contents, self.pieces[1:]):
            parts += [content, piece]
        return "".join(parts)


@dataclass(frozen=True)
class Prefixes:
    """The prefix lengths of one real conversation, from its skeleton."""

    skeleton: Skeleton
    shifts: list[int]  # cumulative len(content) - len(placeholder) after each message

    def _shift(self, offset: int) -> int:
        before = bisect.bisect_right(self.skeleton.slot_ends, offset)  # contents ending at or before offset
        return offset + (self.shifts[before - 1] if before else 0)

    def end(self, i: int) -> int:
        """len(render(messages[:i]))."""
        return self._shift(self.skeleton.prefix_ends[i])

    def generation_prompt_end(self, i: int) -> int:
        """len(render(messages[:i], add_generation_prompt=True)), message i being a reply."""
        return self._shift(self.skeleton.generation_prompt_ends[i])


def build_skeleton(
    render: Callable[[list[dict[str, str]], bool], str], roles: tuple[str, ...]
) -> Skeleton | None:
    """The skeleton of a sequence of roles, or None where the template does not lay contents in
    verbatim, or renders a prefix as something other than a prefix of the whole, or ends a prefix
    inside a content. Where the generation prompt before a reply is not what the whole render has
    there, the reply's start is its content's."""
    messages = [{"role": role, "content": placeholder(i)} for i, role in enumerate(roles)]
    text = render(messages, False)
    starts = [text.find(placeholder(i)) for i in range(len(roles))]
    if any(text.count(placeholder(i)) != 1 for i in range(len(roles))) or starts != sorted(starts):
        return None
    ends = [start + len(placeholder(i)) for i, start in enumerate(starts)]
    pieces = [text[a:b] for a, b in zip([0, *ends], [*starts, len(text)])]
    prefix_ends, generation_prompt_ends = [], []
    for i in range(len(roles) + 1):
        for prompt, lengths in ((False, prefix_ends), (True, generation_prompt_ends)):
            if prompt and (i == len(roles) or roles[i] != "assistant"):
                lengths.append(-1)
                continue
            prefix = render(messages[:i], prompt) if i else ""
            if prompt and not text.startswith(prefix):  # a generation prompt that is not the header
                lengths.append(starts[i])  # before a reply: the reply starts at its content
                continue  # (ConversationEncoder.reply_start, the same for the exact spans)
            inside = any(a < len(prefix) < b for a, b in zip(starts, ends))
            if not text.startswith(prefix) or inside:
                return None
            lengths.append(len(prefix))
    return Skeleton(pieces, ends, prefix_ends, generation_prompt_ends)


class SkeletonCache:
    """Skeletons by sequence of roles; `prefixes` lays one conversation's contents into its own."""

    def __init__(self, render: Callable[[list[dict[str, str]], bool], str]) -> None:
        self.render = render
        self.skeletons: dict[tuple[str, ...], Skeleton | None] = {}

    def prefixes(self, messages: list[dict[str, str]], text: str) -> Prefixes | None:
        """The prefix lengths of `messages`, whose full render is `text`; None where the skeleton
        does not apply (the caller then renders the prefixes)."""
        contents = [m["content"] for m in messages]
        if any(PLACEHOLDER_OPEN in c or PLACEHOLDER_CLOSE in c for c in contents):
            return None
        roles = tuple(m["role"] for m in messages)
        if roles not in self.skeletons:
            try:
                self.skeletons[roles] = build_skeleton(self.render, roles)
            except Exception:  # a template that refuses placeholder contents: the exact path decides
                self.skeletons[roles] = None
        skeleton = self.skeletons[roles]
        if skeleton is None or skeleton.fill(contents) != text:
            return None
        shifts, total = [], 0
        for i, content in enumerate(contents):
            total += len(content) - len(placeholder(i))
            shifts.append(total)
        return Prefixes(skeleton, shifts)

    def forget(self, roles: tuple[str, ...]) -> None:
        """Stop using the skeleton of a sequence of roles (its spans disagreed with the exact ones)."""
        self.skeletons[roles] = None
