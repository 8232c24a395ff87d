"""Distillation and supervised losses: pure functions of tensors, reductions kept apart.

Per-position divergences take teacher and student logits [N, V] and return [N]:

    forward_kl   KL(P_T || P_S)                       vanilla KD (Hinton; the paper's L_kd)
    reverse_kl   KL(P_S || P_T)
    jsd          b*KL(P_T||M) + (1-b)*KL(P_S||M), M = b*P_T + (1-b)*P_S   (GKD's generalized JSD;
                 b=0 is forward KL and b=1 reverse KL, TRL's convention)
    skew_forward_kl  KL(P_T || a*P_T + (1-a)*P_S)     (DistiLLM's skew KL)
    skew_reverse_kl  KL(P_S || a*P_S + (1-a)*P_T)
    tvd          0.5 * sum |P_T - P_S|

Every divergence here (forward KL for KD, IVA and TPA; the generalized JSD for GKD; reverse KL for
EM-KD's VSD; the skew KLs; TVD) takes its gradient in closed form (distill/closed_form.py): a few in-place passes over the logits where
autograd's log_softmax + kl_div chain allocates and walks several. `closed_form=False` keeps that
chain, the reference the tests and `python -m distill bench --part loss --divergence ...` compare
against; it is also used where the teacher's logits need a gradient.

Large vocabularies: `chunked_divergence` and `chunked_cross_entropy` start from hidden states and
LM heads, and compute logits a chunk of positions at a time, so the [positions x vocab] logits of
both models never exist whole; backward recomputes each chunk's logits. For the closed-form
divergences and plain weight-matrix heads that is closed_form.HeadDivergence (one head-gradient
buffer for all chunks); otherwise, and for the cross-entropy, activation checkpointing of each
chunk (a closed-form cross-entropy Function was tried and dropped: its rounding alone moved the tiny
teacher's yes/no family from 91% to 71%, docs/tiny-world.md). They equal the naive form, gradients
included (tests/test_losses.py).

IVA (Align-TI): `attention_weights(alpha)` turns the teacher's instruction-to-vision attention
into per-visual-token weights; the loss is sum_k w_k * KL_k per sample, from `chunked_divergence`
over the visual positions.

Reduce with `normalized_sum(per_position, n_items)`: sum over positions divided by the number of
supervised tokens (across gradient-accumulation micro-batches when the trainer knows it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.closed_form import CLOSED_FORMS, SKEWED, HeadDivergence, HeadSpec, LogitsDivergence, chunks

Head = Callable[[torch.Tensor], torch.Tensor]
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")


def _kl_from_logprobs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row from log-probabilities [N, V] -> [N]."""
    return F.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1)


def _log_mixture(a_log: torch.Tensor, b_log: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w * A + (1 - w) * B) from log-probabilities, stably."""
    return torch.logsumexp(torch.stack([a_log + math.log(weight_a), b_log + math.log1p(-weight_a)]), dim=0)


def per_position_divergence(
    name: str,
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    closed_form: bool = True,
) -> torch.Tensor:
    """Divergence between teacher and student next-token distributions, per position. [N, V] -> [N].
    Forward KL, reverse KL and the JSD take their closed-form gradients (closed_form.LogitsDivergence)
    unless `closed_form=False` or the teacher's logits need a gradient too."""
    if temperature != 1.0:
        teacher_logits, student_logits = teacher_logits / temperature, student_logits / temperature
    if closed_form and name in CLOSED_FORMS and not teacher_logits.requires_grad:
        return LogitsDivergence.apply(
            student_logits, teacher_logits, name, mixing_weight(name, jsd_beta, skew_alpha)
        )
    t_log = F.log_softmax(teacher_logits.float(), dim=-1)
    s_log = F.log_softmax(student_logits.float(), dim=-1)
    if name == "forward_kl":
        return _kl_from_logprobs(t_log, s_log)
    if name == "reverse_kl":
        return _kl_from_logprobs(s_log, t_log)
    if name == "jsd":
        if jsd_beta == 0.0:
            return _kl_from_logprobs(t_log, s_log)
        if jsd_beta == 1.0:
            return _kl_from_logprobs(s_log, t_log)
        m_log = _log_mixture(t_log, s_log, jsd_beta)
        return jsd_beta * _kl_from_logprobs(t_log, m_log) + (1 - jsd_beta) * _kl_from_logprobs(s_log, m_log)
    if name == "skew_forward_kl":
        return _kl_from_logprobs(t_log, _log_mixture(t_log, s_log, skew_alpha) if skew_alpha > 0 else s_log)
    if name == "skew_reverse_kl":
        return _kl_from_logprobs(s_log, _log_mixture(s_log, t_log, skew_alpha) if skew_alpha > 0 else t_log)
    if name == "tvd":
        return 0.5 * (t_log.exp() - s_log.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {name!r} (known: {', '.join(DIVERGENCES)})")


def mixing_weight(name: str, jsd_beta: float, skew_alpha: float) -> float:
    """The closed forms' one mixing parameter: the skew KLs' alpha, else the JSD's beta."""
    return skew_alpha if name in SKEWED else jsd_beta


def per_position_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of `targets` [N] under `logits` [N, V] -> [N]."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def normalized_sum(per_position: torch.Tensor, n_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """Sum over positions / number of supervised tokens (guarding zero)."""
    if n_items is None:
        n_items = per_position.numel()
    if not torch.is_tensor(n_items):
        n_items = torch.tensor(n_items, device=per_position.device)
    return per_position.sum() / n_items.to(per_position.device, per_position.dtype).clamp_min(1)


def chunked_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Head,
    teacher_head: Head,
    name: str = "forward_kl",
    chunk_size: int = 1024,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    skew_alpha: float = 0.1,
    closed_form: bool = True,
    head_function: bool = True,
) -> torch.Tensor:
    """Per-position divergence [N] from hidden states [N, Hs] / [N, Ht] and the two LM heads.

    `vocab_size` truncates both heads' outputs to the shared vocabulary (checkpoints often pad
    their LM head beyond the tokenizer). `chunk_size` <= 0 computes everything at once.
    `head_function=False` keeps checkpointed chunks where closed_form.HeadDivergence would apply."""
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError(
            f"teacher and student disagree on the number of supervised positions "
            f"({teacher_hidden.shape[0]} vs {student_hidden.shape[0]})"
        )

    def chunk_loss(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        s_logits = student_head(hs)[..., :vocab_size]  # [n, V]
        with torch.no_grad():
            t_logits = teacher_head(ht)[..., :vocab_size]  # [n, V]
        return per_position_divergence(
            name, t_logits, s_logits, temperature, jsd_beta, skew_alpha, closed_form
        )

    n = student_hidden.shape[0]
    if n == 0:
        return student_hidden.new_zeros(0, dtype=torch.float32)
    if chunk_size <= 0:
        return chunk_loss(student_hidden, teacher_hidden)
    teacher_hidden = teacher_hidden.detach()
    if closed_form and head_function and name in CLOSED_FORMS:
        weights = plain_weights(student_head, teacher_head, student_hidden, teacher_hidden)
        if weights is not None:
            spec = HeadSpec(
                name, chunk_size, vocab_size, temperature, mixing_weight(name, jsd_beta, skew_alpha)
            )
            return HeadDivergence.apply(student_hidden, weights[0], teacher_hidden, weights[1], spec)
    parts = [
        checkpoint(chunk_loss, student_hidden[s], teacher_hidden[s], use_reentrant=False)
        for s in chunks(n, chunk_size)
    ]
    return torch.cat(parts)


def plain_weights(
    student_head: Head, teacher_head: Head, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two heads' weight matrices where each head is exactly F.linear(h, weight): a bias-free
    nn.Linear with no hooks (DeepSpeed ZeRO-3 and accelerate's offloading gather weights in hooks),
    on its hidden states' device and dtype, outside autocast (whose dtypes the forward would have to
    replay); else None, and the chunks go through checkpointing."""
    pairs = ((student_head, student_hidden), (teacher_head, teacher_hidden))
    for head, hidden in pairs:
        if not isinstance(head, torch.nn.Linear) or head.bias is not None:
            return None
        if head._forward_hooks or head._forward_pre_hooks or hasattr(head, "_hf_hook"):
            return None
        weight = head.weight
        if hasattr(weight, "ds_id") or weight.device != hidden.device or weight.dtype != hidden.dtype:
            return None
        if torch.is_autocast_enabled(hidden.device.type):
            return None
    return student_head.weight, teacher_head.weight


def chunked_cross_entropy(
    hidden: torch.Tensor,
    head: Head,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Per-position NLL [N] of `targets` from hidden states [N, H], a chunk of logits at a time."""

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_position_cross_entropy(head(h)[..., :vocab_size], y)

    n = hidden.shape[0]
    if n == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    if chunk_size <= 0:
        return chunk_loss(hidden, targets)
    return torch.cat(
        [checkpoint(chunk_loss, hidden[s], targets[s], use_reentrant=False) for s in chunks(n, chunk_size)]
    )


def attention_weights(alpha: torch.Tensor) -> torch.Tensor:
    """IVA's per-visual-token weights [B, V] from instruction-to-vision attention [B, V]: each row
    scaled to sum to 1 (uniform where a row has no attention mass), so the IVA term is a weighted
    mean of per-token KL whatever the number of visual tokens and the share of attention the
    question pays to the image; uniform weights make it LLaVA-KD's mean visual-token KL."""
    total = alpha.sum(-1, keepdim=True)
    uniform = torch.full_like(alpha, 1.0 / alpha.shape[-1])
    return torch.where(total > 0, alpha / total.clamp_min(torch.finfo(alpha.dtype).tiny), uniform)
