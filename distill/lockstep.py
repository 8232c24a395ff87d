"""Training runs in separate processes taking their steps in turn, so that their step times compare.

    ring = Lockstep(turn_file, index=1, members=3)   # in each of 3 processes, index 0, 1, 2
    trainer.add_callback(ring)
    trainer.train()
    ring.step_seconds                                # the duration of each of this process's steps

`python -m distill bench --part steps` runs one process per method (each process's peak memory is
its own). On a shared VM whose speed drifts by tens of percent over minutes, timing the methods
one after the other compares machines as much as methods. Here process i waits at the start of each
step until the turn file names it, times its step from there to the step's end, then hands the turn
to process i+1: the methods' steps interleave one by one and all see the machine in the same state.
The turn file is written atomically (distill/staging.py); a member that waits longer than `timeout`
(a crashed neighbour) raises instead of hanging.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from distill.staging import write_text_atomic


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Lockstep(TrainerCallback):
    """Member `index` of a ring of `members` training processes sharing `turn_file`."""

    def __init__(self, turn_file: str | Path, index: int, members: int, timeout: float = 600.0) -> None:
        self.turn_file, self.index, self.members, self.timeout = Path(turn_file), index, members, timeout
        self.step_seconds: list[float] = []
        self._started = 0.0

    def _wait_for_turn(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if int(self.turn_file.read_text()) == self.index:
                    return
            except (FileNotFoundError, ValueError):
                pass  # before the first turn is written
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"lockstep member {self.index} waited {self.timeout:.0f} s for its turn in {self.turn_file}"
                )
            time.sleep(0.002)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._wait_for_turn()
        _synchronize()
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize()
        self.step_seconds.append(time.perf_counter() - self._started)
        write_text_atomic(self.turn_file, str((self.index + 1) % self.members))
