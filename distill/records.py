"""Reading a LLaVA-format data file: a JSON list of records, or JSON Lines (one record per line).

    records = read_records("data/shapes/test.json")

Plain json, no PyTorch: the demo's examples and the benches' probe prompts read records without
the training data pipeline (distill/data.py), which a served GGUF export does not need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.conversation import DataError


def read_records(path: str | Path) -> list[Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of records at the top level")
    return records
