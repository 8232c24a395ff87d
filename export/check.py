"""`python -m export check`: does an export answer like the PyTorch model it came from?

    python -m export check --model runs/tiny/student-kd/final \\
        --export exports/student-kd-onnx exports/student-kd-onnx-int8 exports/student-kd-onnx-int4

The same held-out image + question prompts (the synthetic test split) go through PyTorch and each
export. Printed side by side with PyTorch fp32: the largest absolute logit difference over every
prompt position of --prompts prompts (for GGUF files, the next-token logits after each prompt: llama.cpp
keeps only those); the share of those prompts whose --new-tokens greedy tokens
(end-of-sequence held back, so every prompt yields that many) are identical, and the mean length of
the common prefix; and the held-out accuracy over --per-family questions of each family, scored as
`python -m distill heldout` scores it. Unquantized exports should agree on every greedy token.
An ONNX export is one row; a GGUF export one row per language-model file (export/gguf_runner.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from distill.conversation import prompt_inputs
from distill.heldout import FAMILIES, _prompt, generate_answers, score, select
from distill.modeling import load_llava
from distill.records import read_records
from export.gguf_runner import GgufLlava, gguf_file_label, read_gguf_manifest
from export.onnx_export import ExportError, label, source_hash
from export.onnx_runner import OnnxLlava


def runners(path: Path) -> list[tuple[str, Any]]:
    """(row name, runner) for an export folder: the ONNX export, or each file of a GGUF export."""
    manifest = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else {}
    if manifest.get("format") == "llava-gguf":
        read_gguf_manifest(path)
        return [
            (gguf_file_label(name, path, manifest), lambda name=name: GgufLlava(path, name))
            for name in manifest["files"]
        ]
    return [(f"onnx {label(manifest) if manifest else None} ({path.name})", lambda: OnnxLlava(path))]


def logit_difference(
    runner: Any, images: list, texts: list[str], reference: np.ndarray, mask: np.ndarray
) -> float:
    """Largest |export - PyTorch| logit: every prompt position (ONNX), or the last one (GGUF)."""
    if isinstance(runner, GgufLlava):
        vocab = min(runner.vocab_size, reference.shape[-1])
        return max(
            float(np.abs(runner.prompt_pass(image, text)[:vocab] - reference[row, -1, :vocab]).max())
            for row, (image, text) in enumerate(zip(images, texts))
        )
    logits, export_mask = runner.prompt_logits(images, texts)
    if not np.array_equal(mask, export_mask):
        raise ValueError(f"{runner.path}: its processor tokenizes the prompts differently from PyTorch's")
    real = mask.astype(bool)
    vocab = min(logits.shape[-1], reference.shape[-1])
    return float(np.abs(logits[real][:, :vocab] - reference[real][:, :vocab]).max())


def images_and_texts(processor: Any, records: list[dict[str, Any]], folder: Path) -> tuple[list, list[str]]:
    images = [Image.open(folder / r["image"]).convert("RGB") if "image" in r else None for r in records]
    return images, [_prompt(processor, r) for r in records]


@torch.inference_mode()
def torch_prompt_logits(
    model: Any, processor: Any, images: list, texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    processor.tokenizer.padding_side = "left"
    inputs = prompt_inputs(processor, images, texts)
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    logits = model(**inputs, position_ids=positions).logits
    return logits.numpy(), inputs["attention_mask"].numpy()


@torch.inference_mode()
def torch_greedy(
    model: Any, processor: Any, images: list, texts: list[str], new_tokens: int
) -> list[list[int]]:
    """Exactly `new_tokens` greedy tokens per prompt (min_new_tokens holds end-of-sequence back)."""
    processor.tokenizer.padding_side = "left"
    inputs = prompt_inputs(processor, images, texts)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return output[:, inputs["input_ids"].shape[1] :].tolist()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def accuracy(records: list[dict[str, Any]], answers: list[str]) -> float:
    return 100 * score(records, answers)["overall"]["accuracy"]


def check_sources(model_dir: Path, exports: list[Path]) -> None:
    """Refuse exports made from another checkpoint: their differences would read as export error."""
    expected = source_hash(model_dir)
    for path in exports:
        manifest = path / "manifest.json"
        made_from = json.loads(manifest.read_text()).get("source_sha256") if manifest.is_file() else None
        if made_from != expected:
            raise ExportError(
                f"{path} was not exported from {model_dir} (source hash {str(made_from)[:12]} vs "
                f"{expected[:12]}); re-export it, or pass --any-source to compare anyway"
            )


def check(
    model_dir: Path,
    exports: list[Path],
    data: Path,
    prompts: int,
    new_tokens: int,
    per_family: int,
    any_source: bool = False,
) -> dict[str, Any]:
    if not any_source:
        check_sources(model_dir, exports)
    model, processor = load_llava(model_dir)
    model.eval()
    folder = data.parent
    all_records = read_records(data)
    probe = select(all_records, None)[:prompts]
    scored = select(all_records, per_family)
    images, texts = images_and_texts(processor, probe, folder)
    reference_logits, mask = torch_prompt_logits(model, processor, images, texts)
    reference_tokens = torch_greedy(model, processor, images, texts, new_tokens)
    scored_images, scored_texts = images_and_texts(processor, scored, folder)
    answers = generate_answers(model, processor, scored, folder, batch_size=32, progress=False)
    rows = {
        "pytorch fp32": {
            "max_logit_diff": 0.0,
            "identical": 1.0,
            "common_prefix": float(new_tokens),
            "accuracy": accuracy(scored, answers),
        }
    }
    todo = [row for path in exports for row in runners(path)]
    for name, open_runner in tqdm(todo, desc="exports", unit="file"):
        runner = open_runner()
        difference = logit_difference(runner, images, texts, reference_logits, mask)
        tokens = runner.generate(images, texts, new_tokens, ignore_eos=True)
        prefixes = [common_prefix(a, b) for a, b in zip(tokens, reference_tokens)]
        export_answers = []
        for start in range(0, len(scored), 32):
            export_answers += runner.answer(
                scored_images[start : start + 32], scored_texts[start : start + 32], 16
            )
        rows[name] = {
            "max_logit_diff": difference,
            "identical": sum(p == new_tokens for p in prefixes) / len(prefixes),
            "common_prefix": float(np.mean(prefixes)),
            "accuracy": accuracy(scored, export_answers),
        }
    return {
        "model": str(model_dir),
        "prompts": len(probe),
        "new_tokens": new_tokens,
        "scored": len(scored),
        "rows": rows,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}: {result['prompts']} prompts x {result['new_tokens']} greedy tokens; "
        f"held-out accuracy over {result['scored']} questions ({', '.join(FAMILIES)})",
        "| format | max abs logit difference (prompts) | identical greedy tokens | mean common prefix (tokens) "
        "| held-out accuracy (%) |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['max_logit_diff']:.2e} | {100 * row['identical']:.0f}% | {row['common_prefix']:.1f} "
            f"| {row['accuracy']:.1f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, type=Path, help="the PyTorch checkpoint the exports came from"
    )
    parser.add_argument("--export", required=True, nargs="+", type=Path, help="export folders to compare")
    parser.add_argument(
        "--any-source",
        action="store_true",
        help="compare exports made from another checkpoint too (refused by default: their manifest's hash)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/shapes/test.json"), help="held-out questions")
    parser.add_argument("--prompts", type=int, default=16, help="prompts for the logit and token comparison")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens compared per prompt")
    parser.add_argument(
        "--per-family", type=int, default=20, help="held-out questions per family for accuracy"
    )
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON here")


def run(args: argparse.Namespace) -> int:
    result = check(
        args.model, args.export, args.data, args.prompts, args.new_tokens, args.per_family, args.any_source
    )
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0
