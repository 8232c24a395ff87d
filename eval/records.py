"""Reading answer and question files, and the error every scorer raises for bad input.

answers = read_jsonl("answers.jsonl")      # one JSON object per line; a bad line names itself
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ANSWER_FIELDS = ("question_id", "text")


class ScoreError(ValueError):
    """Input a scorer cannot score (missing files, malformed lines, unmatched ids)."""


class UndefinedScore(ScoreError):
    """Well-formed answers for which the official formula is undefined (POPE's precision when no
    answer is yes: the official script divides by zero). `eval suite` reports these as n/a and goes
    on; every other ScoreError (missing files, malformed lines) stops it."""


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every non-empty line of a JSON-lines file as a dict, each holding the `required` fields."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ScoreError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ScoreError(f"{path}, line {number}: expected a JSON object")
        absent = [key for key in required if key not in row]
        if absent:
            raise ScoreError(f"{path}, line {number}: no {', '.join(absent)} field")
        rows.append(row)
    return rows


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ScoreError(f"{path}: not JSON ({error.msg} at line {error.lineno})") from None
