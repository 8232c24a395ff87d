"""`python -m eval`: answer benchmark questions with a model and score them like the official scorers.

python -m eval run --model DIR --bench pope --questions llava_pope_test.jsonl --images DIR --out answers.jsonl
python -m eval score --bench pope --answers answers.jsonl --questions ... --annotations ...
"""

from __future__ import annotations

import argparse
import sys

from eval import run, score
from eval.records import ScoreError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval", description="Score a model's answers the way the official scorers do."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = sub.add_parser(
        "run",
        help="answer a benchmark's questions with a model (LLaVA-format answer lines)",
        description=(run.__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_arguments(command)
    command.set_defaults(handler=run.run)
    command = sub.add_parser(
        "score",
        help="score an answer file (POPE, GQA, ScienceQA-IMG)",
        description=(score.__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_arguments(command)
    command.set_defaults(handler=score.run)
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
