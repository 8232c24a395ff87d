"""`python -m export gguf`: the student's language model as GGUF files for llama.cpp, quantized by llama.cpp.

    python -m export gguf --model runs/tiny/student-kd/final --out exports/student-kd-gguf --quant f16,q8_0,q4_k_m

writes model-f16.gguf (export/gguf_text.py: gguf-py's writer with llama.cpp's tensor names and the
tokenizer and chat template embedded) and, for each other name in --quant, model-<quant>.gguf made
from it by llama.cpp's quantizer (llama-cpp-python's `llama_model_quantize`; tensors whose width is
not a multiple of the quantization block fall back to a type that fits, as llama.cpp decides).
The folder is staged and renamed when complete. The vision tower + projector (the mmproj file
llama.cpp's mtmd loads) is not written yet: these files answer text prompts.
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path

from distill.modeling import check_llava_dir, load_llava
from distill.staging import staged_directory
from export.gguf_text import write_text_gguf
from export.onnx_export import ExportError, source_hash

QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
NAMES = ("f32", "f16", *QUANT_TYPES)


def quantize(source: Path, target: Path, name: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[name])
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0 or not target.is_file():
        raise ExportError(f"llama.cpp could not quantize {source.name} to {name} (status {status})")


def parse_quants(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ExportError(
            f"unknown GGUF type(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(NAMES)}"
        )
    return names


def export_gguf(model_dir: str | Path, out: str | Path, quants: list[str]) -> dict[str, Path]:
    model_dir, out = Path(model_dir), Path(out)
    quants = parse_quants(",".join(quants))  # refused before anything is loaded or written
    check_llava_dir(model_dir)
    model, processor = load_llava(model_dir)
    base = "f32" if quants == ["f32"] else "f16"
    files = {}
    with staged_directory(out) as staging:
        source = write_text_gguf(model, processor.tokenizer, staging / f"model-{base}.gguf", base)
        files[base] = out / source.name
        for name in quants:
            if name in ("f32", "f16"):
                continue
            quantize(source, staging / f"model-{name}.gguf", name)
            files[name] = out / f"model-{name}.gguf"
        if base not in quants:
            source.unlink()
            del files[base]
        manifest = {
            "format": "llava-gguf",
            "source": str(model_dir.resolve()),
            "source_sha256": source_hash(model_dir),
            "files": {name: path.name for name, path in files.items()},
            "vision": None,  # the mmproj is not written yet
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="a LLaVA checkpoint directory")
    parser.add_argument("--out", required=True, type=Path, help="the export folder (replaced if it exists)")
    parser.add_argument(
        "--quant",
        default="f16,q8_0,q4_k_m",
        help=f"comma-separated, from {', '.join(NAMES)} (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    quants = parse_quants(args.quant)
    for name, path in export_gguf(args.model, args.out, quants).items():
        print(f"{path}: {name}, {path.stat().st_size / 2**20:.2f} MiB")
    print("the vision tower (mmproj) is not exported yet: these files answer text prompts")
    return 0
