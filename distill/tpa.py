"""Transition Probability Alignment (Align-TI, section 3.2): at each response position k, d
candidate tokens drawn from the student's own next-token distribution, and the KL between the
teacher's and the student's next-token distributions after each candidate.

    candidates = draw_candidates(student_logits_at_response, d=4, mode="nucleus", top_p=0.9)
    layout = response_layout(labels)                       # where each response token sits
    ids, positions, mask = ribbon_inputs(input_ids, attention_mask, slot_candidates(candidates, layout), layout)

Two ways to get the states after each candidate: kv-continuation (distill/continuation.py, the
default), where each model runs once over (x, y) keeping its KV cache and once over the candidates
against it; and the paper's single-pass ribbon (here), where the candidates ride along in one pass
with a mask. Both equal a separate forward over (x, y_<k, c) for every (k, c) (tests/test_tpa.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distill.attention_capture import padded_positions
from distill.conversation import IGNORE_INDEX


@dataclass
class ResponseLayout:
    """Positions of the response tokens (labels != -100) of each sample, left-aligned and padded."""

    positions: torch.Tensor  # [B, M] sequence index t of each response token y (0 where padded)
    valid: torch.Tensor  # [B, M]

    @property
    def slots(self) -> int:
        return self.positions.shape[1]


def response_layout(labels: torch.Tensor) -> ResponseLayout:
    supervised = labels != IGNORE_INDEX
    supervised[:, 0] = False  # the first token has no prefix to be predicted from
    return ResponseLayout(*padded_positions(supervised))


def candidate_states(states: torch.Tensor, layout: ResponseLayout, d: int) -> torch.Tensor:
    """Hidden states of the candidate slots [B, M*d, H] -> those of the real ones [N*d, H], in the
    order of the response tokens (row-major), d per token."""
    return states.reshape(*layout.valid.shape, d, -1)[layout.valid].flatten(0, 1)


NARROW_NUCLEUS = 64  # rows whose nucleus ends within this many most likely tokens draw from those


@torch.no_grad()
def draw_candidates(
    logits: torch.Tensor,
    d: int,
    mode: str = "nucleus",
    top_p: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """d distinct tokens per row of logits [N, V] -> [N, d].

    greedy: the d most likely tokens. nucleus: d draws without replacement from the
    temperature-scaled distribution cut to its top-p nucleus; when the nucleus holds fewer than d
    tokens, the most likely tokens outside it fill the remaining slots.

    A trained model's nucleus holds a few tokens at most positions, so the rows whose nucleus ends
    within the NARROW_NUCLEUS most likely tokens draw from those (top-k instead of sorting the
    vocabulary, and the draw over those columns instead of V); only the others are sorted whole."""
    if mode == "greedy":
        return logits.topk(d, dim=-1).indices
    if mode != "nucleus":
        raise ValueError(f"unknown candidate sampling {mode!r} (nucleus or greedy)")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    values, order = probs.topk(min(probs.shape[-1], max(NARROW_NUCLEUS, d)), dim=-1)  # sorted, descending
    wide = values.cumsum(-1)[:, -1] - values[:, -1] < top_p  # the last column is still in the nucleus
    picked = torch.empty(len(probs), d, dtype=torch.long, device=probs.device)
    picked[~wide] = draw_from_sorted(values[~wide], order[~wide], d, top_p, generator)
    if wide.any():
        picked[wide] = draw_from_sorted(*probs[wide].sort(dim=-1, descending=True), d, top_p, generator)
    return picked


def draw_from_sorted(
    sorted_probs: torch.Tensor, order: torch.Tensor, d: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """d draws without replacement [N, d] from the top-p nucleus of probabilities sorted in
    descending order [N, W] (vocabulary indices `order`), filled from the top when it holds fewer
    than d; W must reach past every row's nucleus."""
    before = sorted_probs.cumsum(-1) - sorted_probs
    keep = before < top_p  # the smallest prefix whose mass reaches top_p
    keep[:, :d] |= keep.sum(-1, keepdim=True) < d  # too small a nucleus: fill from the top
    weights = torch.where(keep, sorted_probs.clamp_min(1e-12), torch.zeros_like(sorted_probs))
    picked = torch.multinomial(weights, d, replacement=False, generator=generator)
    return torch.gather(order, 1, picked)


def continuation_mask(layout: ResponseLayout, attention_mask: torch.Tensor, d: int) -> torch.Tensor:
    """Bool [B, 1, M*d, T + M*d] (True = may attend): candidate j of response token y at position t
    sees the non-padding cache columns before t and its own column."""
    batch, length = attention_mask.shape
    slots = layout.slots * d
    position = layout.positions.repeat_interleave(d, dim=1)  # [B, M*d]
    columns = torch.arange(length, device=attention_mask.device)
    past = (columns[None, None, :] < position[:, :, None]) & attention_mask.bool()[:, None, :]
    itself = torch.eye(slots, dtype=torch.bool, device=attention_mask.device).expand(batch, -1, -1)
    return torch.cat([past, itself], dim=-1)[:, None]


def slot_candidates(candidates: torch.Tensor, layout: ResponseLayout) -> torch.Tensor:
    """Per-response-token candidates [N, d] (valid slots, row-major) -> [B, M*d] (0 in padded slots)."""
    batch, slots = layout.valid.shape
    d = candidates.shape[1]
    out = torch.zeros(batch, slots, d, dtype=candidates.dtype, device=candidates.device)
    out[layout.valid] = candidates
    return out.view(batch, slots * d)


def ribbon_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, candidates: torch.Tensor, layout: ResponseLayout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The single-pass "ribbon" of the paper's appendix B.6: the sequence (x, y) followed by all
    L*d candidates, with shared position ids (a candidate takes the position of the token it
    replaces) and a dense bool mask [B, 1, T + M*d, T + M*d]: (x, y) attends causally as usual and
    never to a candidate; a candidate sees the prefix before its position and itself. The paper
    interleaves each y_k's candidates after y_(k-1); appending them is the same attention pattern
    permuted, and keeps (x, y) — with its image tokens and labels — where the model expects it.

    Returns (input_ids, position_ids, mask)."""
    batch, length = input_ids.shape
    d = candidates.shape[1] // layout.slots
    padding = attention_mask.bool()
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
    main = causal[None] & padding[:, None, :]
    main |= torch.eye(length, dtype=torch.bool, device=input_ids.device)[None]  # no empty row on padding
    main = torch.cat([main, main.new_zeros(batch, length, candidates.shape[1])], dim=-1)
    mask = torch.cat([main, continuation_mask(layout, attention_mask, d)[:, 0]], dim=1)[:, None]
    positions = torch.cat(
        [
            torch.arange(length, device=input_ids.device).expand(batch, -1),
            layout.positions.repeat_interleave(d, dim=1),
        ],
        dim=1,
    )
    return torch.cat([input_ids, candidates], dim=1), positions, mask


def as_block_mask(mask: torch.Tensor) -> Any:
    """A dense bool mask [B, 1, Q, K] as a FlexAttention BlockMask, for models running
    `attn_implementation="flex_attention"` (GPUs): the kernel then skips the blocks nobody attends
    to (most of the ribbon's candidate-to-candidate blocks) instead of computing and masking them."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, _, queries, keys = mask.shape

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return mask[b, 0, q, kv]

    return create_block_mask(mask_mod, batch, None, queries, keys, device=mask.device)


def mask_for_attention(model: Any, mask: torch.Tensor) -> Any:
    """A dense bool mask [B, 1, Q, K] (True = may attend) in the form the model's attention takes.
    transformers hands a 4D mask to the kernel as it is. SDPA, and the kit's SDPA variants
    (distill/attention_capture.py, distill/float32_attention.py), read a bool mask; eager attention
    and FlexAttention add it to the scores, where a bool would add 1 to the allowed ones and mask
    nothing. So FlexAttention gets a BlockMask, eager attention an additive mask (0 or the dtype's
    minimum), any other kernel the bool mask. The ribbon and the candidates' continuation both go
    through here."""
    implementation = model.config.get_text_config()._attn_implementation
    if implementation == "flex_attention":
        return as_block_mask(mask)
    if implementation == "eager":
        dtype = getattr(model, "dtype", torch.float32)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(dtype).min
        )
    return mask
