"""`python -m distill irs`: the Instruction-Relevance Score of every LLM layer of a teacher, and the
layer l* whose instruction-to-vision attention IVA learns from (Align-TI, section 3.1, appendix B.5).

    python -m distill irs --model runs/tiny/teacher/final --data data/shapes/val.json --pairs 200
    python -m distill irs --model /models/llava-qwen2-7b --data /data/llava_v1_5_mix665k.json --image-folder /data

IRS(l) = 1 - mean over pairs (x1, x2) of cos(alpha_l(x1), alpha_l(x2)), where x1 and x2 show the
same image with two different questions and alpha_l(x) is layer l's attention from the question
tokens to the visual tokens, averaged over heads and question tokens (distill/attention_capture.py).
A layer whose visual focus follows the question scores high. Pairs come from the human turns of a
LLaVA-format file: every human turn about an image is a question about it, asked alone.

Prints IRS per layer, plots it (PNG), and writes l* with the scores to MODEL/irs.json (atomically);
IVA reads it from there unless a run config names a layer.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from distill.attention_capture import capture_instruction_attention
from distill.conversation import ConversationEncoder, DataError, encode_instruction_prompt, expand_mask
from distill.modeling import image_token_count, load_llava
from distill.records import read_records
from distill.staging import save_figure, write_text_atomic

IRS_FILE = "irs.json"
Question = tuple[str, str]  # (image file, question as asked, with its answer-format suffix)


def question_pairs(records: list[Any], n_pairs: int, seed: int = 0) -> list[tuple[Question, Question]]:
    """Up to `n_pairs` pairs of different questions about one image, drawn without repeats."""
    by_image: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            continue
        for turn in record.get("conversations", []):
            if isinstance(turn, dict) and turn.get("from") == "human" and isinstance(turn.get("value"), str):
                question = turn["value"].replace("<image>", "").strip()
                if question:
                    by_image[record["image"]].add(question)
    candidates = [
        ((image, a), (image, b))
        for image in sorted(by_image)
        for i, a in enumerate(sorted(by_image[image]))
        for b in sorted(by_image[image])[i + 1 :]
    ]
    if not candidates:
        raise DataError("no image is asked two different questions; IRS needs pairs of questions per image")
    random.Random(seed).shuffle(candidates)
    return candidates[:n_pairs]


def _batch(
    questions: list[Question], encoder: ConversationEncoder, image_processor: Any, n_visual: int, folder: Path
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    rows, masks = [], []
    for _, question in questions:
        ids, instruction = encode_instruction_prompt(encoder, "<image>\n" + question)
        instruction = expand_mask(instruction, ids, encoder.image_token_id, n_visual)
        ids = np.repeat(ids, np.where(ids == encoder.image_token_id, n_visual, 1))
        rows.append(torch.from_numpy(ids.astype(np.int64)))
        masks.append(torch.from_numpy(instruction))
    pad = encoder.tokenizer.pad_token_id
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad)
    attention = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    instruction = torch.nn.utils.rnn.pad_sequence(masks, batch_first=True)
    images = []
    for image, _ in questions:
        try:
            images.append(Image.open(folder / image).convert("RGB"))
        except OSError as error:
            raise DataError(f"cannot read image {folder / image} ({error})") from None
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    inputs = {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixels}
    return inputs, instruction


@torch.inference_mode()
def attention_vectors(
    model: Any,
    processor: Any,
    questions: list[Question],
    image_folder: Path,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[Question, torch.Tensor]:
    """alpha_l(x) of every LLM layer for each question: {question: [layers, n_visual]} (float32, CPU)."""
    encoder = ConversationEncoder(processor.tokenizer)
    n_visual = image_token_count(model.config)
    layers = list(range(model.config.get_text_config().num_hidden_layers))
    device = next(model.parameters()).device
    vectors: dict[Question, torch.Tensor] = {}
    for start in tqdm(
        range(0, len(questions), batch_size),
        desc="attention",
        unit="batch",
        disable=not progress,
        leave=False,
    ):
        chunk = questions[start : start + batch_size]
        inputs, instruction = _batch(chunk, encoder, processor.image_processor, n_visual, image_folder)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        visual = inputs["input_ids"] == model.config.image_token_id
        with capture_instruction_attention(model, layers, instruction.to(device), visual) as alphas:
            model(**inputs, use_cache=False)
        stacked = torch.stack([alphas[layer] for layer in layers], dim=1).float().cpu()  # [B, L, Nv]
        vectors.update(zip(chunk, stacked))
    return vectors


def irs_scores(vectors: dict[Question, torch.Tensor], pairs: list[tuple[Question, Question]]) -> list[float]:
    """IRS per layer: 1 - mean cosine similarity of the two questions' alpha_l over the pairs."""
    first = torch.stack([vectors[a] for a, _ in pairs])  # [P, L, Nv]
    second = torch.stack([vectors[b] for _, b in pairs])
    return (1 - F.cosine_similarity(first, second, dim=-1).mean(0)).tolist()


def plot_irs(scores: list[float], best: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    axis.plot(range(len(scores)), scores, marker="o")
    axis.axvline(best, color="tab:red", linestyle="--", label=f"l* = {best}")
    axis.set_xticks(range(0, len(scores), max(1, len(scores) // 16)))
    axis.set_xlabel("LLM layer")
    axis.set_ylabel("IRS")
    axis.set_title(title, fontsize=9)
    axis.legend()
    save_figure(figure, path)


def write_irs(model_dir: Path, result: dict[str, Any]) -> Path:
    return write_text_atomic(model_dir / IRS_FILE, json.dumps(result, indent=1))


def read_best_layer(model_dir: str | Path) -> int | None:
    """l* stored by `distill irs` with a checkpoint, or None when it has not been computed."""
    path = Path(model_dir) / IRS_FILE
    return int(json.loads(path.read_text())["best_layer"]) if path.is_file() else None


def compute_irs(
    model_dir: str | Path,
    data: str | Path,
    n_pairs: int = 1000,
    image_folder: str | Path | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    model, processor = load_llava(model_dir, dtype=dtype, device=device)
    model.eval()
    pairs = question_pairs(read_records(data), n_pairs, seed)
    questions = sorted({q for pair in pairs for q in pair})
    folder = Path(image_folder) if image_folder is not None else Path(data).parent
    vectors = attention_vectors(model, processor, questions, folder, batch_size, progress)
    scores = irs_scores(vectors, pairs)
    best = int(np.argmax(scores))
    return {"scores": scores, "best_layer": best, "pairs": len(pairs), "data": str(data), "seed": seed}


def report(result: dict[str, Any]) -> str:
    lines = ["| layer | IRS |", "|---|---|"]
    for layer, score in enumerate(result["scores"]):
        marker = "  <- l*" if layer == result["best_layer"] else ""
        lines.append(f"| {layer} | {score:.4f}{marker} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="teacher checkpoint directory (irs.json is written here)"
    )
    parser.add_argument(
        "--data", default="data/shapes/val.json", help="LLaVA-format JSON with several questions per image"
    )
    parser.add_argument(
        "--image-folder", help="images are relative to this (default: the data file's folder)"
    )
    parser.add_argument(
        "--pairs", type=int, default=1000, help="question pairs to average over (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="questions per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="which pairs are drawn")
    parser.add_argument("--plot", help="PNG of IRS per layer (default: MODEL/irs.png)")


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    result = compute_irs(model_dir, args.data, args.pairs, args.image_folder, args.batch_size, args.seed)
    print(f"IRS of {model_dir} over {result['pairs']} question pairs from {args.data}:")
    print(report(result))
    plot = Path(args.plot) if args.plot else model_dir / "irs.png"
    plot_irs(
        result["scores"],
        result["best_layer"],
        plot,
        f"IRS per layer, {model_dir.name} ({result['pairs']} pairs)",
    )
    target = write_irs(model_dir, result)
    print(f"l* = {result['best_layer']} written to {target}; plot: {plot}")
    return 0
