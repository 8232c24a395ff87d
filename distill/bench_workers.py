"""Benchmark workers: one process per measured model, driven by its parent one command at a time.

    # in the parent: one starter per model, each returning Worker.started(command, name)
    outcomes = take_turns(starters, rounds=30, sequential=False)
    for outcome in outcomes:      # (the "finish" reply, each round's reply) or the WorkerFailed
        ...
    ratio_text(values, base_values, in_turn=True)        # "1.37x (1.11-1.67)"

    # in the worker
    channel = protocol_channel()                        # before anything prints
    reply(channel, {"load_s": ...})
    for command in commands(): reply(channel, figures_for(command))

Each model runs in a process of its own, so its peak memory is its own and it imports only its
runtime. On a shared VM whose speed drifts by tens of percent over minutes, measuring one model's
process after another's compares moments as much as models; `interleaved` has the loaded workers
take their rounds in turn (one round of each, the starting worker rotating), so neighbouring rounds
of two models see the machine in the same state and a per-round ratio compares the models alone.
Only one worker computes at a time: the parent waits for each reply before the next command.

The protocol is one JSON line per reply on the worker's original standard output; `protocol_channel`
points file descriptor 1 at standard error first, so whatever a library prints (Python's print or
a C runtime's logging) cannot break it. A worker's standard error goes to a temporary file, whose
tail names the cause when the worker dies (`WorkerFailed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TextIO

TOUCH_BELOW_S = 1.0  # "round touch": a worker repeats rounds shorter than this, untimed, before the timed one


class WorkerFailed(RuntimeError):
    pass


class Worker:
    """A worker process speaking the protocol above; `name` says in errors what it measures."""

    def __init__(self, command: list[str], name: str) -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115  closed by close() or _fail()
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )

    @classmethod
    def started(cls, command: list[str], name: str) -> Worker:
        """A worker that has sent its first reply (it has loaded); closed again if it died first."""
        worker = cls(command, name)
        try:
            worker.read()
        except WorkerFailed:
            worker.close()
            raise
        return worker

    def read(self) -> dict[str, Any]:
        """The worker's next reply."""
        line = self.process.stdout.readline()
        if not line:
            self._fail()
        return json.loads(line)

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command and wait for its reply."""
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self._fail()
        return self.read()

    def close(self) -> None:
        """Let the worker end (its standard input closes) and wait for it; kill it if it hangs."""
        if self.process.stdin and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()

    def _fail(self) -> None:
        try:
            code = self.process.wait(timeout=10)  # it closed its output: it is ending
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:]
        self._stderr.close()
        raise WorkerFailed(f"benchmark of {self.name} failed (exit code {code}):\n{tail}")


def interleaved(workers: list[Worker], rounds: int, command: str) -> Iterator[tuple[int, Worker, Any]]:
    """(round, worker, reply or WorkerFailed) for `rounds` rounds of `command`, one reply of each live
    worker per round, the first worker of round r being worker r mod n. A worker that fails is
    reported once, with its error, and left out of the later rounds."""
    live = list(workers)
    for index in range(rounds if workers else 0):
        start = index % len(workers)
        for worker in workers[start:] + workers[:start]:
            if worker not in live:
                continue
            try:
                yield index, worker, worker.ask(command)
            except WorkerFailed as error:
                live.remove(worker)
                yield index, worker, error
        if not live:
            return


Outcome = tuple[dict[str, Any], list[dict[str, Any] | None]] | WorkerFailed


def take_turns(starters: list[Callable[[], Worker]], rounds: int, sequential: bool) -> list[Outcome]:
    """For each starter, in order, (its "finish" reply, its reply to each round, None for a round it did
    not take) or the WorkerFailed that ended it; a failure costs that worker only. In turn (the
    default) the workers start one after the other, then take `rounds` rounds of "round touch" in
    turn; `sequential`: each worker's rounds of "round", and its finish, before the next starts."""
    outcomes: list[Outcome | None] = [None] * len(starters)
    replies: dict[int, list[dict[str, Any] | None]] = {}

    def run(group: list[tuple[int, Worker]], command: str) -> None:
        index_of = {worker: index for index, worker in group}
        try:
            for round_index, worker, reply in interleaved([w for _, w in group], rounds, command):
                if isinstance(reply, WorkerFailed):
                    outcomes[index_of[worker]] = reply
                else:
                    replies[index_of[worker]][round_index] = reply
            for index, worker in group:
                if outcomes[index] is None:
                    try:
                        outcomes[index] = (worker.ask("finish"), replies[index])
                    except WorkerFailed as error:
                        outcomes[index] = error
        finally:
            for _, worker in group:
                worker.close()

    waiting: list[tuple[int, Worker]] = []
    try:
        for index, start in enumerate(starters):
            try:
                worker = start()
            except WorkerFailed as error:
                outcomes[index] = error
                continue
            replies[index] = [None] * rounds
            if sequential:
                run([(index, worker)], "round")
            else:
                waiting.append((index, worker))
    except BaseException:
        for _, worker in waiting:
            worker.close()
        raise
    run(waiting, "round touch")
    return outcomes


def ratio_text(values: list[float | None], base: list[float | None], in_turn: bool) -> str:
    """One model's figure against the baseline's, from each one's per-round figures: in turn, the median
    of the per-round ratios with their middle half in brackets; one model after another, where
    neighbouring rounds are minutes apart, the ratio of the medians."""
    if not in_turn:
        taken, base_taken = [v for v in values if v is not None], [b for b in base if b is not None]
        if not taken or not base_taken:
            return "n/a"
        return f"{statistics.median(taken) / statistics.median(base_taken):.2f}x"
    paired = paired_ratios(values, base)
    if paired is None:
        return "n/a"
    middle, low, high = paired
    return f"{middle:.2f}x ({low:.2f}-{high:.2f})"


def paired_ratios(values: list[float | None], base: list[float | None]) -> tuple[float, float, float] | None:
    """Median and middle half (25th, 75th percentile) of value / base over the rounds where both
    have a value: the ratio of two models in neighbouring rounds; None if no round has both."""
    ratios = sorted(v / b for v, b in zip(values, base) if v is not None and b)
    if not ratios:
        return None
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), quartiles[0], quartiles[2]


def protocol_channel() -> TextIO:
    """The worker's reply channel (its original standard output); from here on anything written to
    file descriptor 1, from Python or C, lands on standard error instead."""
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def reply(channel: TextIO, figures: dict[str, Any]) -> None:
    channel.write(json.dumps(figures) + "\n")
    channel.flush()


def commands() -> Iterator[str]:
    """The parent's commands, one per line, until it closes the worker's standard input."""
    for line in sys.stdin:
        if line.strip():
            yield line.strip()
