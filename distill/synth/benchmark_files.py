"""Write the held-out questions in the file formats of the official benchmarks.

The layouts follow ../shared/eval-spec.md (LLaVA-1.5 protocol), so `eval/` scores the synthetic
world with the same scorers as the real benchmarks:

    benchmarks/gqa/llava_gqa_testdev_balanced.jsonl, testdev_balanced_questions.json
    benchmarks/scienceqa/llava_test_CQM-A.json, problems.json, pid_splits.json
    benchmarks/textvqa/llava_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json
    benchmarks/pope/llava_pope_test.jsonl, coco/coco_pope_{adversarial,popular,random}.json
    benchmarks/mme/llava_mme.jsonl, MME_Benchmark_release_version/<category>/*.txt (the flat layout
        of MME's existence, count, position, color and OCR folders)
    benchmarks/mmbench/mmbench_dev_20230712.tsv (with circular shifts)

Image paths inside these files are relative to the held-out image folder (images/test).
The TextVQA questions carry no "Reference OCR token" line (the synthetic world has no OCR system;
lmms-eval's default has none either).
"""

from __future__ import annotations

import base64
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from distill.synth.questions import CHOICE_SUFFIX, SHORT_SUFFIX, mmbench_prompt

MME_SUFFIX = " Please answer yes or no."


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _question_text(record: dict[str, Any]) -> str:
    """The human turn without the image placeholder and the answer-format suffix."""
    text = record["conversations"][0]["value"].removeprefix("<image>\n")
    for suffix in (SHORT_SUFFIX, CHOICE_SUFFIX):
        text = text.removesuffix(suffix)
    return text


def _image_stem(record: dict[str, Any]) -> str:
    return Path(record["image"]).stem


def write_gqa(records: list[dict[str, Any]], out: Path) -> None:
    rows, annotations = [], {}
    for r in records:
        qid, question = r["question_id"], _question_text(r)
        rows.append(
            {
                "question_id": qid,
                "image": Path(r["image"]).name,
                "text": question + SHORT_SUFFIX,
                "category": "default",
            }
        )
        annotations[qid] = {
            "imageId": _image_stem(r),
            "question": question,
            "answer": r["answer"],
            "fullAnswer": f"The answer is {r['answer']}.",
            "isBalanced": True,
            "types": {"structural": "query", "semantic": "attr", "detailed": r["family"]},
            "groups": {"global": None, "local": r["family"]},
            "semantic": [],
            "entailed": [],
            "equivalent": [qid],
            "annotations": {"question": {}, "answer": {}, "fullAnswer": {}},
        }
    _write_jsonl(out / "llava_gqa_testdev_balanced.jsonl", rows)
    _write_json(out / "testdev_balanced_questions.json", annotations)


def write_scienceqa(records: list[dict[str, Any]], out: Path) -> None:
    questions, problems = [], {}
    for r in records:
        pid, extra = r["question_id"], r["extra"]
        value = r["conversations"][0]["value"].removesuffix(CHOICE_SUFFIX)
        entry: dict[str, Any] = {
            "id": pid,
            "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": r["answer"]}],
        }
        if "image" in r:
            entry["image"] = Path(r["image"]).name
        questions.append(entry)
        problems[pid] = {
            "question": extra["question"],
            "choices": extra["choices"],
            "answer": extra["answer_index"],
            "hint": extra["hint"],
            "image": "image.png" if "image" in r else None,
            "task": "closed choice",
            "grade": "grade1",
            "subject": "natural science",
            "topic": "shapes",
            "category": "Shapes and colors",
            "skill": "Identify shapes and colors",
            "lecture": "",
            "solution": "",
            "split": "test",
        }
    _write_json(out / "llava_test_CQM-A.json", questions)
    _write_json(out / "problems.json", problems)
    _write_json(
        out / "pid_splits.json", {"test": [r["question_id"] for r in records], "train": [], "val": []}
    )


def write_textvqa(records: list[dict[str, Any]], out: Path) -> None:
    rows, data = [], []
    for i, r in enumerate(records):
        image_id, question = _image_stem(r), _question_text(r)
        rows.append(
            {"question_id": image_id, "image": Path(r["image"]).name, "text": question + SHORT_SUFFIX}
        )
        word = r["answer"]
        answers = [word.upper() if k in (3, 7) else word for k in range(10)]  # annotators vary in case
        data.append(
            {
                "image_id": image_id,
                "question_id": i,
                "question": question,
                "answers": answers,
                "set_name": "val",
            }
        )
    _write_jsonl(out / "llava_textvqa_val_v051_ocr.jsonl", rows)
    _write_json(
        out / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}
    )


def write_pope(records: list[dict[str, Any]], out: Path) -> None:
    rows, labels = [], defaultdict(list)
    ordered = sorted(
        records, key=lambda r: ["adversarial", "popular", "random"].index(r["extra"]["category"])
    )
    for number, r in enumerate(ordered, start=1):
        category, question = r["extra"]["category"], _question_text(r)
        image = Path(r["image"]).name
        rows.append(
            {"question_id": number, "image": image, "text": question + SHORT_SUFFIX, "category": category}
        )
        labels[category].append(
            {"question_id": number, "image": image, "text": question, "label": r["answer"].lower()}
        )
    _write_jsonl(out / "llava_pope_test.jsonl", rows)
    for category, items in labels.items():
        _write_jsonl(out / "coco" / f"coco_pope_{category}.json", items)


def write_mme(records: list[dict[str, Any]], out: Path) -> None:
    rows, ground_truth = [], defaultdict(list)
    for r in records:
        category, image = r["extra"]["category"], Path(r["image"]).name
        question = _question_text(r)
        rows.append(
            {
                "question_id": f"{category}/{image}",
                "image": image,
                "text": question + SHORT_SUFFIX,
                "category": category,
            }
        )
        ground_truth[(category, _image_stem(r))].append(f"{question}{MME_SUFFIX}\t{r['answer']}")
    _write_jsonl(out / "llava_mme.jsonl", rows)
    for (category, stem), lines in ground_truth.items():
        path = out / "MME_Benchmark_release_version" / category / f"{stem}.txt"  # flat, as these five are
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")


MMBENCH_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "source",
    "l2-category",
    "comment",
    "split",
]


def write_mmbench(records: list[dict[str, Any]], image_dir: Path, out: Path) -> None:
    """One row per question plus its circular shifts (index + k * 1e6, options rotated)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "mmbench_dev_20230712.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(MMBENCH_COLUMNS)
        for index, r in enumerate(records):
            extra = r["extra"]
            image = base64.b64encode((image_dir / Path(r["image"]).name).read_bytes()).decode()
            options = extra["options"]
            for shift in range(len(options)):
                rotated = options[shift:] + options[:shift]
                answer = (extra["answer_index"] - shift) % len(options)
                row = mmbench_prompt(extra["question"], extra["hint"], rotated, answer)
                writer.writerow(
                    [
                        index + shift * 1_000_000,
                        extra["question"],
                        extra["hint"],
                        *rotated,
                        row.answer,
                        "shapes",
                        image,
                        "synthetic",
                        "perception",
                        "",
                        "dev",
                    ]
                )


def write_all(records: list[dict[str, Any]], image_dir: Path, out: Path) -> dict[str, int]:
    """Write every benchmark's files; returns the number of questions per benchmark."""
    by_benchmark: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_benchmark[r["benchmark"]].append(r)
    write_gqa(by_benchmark["gqa"], out / "gqa")
    write_scienceqa(by_benchmark["sqa"], out / "scienceqa")
    write_textvqa(by_benchmark["textvqa"], out / "textvqa")
    write_pope(by_benchmark["pope"], out / "pope")
    write_mme(by_benchmark["mme"], out / "mme")
    write_mmbench(by_benchmark["mmbench"], image_dir, out / "mmbench")
    return {name: len(rows) for name, rows in sorted(by_benchmark.items())}
