"""`python -m distill pretrain-vision`: a pretrained vision tower for the tiny default.

    python -m distill pretrain-vision --config configs/tiny-teacher.yaml --out runs/tiny/vision

A real LLaVA starts from a vision encoder pretrained on web images (SigLIP, CLIP) and learns the
rest on top of it. The tiny default has no encoder to download, so this stage makes one: a tower of
the shape in the config's `model.arch` learns, from freshly drawn scenes of the shapes world (not the
dataset's images), the shapes' colour, kind and count, what each cell holds and the sign's word,
through one linear head per property on the tokens LLaVA reads from it. About a minute on 2 CPU
cores. It prints each head's accuracy on 1,000 other fresh scenes and writes a SigLIP (or CLIP)
checkpoint with its image processor, which `model.vision_init` accepts (the tiny teacher's config
starts from it). The heads are dropped. A killed run starts again (the checkpoint is written whole
or not at all).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import AutoModel

from distill.configuration import ConfigError, load_config
from distill.modeling import (
    build_image_processor,
    build_vision_config,
    save_atomically,
    skip_pooling_head,
    vision_feature_choice,
)
from distill.run_config import ArchConfig, RunConfig
from distill.synth.scene_labels import LABEL_CLASSES, scene_labels
from distill.synth.world import render, sample_scene
from distill.train import FINAL_DIR

DEFAULT_STEPS = 600  # every head at 97-100% on held-out scenes by step 250 (docs/tiny-world.md)
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 2e-3
REPORT_NAME = "pretrain_vision.json"
EVAL_SEED_OFFSET = 1_000_003  # the held-out scenes come from a stream of their own


class ScenePretraining(nn.Module):
    """A vision tower with a linear head per scene label, read from the features LLaVA takes."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.tower = skip_pooling_head(AutoModel.from_config(build_vision_config(arch)))
        self.feature_layer, strategy = vision_feature_choice(arch)
        self.skip_class_token = strategy == "default"
        tokens = (arch.image_size // arch.patch_size) ** 2
        width = arch.vision_hidden_size * tokens
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in LABEL_CLASSES.items()})

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        if self.skip_class_token:
            hidden = hidden[:, 1:]
        features = hidden.flatten(1)
        return {name: head(features) for name, head in self.heads.items()}


def scene_batch(
    rng: random.Random, size: int, image_processor: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scenes = [sample_scene(rng) for _ in range(size)]
    pixels = image_processor([render(scene) for scene in scenes], return_tensors="pt")["pixel_values"]
    labels = [scene_labels(scene) for scene in scenes]
    return pixels, {name: torch.tensor([label[name] for label in labels]) for name in LABEL_CLASSES}


def accuracy(
    model: ScenePretraining, pixels: torch.Tensor, labels: dict[str, torch.Tensor]
) -> dict[str, float]:
    with torch.no_grad():
        logits = model(pixels)
    return {name: (logits[name].argmax(-1) == labels[name]).float().mean().item() for name in LABEL_CLASSES}


def pretrain(
    arch: ArchConfig, steps: int, batch_size: int, learning_rate: float, seed: int, eval_scenes: int = 1000
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Train the tower and its heads; return the tower, its image processor and a report."""
    torch.manual_seed(seed)
    model = ScenePretraining(arch)
    image_processor = build_image_processor(arch.image_size, arch.vision_model_type == "clip")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.05
    )
    rng = random.Random(seed)
    start = time.perf_counter()
    progress = tqdm(range(steps), desc="pretrain-vision", unit="step")
    for _ in progress:
        pixels, labels = scene_batch(rng, batch_size, image_processor)
        logits = model(pixels)
        loss = sum(F.cross_entropy(logits[name], labels[name]) for name in LABEL_CLASSES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    held_out = scene_batch(random.Random(seed + EVAL_SEED_OFFSET), eval_scenes, image_processor)
    report = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "seconds": round(seconds, 1),
        "held_out_scenes": eval_scenes,
        "held_out_accuracy": accuracy(model, *held_out),
    }
    return model.tower, image_processor, report


def format_report(report: dict[str, Any]) -> str:
    rows = [f"| {name} | {100 * value:.1f} |" for name, value in report["held_out_accuracy"].items()]
    return "\n".join(["| label | held-out accuracy (%) |", "|---|---|", *rows])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="configs/tiny-teacher.yaml",
        help="a training config whose model.arch gives the tower's shape (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default="runs/tiny/vision",
        help="run folder; the tower goes to OUT/final (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="scenes per step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=DEFAULT_LEARNING_RATE,
        help="peak AdamW learning rate (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the scenes and the initialisation")


def pretrain_to(
    config: str | Path,
    out: str | Path,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Pretrain a tower of `config`'s model.arch and save it (with its report) to OUT/final."""
    arch = load_config(RunConfig, config, []).model.arch
    if arch is None:
        raise ConfigError(
            f"{config}: model.arch is not set; pretrain-vision builds a fresh tower of that shape"
        )
    if steps < 1 or batch_size < 1:
        raise ConfigError("pretrain-vision: steps and batch size must be at least 1")
    tower, image_processor, report = pretrain(arch, steps, batch_size, learning_rate, seed)
    final = Path(out) / FINAL_DIR
    save_atomically([tower, image_processor], final, {REPORT_NAME: json.dumps(report, indent=2) + "\n"})
    return final, report


def run(args: argparse.Namespace) -> int:
    final, report = pretrain_to(args.config, args.out, args.steps, args.batch_size, args.lr, args.seed)
    print(format_report(report))
    print(f"{args.steps} steps in {report['seconds']:.0f} s; vision tower saved to {final}")
    return 0
