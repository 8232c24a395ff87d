"""SDPA in float32 under CPU bf16 autocast: the LLM's attention of a run trained with `train.bf16=true`
on a CPU.

    python -m distill train configs/tiny-teacher.yaml train.bf16=true   # the attention stays float32

Autocast runs PyTorch's SDPA in bf16, and on a CPU its bf16 kernel is the slower one (on the Zen 4
VM the kit is developed on, SDPA's forward and backward took about 1.5x their float32 time in a
one-off measurement, while bf16 matrix products ran 2.3-3x faster than float32 ones). So a CPU run
in bf16 gives the LLM's layers this attention function ("sdpa_float32"): the same call as
transformers' "sdpa", with queries, keys and values cast to float32 and autocast off inside it, and
the output cast back. The vision tower keeps its own attention (a frozen tower runs forward only).
Nothing of it is saved with the checkpoint. What it gives the tiny teacher's step:
docs/tiny-world.md, "bf16 on a CPU".
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

FLOAT32_SDPA = "sdpa_float32"


def float32_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    dtype = query.dtype
    with torch.autocast(query.device.type, enabled=False):
        output, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return output.to(dtype), weights


AttentionInterface.register(FLOAT32_SDPA, float32_sdpa)
AttentionMaskInterface.register(FLOAT32_SDPA, sdpa_mask)


def use_float32_attention(model: Any) -> bool:
    """Give the LLM of `model` the float32 SDPA if it runs transformers' "sdpa"; whether it did."""
    if model.config.get_text_config()._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation({"text_config": FLOAT32_SDPA})
    return True
