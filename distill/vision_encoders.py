"""Vision encoders on disk: SigLIP/CLIP checkpoints, and the towers inside the kit's LLaVA checkpoints.

    config = vision_config_of("/models/siglip-base-patch16-384")     # vision-only or dual encoder
    copy_vision_tower(model, "runs/tiny/vision/final")               # model.vision_init, either kind

`build-student` assembles a student around a SigLIP/CLIP checkpoint; `model.vision_init` starts a
model's tower from one, or from the tower of a LLaVA checkpoint (the tiny students share their
teacher's; the tiny teacher starts from `distill pretrain-vision`'s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel

from distill.modeling import ModelFormatError, load_llava, submodule

VISION_TYPES = {"siglip": "siglip_vision_model", "clip": "clip_vision_model"}


def vision_config_of(path: str | Path) -> Any:
    """The vision part of a SigLIP/CLIP checkpoint's config (vision-only or dual encoder)."""
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    vision = getattr(config, "vision_config", config)
    if vision.model_type not in VISION_TYPES.values():
        raise ModelFormatError(f"{path}: vision encoder '{config.model_type}' is not SigLIP or CLIP")
    return vision


def load_vision_tower(path: str | Path, vision_config: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Vision weights keyed as LlavaModel's vision tower (AutoModel of the vision config) keys them."""
    model = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    if hasattr(model.config, "vision_config"):  # a dual encoder: take its vision half
        model = model.vision_model
    expected = set(AutoModel.from_config(vision_config).state_dict())
    weights = model.state_dict()
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        raise ModelFormatError(
            f"{path}: vision weights do not match a {vision_config.model_type} tower (missing: {missing})"
        )
    return weights


def tower_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The vision tower's weights in a LLaVA checkpoint or a SigLIP/CLIP checkpoint directory."""
    config_file = Path(source) / "config.json"
    if not config_file.is_file():
        raise ModelFormatError(f"{source}: not a model directory (no config.json)")
    if json.loads(config_file.read_text()).get("model_type") == "llava":
        donor, _ = load_llava(source)
        return submodule(donor, "vision_tower").state_dict()
    return load_vision_tower(source, vision_config_of(source), torch.float32)


def copy_vision_tower(model: Any, source: str | Path) -> None:
    """Initialise `model`'s vision tower from `source` (see `tower_weights`; same shape required)."""
    theirs = tower_weights(source)
    tower = submodule(model, "vision_tower")
    ours = tower.state_dict()
    mismatched = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if mismatched:
        raise ModelFormatError(
            f"{source}: vision tower does not match this model's (first differing weight: {mismatched[0]})"
        )
    tower.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})
