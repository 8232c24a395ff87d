"""`python -m eval attention`: where each model's question looks in the image, drawn as a heat map over
the image (the instruction-to-vision attention of Align-TI's Figs. 7 and 10), one panel per model.

    python -m eval attention --model runs/tiny/teacher/final runs/tiny/student-kd/final \\
        --image data/shapes/images/test/000000.png --question "What color is the circle?" --out attn.png
    python -m eval attention --model T --model S --image IMG --question Q --layer 2     # every model
    python -m eval attention --model T --model S --image IMG --question Q --layer 12,,3 # per model

alpha_l(x) is layer l's attention from the question tokens to the visual tokens, averaged over heads
and question tokens (distill/attention_capture.py, the same vector `distill irs` scores). The layer
of each model: --layer if given (one int for every model, or a comma list with one entry per model,
an empty entry meaning "choose"), else the l* `python -m distill irs` stored beside the model
(MODEL/irs.json), else the LLM's middle layer; each panel says which and why.

The visual tokens form a side x side grid over the image as the vision tower sees it (the model's
processor resizes and crops it; that view is what each panel shows, so every grid lines up with its
own image whatever the processor does, and models with different grids sit side by side). The grid
is upsampled bilinearly (align_corners=False: each token's weight sits at its patch centre),
normalised to [0, 1] per panel and blended over the image. alpha is not renormalised: its sum is the
share of the question's attention that goes to the image, printed with the top-5 tokens (row, col).

Writes OUT (PNG) and OUT with .json (per model: layer and why, grid side, image share, alpha), both
atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distill.conversation import DataError
from distill.irs import attention_vectors, read_best_layer
from distill.model_names import unique_names
from distill.modeling import ModelFormatError, check_llava_dir, load_llava
from distill.staging import save_figure, write_text_atomic
from eval.backends import default_device
from eval.records import ScoreError

TOP_K = 5


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ScoreError(f"cannot read image {path} ({error})") from None


def parse_layers(text: str | None, n_models: int) -> list[int | None]:
    """--layer -> one requested layer (or None: choose) per model: "3" for all, or "3,,5" per model."""
    if text is None:
        return [None] * n_models
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) == 1:
        entries *= n_models
    if len(entries) != n_models:
        raise ScoreError(
            f"--layer lists {len(entries)} layers for {n_models} models (give one, or one per model)"
        )
    try:
        return [int(entry) if entry else None for entry in entries]
    except ValueError:
        raise ScoreError(f"--layer must be an int or a comma list of ints, not {text!r}") from None


def check_model(model_dir: Path) -> Any:
    """The checkpoint's config, read before any weights are (a missing or foreign folder is refused)."""
    if not model_dir.is_dir():
        raise ScoreError(f"{model_dir}: no such model directory")
    try:
        return check_llava_dir(model_dir)
    except ModelFormatError as error:
        raise ScoreError(str(error)) from None


def choose_layer(model_dir: Path, config: Any, requested: int | None) -> tuple[int, str]:
    """(layer, why): --layer, else l* from MODEL/irs.json, else the middle layer; refuses out-of-range.
    `config` is the model's (model.config, or check_llava_dir's), read for the LLM's layer count."""
    n_layers = config.get_text_config().num_hidden_layers
    if requested is not None:
        layer, reason = requested, "--layer"
    else:
        stored = read_best_layer(model_dir)
        if stored is not None:
            layer, reason = stored, f"l* stored by `distill irs` in {model_dir / 'irs.json'}"
        else:
            layer, reason = n_layers // 2, "middle layer (no irs.json; `python -m distill irs` stores l*)"
    if not 0 <= layer < n_layers:
        raise ScoreError(
            f"{model_dir}: layer {layer} ({reason}) is out of range; "
            f"the LLM has {n_layers} layers (0..{n_layers - 1})"
        )
    return layer, reason


def attention_map(model: Any, processor: Any, image: Path, question: str, layer: int) -> torch.Tensor:
    """alpha_layer [n_visual] (float32, CPU) of `question` asked about the image file `image`."""
    key = (str(image), question)
    try:
        vectors = attention_vectors(model, processor, [key], Path(), batch_size=1, progress=False)
    except DataError as error:
        raise ScoreError(str(error)) from None
    return vectors[key][layer]


def grid_side(n_visual: int) -> int:
    side = math.isqrt(n_visual)
    if side * side != n_visual:
        raise ScoreError(f"{n_visual} visual tokens do not form a square grid")
    return side


def top_tokens(alpha: torch.Tensor, k: int = TOP_K) -> list[tuple[int, int, float]]:
    """The k heaviest visual tokens as (grid row, grid col, weight), heaviest first."""
    side = grid_side(alpha.numel())
    weights, index = alpha.topk(min(k, alpha.numel()))
    return [(int(i) // side, int(i) % side, float(w)) for w, i in zip(weights, index)]


def model_view(image: Image.Image, image_processor: Any) -> np.ndarray:
    """The image as the vision tower sees it (resized, cropped, normalisation undone): [H, W, 3] in [0, 1]."""
    pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"][0].float()  # [3, H, W]
    if getattr(image_processor, "do_normalize", False):
        mean = torch.tensor(image_processor.image_mean)[:, None, None]
        std = torch.tensor(image_processor.image_std)[:, None, None]
        pixels = pixels * std + mean
    return pixels.clamp(0, 1).permute(1, 2, 0).numpy()


def heat_map(alpha: torch.Tensor, height: int, width: int) -> np.ndarray:
    """alpha [side*side] -> [height, width] in [0, 1]: bilinear upsampling, then min-max per map."""
    side = grid_side(alpha.numel())
    grid = alpha.float().reshape(1, 1, side, side)
    heat = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    span = heat.max() - heat.min()
    return ((heat - heat.min()) / span if span > 0 else torch.zeros_like(heat)).numpy()


def overlay(panels: list[dict[str, Any]], question: str, path: Path) -> None:
    """One panel per model (its view of the image under its heat map), the question as the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        view = panel["view"]
        axis.imshow(view)
        axis.imshow(heat_map(panel["alpha"], *view.shape[:2]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axis.set_title(
            f"{panel['name']}\nlayer {panel['layer']}, image share {panel['image_share']:.3f}", fontsize=9
        )
        axis.axis("off")
    figure.suptitle("\n".join(textwrap.wrap(question, 60 * len(panels))), fontsize=10)
    save_figure(figure, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def model_panel(
    model_dir: Path, name: str, layer: int, reason: str, image: Image.Image, args: argparse.Namespace
) -> dict[str, Any]:
    """Load one model and capture its alpha at `layer`; the model is freed on return."""
    model, processor = load_llava(model_dir, args.dtype, device=args.device or default_device())
    model.eval()
    alpha = attention_map(model, processor, args.image, args.question, layer)
    return {
        "model": str(model_dir),
        "name": name,
        "layer": layer,
        "layer_reason": reason,
        "layers": model.config.get_text_config().num_hidden_layers,
        "grid_side": grid_side(alpha.numel()),
        "image_share": float(alpha.sum()),
        "top": top_tokens(alpha),
        "alpha": alpha,
        "view": model_view(image, processor.image_processor),
    }


def report(panel: dict[str, Any]) -> str:
    side = panel["grid_side"]
    top = ", ".join(f"({row}, {col}) {weight:.4f}" for row, col, weight in panel["top"])
    return (
        f"{panel['name']}: layer {panel['layer']} of {panel['layers']}, {panel['layer_reason']}\n"
        f"  image share {panel['image_share']:.4f} of the question's attention, "
        f"over {side}x{side} visual tokens\n"
        f"  top-{len(panel['top'])} tokens (row, col) weight: {top}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        action="extend",
        nargs="+",
        type=Path,
        help="model directories, one panel each (teacher first); repeat the flag or list several",
    )
    parser.add_argument("--image", required=True, type=Path, help="the image to ask about")
    parser.add_argument("--question", required=True, help="the question, as the user would ask it")
    parser.add_argument(
        "--layer",
        help="LLM layer: one int for every model, or a comma list per model (empty entry: choose); "
        "default: l* from MODEL/irs.json, else the middle layer",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("attention.png"),
        help="the PNG (default: %(default)s); JSON beside it",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when there is one)")


def run(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise ScoreError("--question is empty")
    image = read_image(args.image)
    requested = parse_layers(args.layer, len(args.model))
    choices = [choose_layer(d, check_model(d), r) for d, r in zip(args.model, requested)]  # refuse early
    panels = []
    for model_dir, name, (layer, reason) in zip(args.model, unique_names(args.model), choices):
        panels.append(model_panel(model_dir, name, layer, reason, image, args))
        print(report(panels[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    overlay(panels, args.question, args.out)
    record = {
        "image": str(args.image),
        "question": args.question,
        "models": [
            {**{k: v for k, v in p.items() if k not in ("alpha", "view")}, "alpha": p["alpha"].tolist()}
            for p in panels
        ],
    }
    write_json(args.out.with_suffix(".json"), record)
    print(f"attention maps: {args.out}; alphas: {args.out.with_suffix('.json')}")
    return 0
