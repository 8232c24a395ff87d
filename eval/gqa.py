"""GQA (testdev-balanced), scored as LLaVA's convert_gqa_for_eval.py + the official eval.py do.

    python -m eval score --bench gqa --answers answers.jsonl --questions testdev_balanced_questions.json

A prediction is the answer text with trailing periods removed and lowercased, nothing else; it is
right when it equals the question's answer exactly. Only balanced questions count, and a balanced
question without a prediction is an error, as in the official script (`--skip-missing` follows
Align-TI's eval_gqa_1.py and leaves such questions out instead). Binary questions are those whose
structural type is not "query"; Open are the "query" ones. Validity and plausibility print 0.00%
as the official script does without a choices file; its distribution score is not reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.records import ANSWER_FIELDS, ScoreError, read_json, read_jsonl


def prediction(text: str) -> str:
    """convert_gqa_for_eval.py: `text.rstrip('.').lower()`."""
    return text.rstrip(".").lower()


def score(
    answers: list[dict[str, Any]], questions: dict[str, Any], skip_missing: bool = False
) -> dict[str, Any]:
    predicted = {str(a["question_id"]): prediction(a["text"]) for a in answers}
    counts = {"all": [0, 0], "binary": [0, 0], "open": [0, 0]}  # [correct, total]
    missing = 0
    for qid, question in questions.items():
        if not question.get("isBalanced"):
            continue
        if qid not in predicted:
            if skip_missing:
                missing += 1
                continue
            raise ScoreError(
                f"GQA: no prediction for balanced question {qid!r} (the official eval.py stops here)"
            )
        right = int(predicted[qid] == question["answer"])
        kind = "open" if question["types"]["structural"] == "query" else "binary"
        for key in ("all", kind):
            counts[key][0] += right
            counts[key][1] += 1
    if counts["all"][1] == 0:
        raise ScoreError("GQA: no balanced question was scored")
    accuracy = {k: 100 * c / t if t else 0.0 for k, (c, t) in counts.items()}
    return {
        "accuracy": accuracy["all"],
        "binary": accuracy["binary"],
        "open": accuracy["open"],
        "scored": counts["all"][1],
        "skipped_missing": missing,
    }


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"Binary: {result['binary']:.2f}%",
            f"Open: {result['open']:.2f}%",
            f"Accuracy: {result['accuracy']:.2f}%",
            "Validity: 0.00%",
            "Plausibility: 0.00%",
            f"({result['scored']} balanced questions scored"
            + (
                f", {result['skipped_missing']} without a prediction skipped)"
                if result["skipped_missing"]
                else ")"
            ),
        ]
    )


def run(answers: Path, questions: Path, skip_missing: bool = False) -> dict[str, Any]:
    return score(read_jsonl(answers, ANSWER_FIELDS), read_json(questions), skip_missing)
