"""One completion from an engine: stop strings, finish reason, token counts and timings.

    run = Completion(engine, prompt, Sampler(0.0), max_tokens=64, stops=["\\n\\n"], started=time.perf_counter())
    for text in run:            # text as soon as it cannot be the start of a stop string
        ...                     # (the first, possibly "", comes with the first token)
    run.finish_reason, run.completion_tokens, run.timings()

Time to first token runs from `started` (when the request arrived) to the first new token; decode
speed is (tokens - 1) / (time from the first token to the last). The first token always yields,
even when its text is empty (a special token, an incomplete UTF-8 character, the start of a stop
string held back): a streaming reply's first chunk goes out with the first token, not with the
first visible character.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from serve.engines import Engine, Prompt
from serve.sampling import Sampler


class Completion:
    def __init__(
        self,
        engine: Engine,
        prompt: Prompt,
        sampler: Sampler,
        max_tokens: int,
        stops: list[str],
        started: float,
    ) -> None:
        self.engine, self.prompt, self.sampler = engine, prompt, sampler
        self.max_tokens, self.stops, self.started = max_tokens, stops, started
        self.finish_reason = "length"
        self.completion_tokens = 0
        self.first: float | None = None
        self.last: float | None = None
        self.text = ""
        self.announced = False  # whether anything (the first token's text, maybe "") was yielded

    def __iter__(self) -> Iterator[str]:
        pending = ""
        for piece in self.engine.stream(self.prompt, self.sampler, self.max_tokens):
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now
            self.completion_tokens += 1
            pending += piece.text
            cut = first_stop(pending, self.stops)
            if cut is not None:
                self.finish_reason = "stop"
                yield from self._emit(pending[:cut])
                return
            safe = len(pending) - held_back(pending, self.stops)
            yield from self._emit(pending[:safe])
            pending = pending[safe:]
        finish = self.engine.last_finish
        self.finish_reason = finish.reason if finish else "length"
        yield from self._emit(pending)

    def _emit(self, text: str) -> Iterator[str]:
        if text or not self.announced:
            self.announced = True
            self.text += text
            yield text

    def timings(self) -> dict[str, Any]:
        end = time.perf_counter()
        ttft = (self.first - self.started) if self.first else None
        decode = None
        if self.first and self.last and self.completion_tokens > 1 and self.last > self.first:
            decode = (self.completion_tokens - 1) / (self.last - self.first)
        return {
            "ttft_ms": None if ttft is None else round(1000 * ttft, 2),
            "tokens_per_s": None if decode is None else round(decode, 2),
            "total_ms": round(1000 * (end - self.started), 2),
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt.tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt.tokens + self.completion_tokens,
        }


def first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-size:]):
                longest = max(longest, size)
                break
    return longest
