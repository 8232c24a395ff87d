"""`python -m distill heldout --model DIR`: accuracy per question family on the synthetic held-out split.

    python -m distill heldout --model runs/tiny/teacher/final --data data/shapes/test.json

Greedy, batched generation (left padding) on each held-out question, then a plain match per
family: yes/no questions compare the first word, multiple-choice questions the first letter, the
rest the whole answer (lower-cased, trailing period dropped). The official benchmark scorers, with
their quirks, are eval/'s job; this is the quick check the tiny default prints.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from distill.conversation import generation_prompt, prompt_inputs
from distill.model_names import unique_names
from distill.modeling import language_model_parameters, load_llava
from distill.records import read_records
from distill.staging import write_text_atomic

FAMILIES = ("colour", "shape", "count", "position", "reading", "yes/no", "multiple-choice")


def normalize(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def is_correct(record: dict[str, Any], prediction: str) -> bool:
    answer, got = normalize(record["answer"]), normalize(prediction)
    if record["family"] == "yes/no":
        return got.split(" ")[0].strip(",.!") == answer
    if record["family"] == "multiple-choice":
        return got[:1] == answer
    return got == answer


def _prompt(processor: Any, record: dict[str, Any]) -> str:
    return generation_prompt(processor.tokenizer, record["conversations"][0]["value"])


@torch.inference_mode()
def generate_answers(
    model: Any,
    processor: Any,
    records: list[dict[str, Any]],
    image_folder: Path,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to the first human turn of each record, batched with left padding."""
    processor.tokenizer.padding_side = "left"
    answers: list[str] = []
    device = next(model.parameters()).device
    for start in tqdm(
        range(0, len(records), batch_size), desc="answer", unit="batch", disable=not progress, leave=False
    ):
        batch = records[start : start + batch_size]
        texts = [_prompt(processor, r) for r in batch]
        images = [Image.open(image_folder / r["image"]).convert("RGB") for r in batch if "image" in r]
        inputs = prompt_inputs(processor, images, texts).to(device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [t.strip() for t in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def score(records: list[dict[str, Any]], answers: list[str]) -> dict[str, dict[str, float]]:
    """{family: {accuracy, chance, n}} plus an 'overall' row (mean over questions)."""
    rows = tally(records, answers, lambda record: [record["family"], "overall"])
    chance: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for family in (record["family"], "overall"):
            chance[family].append(1.0 / record["n_choices"] if record["n_choices"] else 0.0)
    return {family: {**row, "chance": sum(chance[family]) / row["n"]} for family, row in rows.items()}


def benchmark_group(record: dict[str, Any]) -> str | None:
    """Where a yes/no or lettered question comes from: "pope adversarial", "mme position", "sqa"."""
    if record["family"] not in ("yes/no", "multiple-choice"):
        return None
    category = (record.get("extra") or {}).get("category")
    return f"{record['family']}: {record['benchmark']}" + (f" {category}" if category else "")


def score_by_benchmark(records: list[dict[str, Any]], answers: list[str]) -> dict[str, dict[str, float]]:
    """{"yes/no: pope random": {accuracy, n}, ...}: the yes/no and multiple-choice families split by
    the benchmark (and POPE or MME category) each question imitates."""
    rows = tally(records, answers, lambda record: [group] if (group := benchmark_group(record)) else [])
    return dict(sorted(rows.items()))


def tally(
    records: list[dict[str, Any]], answers: list[str], groups: Callable[[dict[str, Any]], list[str]]
) -> dict[str, dict[str, float]]:
    """{group: {accuracy, n}} over the groups each record belongs to (`groups(record)`)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for record, answer in zip(records, answers):
        for group in groups(record):
            hits[group].append(is_correct(record, answer))
    return {group: {"accuracy": sum(h) / len(h), "n": len(h)} for group, h in hits.items()}


def select(records: list[dict[str, Any]], per_family: int | None) -> list[dict[str, Any]]:
    records = [r for r in records if r.get("family") in FAMILIES]
    if per_family is None:
        return records
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for r in records:
        if seen[r["family"]] < per_family:
            seen[r["family"]] += 1
            kept.append(r)
    return kept


def evaluate_model(
    model_dir: str | Path,
    data: str | Path,
    per_family: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    model, processor = load_llava(model_dir)
    model.eval()
    records = select(read_records(data), per_family)
    start = time.perf_counter()
    answers = generate_answers(model, processor, records, Path(data).parent, batch_size, progress=progress)
    seconds = time.perf_counter() - start
    return {
        "model": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "llm_parameters": language_model_parameters(model),
        "families": score(records, answers),
        "by_benchmark": score_by_benchmark(records, answers),
        "questions_per_second": len(records) / seconds,
        "answers": [
            {"id": r["id"], "family": r["family"], "answer": r["answer"], "prediction": a}
            for r, a in zip(records, answers)
        ],
    }


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per family, one column per model, plus chance."""
    names = list(results)
    header = "| family | " + " | ".join(names) + " | chance |"
    rule = "|---" * (len(names) + 2) + "|"
    rows = [header, rule]
    first = next(iter(results.values()))["families"]
    for family in [*FAMILIES, "overall"]:
        if family not in first:
            continue
        cells = [f"{100 * results[n]['families'][family]['accuracy']:.1f}" for n in names]
        rows.append(
            f"| {family} (n={first[family]['n']}) | "
            + " | ".join(cells)
            + f" | {100 * first[family]['chance']:.1f} |"
        )
    rows.append(
        "| LLM parameters | "
        + " | ".join(f"{results[n]['llm_parameters'] / 1e6:.2f}M" for n in names)
        + " | |"
    )
    rows.append(
        "| all parameters | " + " | ".join(f"{results[n]['parameters'] / 1e6:.2f}M" for n in names) + " | |"
    )
    return "\n".join(rows)


def format_breakdown(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the yes/no and multiple-choice families by benchmark and category."""
    names = list(results)
    groups = next(iter(results.values()))["by_benchmark"]
    rows = ["| benchmark | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for group, first in groups.items():
        cells = [f"{100 * results[n]['by_benchmark'][group]['accuracy']:.1f}" for n in names]
        rows.append(f"| {group} (n={first['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", nargs="+", required=True, help="model directories (e.g. runs/tiny/teacher/final)"
    )
    parser.add_argument(
        "--data", default="data/shapes/test.json", help="held-out questions (default: %(default)s)"
    )
    parser.add_argument("--per-family", type=int, default=None, help="at most this many questions per family")
    parser.add_argument("--batch-size", type=int, default=64, help="questions per generate() call")
    parser.add_argument("--out", default=None, help="write the results (with every answer) to this JSON file")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print yes/no and multiple-choice by benchmark and category (POPE random/popular/"
        "adversarial, MME existence/count/position/color/OCR, ScienceQA, MMBench)",
    )


def run(args: argparse.Namespace) -> int:
    names = unique_names([Path(m) for m in args.model])  # two runs' checkpoint-600 stay two columns
    results = {
        name: evaluate_model(m, args.data, args.per_family, args.batch_size)
        for name, m in zip(names, args.model)
    }
    print(format_table(results))
    if args.breakdown:
        print("\n" + format_breakdown(results))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(results, indent=1))  # never half-written
    return 0
