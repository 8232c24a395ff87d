"""Peak memory of the tensors a PyTorch model holds on the CPU while it answers: its weights plus the
most the allocator held on top of them during the call (KV cache, activations, logits). The CPU
counterpart of torch.cuda.max_memory_allocated, which torch keeps only for CUDA; serve/bench.py
prints it beside the process's RSS, whose runtime share (Python, torch, transformers, the server) is
the same for every model and hides a small model's own memory.

    from serve.tensor_memory import peak_tensor_mib
    mib = peak_tensor_mib(model, lambda: model.generate(**inputs, max_new_tokens=32))

The running total comes from torch.profiler's memory events (profile_memory=True): the CPU allocator
reports each allocation made while profiling and the release of each of those, so their sum in time
order is what the call holds above the weights at every moment. The profiler slows the call, so it is
run once, apart from the timed ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

MEMORY_EVENT = "[memory]"


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers, each storage counted once (tied embeddings share one)."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_allocated_during(call: Callable[[], Any]) -> int:
    """The most bytes the CPU allocator held at once during call(), above what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as profiler:
        call()
    events = [
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == MEMORY_EVENT and event.device_type() == DeviceType.CPU
    ]
    return running_peak(events)


def running_peak(events: list[tuple[int, int]]) -> int:
    """The highest running total of (time, bytes allocated or, negative, released) changes."""
    total = peak = 0
    for _, change in sorted(events):
        total += change
        peak = max(peak, total)
    return peak


def peak_tensor_mib(model: torch.nn.Module, call: Callable[[], Any]) -> float:
    return (weight_bytes(model) + peak_allocated_during(call)) / 2**20
