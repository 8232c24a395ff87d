"""Instruction-to-vision attention of chosen LLM layers, computed beside SDPA, without eager attention.

    with capture_instruction_attention(model, layers=[1, 3], instruction=instr_mask, visual=visual_mask) as alphas:
        model(input_ids=..., attention_mask=..., pixel_values=..., use_cache=False)
    alphas[3]          # [batch, n_visual] for layer 3

For each captured layer the LLM's attention calls a registered attention function
("sdpa_instruction_capture") that runs PyTorch SDPA exactly as transformers' "sdpa" does and,
in addition, computes softmax(Q K^T * scaling + mask) for the instruction query rows only, from
the query and key states the layer hands to attention: RoPE (and Qwen3's q/k norms) already
applied, grouped key/value heads repeated as the model repeats them. Only [heads x instruction
tokens x sequence] scores are ever formed, never the full [sequence x sequence] map, and the
vision tower keeps its own attention. The row of each instruction token is restricted to the
visual keys, then averaged over heads and instruction tokens: alpha_l(x), one weight per visual
token (not renormalised: its sum is the share of attention the instruction pays to the image).

`instruction` and `visual` are bool masks [batch, sequence]; every sample with an image must hold
the same number of visual tokens (one image per sample); samples without an image, or without
instruction tokens, get alpha = 0. `install_capture(model)` keeps the capturing SDPA in place for a
whole training run (it costs nothing while no capture is active).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

CAPTURE_IMPLEMENTATION = "sdpa_instruction_capture"


@dataclass
class _Capture:
    layers: set[int]
    instruction_index: torch.Tensor  # [B, I] positions of the instruction tokens (padded with 0)
    instruction_valid: torch.Tensor  # [B, I] which of those are real
    visual_index: torch.Tensor  # [B, V] positions of the visual tokens (padded with 0)
    visual_valid: torch.Tensor  # [B, V]
    results: dict[int, torch.Tensor] = field(default_factory=dict)


_active: list[_Capture] = []


def _allowed_rows(attention_mask: torch.Tensor | None, index: torch.Tensor, kv_length: int) -> torch.Tensor:
    """The mask rows of the instruction queries: bool [B, 1|H, I, S] (True = may attend) or float (added)."""
    if attention_mask is None:  # SDPA's is_causal path: no padding, plain causal attention
        keys = torch.arange(kv_length, device=index.device)
        return keys[None, None, None, :] <= index[:, None, :, None]  # [B, 1, I, S]
    mask = attention_mask[:, :, :, :kv_length]
    rows = index[:, None, :, None].expand(-1, mask.shape[1], -1, kv_length)
    return torch.gather(mask.expand(index.shape[0], -1, -1, -1), 2, rows)


def instruction_to_vision(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    capture: _Capture,
) -> torch.Tensor:
    """alpha [B, V]: attention of the instruction queries on the visual keys, mean over heads and
    queries; zeros where a sample has no visual (or no instruction) tokens."""
    _, heads, _, head_dim = query.shape
    index = capture.instruction_index
    q = torch.gather(query, 2, index[:, None, :, None].expand(-1, heads, -1, head_dim))
    k = repeat_kv(key, getattr(module, "num_key_value_groups", 1))
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling  # [B, H, I, S]
    rows = _allowed_rows(attention_mask, index, k.shape[2])
    scores = scores.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else scores + rows.float()
    probs = torch.softmax(scores, dim=-1).mean(dim=1)  # over heads -> [B, I, S]
    visual = capture.visual_index[:, None, :].expand(-1, probs.shape[1], -1)
    on_image = torch.gather(probs, 2, visual) * capture.visual_valid[:, None, :]  # [B, I, V]
    weights = capture.instruction_valid.to(on_image.dtype)  # [B, I]
    return (on_image * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)


def _capturing_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    **kwargs: Any,
):
    capture = _active[-1] if _active else None
    layer = getattr(module, "layer_idx", None)
    if capture is not None and layer in capture.layers:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        with torch.no_grad():
            capture.results[layer] = instruction_to_vision(
                module, query, key, attention_mask, scaling, capture
            )
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capturing_sdpa)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def padded_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool [B, T] -> (positions [B, N], valid [B, N]) with N the largest count in the batch."""
    counts = mask.sum(1)
    width = max(int(counts.max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[
        :, :width
    ]  # True positions first, in order
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


def install_capture(model: Any) -> None:
    """Route the LLM's attention through the capturing SDPA for good (it is plain SDPA whenever no
    capture is active); saves switching implementations on every step of a training run."""
    model.set_attn_implementation({"text_config": CAPTURE_IMPLEMENTATION})


@contextmanager
def capture_instruction_attention(
    model: Any, layers: list[int], instruction: torch.Tensor, visual: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block the LLM's layers in `layers` record alpha_l; yields {layer: [B, n_visual]}."""
    counts = visual.sum(1)
    present = counts[counts > 0]
    if len(present) == 0 or int(present.min()) != int(present.max()):
        raise ValueError(
            f"samples with an image need the same, non-zero number of visual tokens (got {counts.tolist()})"
        )
    instruction_index, instruction_valid = padded_positions(instruction.bool())
    visual_index, visual_valid = padded_positions(visual.bool())
    capture = _Capture(set(layers), instruction_index, instruction_valid, visual_index, visual_valid)
    previous = model.config.get_text_config()._attn_implementation
    if previous != CAPTURE_IMPLEMENTATION:
        install_capture(model)
    _active.append(capture)
    try:
        yield capture.results
    finally:
        _active.pop()
        if previous != CAPTURE_IMPLEMENTATION:
            model.set_attn_implementation({"text_config": previous})
