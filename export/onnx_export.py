"""`python -m export onnx`: a LLaVA checkpoint as three ONNX graphs plus its processor and a manifest.

    python -m export onnx --model runs/tiny/student-kd/final --out exports/student-kd-onnx
    python -m export onnx --model runs/tiny/student-kd/final --out exports/student-kd-onnx-int4 --quant int4

writes vision_encoder.onnx, embed_tokens.onnx and decoder_model_merged.onnx (see
export/onnx_graphs.py), the processor files, generation_config.json and manifest.json (shapes,
dtypes, opset, quantization, SHA-256 of the source checkpoint). The graphs come from
torch.onnx.export (the torch.export route) with dynamic batch, sequence and past lengths.
--quant int8 applies ONNX Runtime's dynamic quantization (int8 weights, activations quantized at
run time) to the decoder; int4 its MatMulNBits quantizer (4-bit blocks of 32 weights) to the
decoder's matrix products. The vision encoder and embeddings stay fp32. --fp16 converts all three
graphs to float16 weights and arithmetic with ONNX Runtime's own converter
(onnxruntime.transformers.float16, inputs and outputs kept float32 so the runner is unchanged): half
the size, for GPU and WebGPU runtimes; it does not combine with int8/int4. Everything is written to a
temporary folder and renamed when complete: a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from distill.modeling import check_llava_dir, image_token_count, load_llava
from distill.staging import staged_directory
from export.onnx_graphs import (
    Decoder,
    TokenEmbedding,
    VisionEncoder,
    decoder_input_names,
    decoder_output_names,
    kv_shape,
)

QUANTIZATIONS = ("none", "int8", "int4")
OPSET = 18
INT4_BLOCK = 32
FILES = {
    "vision": "vision_encoder.onnx",
    "embed": "embed_tokens.onnx",
    "decoder": "decoder_model_merged.onnx",
}


class ExportError(ValueError):
    """An export that cannot be made (unsupported model, unknown quantization); raised before writing."""


def check_output_folder(model_dir: Path, out: Path) -> None:
    """Refuse an --out whose replacement would destroy what is not an export: the checkpoint itself or a
    folder holding it, or any existing non-empty folder without an export's manifest.json."""
    model, target = model_dir.resolve(), out.resolve()
    if target == model or target in model.parents:
        raise ExportError(f"--out {out} would replace the checkpoint {model_dir}; choose another folder")
    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not (target / "manifest.json").is_file())
    ):
        raise ExportError(f"--out {out} exists and is not an export (no manifest.json); nothing was written")


NOT_THE_MODEL = {"training_args.bin", "train_summary.json", "run_config.yaml", "irs.json"}


def source_hash(model_dir: Path) -> str:
    """SHA-256 over every checkpoint file an export depends on (weights in any format, configs, tokenizer,
    processor, chat template), in name order; the training records beside them are left out."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name not in NOT_THE_MODEL and not path.name.startswith("."):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def export_graph(
    module: torch.nn.Module, args: tuple, path: Path, names: tuple[list[str], list[str]], dims: Any
) -> None:
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=names[0],
            output_names=names[1],
            dynamic_shapes=dims,
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )


def export_vision(model: Any, out: Path) -> None:
    size = model.config.vision_config.image_size
    example = (torch.zeros(2, 3, size, size),)
    dims = ({0: torch.export.Dim("batch")},)
    export_graph(
        VisionEncoder(model), example, out / FILES["vision"], (["pixel_values"], ["image_features"]), dims
    )


def export_embeddings(model: Any, out: Path) -> None:
    example = (torch.zeros(2, 5, dtype=torch.long),)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    export_graph(
        TokenEmbedding(model), example, out / FILES["embed"], (["input_ids"], ["inputs_embeds"]), dims
    )


def export_decoder(model: Any, out: Path) -> None:
    text = model.config.get_text_config()
    layers, (kv_heads, head_dim) = text.num_hidden_layers, kv_shape(text)
    batch, seq, past = 2, 5, 3
    example = (
        torch.zeros(batch, seq, text.hidden_size),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past, past + seq).expand(batch, seq).contiguous(),
        *[torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)],
    )
    b, s, p, m = (torch.export.Dim(n) for n in ("batch", "seq", "past", "mask"))  # the mask gets its own Dim
    dims = ({0: b, 1: s}, {0: b, 1: m}, {0: b, 1: s}, tuple({0: b, 2: p} for _ in range(2 * layers)))
    names = (decoder_input_names(layers), decoder_output_names(layers))
    export_graph(Decoder(model), example, out / FILES["decoder"], names, dims)


def quantize_decoder(path: Path, quant: str) -> None:
    """Replace the decoder graph by its int8 (dynamic) or int4 (MatMulNBits) version, its weights in an
    external-data file beside it (as the fp16 graphs keep theirs): a protobuf holds at most 2 GiB, less
    than a 7B decoder's int4 weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantized = path.with_name(path.stem + ".quant.onnx")
    if quant == "int8":
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, use_external_data_format=True)
        graph = onnx.load(str(quantized))
    else:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(path)), bits=4, block_size=INT4_BLOCK, is_symmetric=True
        )
        quantizer.process()
        graph = quantizer.model.model
    for leftover in [*path.parent.glob(path.name + "*"), *path.parent.glob(quantized.name + "*")]:
        leftover.unlink()  # the graphs and any external-data files beside them; `graph` holds the weights
    onnx.save(graph, str(path), save_as_external_data=True, location=path.name + ".data")


def manifest(model: Any, model_dir: Path, quant: str) -> dict[str, Any]:
    text = model.config.get_text_config()
    kv_heads, head_dim = kv_shape(text)
    size = model.config.vision_config.image_size
    return {
        "format": "llava-onnx",
        "format_version": 1,
        "source": str(model_dir.resolve()),
        "source_sha256": source_hash(model_dir),
        "opset": OPSET,
        "quantization": quant,
        "files": FILES,
        "dtype": "float32",
        "image_size": size,
        "visual_tokens": image_token_count(model.config),
        "image_token_id": model.config.image_token_id,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
        "num_layers": text.num_hidden_layers,
        "context_length": text.max_position_embeddings,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "inputs": {
            "vision": {"pixel_values": ["batch", 3, size, size]},
            "embed": {"input_ids": ["batch", "seq"]},
            "decoder": {
                "inputs_embeds": ["batch", "seq", text.hidden_size],
                "attention_mask": ["batch", "past + seq"],
                "position_ids": ["batch", "seq"],
                "past_key_values.{i}.key|value": ["batch", kv_heads, "past", head_dim],
            },
        },
    }


def label(manifest: dict[str, Any]) -> str:
    """How an export's weights are stored: none (fp32), int8, int4 or fp16."""
    return "fp16" if str(manifest.get("dtype", "")).startswith("float16") else manifest["quantization"]


def convert_to_fp16(path: Path) -> None:
    """Rewrite one graph (and its external data) with float16 weights, float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    graph = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    for old in path.parent.glob(path.name + "*"):
        old.unlink()
    onnx.save(graph, str(path), save_as_external_data=True, location=path.name + ".data")


def export_onnx(model_dir: str | Path, out: str | Path, quant: str = "none", fp16: bool = False) -> Path:
    """Export, check nothing is missing, then move the finished folder to `out`."""
    model_dir, out = Path(model_dir), Path(out)
    if quant not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quant!r}; choose from {', '.join(QUANTIZATIONS)}")
    if fp16 and quant != "none":
        raise ExportError(f"--fp16 converts unquantized graphs; it does not combine with --quant {quant}")
    check_llava_dir(model_dir)
    check_output_folder(model_dir, out)
    model, processor = load_llava(model_dir)
    model.eval()
    with staged_directory(out) as staging:
        export_vision(model, staging)
        export_embeddings(model, staging)
        export_decoder(model, staging)
        if quant != "none":
            quantize_decoder(staging / FILES["decoder"], quant)
        if fp16:
            for name in FILES.values():
                convert_to_fp16(staging / name)
        processor.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        description = manifest(model, model_dir, quant)
        description["dtype"] = "float16 (float32 inputs and outputs)" if fp16 else "float32"
        (staging / "manifest.json").write_text(json.dumps(description, indent=1))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="a LLaVA checkpoint directory")
    parser.add_argument(
        "--out", required=True, type=Path, help="the export folder (an earlier export there is replaced)"
    )
    parser.add_argument(
        "--quant",
        default="none",
        type=str.lower,
        choices=QUANTIZATIONS,
        help="decoder weights (default: none)",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="float16 graphs (for GPU / WebGPU runtimes); not with --quant"
    )


def run(args: argparse.Namespace) -> int:
    out = export_onnx(args.model, args.out, args.quant, args.fp16)
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.onnx*"))}
    for name, size in sizes.items():
        print(f"{out / name}: {size / 2**20:.2f} MiB")
    print(f"ONNX export ({'fp16' if args.fp16 else args.quant}) of {args.model} written to {out}")
    return 0
