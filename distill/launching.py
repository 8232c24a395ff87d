"""The `accelerate launch` command line of a training stage, shared by quickstart and bench.

command = accelerate_train_command("configs/accelerate/zero2.yaml", 2, "configs/tiny-teacher.yaml", ["train.max_steps=5"])
subprocess.run(command, check=True)
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


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
