"""On-policy batches for GKD (Agarwal et al., 2024): the student answers, the teacher grades.

    batch = on_policy_batch(student, inputs, pad_token_id, eos_token_ids, temperature=0.9, max_new_tokens=128)

The last response of every sample (the final run of supervised tokens) is cut off and replaced by
a response the student samples for the same prompt (image, earlier turns and question kept); the
new tokens become the supervised labels, so every loss term of the trainer (KD with the
generalized JSD for GKD proper) is computed on the student's own outputs. Earlier turns keep their
reference answers. When the teacher sees the image through its own processor (`teacher_*` inputs,
a different number of visual tokens), its sequences get the same new tokens after its own prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from distill.conversation import IGNORE_INDEX
from distill.data import PaddingCollator


def last_response_start(labels: torch.Tensor) -> torch.Tensor:
    """Index of the first token of each row's last run of supervised tokens [B]."""
    supervised = labels != IGNORE_INDEX
    if not supervised.any(1).all():
        raise ValueError("a sample has no supervised response to replace")
    positions = torch.arange(labels.shape[1], device=labels.device)
    last = torch.where(supervised, positions, -1).amax(1)
    # the run's start: the last unsupervised position before `last`, plus one
    before = (~supervised) & (positions[None] < last[:, None])
    return torch.where(before, positions, -1).amax(1) + 1


def left_padded_prompts(
    ids: torch.Tensor, attention: torch.Tensor, starts: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ids before `starts`, left-padded for batched generation: ids, attention [B, max start]."""
    width = int(starts.max())
    out = ids.new_full((ids.shape[0], width), pad_token_id)
    mask = attention.new_zeros(ids.shape[0], width)
    for row, start in enumerate(starts.tolist()):
        out[row, width - start :] = ids[row, :start]
        mask[row, width - start :] = attention[row, :start]
    return out, mask


def completions(
    generated: torch.Tensor, eos_token_ids: list[int], max_new_tokens: int | None = None
) -> list[torch.Tensor]:
    """New tokens per row [B, N] -> 1-D tensors cut after the first end-of-turn token (kept)."""
    rows = []
    for row in generated[:, :max_new_tokens]:
        ends = torch.isin(row, torch.tensor(eos_token_ids, device=row.device)).nonzero()
        rows.append(row[: int(ends[0]) + 1] if len(ends) else row)
    return rows


def splice(
    batch: dict[str, torch.Tensor],
    prefix: str,
    starts: torch.Tensor,
    responses: list[torch.Tensor],
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """One side's (student's, or the teacher's `teacher_*`) tensors with each row's tokens from
    `starts` on replaced by its response; right-padded, labels on the response only (plus the
    earlier turns' own)."""
    ids, labels = batch[f"{prefix}input_ids"], batch[f"{prefix}labels"]
    instruction = batch[f"{prefix}instruction_mask"]
    items = []
    for row, (start, response) in enumerate(zip(starts.tolist(), responses)):
        response = response.to(ids.device)
        items.append(
            {
                f"{prefix}input_ids": torch.cat([ids[row, :start], response]),
                f"{prefix}labels": torch.cat([labels[row, :start], response]),
                f"{prefix}instruction_mask": torch.cat(
                    [instruction[row, :start], instruction.new_zeros(len(response))]
                ),
            }
        )
    out = PaddingCollator(pad_token_id).pad_side(items, prefix)
    if f"{prefix}pixel_values" in batch:
        out[f"{prefix}pixel_values"] = batch[f"{prefix}pixel_values"]
    return out


@torch.no_grad()
def sample_responses(
    student: Any,
    batch: dict[str, torch.Tensor],
    starts: torch.Tensor,
    pad_token_id: int,
    eos_token_ids: list[int],
    temperature: float,
    max_new_tokens: int,
) -> list[torch.Tensor]:
    """The student's sampled continuation of each prompt (pure sampling at `temperature`; the image
    token is never sampled, as it would ask for an image feature that is not there)."""
    prompt, attention = left_padded_prompts(batch["input_ids"], batch["attention_mask"], starts, pad_token_id)
    with evaluation_mode(student):  # keeps the KV cache, which gradient checkpointing turns off in training
        generated = student.generate(
            input_ids=prompt,
            attention_mask=attention,
            pixel_values=batch.get("pixel_values"),
            do_sample=True,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_ids,
            pad_token_id=pad_token_id,
            suppress_tokens=[student.config.image_token_id],
        )
    return completions(generated[:, prompt.shape[1] :], eos_token_ids)


@contextlib.contextmanager
def evaluation_mode(model: Any) -> Iterator[None]:
    """The model in eval mode (no dropout, KV cache on) for the duration, then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def gathered_for_generation(model: Any) -> Any:
    """Under DeepSpeed ZeRO-3 each process holds a shard of the weights: gather them while sampling."""
    if getattr(model, "zero_optimization_stage", lambda: 0)() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()))
    return contextlib.nullcontext()


def on_policy_batch(
    student: Any,
    batch: dict[str, torch.Tensor],
    pad_token_id: int,
    eos_token_ids: list[int],
    temperature: float = 0.9,
    max_new_tokens: int = 128,
) -> dict[str, torch.Tensor]:
    """`batch` with each sample's last response replaced by one the student samples."""
    starts = last_response_start(batch["labels"])
    responses = sample_responses(
        student, batch, starts, pad_token_id, eos_token_ids, temperature, max_new_tokens
    )
    out = splice(batch, "", starts, responses, pad_token_id)
    if "teacher_input_ids" in batch:
        teacher_starts = last_response_start(batch["teacher_labels"])
        out.update(splice(batch, "teacher_", teacher_starts, responses, pad_token_id))
    return out
