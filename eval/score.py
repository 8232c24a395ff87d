"""`python -m eval score --bench NAME --answers FILE ...`: an answer file scored the official way.

    python -m eval score --bench pope --answers pope.jsonl --questions llava_pope_test.jsonl --annotations pope/coco
    python -m eval score --bench gqa --answers gqa.jsonl --questions testdev_balanced_questions.json
    python -m eval score --bench sqa --answers sqa.jsonl --problems problems.json --pid-splits pid_splits.json
    python -m eval score --bench textvqa --answers textvqa.jsonl --annotations TextVQA_0.5.1_val.json
    python -m eval score --bench mme --answers mme.jsonl --questions llava_mme.jsonl --annotations MME_Benchmark_release_version
    python -m eval score --bench mmbench --answers mmbench.jsonl --questions mmbench_dev_20230712.tsv

Prints the official script's report and writes it as JSON beside the answers
(ANSWERS_STEM.BENCH-score.json). Answer files are LLaVA-format lines
({question_id, prompt, text, answer_id, model_id, metadata}), as `python -m eval run` writes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distill.staging import write_text_atomic
from eval import gqa, mmbench, mme, pope, sqa, textvqa
from eval.records import ScoreError

BENCHES = ("gqa", "sqa", "textvqa", "pope", "mme", "mmbench")
NEEDS = {
    "pope": ("questions", "annotations"),
    "gqa": ("questions",),
    "sqa": ("problems", "pid_splits"),
    "textvqa": ("annotations",),
    "mme": ("questions", "annotations"),
    "mmbench": ("questions",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bench", required=True, choices=BENCHES, help="which official scorer to follow")
    parser.add_argument("--answers", required=True, type=Path, help="answer lines (JSONL) to score")
    parser.add_argument(
        "--questions",
        type=Path,
        help="pope: llava_pope_test.jsonl; gqa: testdev_balanced_questions.json; mme: llava_mme.jsonl; "
        "mmbench: mmbench_dev_20230712.tsv",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        help="pope: the folder of coco_pope_<split>.json label files; textvqa: TextVQA_0.5.1_val.json; "
        "mme: the MME_Benchmark_release_version folder",
    )
    parser.add_argument("--problems", type=Path, help="sqa: problems.json")
    parser.add_argument("--pid-splits", type=Path, help="sqa: pid_splits.json")
    parser.add_argument("--split", default="test", help="sqa: the split to score (default: %(default)s)")
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="gqa: leave out unanswered questions (Align-TI's eval_gqa_1.py)",
    )


def score(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    missing = [f"--{name.replace('_', '-')}" for name in NEEDS[args.bench] if getattr(args, name) is None]
    if missing:
        raise ScoreError(f"--bench {args.bench} needs {' and '.join(missing)}")
    if args.bench == "pope":
        result = pope.run(args.answers, args.questions, args.annotations)
        return result, pope.report(result)
    if args.bench == "gqa":
        result = gqa.run(args.answers, args.questions, args.skip_missing)
        return result, gqa.report(result)
    if args.bench == "sqa":
        result = sqa.run(args.answers, args.problems, args.pid_splits, args.split)
        return result, sqa.report(result)
    if args.bench == "textvqa":
        result = textvqa.run(args.answers, args.annotations)
        return result, textvqa.report(result)
    if args.bench == "mme":
        result = mme.run(args.answers, args.questions, args.annotations)
        return result, mme.report(result)
    result = mmbench.run(args.answers, args.questions)
    return result, mmbench.report(result)


def write_result(bench: str, answers: Path, result: dict[str, Any]) -> Path:
    """ANSWERS_STEM.BENCH-score.json beside the answers, written whole or not at all."""
    out = answers.with_name(f"{answers.stem}.{bench}-score.json")
    return write_text_atomic(out, json.dumps({"bench": bench, "answers": str(answers), **result}, indent=1))


def run(args: argparse.Namespace) -> int:
    result, text = score(args)
    print(text)
    print(f"scores written to {write_result(args.bench, args.answers, result)}")
    return 0
