"""MMBench (dev), scored with VLMEvalKit's exact matching and circular evaluation, without an LLM judge.

    python -m eval score --bench mmbench --answers answers.jsonl --questions mmbench_dev_20230712.tsv

The answers are LLaVA's model_vqa_mmbench lines, one per TSV row, `question_id` being the row's
`index`. Copies of a question with rotated options have index = original + k * 1_000_000; a question
(all rows with the same index % 1_000_000) scores 1 only when every copy's answer is right.

An answer's option is inferred as VLMEvalKit's can_infer does (open-compass/VLMEvalKit
vlmeval/utils/matching_util.py at 590f052a, the version before a67ace50 added an "answer is X" regex):
- one of four refusal phrases ("Cannot determine the answer", ...) gives "Z", a wrong answer;
- else `.()[],:;!*#{}` become spaces and the text is split on whitespace; when exactly one option
  letter is a token and its first occurrence is among the last four tokens, that letter; when no
  option letter but a "Z" is a token, "Z";
- else the option whose text (lowercased) is the only one contained in the lowercased answer,
  provided the answer is at most twice as long as all option texts together.
An answer none of these rules reads is wrong: VLMEvalKit would ask an LLM judge, and with no judge
(`exact_matching`) it scores 0, as here. A row without an answer is wrong too, as in LLaVA's
convert_mmbench_for_submission.py, which leaves its prediction empty.

The options are the columns A-D up to the first empty one, an empty cell being what pandas reads as
NaN (also "NA", "None", "nan", ...). Accuracy, overall and per category and l2-category (VLMEvalKit's
report_acc), is x100 over the questions; "vanilla" accuracy counts the original rows alone.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from eval.records import ANSWER_FIELDS, ScoreError, read_jsonl

SHIFT = 1_000_000  # circular copy k of question i has index i + k * SHIFT
LETTERS = ("A", "B", "C", "D")
REQUIRED_COLUMNS = ("index", "question", *LETTERS, "answer", "category", "l2-category")
PUNCTUATION = ".()[],:;!*#{}"  # replaced by spaces before splitting (can_infer_option)
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
API_FAILURE = "Failed to obtain answer via API"
# Cells pandas.read_csv reads as NaN by default (pandas 2.x); LLaVA and VLMEvalKit both read with pandas.
PANDAS_NA = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"}
    | {"N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)
L2_ABBREVIATIONS = {  # VLMEvalKit's MMB_abbrs
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}


def read_tsv(path: str | Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[dict[str, str]]:
    """Every row of an MMBench TSV as a dict of column -> cell text (base64 image cells included)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: no such file")
    previous_limit = csv.field_size_limit(2**31 - 1)  # an image cell is far over the default 128 KiB
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            absent = [c for c in required if c not in (reader.fieldnames or [])]
            if absent:
                raise ScoreError(f"{path}: no {', '.join(absent)} column (is it an MMBench TSV?)")
            rows = []
            for row in reader:
                if None in row or None in row.values():
                    raise ScoreError(
                        f"{path}, line {reader.line_num}: not {len(reader.fieldnames)} tab-separated fields"
                    )
                rows.append(row)
    except csv.Error as error:
        raise ScoreError(f"{path}, line {reader.line_num}: {error}") from None
    finally:
        csv.field_size_limit(previous_limit)
    return rows


def options(row: dict[str, Any]) -> dict[str, str]:
    """Letter -> option text, stopping at the first empty option (model_vqa_mmbench's get_options)."""
    found = {}
    for letter in LETTERS:
        text = row.get(letter)
        if text is None or text in PANDAS_NA:
            break
        found[letter] = text
    return found


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """The letter the answer names (or "Z", a refusal), by VLMEvalKit's token rules; None if none."""
    if API_FAILURE in answer:
        return None
    if any(phrase in answer for phrase in REFUSALS):
        return "Z"
    for char in PUNCTUATION:
        answer = answer.replace(char, " ")
    tokens = answer.split()
    named = [letter for letter in choices if letter in tokens]
    if len(named) == 1:
        # first occurrence among the last four tokens: index > len - 5
        return named[0] if tokens.index(named[0]) > len(tokens) - 5 else None
    if not named and "Z" in tokens:
        return "Z"
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """The one option whose text the lowercased answer contains, for answers not over twice the options' length."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    found = [letter for letter, text in choices.items() if text.lower() in answer]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    """An option letter (or "Z") from the letter rules first, then the option texts; None if neither."""
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def _as_index(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ScoreError(f"{where}: index {value!r} is not a whole number")


def _rows_by_index(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_index: dict[int, dict[str, Any]] = {}
    for number, row in enumerate(rows, 1):
        index = _as_index(row["index"], f"MMBench row {number}")
        if index in by_index:
            raise ScoreError(f"MMBench row {number}: index {index} appears twice")
        by_index[index] = row
    return by_index


def _circular_groups(indices: list[int]) -> dict[int, list[int]]:
    """Original index -> the indices of it and its rotated copies; every copy needs its original."""
    groups: dict[int, list[int]] = defaultdict(list)
    for index in sorted(indices):
        groups[index % SHIFT].append(index)
    orphans = [members[0] for original, members in groups.items() if original not in members]
    if orphans:
        raise ScoreError(
            f"MMBench: row {orphans[0]} is a circular copy of question {orphans[0] % SHIFT}, "
            f"which the question file lacks ({len(orphans)} such groups)"
        )
    return dict(groups)


def _answer_texts(answers: list[dict[str, Any]], known: dict[int, Any]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for number, answer in enumerate(answers, 1):
        index = _as_index(answer["question_id"], f"answer {number}")
        if answer.get("round_id") not in (None, 0):
            raise ScoreError(
                f"answer {number} (question_id {index}) has round_id {answer['round_id']}: answers made "
                "with --all-rounds are not scored; answer each TSV row once"
            )
        if index not in known:
            raise ScoreError(f"answer for question_id {index} is not in the question file")
        if index in texts:
            raise ScoreError(f"question_id {index} is answered twice")
        texts[index] = str(answer["text"])
    return texts


def _percent(hits: list[bool]) -> float:
    return 100 * sum(hits) / len(hits) if hits else 0.0


def _accuracy_by(originals: list[dict[str, Any]], hits: list[bool], column: str) -> dict[str, float]:
    """Accuracy per value of `column`, values sorted (report_acc)."""
    grouped: dict[str, list[bool]] = defaultdict(list)
    for row, hit in zip(originals, hits):
        grouped[row[column]].append(hit)
    return {value: _percent(grouped[value]) for value in sorted(grouped)}


def score(answers: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Circular accuracy (x100) overall, per l2-category and per category, and the vanilla accuracy."""
    if not rows:
        raise ScoreError("MMBench: the question file has no rows")
    by_index = _rows_by_index(rows)
    groups = _circular_groups(list(by_index))
    texts = _answer_texts(answers, by_index)
    inferred = {i: can_infer(texts[i], options(row)) for i, row in by_index.items() if i in texts}
    right = {i: inferred.get(i) == row["answer"] for i, row in by_index.items()}
    hits = [all(right[i] for i in members) for members in groups.values()]
    originals = [by_index[original] for original in groups]
    return {
        "accuracy": _percent(hits),
        "l2_category": _accuracy_by(originals, hits, "l2-category"),
        "category": _accuracy_by(originals, hits, "category"),
        "vanilla_accuracy": _percent([right[original] for original in groups]),
        "questions": len(groups),
        "correct": sum(hits),
        "rows": len(by_index),
        "answered": len(texts),
        "unmatched": sum(1 for letter in inferred.values() if letter is None),
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"MMBench, circular evaluation with exact matching (no LLM judge): "
        f"{result['questions']} questions in {result['rows']} rows",
        f"Overall: {result['accuracy']:.2f} ({result['correct']}/{result['questions']})",
        "l2-category:",
    ]
    for name, accuracy in result["l2_category"].items():
        abbreviation = L2_ABBREVIATIONS.get(name)
        lines.append(f"  {name}{f' ({abbreviation})' if abbreviation else ''}: {accuracy:.2f}")
    lines.append("category:")
    lines += [f"  {name}: {accuracy:.2f}" for name, accuracy in result["category"].items()]
    lines += [
        f"Vanilla accuracy (original rows only): {result['vanilla_accuracy']:.2f}",
        f"Rows answered: {result['answered']} of {result['rows']}; "
        f"no option inferred (scored wrong) for {result['unmatched']}",
    ]
    return "\n".join(lines)


def run(answers: Path, questions: Path) -> dict[str, Any]:
    return score(read_jsonl(answers, ANSWER_FIELDS), read_tsv(questions))
