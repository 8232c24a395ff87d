"""`python -m distill random-student`: a random-weight LLaVA of a real model's shape, saved as a checkpoint.

    python -m distill random-student --llm qwen2-0.5b --vision siglip-so400m-336 --out runs/random/qwen2-0.5b
    python -m distill random-student --llm llama2-7b --vision clip-l-336 --vocab 32064 --dtype bfloat16 \
        --out runs/random/llava-1.5-7b            # LLaVA-1.5-7B's shape (built on the GPU when there is one)

For measuring what a size costs before any weights are trained or downloaded: the export bench's
0.5B-shaped student, the serving bench's stand-ins. The shapes are the ones `python -m distill bench
--part scale` uses (distill/bench_scale.py); the tokenizer is the kit's (data/shapes/tokenizer by
default) with the LM head padded to --vocab rows (Qwen2's 151,936 by default), so the LM head costs
what a real one costs. The answers are noise; the speed and memory are the shape's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from distill.bench_scale import LLM_SHAPES, VISION_SHAPES, arch_of
from distill.modeling import build_llava, save_llava


def random_student(
    llm: str, vision: str, tokenizer_dir: Path, vocab: int, out: Path, seed: int = 0, dtype: str = "float32"
) -> tuple[Path, int]:
    """Save the checkpoint; return its folder and parameter count. Built on the GPU when there is one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: a 7B model in fp32 is 28 GB
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model, processor = build_llava(arch_of(llm, vision, vocab), tokenizer)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(getattr(torch, dtype))
    count = sum(p.numel() for p in model.parameters())
    return save_llava(model.eval(), processor, out), count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--llm", choices=sorted(LLM_SHAPES), default="qwen2-0.5b", help="language model shape"
    )
    parser.add_argument(
        "--vision", choices=sorted(VISION_SHAPES), default="siglip-so400m-336", help="vision tower shape"
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=Path("data/shapes/tokenizer"), help="tokenizer folder"
    )
    parser.add_argument("--vocab", type=int, default=151_936, help="LM-head rows (0: the tokenizer's size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--out", required=True, type=Path, help="the checkpoint folder")


def run(args: argparse.Namespace) -> int:
    path, count = random_student(
        args.llm, args.vision, args.tokenizer, args.vocab, args.out, args.seed, args.dtype
    )
    print(f"{path}: random {args.llm} + {args.vision}, {count / 1e6:,.1f}M parameters ({args.dtype})")
    return 0
