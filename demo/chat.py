"""Where the demo's answers come from: an engine in this process, or a running `python -m serve`.

    chat = LocalChat(open_engine("runs/tiny/student-kd/final"))
    chat = ApiChat("http://127.0.0.1:8000/v1", api_key="secret")
    for answer, stats in chat.stream(history, "What color is the circle?", image):
        ...        # the answer so far; stats: {"ttft_ms", "tokens_per_s", "tokens"} once known

`history` is the conversation so far as [{"role": ..., "content": str}]; the image (a PIL image or
None) goes with the new question, as the model was trained: one image, at the start of the turn.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from openai import BadRequestError
from PIL import Image

from serve.engines import Engine
from serve.generation import Completion
from serve.images import to_data_url
from serve.sampling import Sampler


class LocalChat:
    def __init__(self, engine: Engine, max_tokens: int = 256, temperature: float = 0.0) -> None:
        self.engine, self.max_tokens, self.temperature = engine, max_tokens, temperature
        self.name = f"{engine.name} ({engine.description}, in process)"

    def stream(
        self, history: list[dict[str, str]], question: str, image: Image.Image | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        content = f"{self.engine.image_text}\n{question}" if image is not None else question
        started = time.perf_counter()
        reserve = min(self.max_tokens, self.engine.context // 4)  # room kept for the answer
        while True:  # the oldest turns go first when the conversation outgrows the context
            prompt = self.engine.prompt(
                [*history, {"role": "user", "content": content}], [image] if image else []
            )
            if prompt.tokens + reserve <= self.engine.context or not history:
                break
            history = history[2:]
        if prompt.tokens >= self.engine.context:
            raise ValueError(f"the question is {prompt.tokens} tokens; the context is {self.engine.context}")
        room = max(1, min(self.max_tokens, self.engine.context - prompt.tokens))
        completion = Completion(self.engine, prompt, Sampler(self.temperature), room, [], started)
        answer = ""
        for text in completion:
            answer += text
            yield answer, {}
        yield answer, {**completion.timings(), "tokens": completion.completion_tokens}


class ApiChat:
    """The OpenAI-compatible API of `python -m serve` through the official client, streaming."""

    def __init__(
        self, base_url: str, api_key: str | None = None, max_tokens: int = 256, http_client: Any = None
    ) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "none", http_client=http_client)
        self.model = self.client.models.list().data[0].id
        self.max_tokens = max_tokens
        self.name = f"{self.model} (via {base_url})"

    def stream(
        self, history: list[dict[str, str]], question: str, image: Image.Image | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        parts: list[dict[str, Any]] = []
        if image is not None:
            parts.append({"type": "image_url", "image_url": {"url": to_data_url(image)}})
        parts.append({"type": "text", "text": question})
        started = time.perf_counter()
        while True:  # the oldest turns go first when the server says the conversation is too long
            try:
                chunks = self.client.chat.completions.create(
                    model=self.model,
                    messages=[*history, {"role": "user", "content": parts}],
                    temperature=0,
                    max_tokens=self.max_tokens,
                    stream=True,
                )
                break
            except BadRequestError as error:
                if error.code != "context_length_exceeded" or not history:
                    raise
                history = history[2:]
        answer, first, stats = "", None, {}
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                answer += chunk.choices[0].delta.content
                yield answer, {}
            server = (chunk.model_extra or {}).get("timings")
            if server:
                stats = {**server, "tokens": chunk.usage.completion_tokens if chunk.usage else None}
        if first is not None:
            stats["ttft_ms"] = round(1000 * (first - started), 2)  # as this client saw it, HTTP included
        yield answer, stats
