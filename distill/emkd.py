"""EM-KD (Feng et al., 2025): distillation across unequal numbers of visual tokens.

    match = match_visual_tokens(student_probs, teacher_probs)     # Hungarian, L1 cost
    vsd = chunked_divergence(student_visual[match.student], teacher_visual[match.teacher], ..., "reverse_kl")
    vlad = affinity_loss(student_text, student_visual[match.student], teacher_text, teacher_visual[match.teacher])

A student that compresses its visual tokens (fewer, coarser patches) cannot be compared with its
teacher token by token. EM-KD first pairs each student visual token with a distinct teacher visual
token: the cost of a pair is the Manhattan (L1) distance between their vision "logits", the LM
head's distributions at the visual positions, and scipy's `linear_sum_assignment` finds the
pairing of least total cost (min(V_s, V_t) pairs). Then

    VSD  = reverse KL(P_S || P_T) between the paired tokens' distributions over the vocabulary;
    VLAD = smooth-L1 between the text-to-vision affinity matrices (cosine similarity of every text
           token's final hidden state with every paired visual token's), student against teacher.

The L1 cost is taken between probabilities rather than raw logits: softmax ignores a constant shift
of the logits, but L1 on raw logits does not, so two heads whose logits differ by an offset would
be matched by their offsets. Matching runs without gradient, per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass
class VisualMatch:
    """Paired indices into the student's and the teacher's visual tokens of one image."""

    student: torch.Tensor  # [m]
    teacher: torch.Tensor  # [m]


@torch.no_grad()
def match_visual_tokens(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, chunk: int = 64
) -> VisualMatch:
    """Least-total-L1 pairing of student [V_s, vocab] and teacher [V_t, vocab] distributions."""
    costs = torch.cat(
        [torch.cdist(part.float(), teacher_probs.float(), p=1) for part in student_probs.split(chunk)]
    )  # [V_s, V_t]
    rows, cols = linear_sum_assignment(costs.cpu().numpy())
    device = student_probs.device
    return VisualMatch(
        torch.as_tensor(np.asarray(rows), device=device, dtype=torch.long),
        torch.as_tensor(np.asarray(cols), device=device, dtype=torch.long),
    )


def affinity(text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each text state with each visual state: [T, H], [V, H] -> [T, V]."""
    return F.normalize(text.float(), dim=-1) @ F.normalize(visual.float(), dim=-1).T


def affinity_loss(
    student_text: torch.Tensor,
    student_visual: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_visual: torch.Tensor,
) -> torch.Tensor:
    """VLAD for one image: mean smooth-L1 between the student's and the teacher's affinity matrices
    (visual tokens already paired, text tokens the same on both sides)."""
    if student_text.shape[0] != teacher_text.shape[0]:
        raise ValueError(
            f"VLAD needs the same text tokens on both sides ({student_text.shape[0]} vs {teacher_text.shape[0]})"
        )
    with torch.no_grad():
        target = affinity(teacher_text, teacher_visual)
    return F.smooth_l1_loss(affinity(student_text, student_visual), target)
