"""Back ends that answer benchmark questions: greedy decoding, batched with left padding.

    backend = TorchBackend("runs/tiny/student-kd/final")
    texts = backend.answer(questions[:8], max_new_tokens=128)

Every back end takes a batch of `BenchQuestion`s and returns one stripped answer per question, as
LLaVA's scripts do (`batch_decode(skip_special_tokens=True)[0].strip()`). The torch back end runs
any checkpoint the kit loads, the ONNX back end an export of `python -m export onnx`;
`open_backend(path)` picks by what the folder holds. GGUF plugs in behind the same `answer` method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from distill.conversation import generation_prompt, prompt_inputs
from distill.model_names import model_name
from distill.modeling import load_llava
from eval.questions import BenchQuestion


class Backend(Protocol):
    name: str

    def answer(self, questions: list[BenchQuestion], max_new_tokens: int) -> list[str]: ...


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend:
    """A LlavaForConditionalGeneration checkpoint on one device, answering through its chat template."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or model_name(model_dir)
        self.device = device or default_device()
        self.model, self.processor = load_llava(model_dir, dtype, device=self.device)
        self.model.eval()
        self.processor.tokenizer.padding_side = "left"  # generation continues every row at the same column

    def chat_text(self, question: BenchQuestion) -> str:
        return chat_text(self.processor.tokenizer, question)

    @torch.inference_mode()
    def answer(self, questions: list[BenchQuestion], max_new_tokens: int) -> list[str]:
        texts = [self.chat_text(q) for q in questions]
        images = [q.image() for q in questions if q.image is not None]
        inputs = prompt_inputs(self.processor, images, texts)
        inputs = inputs.to(self.device)
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [
            t.strip() for t in self.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]


class OnnxBackend:
    """An ONNX export (python -m export onnx) on ONNX Runtime's CPU provider."""

    def __init__(self, export_dir: str | Path, name: str | None = None) -> None:
        from export.onnx_runner import OnnxLlava

        self.name = name or model_name(export_dir)
        self.device = "cpu (onnxruntime)"
        self.runner = OnnxLlava(export_dir)

    def answer(self, questions: list[BenchQuestion], max_new_tokens: int) -> list[str]:
        texts = [chat_text(self.runner.processor.tokenizer, q) for q in questions]
        images = [q.image() if q.image is not None else None for q in questions]
        return self.runner.answer(images, texts, max_new_tokens)


def chat_text(tokenizer: Any, question: BenchQuestion) -> str:
    """The question as the model's chat template renders a first user turn, ready for the reply."""
    return generation_prompt(
        tokenizer, f"<image>\n{question.prompt}" if question.image is not None else question.prompt
    )


def open_backend(
    model_dir: str | Path, dtype: str = "float32", device: str | None = None, name: str | None = None
) -> Backend:
    """The torch back end for a checkpoint, the ONNX one for an export folder (it has manifest.json);
    `name` (the answers' model_id) defaults to the folder's (distill/model_names.py)."""
    if (Path(model_dir) / "manifest.json").is_file():
        return OnnxBackend(model_dir, name)
    return TorchBackend(model_dir, dtype, device, name)
