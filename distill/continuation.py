"""TPA by kv-continuation (Align-TI, section 3.2): the N*d candidates of a batch continue the KV
cache of the first pass, laid out densely in rows of one sample each.

    fresh = to_continue(candidates, input_ids, layout)  # [N*d]: not the response token itself
    states = states_after_candidates(language_model, embed, cache, first_pass_states,
                                     input_ids, attention_mask, layout, candidates, fresh)  # [N*d, H]

Candidate j of response token y at position t has the position id of y and may attend to the
cache columns before t and to itself, nothing else, so its final state equals that of a separate
forward over (x, y_<t, c) (tests/test_tpa.py).

Two things make it cheap. A candidate equal to the response token y it replaces needs no pass at
all: (x, y_<t, y) is the first pass's own prefix, so its state is the first pass's state at t (a
trained student puts y among its d candidates at most positions). And the layout: response lengths
differ a lot within a batch (a one-word answer beside an 80-token description), so giving every
sample max_b(n_b)*d candidate slots, as the ribbon does, leaves most of them padding when one long
answer sits among short ones. Here the
flat candidates of each sample fill rows of width C, a sample with many candidates taking several
rows over copies of its cache rows; C is the width that minimises the attention work of the batch
at hand, the copies counted (`row_width`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from distill.tpa import ResponseLayout, mask_for_attention


@dataclass
class CandidateRows:
    """Where each of K candidates sits in the continuation pass. In row-major order the valid entries
    are the candidates in the order they were given (sorted by sample)."""

    sample: torch.Tensor  # [R] the sample whose cache row r continues
    positions: torch.Tensor  # [R, C] position id of each candidate (that of the token it replaces)
    valid: torch.Tensor  # [R, C]


ROW_COST_IN_QUERIES = 8


def row_width(counts: torch.Tensor, key_length: int) -> int:
    """The row width C in 1..max(counts) minimising R(C) * (C + ROW_COST_IN_QUERIES) * (key_length + C),
    R(C) = sum_b ceil(counts_b / C): the query-key pairs the continuation's attention computes, padding
    included, with each row charged as 8 more queries for its copy of the cache (keys and values of
    every layer: memory moves, several times dearer per element than the attention's multiply-adds).
    Width 1 would waste nothing on padding but copy the cache once per candidate; one row per sample
    (the widest) copies nothing but pads every sample to the longest."""
    widths = torch.arange(1, int(counts.max()) + 1)
    rows = (counts[:, None] + widths[None] - 1).div(widths[None], rounding_mode="floor").sum(0)
    work = rows * (widths + ROW_COST_IN_QUERIES) * (key_length + widths)
    return int(widths[work.argmin()])


def flat_candidates(layout: ResponseLayout, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample, position) [N*d] of the d candidates of every response token, in their flat order
    (sample, response token, candidate)."""
    sample = torch.arange(layout.valid.shape[0], device=layout.valid.device)[:, None].expand_as(layout.valid)
    return sample[layout.valid].repeat_interleave(d), layout.positions[layout.valid].repeat_interleave(d)


def candidate_rows(
    sample: torch.Tensor, positions: torch.Tensor, key_length: int, width: int | None = None
) -> CandidateRows:
    """Rows for K candidates given by their sample [K] (sorted) and position [K], continuing a cache
    of `key_length` columns; `width` overrides the row width `row_width` picks."""
    device = positions.device
    if len(sample) == 0:
        empty = torch.zeros(0, 1, dtype=torch.long, device=device)
        return CandidateRows(empty[:, 0], empty, empty.bool())
    samples, counts = torch.unique_consecutive(sample, return_counts=True)
    width = width or row_width(counts.cpu(), key_length)
    rows_per_sample = (counts + width - 1) // width
    first_row = rows_per_sample.cumsum(0) - rows_per_sample
    first_candidate = counts.cumsum(0) - counts
    group = torch.arange(len(samples), device=device).repeat_interleave(counts)
    index = torch.arange(len(sample), device=device) - first_candidate[group]  # within its sample
    row, column = first_row[group] + index // width, index % width
    shape = (int(rows_per_sample.sum()), width)
    placed_positions = torch.zeros(shape, dtype=positions.dtype, device=device)
    placed_positions[row, column] = positions
    valid = torch.zeros(shape, dtype=torch.bool, device=device)
    valid[row, column] = True
    return CandidateRows(samples.repeat_interleave(rows_per_sample), placed_positions, valid)


def row_candidates(tokens: torch.Tensor, rows: CandidateRows) -> torch.Tensor:
    """The candidate tokens [K] in their rows [R, C] (0 where a row is padded)."""
    ids = torch.zeros(rows.valid.shape, dtype=tokens.dtype, device=tokens.device)
    ids[rows.valid] = tokens
    return ids


def row_mask(rows: CandidateRows, attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool [R, 1, C, T + C] (True = may attend): a candidate at position t sees its sample's
    non-padding cache columns before t and its own column."""
    length = attention_mask.shape[1]
    width = rows.valid.shape[1]
    columns = torch.arange(length, device=attention_mask.device)
    past = (columns[None, None, :] < rows.positions[:, :, None]) & attention_mask.bool()[rows.sample][
        :, None, :
    ]
    itself = torch.eye(width, dtype=torch.bool, device=attention_mask.device).expand(len(rows.sample), -1, -1)
    return torch.cat([past, itself], dim=-1)[:, None]


def rows_cache(cache: Any, rows: CandidateRows) -> DynamicCache:
    """A new cache holding, for each row, the keys and values of its sample (the first pass's cache
    is left as it was; gradients flow back into it)."""
    return DynamicCache(
        ddp_cache_data=[(layer.keys[rows.sample], layer.values[rows.sample]) for layer in cache.layers]
    )


def continue_from_cache(
    language_model: Any,
    embed: torch.nn.Module,
    cache: Any,
    tokens: torch.Tensor,
    rows: CandidateRows,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states [K, H] of the candidate tokens [K] laid out in `rows`, continuing the first
    pass's `cache` of a batch with `attention_mask` [B, T]."""
    ids = row_candidates(tokens, rows)
    if ids.shape[0] == 0:
        return embed(tokens)  # no candidate to continue: [0, H]
    outputs = language_model(
        inputs_embeds=embed(ids),
        attention_mask=mask_for_attention(language_model, row_mask(rows, attention_mask)),
        position_ids=rows.positions,
        cache=rows_cache(cache, rows),
        use_cache=False,
    )
    return outputs.last_hidden_state[rows.valid]


def to_continue(candidates: torch.Tensor, input_ids: torch.Tensor, layout: ResponseLayout) -> torch.Tensor:
    """Bool [N*d], flat order: the candidates [N, d] that differ from the response token they replace."""
    sample, positions = flat_candidates(layout, candidates.shape[1])
    return candidates.flatten() != input_ids[sample, positions]


def states_after_candidates(
    language_model: Any,
    embed: torch.nn.Module,
    cache: Any,
    first_pass_states: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layout: ResponseLayout,
    candidates: torch.Tensor,
    fresh: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states [N*d, H] after each candidate [N, d], in the flat order: those marked in
    `fresh` [N*d] (`to_continue`: the same for teacher and student) continue the first pass's
    `cache`, the others, equal to the response token they replace, read its final states [B, T, H]."""
    sample, positions = flat_candidates(layout, candidates.shape[1])
    tokens = candidates.flatten()
    continued = continue_from_cache(
        language_model,
        embed,
        cache,
        tokens[fresh],
        candidate_rows(sample[fresh], positions[fresh], input_ids.shape[1]),
        attention_mask,
    )
    states = continued.new_empty(len(tokens), continued.shape[-1])
    states[fresh] = continued
    states[~fresh] = first_pass_states[sample[~fresh], positions[~fresh]].to(continued.dtype)
    return states
