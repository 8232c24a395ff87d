"""Profile a few training steps with torch.profiler: `train.profile_steps=N` in any run config.

    python -m distill train configs/tiny-student-kd.yaml train.profile_steps=2
    python -m distill bench --part scale --scale-profile-steps 2

The N steps after the warm-up (steps 4 .. 3+N) are recorded on the CPU and, when there is one, the
GPU. At the end of the window the main process prints the operators that took the most device time
(CPU time on a CPU-only machine) and the most CPU time, and writes OUTPUT_DIR/profile/trace.json
(open it in Perfetto or chrome://tracing). A GPU that waits on the CPU shows as a device total far
below the step time, with the CPU time in a few host-side operators. The step timer of the run
leaves the profiled steps out of its figures, as it does the warm-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from distill.throughput import WARMUP_STEPS


class StepProfiler(TrainerCallback):
    """Records `steps` optimizer steps after the warm-up and reports them once."""

    def __init__(self, steps: int, output_dir: str | Path, rows: int = 20) -> None:
        self.steps, self.output_dir, self.rows = steps, Path(output_dir), rows
        self.cuda = torch.cuda.is_available()
        self._profiler: Any = None
        self.report: str | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == WARMUP_STEPS and self._profiler is None and self.report is None:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self._profiler = profile(activities=activities, record_shapes=False)
            self._profiler.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._profiler is None or state.global_step < WARMUP_STEPS + self.steps:
            return
        if self.cuda:
            torch.cuda.synchronize()
        self._profiler.__exit__(None, None, None)
        averages = self._profiler.key_averages()
        device_key = "device_time_total" if self.cuda else "cpu_time_total"
        self.report = "\n".join(
            [
                f"profile of steps {WARMUP_STEPS + 1}-{WARMUP_STEPS + self.steps}, by {device_key}:",
                averages.table(sort_by=device_key, row_limit=self.rows, max_name_column_width=60),
                "by CPU time (host side, children included):",
                averages.table(sort_by="cpu_time_total", row_limit=self.rows, max_name_column_width=60),
            ]
        )
        if state.is_world_process_zero:
            target = self.output_dir / "profile"
            target.mkdir(parents=True, exist_ok=True)
            self._profiler.export_chrome_trace(str(target / "trace.json"))
            print(self.report, flush=True)
            print(f"trace written to {target / 'trace.json'}", flush=True)
        self._profiler = None
