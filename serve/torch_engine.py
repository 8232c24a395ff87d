"""The torch engine: a checkpoint folder on transformers, on CPU or GPU (serve/engines.py has the interface).

    engine = TorchEngine(Path("runs/tiny/student-kd/final"))                   # as saved, CPU or GPU
    engine = TorchEngine(Path("runs/random/qwen2-1.5b"), dtype="bfloat16")     # cast on load

Its own module so that the other engines never import PyTorch: `open_engine` imports it only when a
checkpoint is opened.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.conversation import prompt_inputs
from serve.chat_text import TransformersChatText
from serve.engines import Engine, Prompt
from serve.graphed_decoding import GraphedDecoder


class TorchEngine(Engine):
    """transformers on CPU or GPU. On a GPU the decode steps replay a CUDA graph over a static KV cache
    (serve/graphed_decoding.py) unless cuda_graphs=False; elsewhere they run eagerly over a DynamicCache."""

    backend = "torch"

    def __init__(
        self,
        path: Path,
        dtype: str = "auto",
        device: str | None = None,
        cuda_graphs: bool = True,
        threads: int | None = None,
    ) -> None:
        from distill.modeling import load_llava

        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = load_llava(path, dtype, device=self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        text = self.model.config.get_text_config()
        super().__init__(
            path,
            TransformersChatText(self.processor),
            set(eos if isinstance(eos, list) else [eos]),
            text.max_position_embeddings,
        )
        self.past: Any = None
        self.graphed: GraphedDecoder | None = None
        if cuda_graphs and torch.device(self.device).type == "cuda":
            try:
                self.graphed = GraphedDecoder(self.model, self.context)
            except ValueError as error:  # sliding-window layers, another attention implementation
                warnings.warn(f"{path}: decoding without CUDA graphs: {error}", stacklevel=2)

    @property
    def weights_dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def description(self) -> str:
        return f"torch {self.weights_dtype} on {self.device}" + (", CUDA graphs" if self.graphs_on else "")

    @property
    def graphs_on(self) -> bool:
        """Decode steps replay CUDA graphs (false on CPU, with cuda_graphs=False, or after a failed capture)."""
        return self.graphed is not None and self.graphed.capture

    @torch.inference_mode()
    def start(self, prompt: Prompt, new_tokens: int) -> np.ndarray:
        with self.tokenizer_lock:
            inputs = prompt_inputs(self.processor, prompt.images, [prompt.text])
        inputs = inputs.to(self.device)
        if self.graphed:
            return self.graphed.prefill(dict(inputs), new_tokens).float().cpu().numpy()
        output = self.model(**inputs, use_cache=True, logits_to_keep=1)
        self.past = output.cache if hasattr(output, "cache") else output.past_key_values
        return output.logits[0, -1].float().cpu().numpy()

    @torch.inference_mode()
    def step(self, token: int) -> np.ndarray:
        if self.graphed:
            return self.graphed.step(token).float().cpu().numpy()
        ids = torch.tensor([[token]], device=self.device)
        output = self.model(input_ids=ids, cache=self.past, use_cache=True)
        self.past = output.cache if hasattr(output, "cache") else output.past_key_values
        return output.logits[0, -1].float().cpu().numpy()

    def weight_files(self) -> list[Path]:
        return sorted(self.path.glob("*.safetensors"))
