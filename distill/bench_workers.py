"""Benchmark workers: one process per measured model, driven by its parent one command at a time.

    # in the parent
    workers = [Worker([sys.executable, "-m", "serve.bench", "--worker", spec], name) for ...]
    ready = [w.read() for w in workers]                # each worker's first line: it has loaded
    for figures in interleaved(workers, rounds=30, command="round"): ...
    final = [w.ask("finish") for w in workers]

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
from collections.abc import Iterator
from typing import Any, TextIO


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
