"""The one model format of the kit: a transformers `LlavaForConditionalGeneration` checkpoint
directory saved together with its processor (tokenizer + chat template + image processor).

    model, processor = load_llava("runs/tiny/teacher")             # a checkpoint on disk
    model, processor = build_llava(ArchConfig(), tokenizer)        # a fresh tiny model
    save_llava(model, processor, "runs/x")                         # atomic: temp dir + rename

Layout of the model: `model.model.vision_tower` (SigLIP/CLIP), `model.model.multi_modal_projector`
(2-layer GELU MLP), `model.model.language_model` (Qwen2/Qwen3/Llama), `model.lm_head`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
    Qwen3Config,
    SiglipVisionConfig,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from distill.conversation import stop_token_ids
from distill.run_config import ArchConfig

TEXT_CONFIGS = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}
MODULES = ("vision_tower", "projector", "language_model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelFormatError(ValueError):
    """A checkpoint is not in the kit's format; the message says what is missing or unsupported."""


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def build_image_processor(image_size: int, clip: bool = False) -> SiglipImageProcessorPil:
    """Square resize and normalisation: SigLIP's [-1, 1], or CLIP's mean and std."""
    mean, std = (CLIP_MEAN, CLIP_STD) if clip else ([0.5] * 3, [0.5] * 3)
    return SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std
    )


def build_processor(
    tokenizer: Any, image_size: int, patch_size: int, strategy: str = "full", clip: bool = False
) -> LlavaProcessor:
    """`build_image_processor`'s images (CLIP's class token counted) + the tokenizer and its chat template."""
    return LlavaProcessor(
        image_processor=build_image_processor(image_size, clip),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=tokenizer.chat_template,
        num_additional_image_tokens=1 if clip else 0,
        image_token="<image>",
    )


def generation_config_for(tokenizer: Any) -> GenerationConfig:
    """Greedy by default; stops at the end-of-turn token (and end-of-text where it exists)."""
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return GenerationConfig(eos_token_id=stops, pad_token_id=pad, do_sample=False, max_new_tokens=128)


def build_vision_config(arch: ArchConfig) -> SiglipVisionConfig | CLIPVisionConfig:
    clip = arch.vision_model_type == "clip"
    return (CLIPVisionConfig if clip else SiglipVisionConfig)(
        hidden_size=arch.vision_hidden_size,
        intermediate_size=arch.vision_intermediate_size,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
    )


def vision_feature_choice(arch: ArchConfig) -> tuple[int, str]:
    """The tower layer LLaVA reads and which of its tokens: SigLIP's last layer, every patch;
    CLIP's second-to-last, class token dropped (LLaVA-1.5)."""
    return (-2, "default") if arch.vision_model_type == "clip" else (-1, "full")


def skip_pooling_head(tower: torch.nn.Module) -> torch.nn.Module:
    """Stop SigLIP's attention-pooling head from running: LLaVA (and the kit's vision pre-training) reads
    the tower's hidden states, never the pooled vector, so the head's attention over every patch and its
    MLP were computed and thrown away on every image (it shows in the tiny models' first token; at
    SigLIP-so400m's size it is a rounding error). Its weights stay in the module, so checkpoints save
    and load as before. CLIP has no such head."""
    if getattr(tower, "use_head", False):
        tower.use_head = False
    return tower


def build_llava(
    arch: ArchConfig, tokenizer: Any, attn_implementation: str = "sdpa"
) -> tuple[Any, LlavaProcessor]:
    """A freshly initialised LLaVA of the given shape, with a processor around `tokenizer`."""
    clip = arch.vision_model_type == "clip"
    vision = build_vision_config(arch)
    feature_layer, strategy = vision_feature_choice(arch)
    if 0 < arch.vocab_size < len(tokenizer):
        raise ModelFormatError(
            f"model.arch.vocab_size ({arch.vocab_size}) is smaller than the tokenizer ({len(tokenizer)} tokens)"
        )
    text_kwargs = dict(
        vocab_size=arch.vocab_size or len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta,
        tie_word_embeddings=arch.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch.text_model_type == "qwen3":
        text_kwargs["head_dim"] = arch.hidden_size // arch.num_heads
    text = TEXT_CONFIGS[arch.text_model_type](**text_kwargs)
    text.architectures = [
        {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[
            arch.text_model_type
        ]
    ]
    n_tokens = (arch.image_size // arch.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=feature_layer,
        image_seq_length=n_tokens,
        tie_word_embeddings=arch.tie_word_embeddings,
    )
    config._attn_implementation = attn_implementation
    model = LlavaForConditionalGeneration(config)
    skip_pooling_head(model.model.vision_tower)
    model.generation_config = generation_config_for(tokenizer)
    return model, build_processor(tokenizer, arch.image_size, arch.patch_size, strategy, clip)


def load_processor(path: str | Path) -> Any:
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file() or not (
        (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file()
    ):
        raise ModelFormatError(
            f"{path}: no processor saved beside the weights (need tokenizer_config.json and processor_config.json "
            "or preprocessor_config.json); save it with processor.save_pretrained(path)"
        )
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ModelFormatError(f"{path}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelFormatError(f"{path}: the processor could not be read ({error})") from None
    if processor.tokenizer.chat_template is None and getattr(processor, "chat_template", None):
        # llava-hf's layout: the template is the processor's alone (chat_template.json); the kit renders
        # prompts with the tokenizer's, so the tokenizer takes it
        processor.tokenizer.chat_template = processor.chat_template
    return processor


def check_llava_dir(path: str | Path) -> Any:
    """Read config.json and refuse anything that is not a LLaVA checkpoint, before loading weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelFormatError(f"{path}: not a model directory (no config.json)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != "llava":
        raise ModelFormatError(
            f"{path}: unsupported architecture '{model_type}'; the kit works on LlavaForConditionalGeneration "
            "checkpoints (model_type 'llava'). Assemble one with `python -m distill build-student`."
        )
    return AutoConfig.from_pretrained(path)


def load_llava(
    path: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa", device: str | None = None
) -> tuple[Any, Any]:
    """Load a checkpoint and its processor from a local directory (no hub access). `dtype` is one of
    DTYPES, or "auto" for the dtype the checkpoint was saved in."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    check_llava_dir(path)
    processor = load_processor(path)
    if not any(Path(path).glob("*.safetensors")) and not any(Path(path).glob("pytorch_model*.bin")):
        raise ModelFormatError(f"{path}: no weights (*.safetensors or pytorch_model*.bin)")
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            path,
            dtype="auto" if dtype == "auto" else DTYPES[dtype],
            attn_implementation=attn_implementation,
            local_files_only=True,
        )
    except (OSError, ValueError, SafetensorError) as error:  # a truncated or corrupt weights file
        raise ModelFormatError(f"{path}: the weights could not be read ({error})") from None
    skip_pooling_head(model.model.vision_tower)
    if device is not None:
        model.to(device)
    return model, processor


def save_llava(model: Any, processor: Any, out: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write weights + processor (+ extra text files) to a temporary folder, then rename it to `out`."""
    return save_atomically([model, processor], out, extra)


def save_atomically(parts: list[Any], out: str | Path, extra: dict[str, str] | None = None) -> Path:
    """`save_pretrained` of each part (+ extra text files) into a temporary folder, renamed to `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for part in parts:
            part.save_pretrained(staging)
        for name, text in (extra or {}).items():
            (staging / name).write_text(text)
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
            staging.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def image_token_count(config: Any) -> int:
    """Visual tokens per image: patches of the vision tower, minus CLS under the 'default' strategy."""
    vision = config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    if getattr(vision, "model_type", "") == "clip_vision_model":
        n += 1  # CLIP prepends a CLS token
    if config.vision_feature_select_strategy == "default":
        n -= 1
    return n


def submodule(model: Any, name: str) -> torch.nn.Module:
    inner = model.model
    if name == "vision_tower":
        return inner.vision_tower
    if name == "projector":
        return inner.multi_modal_projector
    if name == "language_model":
        return inner.language_model
    raise ValueError(f"unknown module {name!r} (known: {', '.join(MODULES)})")


def set_trainable(model: Any, modules: list[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze `modules` (the LM head follows the language model)."""
    model.requires_grad_(False)
    for name in modules:
        submodule(model, name).requires_grad_(True)
    if "language_model" in modules:
        model.lm_head.requires_grad_(True)
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def language_model_parameters(model: Any) -> int:
    """Parameters of the LLM: decoder + embeddings + LM head (counted once when tied)."""
    params = {id(p): p for p in submodule(model, "language_model").parameters()}
    params.update({id(p): p for p in model.lm_head.parameters()})
    return sum(p.numel() for p in params.values())
