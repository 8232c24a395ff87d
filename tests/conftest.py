"""Shared fixtures: a small synthetic dataset and tiny models built in-process. No test downloads."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a stray hub access fails instead of downloading
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from distill.modeling import build_llava, save_llava
from distill.run_config import ArchConfig
from distill.synth.make import synthesize

torch.set_num_threads(2)

TINY = dict(
    image_size=32,
    patch_size=16,
    vision_hidden_size=32,
    vision_layers=1,
    vision_heads=2,
    vision_intermediate_size=64,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
)


def tiny_arch(**changes) -> ArchConfig:
    return ArchConfig(**{**TINY, **changes})


@pytest.fixture
def one_layer_arch() -> dict:
    """The `model.arch` mapping of a one-layer LLM, for run configs written to YAML by a test."""
    return {**TINY, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """A small synthetic dataset (same generator as the default, fewer images)."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    synthesize(out, seed=0, n_train=48, n_val=8, n_test=30, per_family=6)
    return out


@pytest.fixture(scope="session")
def tokenizer(shapes):
    return AutoTokenizer.from_pretrained(shapes / "tokenizer")


def make_model(tokenizer, seed: int = 0, **arch):
    torch.manual_seed(seed)
    model, processor = build_llava(tiny_arch(**arch), tokenizer)
    return model.eval(), processor


def save_lively_model(tokenizer, out: Path, seed: int = 2, **arch) -> Path:
    """A random model with large weights, saved: its greedy answers vary by prompt and run to full
    length (the default initialisation answers newlines only, which would hide a padding bug)."""
    model, processor = make_model(tokenizer, seed=seed, **arch)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    return save_llava(model, processor, out)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, tokenizer) -> Path:
    model, processor = make_model(tokenizer, seed=1, hidden_size=48, num_heads=4, num_layers=2)
    return save_llava(model, processor, tmp_path_factory.mktemp("models") / "teacher")


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory, tokenizer) -> Path:
    model, processor = make_model(tokenizer, seed=2)
    return save_llava(model, processor, tmp_path_factory.mktemp("models") / "student")
