"""Decoding on a GPU from a static KV cache, each one-token step replayed from a captured CUDA graph.

    decoder = GraphedDecoder(model, context=4096)            # model: a LlavaForConditionalGeneration on cuda
    logits = decoder.prefill(inputs, new_tokens=64)          # the prompt pass (eager), into a static cache
    logits = decoder.step(token)                             # one token: a replay of the captured forward

Why: at batch 1 a decode step of transformers' eager forward is a few hundred small kernels, each launched
from Python; the launches take longer than the GPU needs to run them, so a 2B and a 7B model decode at the
same speed (measured on an H200: 50.5 and 52.0 tokens/s, docs/gpu.md). Captured once into a CUDA graph and
replayed, a step costs what its kernels cost, and the smaller model's advantage shows.

How: the KV cache is transformers' StaticCache (its tensors keep their addresses and its length is a
device tensor, so the captured step needs no host value); the attention mask is a boolean row over the
cache that the host extends by one position before each replay, handed to the model as a finished 4-D
mask (transformers' mask builder returns a 4-D mask as it is, in every model family, and SDPA reads the
boolean form); the step's input token and output logits are fixed tensors. Caches come
in buckets of 512, 1024, 2048, ... tokens (capped at the context), the smallest that holds the prompt and
the max_tokens it may add, so attention reads at most twice what the request may need; each bucket keeps its
cache and graph for the next request of its size, and all graphs share one memory pool (they never run
at once). `capture=False` runs the same static-cache step eagerly (any device; the tests check it against
the dynamic cache on CPU).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StaticCache

SMALLEST_BUCKET = 512


def bucket_length(tokens: int, context: int) -> int:
    """The smallest power-of-two cache (from 512 tokens) holding `tokens`, at most the context."""
    length = SMALLEST_BUCKET
    while length < tokens:
        length *= 2
    return min(length, context)


@dataclass
class Bucket:
    cache: StaticCache
    mask: torch.Tensor  # (1, 1, 1, length) bool: the positions a new token may attend to
    token: torch.Tensor  # (1, 1) the step's input token
    logits: torch.Tensor | None = None  # (1, 1, vocabulary): the step's output
    graph: Any = None  # torch.cuda.CUDAGraph once captured

    @property
    def length(self) -> int:
        return self.mask.shape[-1]


class GraphedDecoder:
    def __init__(self, model: Any, context: int, capture: bool = True) -> None:
        text = model.config.get_text_config()
        sliding = [layer for layer in StaticCache(config=text, max_cache_len=1).layers if layer.is_sliding]
        if sliding:  # as the cache itself reads the config: layer_types, or a sliding_window (Mistral)
            raise ValueError(
                f"static-cache decoding needs full attention in every layer; {len(sliding)} use a sliding window"
            )
        if text._attn_implementation != "sdpa":  # the others read a 4-D mask differently
            raise ValueError(f"static-cache decoding needs SDPA attention, not {text._attn_implementation}")
        self.model, self.text_config, self.context, self.capture = model, text, context, capture
        self.device = next(model.parameters()).device
        self.buckets: dict[int, Bucket] = {}
        self.current: Bucket | None = None
        self.position = 0  # where the next token goes
        self.pool: Any = None

    def bucket(self, length: int) -> Bucket:
        if length not in self.buckets:
            self.buckets[length] = Bucket(
                cache=StaticCache(config=self.text_config, max_cache_len=length),
                mask=torch.zeros(1, 1, 1, length, dtype=torch.bool, device=self.device),
                token=torch.zeros(1, 1, dtype=torch.long, device=self.device),
            )
        return self.buckets[length]

    @torch.inference_mode()
    def prefill(self, inputs: dict[str, torch.Tensor], new_tokens: int) -> torch.Tensor:
        """The prompt pass into the bucket that fits prompt + new_tokens; the last position's logits."""
        prompt = inputs["input_ids"].shape[1]
        if prompt + new_tokens > self.context:
            raise ValueError(
                f"{prompt} prompt tokens + {new_tokens} new ones exceed the context ({self.context})"
            )
        bucket = self.bucket(bucket_length(prompt + new_tokens, self.context))
        bucket.cache.reset()
        keys = torch.arange(bucket.length, device=self.device)
        causal = keys[None, :] <= torch.arange(prompt, device=self.device)[:, None]
        inputs = {name: value for name, value in inputs.items() if name != "attention_mask"}
        output = self.model(
            **inputs,
            attention_mask=causal[None, None],
            cache=bucket.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        bucket.mask.zero_()
        bucket.mask[..., :prompt] = True
        self.current, self.position = bucket, prompt
        return output.logits[0, -1]

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Append one token; the logits after it (a copy: the graph's output is overwritten by the next step)."""
        bucket = self.current
        if bucket is None:
            raise RuntimeError("step before prefill")
        if self.position >= bucket.length:
            raise ValueError(f"the static cache of {bucket.length} tokens is full")
        bucket.mask[..., self.position] = True
        bucket.token.fill_(token)
        if bucket.graph is not None or (self.capture and self.recorded(bucket)):
            bucket.graph.replay()
        else:
            self.forward(bucket)
        self.position += 1
        return bucket.logits[0, -1].clone()

    def forward(self, bucket: Bucket) -> None:
        """The step itself: embeddings, the language model over the static cache, the LM head."""
        hidden = self.model.model.language_model(
            input_ids=bucket.token, attention_mask=bucket.mask, cache=bucket.cache, use_cache=True
        ).last_hidden_state
        bucket.logits = self.model.lm_head(hidden)

    def recorded(self, bucket: Bucket) -> bool:
        """Capture the step. On a failure the cache's length is put back where this step starts (a
        warm-up that failed part-way has advanced some layers); out of memory is raised (this request
        fails, the next one captures again); any other failure is said once, and decoding goes on
        eagerly from the static cache from then on."""
        try:
            self.record(bucket)
        except RuntimeError as error:
            for layer in bucket.cache.layers:
                layer.cumulative_length.fill_(self.position)
            if isinstance(error, torch.OutOfMemoryError):
                raise
            warnings.warn(f"CUDA graph capture failed, decoding without graphs: {error}", stacklevel=2)
            self.capture = False
            return False
        return True

    def record(self, bucket: Bucket) -> None:
        """Capture the step (after one eager warm-up run on a side stream, which CUDA graphs need: it
        writes this position's keys and values, then the cache's length is set back so the replay writes
        them again)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.forward(bucket)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for layer in bucket.cache.layers:
            layer.cumulative_length.sub_(1)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.forward(bucket)
        self.pool = graph.pool()
        bucket.graph = graph
