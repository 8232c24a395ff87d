"""Forward KL, reverse KL, GKD's generalized JSD, DistiLLM's skew KLs and the total variation distance
with their gradients in closed form.

    kl = LogitsDivergence.apply(student_logits, teacher_logits, "forward_kl", 0.5)      # [N]
    kl = HeadDivergence.apply(h_s, W_s, h_t, W_t, HeadSpec("jsd", chunk_size=512))      # [N]

With Q = softmax(s) the student's distribution (s its logits) and P_T the teacher's:

    forward_kl  KL(P_T||Q)                     d/ds = Q - P_T
    reverse_kl  KL(Q||P_T)                     d/ds = Q * (log Q - log P_T - KL(Q||P_T))
    jsd         b KL(P_T||M) + (1-b) KL(Q||M)  d/ds = (1-b) * Q * (log Q - log M - KL(Q||M)),
                M = b P_T + (1-b) Q            (the P_T terms cancel; 0 < b < 1)
    skew_forward_kl  KL(P_T||M), M = a P_T + (1-a) Q      d/ds = (1-a) * Q * (c - P_T/M), c = sum Q P_T/M
    skew_reverse_kl  KL(Q||M),   M = a Q + (1-a) P_T      d/ds = Q * (g - sum Q g), g = log Q/M - a Q/M
                (DistiLLM's skew KLs; `beta` carries the skew a)
    tvd         0.5 sum |P_T - Q|               d/ds = 0.5 * Q * (d - sum Q d), d = sign(Q - P_T)

each a few in-place passes over the [N, V] logits, where autograd's log_softmax + kl_div chain
allocates and walks several. The teacher's logits never get a gradient here.

`LogitsDivergence` starts from logits. `HeadDivergence` starts from hidden states and the two LM-head
weight matrices and goes a chunk of positions at a time, so the [N, V] logits never exist whole: its
forward keeps only each position's two logsumexps (and the divergence itself where the gradient needs
it); its backward recomputes a chunk's logits, turns them into the gradient in place, and adds the
head's gradient of every chunk into one [V, H] buffer. Against torch.utils.checkpoint over
`LogitsDivergence` it skips recomputing the divergence's value in backward and allocating a fresh
[V, H] head gradient per chunk (`python -m distill bench --part loss` compares the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

CLOSED_FORMS = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")
SKEWED = ("skew_forward_kl", "skew_reverse_kl")  # their mixing weight is `beta` here: the skew alpha


def log_mixture_(t_log: torch.Tensor, q_log: torch.Tensor, beta: float) -> torch.Tensor:
    """log(b P_T + (1-b) Q) [n, V] from log-probabilities, into a new tensor (no autograd)."""
    mixture = t_log + math.log(beta)
    return torch.logaddexp(mixture, q_log + math.log1p(-beta), out=mixture)


def divergence_value_(
    name: str, student: torch.Tensor, lse: torch.Tensor | None, t_log: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The divergence per row [n] from the student's logits `student` [n, V] with their logsumexp
    `lse` [n] (or, with lse None, its log-probabilities) and the teacher's log-probabilities t_log.
    Also returns the per-row scalar the gradient needs (None for forward KL) and the teacher's side
    of it: P_T for forward KL (t_log is overwritten), t_log itself otherwise. `student` is left as
    it is where lse is given, and may be overwritten where it is not."""
    if name in SKEWED:
        q_log = student if lse is None else student - lse.unsqueeze(-1)
        return skew_value(name, q_log, t_log, beta), None, t_log
    if name == "tvd":  # 0.5 sum |P_T - Q|
        q = (student if lse is None else student - lse.unsqueeze(-1)).exp()
        return q.sub_(t_log.exp()).abs_().sum(-1).mul_(0.5), None, t_log
    if name == "forward_kl":  # sum P_T (log P_T - s + lse), in t_log's buffer
        p_t = t_log.exp()
        difference = t_log.sub_(student)
        if lse is not None:
            difference.add_(lse.unsqueeze(-1))
        return difference.mul_(p_t).sum(-1), None, p_t
    q_log = student if lse is None else student - lse.unsqueeze(-1)
    if name == "reverse_kl":
        q = q_log.exp()
        kl = q_log.sub_(t_log).mul_(q).sum(-1)
        return kl, kl, t_log
    m_log = log_mixture_(t_log, q_log, beta)
    p_t = t_log.exp()
    kl_teacher = (t_log - m_log).mul_(p_t).sum(-1)
    q = torch.exp(q_log, out=p_t)
    kl_student = m_log.neg_().add_(q_log).mul_(q).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student, kl_student, t_log


def skew_value(name: str, q_log: torch.Tensor, t_log: torch.Tensor, alpha: float) -> torch.Tensor:
    """DistiLLM's skew KLs per row [n] from log-probabilities (neither is overwritten):
    KL(P_T || a P_T + (1-a) Q) or KL(Q || a Q + (1-a) P_T)."""
    if name == "skew_forward_kl":
        m_log = log_mixture_(t_log, q_log, alpha)
        return m_log.neg_().add_(t_log).mul_(t_log.exp()).sum(-1)
    m_log = log_mixture_(t_log, q_log, 1 - alpha)
    return m_log.neg_().add_(q_log).mul_(q_log.exp()).sum(-1)


def skew_gradient_(name: str, q_log: torch.Tensor, t_log: torch.Tensor, alpha: float) -> torch.Tensor:
    """d skew KL / d student logits [n, V], written over `q_log`. With M the mixture:
    skew_forward_kl  (1-a) Q (c - P_T/M),   c = sum Q P_T/M
    skew_reverse_kl  Q (g - sum Q g),       g = log Q - log M - a Q/M"""
    if name == "skew_forward_kl":
        ratio = log_mixture_(t_log, q_log, alpha).neg_().add_(t_log).exp_()  # P_T / M
        q = q_log.exp_()
        c = (q * ratio).sum(-1, keepdim=True)
        return ratio.neg_().add_(c).mul_(q).mul_(1 - alpha)
    log_ratio = log_mixture_(t_log, q_log, 1 - alpha).neg_().add_(q_log)  # log Q/M
    g = log_ratio.sub_(log_ratio.exp().mul_(alpha))
    q = q_log.exp_()
    return g.sub_((q * g).sum(-1, keepdim=True)).mul_(q)


def divergence_gradient_(
    name: str, q_log: torch.Tensor, teacher: torch.Tensor, aux: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """d divergence / d student logits [n, V], written over `q_log`; `teacher` and `aux` as
    divergence_value_ returned them."""
    if name in SKEWED:
        return skew_gradient_(name, q_log, teacher, beta)
    if name == "tvd":  # 0.5 Q (d - sum Q d), d = sign(Q - P_T)
        q = q_log.exp_()
        sign = (q - teacher.exp()).sign_()
        return sign.sub_((q * sign).sum(-1, keepdim=True)).mul_(q).mul_(0.5)
    if name == "forward_kl":
        return q_log.exp_().sub_(teacher)
    if name == "reverse_kl":
        q = q_log.exp()
        return q_log.sub_(teacher).sub_(aux.unsqueeze(-1)).mul_(q)
    m_log = log_mixture_(teacher, q_log, beta)
    q = q_log.exp()
    return q_log.sub_(m_log).sub_(aux.unsqueeze(-1)).mul_(q).mul_(1 - beta)


def canonical(name: str, beta: float) -> str:
    """The JSD at b = 0 is forward KL and at b = 1 reverse KL (TRL's convention); a skew KL with
    a = 0 is the plain KL."""
    if name == "jsd" and beta in (0.0, 1.0):
        return "forward_kl" if beta == 0.0 else "reverse_kl"
    if name in SKEWED and beta == 0.0:
        return name.removeprefix("skew_")
    return name


class LogitsDivergence(torch.autograd.Function):
    """One of CLOSED_FORMS per row [N] from student logits [N, V] (with gradient) and teacher logits
    (without), in float32."""

    @staticmethod
    def forward(
        ctx: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor, name: str, beta: float
    ) -> torch.Tensor:
        name = canonical(name, beta)
        s = student_logits.float()
        lse = torch.logsumexp(s, dim=-1)
        t_log = F.log_softmax(teacher_logits.float(), dim=-1)
        value, aux, teacher = divergence_value_(name, s, lse, t_log, beta)
        ctx.name, ctx.beta = name, beta
        ctx.save_for_backward(student_logits, lse, teacher, aux)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        student_logits, lse, teacher, aux = ctx.saved_tensors
        q_log = student_logits.float() - lse.unsqueeze(-1)
        grad_logits = divergence_gradient_(ctx.name, q_log, teacher, aux, ctx.beta).mul_(grad.unsqueeze(-1))
        return grad_logits.to(student_logits.dtype), None, None, None


@dataclass(frozen=True)
class HeadSpec:
    name: str
    chunk_size: int = 1024
    vocab_size: int | None = None  # rows of both heads that are compared (the shared vocabulary)
    temperature: float = 1.0
    beta: float = 0.5


def chunk_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, spec: HeadSpec, lse: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [n, V] (float32) of a chunk of hidden states under a head, and their
    logsumexp [n]; with `lse` given, that one is used instead of being computed."""
    logits = F.linear(hidden, weight[: spec.vocab_size]).float()
    if spec.temperature != 1.0:
        logits = logits.div_(spec.temperature)
    if lse is None:
        lse = torch.logsumexp(logits, dim=-1)
    return logits.sub_(lse.unsqueeze(-1)), lse


class HeadDivergence(torch.autograd.Function):
    """One of CLOSED_FORMS per position [N] between F.linear(h_s, W_s) and F.linear(h_t, W_t), a
    chunk of positions at a time; gradients for h_s and W_s (the teacher's inputs get none)."""

    @staticmethod
    def forward(
        ctx: Any,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        spec: HeadSpec,
    ) -> torch.Tensor:
        spec = replace(spec, name=canonical(spec.name, spec.beta))
        values, student_lse, teacher_lse, auxes = [], [], [], []
        for rows in chunks(student_hidden.shape[0], spec.chunk_size):
            q_log, s_lse = chunk_log_probs(student_hidden[rows], student_weight, spec)
            t_log, t_lse = chunk_log_probs(teacher_hidden[rows], teacher_weight, spec)
            value, aux, _ = divergence_value_(spec.name, q_log, None, t_log, spec.beta)
            values.append(value)
            student_lse.append(s_lse)
            teacher_lse.append(t_lse)
            auxes.append(aux)
        ctx.spec = spec
        aux = None if auxes[0] is None else torch.cat(auxes)
        ctx.save_for_backward(
            student_hidden, student_weight, teacher_hidden, teacher_weight,
            torch.cat(student_lse), torch.cat(teacher_lse), aux,
        )  # fmt: skip
        return torch.cat(values)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        student_hidden, student_weight, teacher_hidden, teacher_weight, s_lse, t_lse, aux = ctx.saved_tensors
        spec: HeadSpec = ctx.spec
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = student_hidden.new_empty(student_hidden.shape) if want_hidden else None
        grad_weight = torch.empty_like(student_weight) if want_weight else None
        head = student_weight[: spec.vocab_size]
        if want_weight:  # rows past the shared vocabulary (all rows when there is no position)
            grad_weight[head.shape[0] if student_hidden.shape[0] else 0 :].zero_()
        scale = (grad / spec.temperature).unsqueeze(-1)  # s = logits / T
        for index, rows in enumerate(chunks(student_hidden.shape[0], spec.chunk_size)):
            q_log, _ = chunk_log_probs(student_hidden[rows], student_weight, spec, s_lse[rows])
            t_log, _ = chunk_log_probs(teacher_hidden[rows], teacher_weight, spec, t_lse[rows])
            teacher = t_log.exp_() if spec.name == "forward_kl" else t_log  # as divergence_value_ hands it
            chunk_aux = None if aux is None else aux[rows]
            grad_logits = divergence_gradient_(spec.name, q_log, teacher, chunk_aux, spec.beta)
            grad_logits = grad_logits.mul_(scale[rows]).to(head.dtype)
            if want_hidden:
                torch.mm(grad_logits, head, out=grad_hidden[rows])
            if want_weight and index == 0:  # the first chunk writes the buffer, later ones add to it
                torch.mm(grad_logits.t(), student_hidden[rows], out=grad_weight[: head.shape[0]])
            elif want_weight:
                grad_weight[: head.shape[0]].addmm_(grad_logits.t(), student_hidden[rows])
        return grad_hidden, grad_weight, None, None, None


def chunks(n: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of at most `chunk_size` (all of n for chunk_size <= 0)."""
    size = n if chunk_size <= 0 else chunk_size
    return [slice(start, min(start + size, n)) for start in range(0, n, max(size, 1))]
