"""Step time, tokens per second and peak memory of a training run, measured as it trains.

`distill train` attaches a `StepTimer` to every run and prints its summary at the end:

    [qwen2-0.5b-kd] throughput: 20 steps; after 3 warm-up steps: median step 412.3 ms,
        19,871 tokens/s (student input tokens, padding excluded), peak CUDA memory 23.41 GiB

A step is timed from the end of the previous one to its own end (CUDA synchronised at both ends),
so data loading, the teacher's forward and the optimizer step are all inside it. Tokens are the
non-padding input tokens of the student, image tokens included, summed over all processes
(Trainer's `include_num_input_tokens_seen="non_padding"`). The first `warmup` steps (CUDA
kernels loading, allocator growing; profiled steps too, see distill/profiling.py) are left out of
the medians and the rate.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from transformers import TrainerCallback

from distill.process_memory import peak_rss_mib

WARMUP_STEPS = 3  # steps left out of the figures: kernels loading, allocator growing


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time and input tokens of every optimizer step; `summary()` reduces them."""

    def __init__(self, warmup: int = WARMUP_STEPS) -> None:
        self.warmup = warmup
        self.step_seconds: list[float] = []
        self.step_tokens: list[int] = []
        self._last_time = 0.0
        self._last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _synchronize()
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize()
        now = time.perf_counter()
        self.step_seconds.append(now - self._last_time)
        self.step_tokens.append(state.num_input_tokens_seen - self._last_tokens)
        self._last_time, self._last_tokens = now, state.num_input_tokens_seen

    def summary(self) -> dict[str, Any]:
        """Figures over the steps after the warm-up (all steps when there are too few)."""
        skip = self.warmup if len(self.step_seconds) > self.warmup else 0
        seconds, tokens = self.step_seconds[skip:], self.step_tokens[skip:]
        figures: dict[str, Any] = {
            "steps": len(self.step_seconds),
            "warmup_steps_excluded": skip,
            "median_step_s": statistics.median(seconds) if seconds else None,
            # GKD's steps are of two kinds (a coin per step samples the student's answers first): the
            # scale bench compares its means (distill/bench_scale.py, stage_figures)
            "mean_step_s": statistics.mean(seconds) if seconds else None,
            "tokens_per_s": sum(tokens) / sum(seconds) if seconds and sum(seconds) > 0 else None,
            "median_tokens_per_step": statistics.median(tokens) if tokens else None,
            "peak_rss_mib": peak_rss_mib(),
            "peak_cuda_allocated_mib": None,
            "peak_cuda_reserved_mib": None,
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            figures["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            figures["peak_cuda_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        return figures


def describe(figures: dict[str, Any]) -> str:
    """One line for the console."""
    if figures["median_step_s"] is None:
        return "no steps timed"
    memory = (
        f"peak CUDA memory {figures['peak_cuda_allocated_mib'] / 1024:.2f} GiB allocated, "
        f"{figures['peak_cuda_reserved_mib'] / 1024:.2f} GiB reserved (this process)"
        if figures["peak_cuda_allocated_mib"] is not None
        else f"peak RSS {figures['peak_rss_mib']:.0f} MiB (this process)"
    )
    return (
        f"{figures['steps']} steps; after {figures['warmup_steps_excluded']} warm-up steps: "
        f"median step {1000 * figures['median_step_s']:.1f} ms, {figures['tokens_per_s']:,.0f} tokens/s "
        f"(student input tokens, padding excluded, all processes), {memory}"
    )
