"""Next-token choice shared by every back end: greedy at temperature 0, else temperature + nucleus sampling.

    choose = Sampler(temperature=0.7, top_p=0.9, seed=1)
    token = choose(logits)          # logits: 1-D numpy array over the vocabulary

The same seed gives the same tokens on the same back end; the arithmetic is numpy's whatever the back
end, so torch, ONNX Runtime and llama.cpp sample alike from alike logits.
"""

from __future__ import annotations

import numpy as np


class Sampler:
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        self.temperature, self.top_p = temperature, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64)
        if self.temperature == 0:
            return int(np.argmax(logits))
        with np.errstate(over="ignore", invalid="ignore"):  # a tiny temperature sends the rest to -inf
            scaled = (logits - logits.max()) / self.temperature  # shifted first: the top stays at 0
        probabilities = np.exp(np.nan_to_num(scaled, nan=-np.inf))
        probabilities /= probabilities.sum()
        if self.top_p < 1:
            order = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[order])
            keep = order[
                : int(np.searchsorted(cumulative, self.top_p)) + 1
            ]  # the smallest set reaching top_p
            kept = np.zeros_like(probabilities)
            kept[keep] = probabilities[keep]
            probabilities = kept / kept.sum()
        return int(self.rng.choice(len(probabilities), p=probabilities))
