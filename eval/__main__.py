"""`python -m eval`: answer benchmark questions with a model and score them like the official scorers.

python -m eval run --model DIR --bench pope --questions llava_pope_test.jsonl --images DIR --out answers.jsonl
python -m eval score --bench pope --answers answers.jsonl --questions ... --annotations ...
python -m eval suite --models A B C
"""

from __future__ import annotations

import argparse
import sys

from eval import exposure, run, score, suite
from eval.records import ScoreError

COMMANDS = {  # name -> (module with add_arguments and run, one-line help)
    "run": (run, "answer a benchmark's questions with a model (LLaVA-format answer lines)"),
    "score": (score, "score an answer file the way the official scorer does"),
    "suite": (suite, "run and score several models on several benchmarks; comparison table and chart"),
    "exposure": (
        exposure,
        "exposure bias: accumulated teacher-student KL on reference, student and teacher prefixes",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval",
        description="Answer benchmark questions with a model and score them like the official scorers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        command = sub.add_parser(
            name,
            help=summary,
            description=(module.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ScoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
