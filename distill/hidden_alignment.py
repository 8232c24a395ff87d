"""LLaVADI's token alignment: MSE between student and teacher hidden states, per aligned layer.

    pairs = layer_pairs([-1], student_layers=2, teacher_layers=4)     # [(2, 4)]
    projection = HiddenProjection(student_width, teacher_width, len(pairs))
    student.distill_hidden_projection = projection                     # trained with the student
    loss = hidden_mse(student_states, teacher_states, projection)      # per position [N]

Hidden-state indices follow transformers' `output_hidden_states`: 0 is the embedding output and L
the last layer's (after the final norm). A student layer s is paired with the teacher layer at the
same relative depth, round(s * L_t / L_s). When the widths differ each pair has its own learned
linear map from the student's width to the teacher's (LLaVADI's projector); when they match the
states are compared as they are. The map lives on the student model so that DDP and DeepSpeed
train it with the rest, and is left out of the saved model (`exclude_from_saved_model`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PROJECTION_ATTRIBUTE = "distill_hidden_projection"


def layer_pairs(layers: list[int], student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student index, teacher index) into the `output_hidden_states` tuples (length L + 1)."""
    pairs = []
    for layer in layers:
        s = layer if layer >= 0 else student_layers + 1 + layer
        if not 0 <= s <= student_layers:
            raise ValueError(
                f"loss.hidden_layers: {layer} is outside the student's hidden states 0..{student_layers}"
            )
        pairs.append((s, round(s * teacher_layers / student_layers)))
    return pairs


class HiddenProjection(nn.Module):
    """One linear map per aligned layer from the student's width to the teacher's (none if equal)."""

    def __init__(self, student_width: int, teacher_width: int, n_layers: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList(
            [nn.Linear(student_width, teacher_width) for _ in range(n_layers)]
            if student_width != teacher_width
            else []
        )

    def forward(self, states: torch.Tensor, index: int) -> torch.Tensor:
        return self.maps[index](states) if len(self.maps) else states


def hidden_mse(
    student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], projection: HiddenProjection
) -> torch.Tensor:
    """Mean squared error per position [N], averaged over the aligned layers; inputs [N, H] per layer."""
    per_layer = [
        F.mse_loss(projection(s, i).float(), t.float(), reduction="none").mean(-1)
        for i, (s, t) in enumerate(zip(student_states, teacher_states))
    ]
    return torch.stack(per_layer).mean(0)


def attach_projection(student: Any, teacher: Any, layers: list[int]) -> list[tuple[int, int]]:
    """Pair the layers, put a fresh projection on the student and keep it out of saved checkpoints."""
    s_text, t_text = student.config.get_text_config(), teacher.config.get_text_config()
    pairs = layer_pairs(layers, s_text.num_hidden_layers, t_text.num_hidden_layers)
    projection = HiddenProjection(s_text.hidden_size, t_text.hidden_size, len(pairs))
    setattr(student, PROJECTION_ATTRIBUTE, projection.to(next(student.parameters()).dtype))
    exclude_from_saved_model(student)
    return pairs


def exclude_from_saved_model(student: Any) -> None:
    keys = {f"{PROJECTION_ATTRIBUTE}.{name}" for name in getattr(student, PROJECTION_ATTRIBUTE).state_dict()}
    student._keys_to_ignore_on_save = set(student._keys_to_ignore_on_save or ()) | keys
