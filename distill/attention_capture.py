"""Instruction-to-vision attention of chosen LLM layers, computed beside SDPA, without eager attention.

    with capture_instruction_attention(model, layers=[1, 3], instruction=instr_mask, visual=visual_mask) as alphas:
        model(input_ids=..., attention_mask=..., pixel_values=..., use_cache=False)
    alphas[3]          # [batch, n_visual] for layer 3

For each captured layer the LLM's attention calls a registered attention function
("sdpa_instruction_capture") that runs PyTorch SDPA exactly as transformers' "sdpa" does and,
in addition, computes softmax(Q K^T * scaling + mask) for the instruction query rows only, from
the query and key states the layer hands to attention: RoPE (and Qwen3's q/k norms) already
applied, grouped key/value heads repeated as the model repeats them. The probabilities on the
visual keys come from a second fused SDPA call over one-hot values, so no score matrix is ever
formed (not even the instruction rows), and the vision tower keeps its own attention. The row of
each instruction token is restricted to the visual keys, then averaged over heads and
instruction tokens: alpha_l(x), one weight per visual token (not renormalised: its sum is the share
of attention the instruction pays to the image).

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
import torch.nn.functional as F
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
    queries; zeros where a sample has no visual (or no instruction) tokens.

    The probabilities come from SDPA calls whose values are one-hot over the visual keys (value row
    s = e_v where key s is the v-th visual token, 0 elsewhere): the output at query i is then
    exactly softmax(q_i K^T * scaling + mask) restricted to the visual keys, with the normaliser
    over all S keys computed inside the fused kernel, so no [heads x I x S] score matrix is written
    out (in the tiny teacher that matrix, masked and soft-maxed, cost more than the layer's own
    attention). One call per head_dim visual keys: one for the tiny default, five for 576 visual
    tokens at head_dim 128."""
    batch, heads, _, head_dim = query.shape
    index = capture.instruction_index
    q = torch.gather(query, 2, index[:, None, :, None].expand(-1, heads, -1, head_dim))  # [B, H, I, D]
    k = repeat_kv(key, getattr(module, "num_key_value_groups", 1))  # [B, H, S, D]
    rows = _allowed_rows(attention_mask, index, k.shape[2])  # [B, 1|H, I, S]
    # one-hot values in groups of head_dim columns: SDPA's fused CPU kernel wants value rows as wide
    # as the query's (with narrower ones it is three times slower than the layer's own attention)
    n_visual = capture.visual_index.shape[1]
    on_image = []
    for first in range(0, n_visual, head_dim):
        columns, present = (
            x[:, first : first + head_dim] for x in (capture.visual_index, capture.visual_valid)
        )
        one_hot = q.new_zeros(batch, k.shape[2], head_dim, dtype=torch.float32)  # [B, S, D]
        one_hot.scatter_(1, columns[:, None, :], present[:, None, :].float())
        with torch.autocast(query.device.type, enabled=False):  # float32 whatever the model runs in
            probs = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                one_hot[:, None].expand(-1, heads, -1, -1),
                attn_mask=rows if rows.dtype == torch.bool else rows.float(),
                scale=scaling,
            )  # [B, H, I, D]: the probabilities on visual keys first .. first + D
        on_image.append(probs.mean(dim=1)[..., : columns.shape[1]])  # over heads -> [B, I, <=D]
    on_image = torch.cat(on_image, dim=-1)  # [B, I, V]
    valid = capture.instruction_valid
    on_image = torch.where(valid[:, :, None], on_image, torch.zeros_like(on_image))  # padded queries out
    return on_image.sum(1) / valid.sum(1, keepdim=True).clamp_min(1)


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
