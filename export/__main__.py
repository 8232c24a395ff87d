"""`python -m export`: the student as ONNX for ONNX Runtime, and checks that the export answers like PyTorch.

python -m export onnx --model runs/tiny/student-kd/final --out exports/student-kd-onnx [--quant int8|int4]
python -m export check --model runs/tiny/student-kd/final --export exports/student-kd-onnx
python -m export bench --model runs/tiny/student-kd/final --export exports/student-kd-onnx
"""

from __future__ import annotations

import argparse
import sys

from distill.command_line import run_command, subcommand_parser
from distill.modeling import ModelFormatError
from export.onnx_export import ExportError

COMMANDS = {
    "onnx": ("export.onnx_export", "export a LLaVA checkpoint as three ONNX graphs (+ int8 / int4 decoder)"),
    "gguf": ("export.gguf_export", "export the language model as GGUF for llama.cpp (f16, q8_0, q4_k_m)"),
    "check": (
        "export.check",
        "compare exports with the PyTorch model: logits, greedy tokens, held-out accuracy",
    ),
    "bench": (
        "export.bench",
        "size, load time, first token, decode speed and peak memory: PyTorch vs exports",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    return subcommand_parser("export", "Export a distilled student for edge runtimes.", COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, (ExportError, ModelFormatError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
