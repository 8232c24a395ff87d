"""`python -m eval suite`: run and score several models on several benchmarks, then compare them.

    python -m eval suite --models runs/tiny/teacher/final runs/tiny/student-kd/final runs/tiny/student-sft/final
    python -m eval suite --models A B --benches gqa pope --layout my_benchmarks.yaml --out runs/eval

For each model and benchmark it answers the questions (`eval run`, resumed when answers exist),
scores them with the official scorer (`eval score`), and writes OUT/MODEL/BENCH.jsonl and its
score JSON. Then a comparison table of each benchmark's headline figure (the one papers report:
GQA accuracy, SQA-IMG accuracy, TextVQA accuracy, POPE mean F1, MME perception, MMBench circular
accuracy) as OUT/suite.md and OUT/suite.json, and a bar chart, OUT/suite.png.

The default layout is the synthetic world's (`python -m distill synth` writes it under
data/shapes/benchmarks, with LLaVA's file names); `--layout FILE` (YAML) points each benchmark at
your copies of the official files, e.g.

    gqa: {questions: /data/gqa/llava_gqa_testdev_balanced.jsonl, images: /data/gqa/images,
          annotations_questions: /data/gqa/testdev_balanced_questions.json}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from distill.model_names import unique_names
from distill.staging import save_figure, write_text_atomic
from eval import mme
from eval import run as runner
from eval import score as scorer
from eval.backends import open_backend
from eval.questions import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, read_questions
from eval.records import ScoreError, UndefinedScore

SUITE_BENCHES = ("gqa", "sqa", "textvqa", "pope", "mme", "mmbench")
HEADLINE = {  # bench -> (key in the scorer's result, column title)
    "gqa": ("accuracy", "GQA"),
    "sqa": ("img_accuracy", "SQA-IMG"),
    "textvqa": ("accuracy", "TextVQA"),
    "pope": ("pope_f1", "POPE F1"),
    "mme": ("perception", "MME-P"),
    "mmbench": ("accuracy", "MMBench"),
}
# a benchmark whose answers the official formula leaves undefined (eval.records.UndefinedScore) is
# kept in the comparison as n/a, with the reason under this key
NOT_SCORED = "not_scored"
LAYOUT_KEYS = ("questions", "images", "annotations", "annotations_questions", "problems", "pid_splits")


def default_layout(root: Path, images: Path) -> dict[str, dict[str, Path]]:
    """Where each benchmark's files are, under LLaVA's names (as `distill synth` writes them)."""
    return {
        "gqa": {
            "questions": root / "gqa" / "llava_gqa_testdev_balanced.jsonl",
            "images": images,
            "annotations_questions": root / "gqa" / "testdev_balanced_questions.json",
        },
        "sqa": {
            "questions": root / "scienceqa" / "llava_test_CQM-A.json",
            "images": images,
            "problems": root / "scienceqa" / "problems.json",
            "pid_splits": root / "scienceqa" / "pid_splits.json",
        },
        "textvqa": {
            "questions": root / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl",
            "images": images,
            "annotations": root / "textvqa" / "TextVQA_0.5.1_val.json",
        },
        "pope": {
            "questions": root / "pope" / "llava_pope_test.jsonl",
            "images": images,
            "annotations": root / "pope" / "coco",
        },
        "mme": {
            "questions": root / "mme" / "llava_mme.jsonl",
            "images": images,
            "annotations": root / "mme" / "MME_Benchmark_release_version",
        },
        "mmbench": {"questions": root / "mmbench" / "mmbench_dev_20230712.tsv"},
    }


def read_layout(path: Path, layout: dict[str, dict[str, Path]]) -> dict[str, dict[str, Path]]:
    """Overlay a YAML layout file on the default one, checking its benchmark names and keys."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ScoreError(f"{path}: expected a mapping of benchmark -> file paths")
    for bench, files in data.items():
        if bench not in SUITE_BENCHES:
            raise ScoreError(f"{path}: unknown benchmark {bench!r}; choose from {', '.join(SUITE_BENCHES)}")
        if not isinstance(files, dict) or set(files) - set(LAYOUT_KEYS):
            unknown = sorted(set(files) - set(LAYOUT_KEYS)) if isinstance(files, dict) else files
            raise ScoreError(f"{path}, {bench}: unknown keys {unknown}; use {', '.join(LAYOUT_KEYS)}")
        layout[bench] = {**layout[bench], **{key: Path(value) for key, value in files.items()}}
    return layout


def score_arguments(bench: str, answers: Path, files: dict[str, Path], partial: bool) -> argparse.Namespace:
    """The namespace `eval score` would parse for this benchmark's files (`partial`: a --limit run)."""
    questions = files.get("annotations_questions") if bench == "gqa" else files.get("questions")
    return argparse.Namespace(
        bench=bench,
        answers=answers,
        questions=questions,
        annotations=files.get("annotations"),
        problems=files.get("problems"),
        pid_splits=files.get("pid_splits"),
        split="test",
        skip_missing=partial,  # GQA then scores the answered questions only (eval_gqa_1.py)
    )


def evaluate(
    model_dir: Path,
    name: str,
    benches: list[str],
    layout: dict[str, dict[str, Path]],
    out: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Answer and score every benchmark with one model; returns {bench: scorer result}."""
    backend = open_backend(model_dir, args.dtype, args.device, name)
    results = {}
    for bench in benches:
        files = layout[bench]
        answers = out / backend.name / f"{bench}.jsonl"
        questions = read_questions(bench, files["questions"], files.get("images"))[: args.limit]
        todo = runner.unanswered(questions, runner.answered_keys(answers))
        print(f"== {backend.name} / {bench}: {len(questions)} questions, {len(todo)} to answer", flush=True)
        if todo:
            tokens = args.max_new_tokens or MAX_NEW_TOKENS.get(bench, DEFAULT_MAX_NEW_TOKENS)
            seconds = runner.answer_all(backend, todo, answers, args.batch_size, tokens)
            print(f"   {len(todo) / seconds:.2f} samples/s", flush=True)
        try:
            result, text = scorer.score(score_arguments(bench, answers, files, args.limit is not None))
        except UndefinedScore as error:  # the official scorer would divide by zero here
            print(f"   not scored: {error}", flush=True)
            results[bench] = {NOT_SCORED: str(error)}
            continue
        if not args.quiet:
            print(text)
        scorer.write_result(bench, answers, result)
        results[bench] = result
    return results


def comparison(results: dict[str, dict[str, Any]], benches: list[str]) -> str:
    """Markdown: one row per model, one column per benchmark's headline figure (and what MME-P is out of)."""
    titles = [HEADLINE[b][1] for b in benches]
    lines = ["| model | " + " | ".join(titles) + " |", "|---" * (len(benches) + 1) + "|"]
    reasons = []
    for model, scores in results.items():
        cells = []
        for bench in benches:
            if NOT_SCORED in scores[bench]:
                reasons.append(f"{model}, {HEADLINE[bench][1]}: not scored, {scores[bench][NOT_SCORED]}.")
                cells.append(f"n/a ({len(reasons)})")
            else:
                cells.append(f"{scores[bench][HEADLINE[bench][0]]:.1f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if reasons:
        lines.append("")
        lines += [f"({i}) {reason}" for i, reason in enumerate(reasons, 1)]
    scored_mme = (
        [s["mme"] for s in results.values() if NOT_SCORED not in s["mme"]] if "mme" in benches else []
    )
    if scored_mme:
        present = [name for name in scored_mme[0]["subtasks"] if name in mme.PERCEPTION]
        lines.append(
            f"\nMME-P: the perception total over {len(present)} of MME's 10 perception subtasks "
            f"(at most {200 * len(present)} here, 2000 on the full benchmark)."
        )
    return "\n".join(lines)


def bar_chart(results: dict[str, dict[str, Any]], benches: list[str], path: Path) -> None:
    """Grouped bars: benchmarks on the x axis, one bar per model, each on a 0-100 scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    width = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(1.6 * len(benches) + 2, 4))
    for i, model in enumerate(models):
        values = [headline_percent(b, results[model][b]) for b in benches]
        axis.bar(
            [x + (i - (len(models) - 1) / 2) * width for x in range(len(benches))], values, width, label=model
        )
    axis.set_xticks(
        range(len(benches)), [HEADLINE[b][1] + (" (% of max)" if b == "mme" else "") for b in benches]
    )
    axis.set_ylabel("score")
    axis.set_ylim(0, 100)
    axis.legend()
    axis.set_title("benchmark scores (official scorers)")
    save_figure(figure, path)


def headline_percent(bench: str, result: dict[str, Any]) -> float:
    """The headline figure on a 0-100 scale: MME perception as a share of the most its subtasks give
    (NaN, drawn as no bar, where the benchmark was not scored)."""
    if NOT_SCORED in result:
        return float("nan")
    value = result[HEADLINE[bench][0]]
    if bench != "mme":
        return value
    present = [name for name in result["subtasks"] if name in mme.PERCEPTION]
    return 100 * value / (200 * len(present)) if present else 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", required=True, type=Path, help="model directories to compare")
    parser.add_argument(
        "--benches", nargs="+", default=list(SUITE_BENCHES), choices=SUITE_BENCHES, help="default: all six"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("data/shapes/benchmarks"),
        help="folder of the benchmark files under LLaVA's names (default: the synthetic world's)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        default=Path("data/shapes/images/test"),
        help="image folder of the default layout",
    )
    parser.add_argument(
        "--layout", type=Path, help="YAML: per-benchmark file paths overriding the default layout"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/eval"), help="answers, scores and the comparison"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate() call")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="answer only the first N questions of each file (a smoke test: GQA then scores the "
        "answered questions only; POPE and MME leave out the splits and subtasks with no answers)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="longest answer (default: LLaVA's)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when there is one)")
    parser.add_argument(
        "--quiet", action="store_true", help="print the comparison only (each report stays in its score JSON)"
    )


def run(args: argparse.Namespace) -> int:
    layout = default_layout(args.root, args.images)
    if args.layout is not None:
        layout = read_layout(args.layout, layout)
    names = unique_names([Path(m) for m in args.models])  # runs/a/kd/final, runs/b/kd/final -> a/kd, b/kd
    if len(set(names)) != len(names):
        raise ScoreError(f"a model is given twice ({', '.join(names)}); its answers would mix under --out")
    results = {
        name: evaluate(m, name, args.benches, layout, args.out, args) for name, m in zip(names, args.models)
    }
    table = comparison(results, args.benches)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "suite.md", table + "\n")
    write_text_atomic(
        args.out / "suite.json", json.dumps({"benches": args.benches, "results": results}, indent=1)
    )
    bar_chart(results, args.benches, args.out / "suite.png")
    print(
        f"comparison written to {args.out / 'suite.md'}, {args.out / 'suite.json'} and {args.out / 'suite.png'}"
    )
    return 0
