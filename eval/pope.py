"""POPE, scored as LLaVA's llava/eval/eval_pope.py scores it (quirks included).

    python -m eval score --bench pope --answers answers.jsonl \\
        --questions llava_pope_test.jsonl --annotations pope/coco

Answers are split by their question's category (adversarial, popular, random), and each split's
answers are matched to its label file coco_pope_<split>.json **by position**, not by id. An
answer is "no" when, after cutting the text at its first period and dropping commas, one of its
space-separated words is exactly "No", "no" or "not"; anything else, "NO", "No!" and "" included,
is "yes". The reported POPE figure is the mean F1 over the splits. A split with no answers at all
(a run with --limit), where the official script divides by zero, is left out and named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.records import ANSWER_FIELDS, ScoreError, UndefinedScore, read_jsonl

LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"


def parse_answer(text: str) -> str:
    """'yes' or 'no' as eval_pope.py reads a response."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def split_metrics(predictions: list[str], labels: list[str], split: str) -> dict[str, float]:
    """TP/FP/TN/FN, accuracy, precision, recall, F1 and yes ratio; pairs by position (zip)."""
    pred = [0 if p == "no" else 1 for p in predictions]
    gold = [0 if label == "no" else 1 for label in labels]
    pairs = list(zip(pred, gold))
    tp = sum(1 for p, g in pairs if p == 1 and g == 1)
    fp = sum(1 for p, g in pairs if p == 1 and g == 0)
    tn = sum(1 for p, g in pairs if p == 0 and g == 0)
    fn = sum(1 for p, g in pairs if p == 0 and g == 1)
    if tp + fp == 0:
        raise UndefinedScore(
            f"POPE {split}: no answer parses as yes, where the official scorer divides by zero (precision)"
        )
    if tp + fn == 0:
        raise ScoreError(f"POPE {split}: no label is yes, where the official scorer divides by zero (recall)")
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "answers": len(predictions),
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": pred.count(1) / len(pred),
    }


def score(
    answers: list[dict[str, Any]], questions: list[dict[str, Any]], annotations: Path
) -> dict[str, Any]:
    """Per-split metrics and the mean F1 (x100) from answer lines, the question file and the label folder."""
    category = {q["question_id"]: q["category"] for q in questions}
    if not Path(annotations).is_dir():
        raise ScoreError(
            f"{annotations}: no such folder (expected POPE's coco_pope_<split>.json label files)"
        )
    label_files = sorted(
        p
        for p in Path(annotations).iterdir()
        if p.name.startswith(LABEL_PREFIX) and p.name.endswith(LABEL_SUFFIX)
    )
    if not label_files:
        raise ScoreError(f"{annotations}: no {LABEL_PREFIX}*{LABEL_SUFFIX} label files")
    unknown = [a["question_id"] for a in answers if a["question_id"] not in category]
    if unknown:
        raise ScoreError(f"answer for question_id {unknown[0]!r} is not in the question file")
    splits, absent = {}, []
    for path in label_files:
        split = path.name[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]
        predictions = [parse_answer(a["text"]) for a in answers if category[a["question_id"]] == split]
        if not predictions:
            absent.append(split)  # the official script divides by zero here; we leave the split out
            continue
        labels = [row["label"] for row in read_jsonl(path, ("label",))]
        splits[split] = split_metrics(predictions, labels, split)
    if not splits:
        raise ScoreError("POPE: no answer belongs to any split's label file")
    mean_f1 = 100 * sum(s["f1"] for s in splits.values()) / len(splits)
    return {"splits": splits, "absent_splits": absent, "pope_f1": mean_f1}


def report(result: dict[str, Any]) -> str:
    """The official script's printout per split, then the summary line."""
    lines = []
    for split, m in result["splits"].items():
        lines += [
            f"Category: {split}, # samples: {m['answers']}",
            "TP\tFP\tTN\tFN\t",
            f"{m['TP']}\t{m['FP']}\t{m['TN']}\t{m['FN']}",
            f"Accuracy: {m['accuracy']}",
            f"Precision: {m['precision']}",
            f"Recall: {m['recall']}",
            f"F1 score: {m['f1']}",
            f"Yes ratio: {m['yes_ratio']}",
            f"{m['f1']:.3f}, {m['accuracy']:.3f}, {m['precision']:.3f}, {m['recall']:.3f}, {m['yes_ratio']:.3f}",
            "====================================",
        ]
    if result["absent_splits"]:
        lines.append(f"(no answers, left out: {', '.join(result['absent_splits'])})")
    lines.append(f"POPE (mean F1 over {len(result['splits'])} splits): {result['pope_f1']:.2f}")
    return "\n".join(lines)


def run(answers: Path, questions: Path, annotations: Path) -> dict[str, Any]:
    return score(
        read_jsonl(answers, ANSWER_FIELDS), read_jsonl(questions, ("question_id", "category")), annotations
    )
