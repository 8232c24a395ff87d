"""`python -m eval run`: answer a benchmark's questions with a model, writing LLaVA-format answer lines.

    python -m eval run --model runs/tiny/student-kd/final --bench pope \\
        --questions data/shapes/benchmarks/pope/llava_pope_test.jsonl --images data/shapes/images/test \\
        --out answers/student-kd/pope.jsonl
    python -m eval score --bench pope --answers answers/student-kd/pope.jsonl ...

Each line is {question_id, prompt, text, answer_id, model_id, metadata} (MMBench adds round_id,
options and option_char), in question-file order. Decoding is greedy, batched with left padding
(--batch-size), with the benchmark's answer-format suffix. A run that is stopped resumes: questions
already in --out are skipped, and a last line cut off mid-write is dropped first. `--limit N`
answers the first N questions only. The run prints samples per second; `--speed-check N` also
times N questions at batch size 1 and at --batch-size before the run and prints both.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.backends import Backend, open_backend
from eval.questions import BENCHES, DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, BenchQuestion, read_questions
from eval.records import ScoreError, read_jsonl


def answer_line(question: BenchQuestion, text: str, model_id: str) -> dict[str, Any]:
    return {
        "question_id": question.question_id,
        "prompt": question.recorded_prompt,
        "text": text,
        **question.extra,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {},
    }


def drop_cut_off_line(path: Path) -> bool:
    """Truncate a last line without its newline (the run was killed while writing it)."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
    return True


def answered_keys(path: Path) -> Counter[tuple[str, str]]:
    """How often each question was answered in an existing answer file (nothing if there is none)."""
    if not path.is_file():
        return Counter()
    if drop_cut_off_line(path):
        print(f"{path}: dropped a last line cut off mid-write")
    return Counter(
        (str(row["question_id"]), row["prompt"]) for row in read_jsonl(path, ("question_id", "prompt"))
    )


def unanswered(questions: list[BenchQuestion], done: Counter[tuple[str, str]]) -> list[BenchQuestion]:
    """The questions not yet in the answer file; a question asked twice needs two answers."""
    left = Counter(done)
    todo = []
    for question in questions:
        if left[question.key] > 0:
            left[question.key] -= 1
        else:
            todo.append(question)
    return todo


def batches(items: list[BenchQuestion], size: int) -> list[list[BenchQuestion]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def answer_all(
    backend: Backend,
    questions: list[BenchQuestion],
    out: Path,
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
) -> float:
    """Answer the questions, appending one whole line per answer after each batch; returns seconds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (
        open(out, "a") as handle,
        tqdm(total=len(questions), desc="answer", unit="q", disable=not progress) as bar,
    ):
        for batch in batches(questions, batch_size):
            texts = backend.answer(batch, max_new_tokens)
            handle.write(
                "".join(json.dumps(answer_line(q, t, backend.name)) + "\n" for q, t in zip(batch, texts))
            )
            handle.flush()
            bar.update(len(batch))
    return time.perf_counter() - start


def samples_per_second(
    backend: Backend, questions: list[BenchQuestion], batch_size: int, max_new_tokens: int
) -> float:
    """Time answering the questions at one batch size (after one warm-up batch); nothing is written."""
    backend.answer(questions[:batch_size], max_new_tokens)
    start = time.perf_counter()
    for batch in batches(questions, batch_size):
        backend.answer(batch, max_new_tokens)
    return len(questions) / (time.perf_counter() - start)


def speed_check(
    backend: Backend, questions: list[BenchQuestion], batch_size: int, max_new_tokens: int
) -> dict:
    one = samples_per_second(backend, questions, 1, max_new_tokens)
    many = samples_per_second(backend, questions, batch_size, max_new_tokens)
    print(
        f"speed check on {len(questions)} questions: batch size 1 {one:.2f} samples/s, "
        f"batch size {batch_size} {many:.2f} samples/s ({many / one:.2f}x)"
    )
    return {"questions": len(questions), "batch_1": one, f"batch_{batch_size}": many, "ratio": many / one}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, type=Path, help="a model directory the kit loads, or an ONNX export of one"
    )
    parser.add_argument("--bench", required=True, choices=BENCHES, help="the question file's benchmark")
    parser.add_argument(
        "--questions",
        required=True,
        type=Path,
        help="gqa/textvqa/pope/mme: LLaVA question .jsonl; sqa: llava_test_CQM-A.json; mmbench: the dev .tsv",
    )
    parser.add_argument(
        "--images", type=Path, help="the folder the question file's images are in (not mmbench)"
    )
    parser.add_argument("--out", required=True, type=Path, help="answer lines (JSONL); resumed if it exists")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate() call")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"longest answer (default: LLaVA's, {DEFAULT_MAX_NEW_TOKENS}; 1024 for sqa and mmbench)",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when there is one)")
    parser.add_argument(
        "--speed-check",
        type=int,
        default=0,
        metavar="N",
        help="first time N questions at batch size 1 and at --batch-size and print both samples/s",
    )


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ScoreError("--batch-size and --limit must be at least 1")
    questions = read_questions(args.bench, args.questions, args.images)[: args.limit]
    done = answered_keys(args.out)
    todo = unanswered(questions, done)
    max_new_tokens = args.max_new_tokens or MAX_NEW_TOKENS.get(args.bench, DEFAULT_MAX_NEW_TOKENS)
    print(f"{args.bench}: {len(questions)} questions, {len(questions) - len(todo)} already in {args.out}")
    backend = open_backend(args.model, args.dtype, args.device)
    if args.speed_check:
        speed_check(backend, questions[: args.speed_check], args.batch_size, max_new_tokens)
    if not todo:
        print("nothing left to answer")
        return 0
    seconds = answer_all(backend, todo, args.out, args.batch_size, max_new_tokens)
    print(
        f"answered {len(todo)} questions in {seconds:.1f} s: {len(todo) / seconds:.2f} samples/s "
        f"at batch size {args.batch_size} on {backend.device}; answers in {args.out}"
    )
    return 0
