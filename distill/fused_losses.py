"""liger-kernel's fused LM-head losses on a GPU (`loss.fused_kernel: true`).

    python -m distill train CONFIG.yaml loss.fused_kernel=true      # pip install -e ".[gpu]", a CUDA GPU

The SFT cross-entropy and the KD divergence are computed from the hidden states and the LM-head
weights by liger-kernel's Triton kernels (LigerFusedLinearCrossEntropyLoss, LigerFusedLinearJSD),
which compute each chunk's logits, loss and gradients in one go and keep no logits for backward; the
default path (distill/losses.py) recomputes each chunk's logits in backward instead. Both functions
return the SUM over positions, as `chunked_cross_entropy(...).sum()` and `chunked_divergence(...).sum()`
do, so the objective normalises them the same way; tests/test_fused_losses.py checks values and
gradients against the chunked forms on a GPU, or on a CPU in Triton's interpreter (TRITON_INTERPRET=1).

The objective also sends TPA's KL after each candidate through the fused divergence. KD divergences:
forward_kl, reverse_kl and jsd (liger's generalized JSD mixes M = b*P_T + (1-b)*P_S and is forward KL
at b=0, reverse KL at b=1: the kit's and TRL's convention). IVA (weighted per visual position), the
skew divergences and TVD keep the chunked form. Under DeepSpeed ZeRO-3 the LM head
is partitioned across processes and the kernels cannot read it whole: use ZeRO-2 with the fused kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from distill.configuration import ConfigError

FUSED_DIVERGENCES = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": None}  # liger's beta (None: loss.jsd_beta)


def require_fused_kernel(device: torch.device, zero_stage: int | None = None) -> None:
    """A clear error where the fused kernel cannot run: no CUDA GPU, liger-kernel not installed, or
    DeepSpeed ZeRO-3 (which partitions the LM head the kernels read whole)."""
    if zero_stage == 3:
        raise ConfigError(
            "loss.fused_kernel reads the LM head whole, which DeepSpeed ZeRO-3 partitions; use ZeRO-2 or "
            "loss.fused_kernel=false"
        )
    if device.type != "cuda":
        raise ConfigError(
            f"loss.fused_kernel runs liger-kernel's Triton kernels, which need a CUDA GPU (training is on "
            f"{device.type}); set loss.fused_kernel=false"
        )
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"loss.fused_kernel needs liger-kernel ({error}): pip install -e '.[gpu]'"
        ) from None


def head_weight(head: Any, vocab_size: int | None) -> torch.Tensor:
    """The LM head's weight [V, H], cut to the shared vocabulary."""
    weight = head.weight
    if weight.numel() == 0:
        raise ConfigError(
            "loss.fused_kernel: the LM head is partitioned (DeepSpeed ZeRO-3); use ZeRO-2 or loss.fused_kernel=false"
        )
    if getattr(head, "bias", None) is not None:
        raise ConfigError("loss.fused_kernel: the LM head has a bias, which the fused kernels do not take")
    return weight[:vocab_size] if vocab_size else weight


def fused_cross_entropy_sum(
    hidden: torch.Tensor, head: Any, targets: torch.Tensor, vocab_size: int | None = None
) -> torch.Tensor:
    """Sum over positions of the NLL of `targets` [N] from hidden states [N, H]."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")(head_weight(head, vocab_size), hidden, targets)


def fused_divergence_sum(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Any,
    teacher_head: Any,
    name: str = "forward_kl",
    vocab_size: int | None = None,
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Sum over positions of the divergence between teacher and student next-token distributions."""
    from liger_kernel.transformers import LigerFusedLinearJSD

    if name not in FUSED_DIVERGENCES:
        raise ConfigError(f"loss.fused_kernel covers {', '.join(FUSED_DIVERGENCES)}, not {name}")
    n = student_hidden.shape[0]
    if n != teacher_hidden.shape[0]:
        raise ValueError(
            f"teacher and student disagree on the number of supervised positions ({teacher_hidden.shape[0]} vs {n})"
        )
    if n == 0:
        return student_hidden.sum() * 0.0
    beta = FUSED_DIVERGENCES[name]
    loss = LigerFusedLinearJSD(jsd_beta=jsd_beta if beta is None else beta, temperature=temperature)
    mean = loss(
        student_hidden,
        head_weight(student_head, vocab_size),
        teacher_hidden.detach(),
        head_weight(teacher_head, vocab_size).detach(),
        None,
    )
    return mean * n  # liger averages over the rows
