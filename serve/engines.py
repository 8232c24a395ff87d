"""One interface over three back ends: chat messages with images in, a stream of text pieces out.

    engine = open_engine("runs/tiny/student-kd/final")                 # torch (a checkpoint folder, as saved)
    engine = open_engine("runs/random/qwen2-1.5b", dtype="bfloat16")   # torch in bf16
    engine = open_engine("exports/student-kd-onnx-int4")               # ONNX Runtime (an ONNX export)
    engine = open_engine("exports/student-kd-gguf", quant="q4_k_m")    # llama.cpp (a GGUF export)
    prompt = engine.prompt([{"role": "user", "content": "<image>\\nWhat is it?"}], [image])
    for piece in engine.stream(prompt, Sampler(temperature=0), max_tokens=32):
        print(piece.text, end="")

Each back end gives two things: the next-token logits after a prompt (`start`) and after one more
token (`step`), against its own key/value cache — transformers' DynamicCache, the ONNX decoder's
present/past tensors (export/onnx_runner.py), llama.cpp's context (export/gguf_runner.py). The loop
that samples (serve/sampling.py), stops at the end-of-turn tokens and turns token ids into text
pieces is shared, so the three answer alike. One engine serves one request at a time (the server
serialises calls); the prompt is rendered by the checkpoint's own chat template (serve/chat_text.py:
the processor's for torch and ONNX; for llama.cpp the GGUF's own template and vocabulary, so that a
GGUF export is served without PyTorch or transformers in the process). The torch engine is in
serve/torch_engine.py, imported only when a checkpoint is opened.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serve.chat_text import ChatText, LlamaCppChatText, TransformersChatText
from serve.sampling import Sampler

BACKENDS = ("torch", "onnx", "llama.cpp")
# the torch back end's precisions (distill.modeling.DTYPES); auto = as the checkpoint was saved
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_cuda_graphs_argument(parser: Any) -> None:
    """`--no-cuda-graphs`, for every command that opens an engine (serve, demo, serve bench)."""
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="torch on a GPU: decode eagerly over transformers' dynamic KV cache instead of replaying a "
        "CUDA graph over a static one",
    )


@dataclass
class Prompt:
    text: str
    images: list[Image.Image] = field(default_factory=list)
    tokens: int = 0  # prompt length in tokens, image tokens included


@dataclass
class Piece:
    text: str
    token_id: int


@dataclass
class Finish:
    reason: str  # "stop" (end of turn) or "length" (max_tokens reached)
    completion_tokens: int


class Engine:
    """Shared parts: prompt rendering, the sampling loop, incremental detokenisation."""

    backend = ""

    def __init__(self, path: Path, chat: ChatText, eos_ids: set[int], context: int) -> None:
        self.path, self.chat, self.eos_ids, self.context = path, chat, eos_ids, context
        # the Rust tokenizer refuses concurrent use while one call changes its padding settings
        # ("Already borrowed"): prompts are rendered on the API's request threads, decoded on the engine's
        self.tokenizer_lock = threading.Lock()
        self.image_text = chat.image_text
        self.name = path.name if path.name not in ("final", "") else path.parent.name
        self.last_finish: Finish | None = None

    def prompt(self, messages: list[dict[str, str]], images: list[Image.Image]) -> Prompt:
        """Render chat messages (string contents, one `<image>` per image) and count the prompt's tokens."""
        with self.tokenizer_lock:
            text = self.chat.render(messages)
            ids = self.chat.encode(text)
        if text.count(self.image_text) != len(images):
            raise ValueError(f"{text.count(self.image_text)} image placeholders for {len(images)} images")
        count = len(ids) + (len(images) * (self.chat.image_tokens() - 1) if images else 0)
        return Prompt(text, images, count)

    def stream(self, prompt: Prompt, sampler: Sampler, max_tokens: int) -> Iterator[Piece]:
        """Sample up to max_tokens new tokens; one piece per token, its text what the token completes
        ("" while a multi-byte character still waits for its next bytes)."""
        logits = self.start(prompt, max_tokens)
        tokens: list[int] = []
        emitted = ""
        self.last_finish = Finish("length", 0)
        for step in range(max_tokens):
            token = sampler(logits)
            if token in self.eos_ids:
                self.last_finish = Finish("stop", len(tokens))
                return
            tokens.append(token)
            with self.tokenizer_lock:
                text = self.chat.decode(tokens)
            if text.endswith("\ufffd"):  # a multi-byte character still incomplete
                yield Piece("", token)
            else:
                yield Piece(text[len(emitted) :], token)
                emitted = text
            self.last_finish = Finish("length", len(tokens))
            if step + 1 < max_tokens:
                logits = self.step(token)

    def start(self, prompt: Prompt, new_tokens: int) -> np.ndarray:
        """The logits after the prompt; at most `new_tokens` tokens will follow."""
        raise NotImplementedError

    def step(self, token: int) -> np.ndarray:
        raise NotImplementedError

    def weight_files(self) -> list[Path]:
        """The files that hold the model's weights (what a device has to store)."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        """The back end as a person reads it: "torch bfloat16 on cuda, CUDA graphs", "onnx"."""
        return self.backend


class OnnxEngine(Engine):
    backend = "onnx"

    def __init__(self, path: Path, threads: int = 0) -> None:
        from export.onnx_runner import OnnxLlava

        self.runner = OnnxLlava(path, threads=threads)
        context = self.runner.manifest.get("context_length")
        if context is None:
            raise ValueError(
                f"{path}: the manifest has no context_length (re-export with python -m export onnx)"
            )
        self.processor = self.runner.processor
        super().__init__(path, TransformersChatText(self.processor), self.runner.eos_ids, int(context))
        self.state: tuple[list[np.ndarray], np.ndarray, np.ndarray] | None = None

    def start(self, prompt: Prompt, new_tokens: int) -> np.ndarray:
        with self.tokenizer_lock:  # the processor only: the prefill runs outside the lock
            inputs = self.runner.prompt_inputs(prompt.images or [None], [prompt.text])
        (logits, *past), mask = self.runner.run_prompt(inputs)
        self.state = (past, mask, mask.sum(-1, keepdims=True) - 1)
        return logits[0, -1]

    def step(self, token: int) -> np.ndarray:
        past, mask, positions = self.state
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        positions = positions + 1
        logits, *past = self.runner.decode(self.runner.embed(np.array([[token]])), mask, positions, past)
        self.state = (past, mask, positions)
        return logits[0, -1]

    def weight_files(self) -> list[Path]:
        return self.runner.weight_files()


class LlamaCppEngine(Engine):
    backend = "llama.cpp"

    def __init__(self, path: Path, quant: str | None = None, threads: int | None = None) -> None:
        from export.gguf_runner import GgufLlava

        self.runner = GgufLlava(path, quant, threads=threads)
        chat = LlamaCppChatText(self.runner, path)
        super().__init__(path, chat, self.runner.eos_ids, self.runner.llm.n_ctx())
        self.name = f"{self.name}-{self.runner.quant}"

    def prompt(self, messages: list[dict[str, str]], images: list[Image.Image]) -> Prompt:
        prompt = super().prompt(messages, images)
        self.runner.refuse_media_marker(prompt.text)  # a 400 at rendering, not a failure mid-stream
        return prompt

    def start(self, prompt: Prompt, new_tokens: int) -> np.ndarray:
        return self.runner.prompt_pass(prompt.images, prompt.text)

    def step(self, token: int) -> np.ndarray:
        return self.runner.step(token)

    def weight_files(self) -> list[Path]:
        return self.runner.weight_files()


def detect_backend(path: Path) -> str:
    """torch for a checkpoint folder (config.json), else what an export's manifest.json says."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        return "llama.cpp" if json.loads(manifest.read_text()).get("format") == "llava-gguf" else "onnx"
    if (path / "config.json").is_file():
        return "torch"
    raise FileNotFoundError(f"{path}: neither a checkpoint (config.json) nor an export (manifest.json)")


def open_engine(
    path: str | Path,
    backend: str | None = None,
    quant: str | None = None,
    threads: int | None = None,
    dtype: str = "auto",
    cuda_graphs: bool = True,
) -> Engine:
    """The engine for a checkpoint or an export. `dtype` (torch only: auto = as saved, float32, bfloat16,
    float16) is refused for the exports, whose precision is the file's. `cuda_graphs` (torch on a GPU):
    decode steps replayed from a CUDA graph, else launched eagerly."""
    path = Path(path)
    found = detect_backend(path)
    backend = backend or found
    if backend not in BACKENDS:
        raise ValueError(f"unknown back end {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != found:
        raise ValueError(f"{path} is a {found} model; the {backend} back end cannot load it")
    if backend != "torch" and dtype != "auto":
        raise ValueError(f"--dtype is for checkpoints; a {backend} export runs at its files' precision")
    if backend == "torch":
        from serve.torch_engine import TorchEngine

        return TorchEngine(path, dtype, cuda_graphs=cuda_graphs, threads=threads)
    if backend == "onnx":
        return OnnxEngine(path, threads or 0)
    return LlamaCppEngine(path, quant, threads)
