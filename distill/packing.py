"""`data.pack`: the examples of each batch packed into as few rows as fit, instead of one padded row each.

    python -m distill train configs/tiny-teacher.yaml data.pack=true

The batch holds the same examples, so the step computes the same loss and gradients; only the padding
goes (the tiny teacher's median step over 40 steps of `python -m distill train
configs/tiny-teacher.yaml train.max_steps=40 data.pack=false|true`: 690 ms padded, 526 ms packed, the
same train_loss). Rows are filled first fit by decreasing length up to twice the batch's longest
example: on a CPU the attention over a packed row costs the row's full square (the mask hides other
examples' tokens but sdpa still computes them), so much longer rows give back to attention what
packing saves in the matrix products (rows of data.max_length, 384 tokens, made the tiny teacher's
step slower than no packing at all). Each example keeps its own position ids (0, 1, ... from its start) and
the model is called without an attention mask: transformers then reads the packing from the restarts
of the position ids and lets each token attend to the earlier tokens of its own example only
(masking_utils.find_packed_sequence_indices). A row's trailing padding continues its last example's
positions; it is never a label and nothing before it attends to it. Images go in the order their
`<image>` tokens take in the packed rows, which is the order LLaVA fills image features in.

`attention_mask` stays in the batch as the 2D mask of real tokens, for the token counts of the step
timer; the objective (distill/objective.py) drops it when `position_ids` is present. Packing applies
to the per-token terms (SFT and the KD divergences); the terms that look at a whole sequence's layout
(IVA, TPA, hidden-state and EM-KD alignment, on-policy sampling) refuse it in the run config.
"""

from __future__ import annotations

import torch

from distill.conversation import IGNORE_INDEX
from distill.data import PaddingCollator

SIDE_KEYS = ("input_ids", "labels", "instruction_mask")


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices per row, first fit by decreasing length; each row's indices in ascending order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[index] > capacity:
            raise ValueError(f"example {index} has {lengths[index]} tokens, more than a row's {capacity}")
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return [sorted(row) for row in rows]


class PackingCollator(PaddingCollator):
    """PaddingCollator's batch with several examples per row, each row at most `row_factor` times the
    batch's longest example (in the student's tokens), and `position_ids` restarting at each example."""

    def __init__(self, pad_token_id: int, row_factor: float = 2.0) -> None:
        super().__init__(pad_token_id)
        self.row_factor = row_factor

    def pack_side(
        self, items: list[dict[str, torch.Tensor]], rows: list[list[int]], prefix: str
    ) -> dict[str, torch.Tensor]:
        packed = []
        for row in rows:
            entry = {key: torch.cat([items[i][f"{prefix}{key}"] for i in row]) for key in SIDE_KEYS}
            labels = entry["labels"].clone()
            starts = torch.tensor([0] + [len(items[i][f"{prefix}input_ids"]) for i in row[:-1]]).cumsum(0)
            labels[starts] = IGNORE_INDEX  # no example is asked to predict the next one's first token
            entry["labels"] = labels
            entry["position_ids"] = torch.cat(
                [torch.arange(len(items[i][f"{prefix}input_ids"])) for i in row]
            )
            packed.append(entry)
        width = max(len(entry["input_ids"]) for entry in packed)
        batch = {
            f"{prefix}input_ids": self._pad([e["input_ids"] for e in packed], self.pad_token_id),
            f"{prefix}attention_mask": self._pad([torch.ones_like(e["input_ids"]) for e in packed], 0),
            f"{prefix}labels": self._pad([e["labels"] for e in packed], IGNORE_INDEX),
            f"{prefix}instruction_mask": self._pad([e["instruction_mask"] for e in packed], False),
            f"{prefix}position_ids": torch.stack(
                [continued_positions(e["position_ids"], width) for e in packed]
            ),
        }
        images = [
            items[i][f"{prefix}pixel_values"]
            for row in rows
            for i in row
            if f"{prefix}pixel_values" in items[i]
        ]
        if images:
            batch[f"{prefix}pixel_values"] = torch.stack(images)
        return batch

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = [len(item["input_ids"]) for item in items]
        rows = pack_rows(lengths, int(self.row_factor * max(lengths)))
        batch = self.pack_side(items, rows, "")
        if (
            "teacher_input_ids" in items[0]
        ):  # the same rows, so both sides list the same tokens in the same order
            batch.update(self.pack_side(items, rows, "teacher_"))
        return batch


def continued_positions(positions: torch.Tensor, width: int) -> torch.Tensor:
    """A row's position ids padded to `width` by counting on from its last example."""
    tail = torch.arange(1, width - len(positions) + 1) + positions[-1]
    return torch.cat([positions, tail])
