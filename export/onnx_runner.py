"""Greedy generation with an ONNX export (export/onnx_export.py) on ONNX Runtime, batched with left padding.

    runner = OnnxLlava("exports/student-kd-onnx")
    [tokens] = runner.generate([image], [chat_text], max_new_tokens=32)
    runner.processor.tokenizer.decode(tokens)

The loop is the one transformers' generate runs: token embeddings with each image's features in
place of its image tokens, position ids counted over the real (unpadded) tokens, one decoder call
for the prompt and one per new token with the key/value cache fed back, greedy choice, rows that
reached an end-of-sequence token fed the pad token until every row is done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import GenerationConfig

from distill import conversation
from distill.modeling import load_processor
from export.onnx_graphs import decoder_input_names


class OnnxLlava:
    """The three graphs of an export, their processor and generation config.

    ONNX Runtime's worker threads sleep when they run out of work, unless `spinning`: an export is
    three sessions (vision encoder, embeddings, decoder), each with a thread pool of its own, called
    in turn from a Python loop, and a pool that spins after its call holds cores the next call, or the
    loop itself, needs. Spinning pays only where cores are left idle otherwise."""

    def __init__(self, export_dir: str | Path, threads: int = 0, spinning: bool = False) -> None:
        import onnxruntime as ort

        self.path = Path(export_dir)
        manifest_file = self.path / "manifest.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(
                f"{self.path}: not an ONNX export (no manifest.json; make one with python -m export onnx)"
            )
        self.manifest = json.loads(manifest_file.read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.sessions = {
            part: ort.InferenceSession(str(self.path / name), options, providers=["CPUExecutionProvider"])
            for part, name in self.manifest["files"].items()
        }
        self.processor = load_processor(self.path)
        self.processor.tokenizer.padding_side = "left"
        generation = GenerationConfig.from_pretrained(self.path)
        eos = generation.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = generation.pad_token_id if generation.pad_token_id is not None else min(self.eos_ids)
        self.input_names = decoder_input_names(self.manifest["num_layers"])

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed"].run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    def weight_files(self) -> list[Path]:
        """The graphs and their external data."""
        return sorted(p for p in self.path.iterdir() if ".onnx" in p.name)

    def prompt_embeddings(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Token embeddings with the image features written over the image-token positions, in order."""
        embeds = self.embed(inputs["input_ids"])
        if "pixel_values" in inputs:
            features = self.sessions["vision"].run(
                None, {"pixel_values": inputs["pixel_values"].astype(np.float32)}
            )[0]
            slots = inputs["input_ids"] == self.manifest["image_token_id"]
            if slots.sum() != features.shape[0] * features.shape[1]:
                raise ValueError(
                    f"{int(slots.sum())} image tokens in the prompts but {features.shape[0]} x {features.shape[1]} features"
                )
            embeds[slots] = features.reshape(-1, features.shape[-1])
        return embeds

    def prompt_pass(
        self, images: list[Image.Image | None], texts: list[str]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """One decoder call over the left-padded prompts: (logits and cache, attention mask)."""
        return self.run_prompt(self.prompt_inputs(images, texts))

    def prompt_inputs(self, images: list[Image.Image | None], texts: list[str]) -> dict[str, np.ndarray]:
        """The processor's arrays for the prompts (token ids with the image tokens expanded, pixels)."""
        return dict(conversation.prompt_inputs(self.processor, images, texts, return_tensors="np"))

    def run_prompt(self, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """The vision encoder and one decoder call over processed prompts: (logits and cache, mask)."""
        mask = inputs["attention_mask"].astype(np.int64)
        empty = np.zeros(
            (mask.shape[0], self.manifest["num_kv_heads"], 0, self.manifest["head_dim"]), np.float32
        )
        past = [empty] * (2 * self.manifest["num_layers"])
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)  # counted over real tokens only
        return self.decode(self.prompt_embeddings(inputs), mask, positions, past), mask

    def prompt_logits(
        self, images: list[Image.Image | None], texts: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits over every prompt position ([batch, seq, vocab]) and the attention mask."""
        outputs, mask = self.prompt_pass(images, texts)
        return outputs[0], mask

    def decode(
        self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray]
    ) -> list[np.ndarray]:
        feeds = dict(zip(self.input_names, [embeds, mask, positions, *past]))
        return self.sessions["decoder"].run(None, feeds)

    def generate(
        self,
        images: list[Image.Image | None],
        texts: list[str],
        max_new_tokens: int,
        ignore_eos: bool = False,
        on_step: Callable[[list[int]], None] | None = None,
    ) -> list[list[int]]:
        """Greedy new tokens per prompt (end-of-sequence token excluded; with `ignore_eos`, exactly
        `max_new_tokens`, end-of-sequence never chosen, as generate's min_new_tokens does). `texts` are
        chat-formatted. `on_step` gets each step's chosen token per row as soon as it is chosen."""
        (logits, *past), mask = self.prompt_pass(images, texts)
        context = self.manifest.get("context_length")
        if context is not None:  # the prompt must fit; generation stops at the end of the context
            if mask.shape[1] >= context:
                raise ValueError(f"the prompt is {mask.shape[1]} tokens; the model's context is {context}")
            max_new_tokens = min(max_new_tokens, context - mask.shape[1])
        positions = mask.sum(-1, keepdims=True) - 1  # the last real token's position, per row
        batch = mask.shape[0]
        new_tokens: list[list[int]] = [[] for _ in range(batch)]
        done = np.zeros(batch, bool)
        for step in range(max_new_tokens):
            last = logits[:, -1]
            if ignore_eos:
                last[:, sorted(self.eos_ids)] = -np.inf
            chosen = last.argmax(-1)
            chosen = np.where(done, self.pad_id, chosen)
            if on_step is not None:
                on_step(chosen.tolist())
            for row, token in enumerate(chosen.tolist()):
                if done[row]:
                    continue
                if token in self.eos_ids:
                    done[row] = True
                else:
                    new_tokens[row].append(token)
            if done.all() or step == max_new_tokens - 1:
                break
            positions = positions + 1
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            logits, *past = self.decode(self.embed(chosen[:, None]), mask, positions, past)
        return new_tokens

    def answer(self, images: list[Image.Image | None], texts: list[str], max_new_tokens: int) -> list[str]:
        tokens = self.generate(images, texts, max_new_tokens)
        return [self.processor.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
