"""`python -m export gguf`: the student's language model as GGUF files for llama.cpp, quantized by llama.cpp.

    python -m export gguf --model runs/tiny/student-kd/final --out exports/student-kd-gguf --quant f16,q8_0,q4_k_m

writes model-f16.gguf (export/gguf_text.py: gguf-py's writer with llama.cpp's tensor names and the
tokenizer and chat template embedded); for each other name in --quant, model-<quant>.gguf made
from it by llama.cpp's quantizer (llama-cpp-python's `llama_model_quantize`; tensors whose width is
not a multiple of the quantization block fall back to a type that fits, as llama.cpp decides);
mmproj-f16.gguf, the vision tower + projector that llama.cpp's mtmd loads (export/gguf_vision.py;
f32 when only f32 is asked for, q8_0 when every --quant is quantized or with --mmproj-type q8_0);
the processor files and generation_config.json, so the runner
(export/gguf_runner.py) builds the same chat text as PyTorch; and manifest.json. The folder is
staged and renamed when complete.

Load it with llama-cpp-python's multimodal chat handler:

    from llama_cpp import Llama
    from export.gguf_runner import llava_chat_handler
    llm = Llama("exports/student-kd-gguf/model-q4_k_m.gguf", n_ctx=2048,
                chat_handler=llava_chat_handler("exports/student-kd-gguf/mmproj-f16.gguf"))
    llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        {"type": "text", "text": "What shape is in the top left corner?"}]}])
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from distill.modeling import check_llava_dir, load_llava
from distill.staging import staged_directory
from export.gguf_text import architecture, check_byte_level_bpe, check_plain_rope, write_text_gguf
from export.gguf_vision import MMPROJ_TYPES, check_vision, write_mmproj
from export.onnx_export import ExportError, check_output_folder, source_hash

QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
NAMES = ("f32", "f16", *QUANT_TYPES)
# --embedding-type: the token embedding and output matrices of every quantized file (llama-quantize's
# --token-embedding-type and --output-tensor-type). llama.cpp's own choice for q4_k_m keeps them at q6_k or,
# where the width is not a multiple of 256, q8_0: on a small LM with a tied 151,936-row vocabulary that one
# matrix is a third of the file and of every decoded token's weight reads.
EMBEDDING_TYPES = {
    "q4_0": "GGML_TYPE_Q4_0",
    "q5_0": "GGML_TYPE_Q5_0",
    "q8_0": "GGML_TYPE_Q8_0",
    "q4_k": "GGML_TYPE_Q4_K",
    "q6_k": "GGML_TYPE_Q6_K",
}
# Largest relative error ||llama.cpp - transformers|| / ||transformers|| of a probe image's embeddings:
# f16 or q8_0 weights and the tanh form of the projector's GELU stay well inside it (under 1% on the
# tiny default, a few % on a 27-layer tower in q8_0); a wrong graph is off by the order of 100%.
MMPROJ_TOLERANCE = 0.05


def quantize(source: Path, target: Path, name: str, embedding_type: str | None = None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[name])
    if embedding_type is not None:
        params.token_embedding_type = params.output_tensor_type = getattr(
            llama_cpp, EMBEDDING_TYPES[embedding_type]
        )
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


def export_gguf(
    model_dir: str | Path,
    out: str | Path,
    quants: list[str],
    mmproj_type: str | None = None,
    embedding_type: str | None = None,
) -> dict[str, Path]:
    model_dir, out = Path(model_dir), Path(out)
    quants = parse_quants(",".join(quants))  # refused before anything is loaded or written
    if mmproj_type is not None and mmproj_type not in MMPROJ_TYPES:
        raise ExportError(f"unknown mmproj type {mmproj_type!r}; choose from {', '.join(MMPROJ_TYPES)}")
    if embedding_type is not None and embedding_type not in EMBEDDING_TYPES:
        raise ExportError(
            f"unknown embedding type {embedding_type!r}; choose from {', '.join(EMBEDDING_TYPES)}"
        )
    if embedding_type is not None and not set(quants) & set(QUANT_TYPES):
        raise ExportError(
            f"--embedding-type {embedding_type} applies to quantized files; --quant asks for "
            f"{', '.join(quants)} only"
        )
    check_llava_dir(model_dir)
    model, processor = load_llava(model_dir)
    try:
        architecture(model.config.get_text_config())
        check_byte_level_bpe(processor.tokenizer)
        check_plain_rope(model.config.get_text_config())
    except ValueError as error:
        raise ExportError(str(error)) from None
    check_vision(model.config)
    check_output_folder(model_dir, out)
    base = "f32" if "f32" in quants else "f16"  # the file the quantizer starts from
    files = {}
    with staged_directory(out) as staging:
        vision_type = mmproj_type or default_mmproj_type(quants)
        mmproj = write_mmproj(model, processor, staging / f"mmproj-{vision_type}.gguf", vision_type)
        processor.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        source = write_text_gguf(model, processor.tokenizer, staging / f"model-{base}.gguf", base)
        files[base] = out / source.name
        write_manifest(staging, model_dir, {base: source.name}, mmproj.name, embedding_type=embedding_type)
        difference = verify_mmproj(staging, base, model, processor)
        for name in quants:
            if name == base:
                continue
            if name in ("f32", "f16"):  # both asked for: the other float file written too
                write_text_gguf(model, processor.tokenizer, staging / f"model-{name}.gguf", name)
            else:
                quantize(source, staging / f"model-{name}.gguf", name, embedding_type)
            files[name] = out / f"model-{name}.gguf"
        if base not in quants:
            source.unlink()
            del files[base]
        files_by_name = {name: path.name for name, path in files.items()}
        write_manifest(staging, model_dir, files_by_name, mmproj.name, difference, embedding_type)
    return files


def default_mmproj_type(quants: list[str]) -> str:
    """The vision file's precision when --mmproj-type is not given: beside a float language-model file,
    f16 (f32 where f32 alone is asked for); when every language-model file asked for is quantized, q8_0.
    An export for the edge then carries no 16-bit vision tower next to a 4-bit LM (SigLIP-so400m's is
    792 MiB in f16, 542 in q8_0, beside Qwen2-0.5B's 377 MiB in q4_k_m); its image embeddings are still
    checked against transformers before anything is written."""
    if not set(quants) & {"f32", "f16"}:
        return "q8_0"
    return "f32" if "f32" in quants else "f16"


def write_manifest(
    folder: Path,
    model_dir: Path,
    files: dict[str, str],
    mmproj: str,
    difference: float | None = None,
    embedding_type: str | None = None,
) -> None:
    manifest = {
        "format": "llava-gguf",
        "source": str(model_dir.resolve()),
        "source_sha256": source_hash(model_dir),
        "files": files,
        "embedding_type": embedding_type,  # None: llama.cpp's choice for each quantization
        "vision": mmproj,
        "vision_relative_error": difference,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


@torch.inference_mode()
def image_features(model: Any, processor: Any, image: Image.Image) -> np.ndarray:
    """transformers' projected image features for one image: (image tokens, LM width), what the LM receives."""
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    features = model.get_image_features(pixel_values=pixels.to(model.device, model.dtype))
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = torch.cat(list(features))
    return features.float().reshape(-1, features.shape[-1]).cpu().numpy()


@torch.inference_mode()
def verify_mmproj(folder: Path, base: str, model: Any, processor: Any) -> float:
    """Run a probe image through llama.cpp's mtmd and transformers; refuse an mmproj that computes otherwise.
    Returns the relative L2 error of llama.cpp's image embeddings.

    The check is on the llama.cpp actually installed, so a graph defect there is caught at export time
    rather than in a user's answers (llama.cpp's llava graph puts CLIP's class token last and shifts every
    patch's position embedding: ggml-org/llama.cpp#25814, open as of llama-cpp-python 0.3.36).
    """
    from export.gguf_runner import GgufLlava

    size = model.config.vision_config.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    probe = Image.fromarray(pixels)
    embeddings = GgufLlava(folder, base, use_gpu=False).image_embeddings(probe)
    reference = image_features(model, processor, probe)
    if embeddings.shape != reference.shape:
        raise ExportError(
            f"llama.cpp makes {embeddings.shape[0]} image embeddings of width {embeddings.shape[1]}; "
            f"the model makes {reference.shape[0]} of width {reference.shape[1]}"
        )
    relative = float(np.linalg.norm(embeddings - reference) / max(float(np.linalg.norm(reference)), 1e-12))
    if relative > MMPROJ_TOLERANCE:
        tower = model.config.vision_config.model_type
        known = (
            " (the class-token defect of ggml-org/llama.cpp#25814)" if tower == "clip_vision_model" else ""
        )
        raise ExportError(
            f"the installed llama.cpp computes this {tower} tower's image embeddings differently from transformers: "
            f"relative error {relative:.3g} > {MMPROJ_TOLERANCE}{known}; no GGUF written. "
            "The ONNX export (python -m export onnx) is exact for this model."
        )
    return relative


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="a LLaVA checkpoint directory")
    parser.add_argument(
        "--out", required=True, type=Path, help="the export folder (an earlier export there is replaced)"
    )
    parser.add_argument(
        "--quant",
        default="f16,q8_0,q4_k_m",
        help=f"comma-separated, from {', '.join(NAMES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--mmproj-type",
        choices=MMPROJ_TYPES,
        help="the vision file's matrices (default: f16 beside a float language-model file, f32 when only f32 "
        "is asked for; q8_0 when every --quant is quantized)",
    )
    parser.add_argument(
        "--embedding-type",
        choices=EMBEDDING_TYPES,
        help="the token embedding and output matrices of the quantized files (default: llama.cpp's choice, "
        "q6_k or q8_0 for q4_k_m; q4_0 makes a small LM with a large vocabulary smaller and faster to decode)",
    )


def run(args: argparse.Namespace) -> int:
    quants = parse_quants(args.quant)
    files = export_gguf(args.model, args.out, quants, args.mmproj_type, args.embedding_type)
    for name, path in files.items():
        print(f"{path}: {name}, {path.stat().st_size / 2**20:.2f} MiB")
    manifest = json.loads((args.out / "manifest.json").read_text())
    mmproj = args.out / manifest["vision"]
    print(
        f"{mmproj}: vision tower + projector, {mmproj.stat().st_size / 2**20:.2f} MiB; image embeddings in "
        f"llama.cpp within {100 * manifest['vision_relative_error']:.2f}% (relative L2) of transformers on a probe image"
    )
    return 0
