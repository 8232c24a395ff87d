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


# LLaVA-1.5's chat template as llava-hf ships it (the processor's, in chat_template.json): contents are
# lists of parts, images first, each text part followed by a space
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] + ' ' }}{% endgeneration %}"
    "{% else %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# the template of llava-hf's Qwen2-based LLaVAs (llava-interleave-qwen-*-hf): parts contents, and a
# generation prompt (`assistant\n`) that is not the header it writes before a reply (`assistant \n`)
LLAVA_QWEN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ '\\n' + part['text'] }}{% endgeneration %}"
    "{% else %}{{ '\\n' + part['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def save_llava_hf_layout(tokenizer, out: Path) -> Path:
    """A tiny checkpoint laid out as llava-hf/llava-1.5-7b-hf is: a Llama LM and a CLIP tower read at
    layer -2 (class token dropped), CLIPImageProcessor's resize + centre crop in
    preprocessor_config.json, the chat template in chat_template.json and not in the tokenizer's config."""
    import copy
    import json

    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from distill.modeling import CLIP_MEAN, CLIP_STD

    model, _ = make_model(tokenizer, seed=3, vision_model_type="clip", text_model_type="llama")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    side = TINY["image_size"]
    images = CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=plain,
        patch_size=TINY["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": LLAVA_15_TEMPLATE}))
    settings = json.loads((out / "processor_config.json").read_text())
    image_settings = {**settings.pop("image_processor"), "processor_class": "LlavaProcessor"}
    (out / "preprocessor_config.json").write_text(
        json.dumps({**image_settings, "image_processor_type": "CLIPImageProcessor"})
    )
    (out / "processor_config.json").write_text(json.dumps(settings))
    assert json.loads((out / "tokenizer_config.json").read_text()).get("chat_template") is None
    return out


@pytest.fixture(scope="session")
def llava_hf_dir(tmp_path_factory, tokenizer) -> Path:
    return save_llava_hf_layout(tokenizer, tmp_path_factory.mktemp("models") / "llava-1.5-layout")
