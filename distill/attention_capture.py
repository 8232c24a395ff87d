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

`instruction` and `visual` are bool masks [batch, sequence]; every row must hold the same number
of visual tokens (one image per sample) and at least one instruction token.
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
    visual: torch.Tensor  # [B, T] bool
    results: dict[int, torch.Tensor] = field(default_factory=dict)


_active: list[_Capture] = []


def _allowed_rows(
    attention_mask: torch.Tensor | None, index: torch.Tensor, kv_length: int
) -> torch.Tensor | None:
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
    """alpha [B, n_visual]: attention of the instruction queries on the visual keys, mean over heads and queries."""
    batch, heads, _, head_dim = query.shape
    index = capture.instruction_index
    q = torch.gather(query, 2, index[:, None, :, None].expand(-1, heads, -1, head_dim))
    k = repeat_kv(key, getattr(module, "num_key_value_groups", 1))
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling  # [B, H, I, S]
    rows = _allowed_rows(attention_mask, index, k.shape[2])
    if rows is not None:
        scores = (
            scores.masked_fill(~rows, float("-inf")) if rows.dtype == torch.bool else scores + rows.float()
        )
    probs = torch.softmax(scores, dim=-1)
    n_visual = int(capture.visual[0].sum())
    on_image = probs[capture.visual[:, None, None, :].expand_as(probs)].view(batch, heads, -1, n_visual)
    weights = capture.instruction_valid.to(on_image.dtype)  # [B, I]
    per_query = on_image.mean(dim=1)  # over heads -> [B, I, Nv]
    return (per_query * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)


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


def _padded_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool [B, T] -> (positions [B, I], valid [B, I]) with I the largest count in the batch."""
    counts = mask.sum(1)
    if int(counts.min()) == 0:
        raise ValueError("every sample needs at least one instruction token")
    width = int(counts.max())
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[
        :, :width
    ]  # True positions first, in order
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


@contextmanager
def capture_instruction_attention(
    model: Any, layers: list[int], instruction: torch.Tensor, visual: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block the LLM's layers in `layers` record alpha_l; yields {layer: [B, n_visual]}."""
    counts = visual.sum(1)
    if int(counts.min()) != int(counts.max()) or int(counts.min()) == 0:
        raise ValueError(
            f"every sample needs the same, non-zero number of visual tokens (got {counts.tolist()})"
        )
    index, valid = _padded_positions(instruction)
    capture = _Capture(set(layers), index, valid, visual.bool())
    text_config = model.config.get_text_config()
    previous = text_config._attn_implementation
    model.set_attn_implementation({"text_config": CAPTURE_IMPLEMENTATION})
    _active.append(capture)
    try:
        yield capture.results
    finally:
        _active.pop()
        model.set_attn_implementation({"text_config": previous})
