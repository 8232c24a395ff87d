"""The `accelerate launch` command line of a training stage, and running it; shared by quickstart and bench.

command = accelerate_train_command("configs/accelerate/zero2.yaml", 2, "configs/tiny-teacher.yaml", ["train.max_steps=5"])
run_launched(command, "tiny-teacher")       # StageError if it fails (its own error is printed above)
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


class StageError(RuntimeError):
    """A launched training stage failed; what went wrong is in its own output, printed above."""


def run_launched(command: list[str], name: str, cwd: str | Path | None = None) -> None:
    """Run a launched stage; a failure is one StageError naming it (the launcher's and torchrun's
    tracebacks of the child's exit add nothing to the child's own error message)."""
    done = subprocess.run(command, cwd=cwd)
    if done.returncode != 0:
        raise StageError(
            f"{name}: the launched training stage exited with status {done.returncode}; its error is above"
        )


def accelerate_train_command(
    accelerate_config: str | Path,
    num_processes: int | None,
    config: str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
) -> list[str]:
    """`accelerate launch ... -m distill train CONFIG [overrides] [--resume]`, run with this
    interpreter's accelerate whether or not its bin/ is on PATH. Also prints the command."""
    processes = ["--num_processes", str(num_processes)] if num_processes else []
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        *processes,
        "-m",
        "distill",
        "train",
        str(config),
        *(overrides or []),
        *(["--resume"] if resume else []),
    ]
    print("+ " + shlex.join(command), flush=True)
    return command
