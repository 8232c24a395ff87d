"""ScienceQA-IMG, scored as LLaVA's llava/eval/eval_science_qa.py scores it (quirks included).

    python -m eval score --bench sqa --answers answers.jsonl --problems problems.json --pid-splits pid_splits.json

The answer letter is parsed in this order: the whole text is one of A-E; else the text starts with
a letter followed by ". "; else `The answer is ([A-Z]).` matches exactly once (its final `.` is any
character, so the phrase at the very end of the text does not match); else FAILED. A letter beyond
the question's choices counts as wrong, and so does a missing prediction. IMG-Accuracy, the figure
reported as "SQA", keeps the questions whose recorded prompt contains "<image>".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eval.records import ANSWER_FIELDS, ScoreError, read_json, read_jsonl

OPTIONS = ["A", "B", "C", "D", "E"]
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_letter(text: str) -> str:
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def choice_index(letter: str, choices: list[str]) -> int:
    """The choice the letter names, or -1 when it is not one of this question's choices."""
    return OPTIONS.index(letter) if letter in OPTIONS[: len(choices)] else -1


def score(
    answers: list[dict[str, Any]],
    problems: dict[str, Any],
    pid_splits: dict[str, list[str]],
    split: str = "test",
) -> dict[str, Any]:
    if split not in pid_splits:
        raise ScoreError(f"pid_splits has no {split!r} split (has: {', '.join(pid_splits)})")
    predicted = {str(a["question_id"]): a for a in answers}
    correct = total = img_correct = img_total = 0
    for pid in pid_splits[split]:
        if pid not in problems:
            raise ScoreError(f"pid_splits names problem {pid!r}, which problems.json does not have")
        problem = problems[pid]
        answer = predicted.get(pid, {"text": "FAILED", "prompt": "Unknown"})
        right = choice_index(parse_letter(answer["text"]), problem["choices"]) == problem["answer"]
        multimodal = "<image>" in answer["prompt"]
        correct, total = correct + right, total + 1
        img_correct, img_total = img_correct + (right and multimodal), img_total + multimodal
    if img_total == 0:
        raise ScoreError(
            "ScienceQA: no answered question has '<image>' in its prompt (IMG-Accuracy divides by zero)"
        )
    return {
        "total": total,
        "correct": correct,
        "accuracy": 100 * correct / total,
        "img_accuracy": 100 * img_correct / img_total,
        "img_total": img_total,
    }


def report(result: dict[str, Any]) -> str:
    return (
        f"Total: {result['total']}, Correct: {result['correct']}, Accuracy: {result['accuracy']:.2f}%, "
        f"IMG-Accuracy: {result['img_accuracy']:.2f}%"
    )


def run(answers: Path, problems: Path, pid_splits: Path, split: str = "test") -> dict[str, Any]:
    return score(
        read_jsonl(answers, (*ANSWER_FIELDS, "prompt")), read_json(problems), read_json(pid_splits), split
    )
