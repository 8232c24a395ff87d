"""`python -m eval`: answer benchmark questions with a model and score them like the official scorers.

python -m eval run --model DIR --bench pope --questions llava_pope_test.jsonl --images DIR --out answers.jsonl
python -m eval score --bench pope --answers answers.jsonl --questions ... --annotations ...
python -m eval suite --models A B C
"""

from __future__ import annotations

import argparse
import sys

from distill.command_line import run_command, subcommand_parser
from eval.records import ScoreError

COMMANDS = {
    "run": ("eval.run", "answer a benchmark's questions with a model (LLaVA-format answer lines)"),
    "score": ("eval.score", "score an answer file the way the official scorer does"),
    "suite": ("eval.suite", "run and score several models on several benchmarks; comparison table and chart"),
    "attention": ("eval.attention", "instruction-to-vision attention over the image, one panel per model"),
    "exposure": (
        "eval.exposure",
        "exposure bias: accumulated teacher-student KL on reference, student and teacher prefixes",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    return subcommand_parser(
        "eval", "Answer benchmark questions with a model and score them like the official scorers.", COMMANDS
    )


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (ScoreError,))


if __name__ == "__main__":
    sys.exit(main())
