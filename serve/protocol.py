"""The OpenAI chat-completions request, read into the engine's terms (serve/engines.py).

    request = ChatRequest.model_validate_json(body)
    messages, image_urls = template_messages(request, image_text="<image>")

Content parts of type `image_url` become the checkpoint's image placeholder, all of them before the
text ("<image>\\n" each, in order, as the training data has it and as vLLM places them for LLaVA);
`text` parts are joined by newlines. Unknown fields are ignored, as OpenAI's
API ignores them, except the ones that would change the reply in a way this server cannot honour
(`n` > 1, logprobs, tools, a JSON response format, logit bias, penalties): those are refused, as are
wrong types and out-of-range values, with the field named. At most 4 stop strings, as OpenAI allows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4


class ResponseFormat(BaseModel):
    type: Literal["text"]


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with no choices and the usage, as OpenAI sends it


class ImageUrl(BaseModel):
    url: str = Field(min_length=1)
    detail: str | None = None


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | str | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None, max_length=MAX_STOPS)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted only at the values that change nothing: the server has no other behaviour for them
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    logprobs: Literal[False] | None = None
    top_logprobs: Literal[0] | None = None
    tools: list[Any] | None = Field(None, max_length=0)
    tool_choice: Literal["none"] | None = None
    response_format: ResponseFormat | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=0)
    presence_penalty: float = Field(0.0, ge=0, le=0)
    frequency_penalty: float = Field(0.0, ge=0, le=0)

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def sampling_seed(self) -> int | None:
        """numpy's generators take non-negative seeds; OpenAI's are any 64-bit integer."""
        return None if self.seed is None else self.seed % 2**64

    def usage_chunk(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def template_messages(request: ChatRequest, image_text: str) -> tuple[list[dict[str, str]], list[str]]:
    """(messages with string contents for the chat template, the image URLs in order)."""
    messages, urls = [], []
    for message in request.messages:
        if message.content is None or isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content or ""})
            continue
        images, texts = [], []
        for part in message.content:
            if part.type == "image_url":
                if part.image_url is None:
                    raise ValueError("an image_url part needs an image_url")
                urls.append(part.image_url if isinstance(part.image_url, str) else part.image_url.url)
                images.append(f"{image_text}\n")
            else:
                texts.append(part.text or "")
        messages.append({"role": message.role, "content": "".join(images) + "\n".join(texts)})
    return messages, urls
