"""`data.image_cache_mib`: the processed pixel_values of recently drawn images, kept up to a budget.

    python -m distill train configs/tiny-teacher.yaml data.image_cache_mib=256

A training run draws each image many times (the tiny teacher's 1,200 steps of 64 single questions
draw each of its 4,000 images about 19 times); decoding the PNG and running the image processor again
each time is CPU work the training steps wait for (the quickstart's teacher: 684 s without the cache,
653 s with it, on the same VM). The cache holds the processor's
output per (model view, image file), least recently used first out once the budget is spent, so the
values are exactly those a fresh decode gives. 0 (the default) keeps nothing. Each DataLoader worker
process holds its own cache, so the budget applies per worker.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch


class PixelCache:
    """Least-recently-used tensors up to `budget_mib` MiB in all."""

    def __init__(self, budget_mib: float) -> None:
        self.budget = int(budget_mib * 2**20)
        self.held = 0
        self.entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        tensor = self.entries.get(key)
        if tensor is None:
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return tensor

    def put(self, key: Hashable, tensor: torch.Tensor) -> None:
        size = tensor.nbytes
        if size > self.budget or key in self.entries:
            return
        while self.held + size > self.budget:
            _, dropped = self.entries.popitem(last=False)
            self.held -= dropped.nbytes
        self.entries[key] = tensor
        self.held += size
