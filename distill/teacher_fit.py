"""How well the teacher knows the data it is about to be distilled on: `distill check --probe-teacher N`.

    python -m distill check configs/tiny-student-kd.yaml --probe-teacher 200
    python -m distill check --student S --teacher T --data train.json --probe-teacher 200

KD copies the teacher's next-token distributions at every reply position of the training data, so it
passes on what the teacher knows only where that data looks like what the teacher was trained on.
The probe runs the teacher over N examples spread evenly through the dataset, exactly as training
will batch them (same tokenization, images and truncation), and counts, for each reply by its place
in the conversation (first reply, second, ...), how often the teacher's argmax is right at every
one of the reply's tokens under teacher forcing: which is when its greedy decoding from the same
prefix would give the reply word for word. A teacher whose later replies score far under its first
has not seen conversations of this form. The tiny default's teacher, trained on single questions,
gets 87% of the training replies right asked one at a time; inside whole conversations, 82% of
the first replies and 38-58% of the second to sixth: hence the tiny students' `data.split_turns`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from distill.conversation import IGNORE_INDEX
from distill.data import LlavaDataset, PaddingCollator

# a later reply whose rate is under this share of the first reply's is reported (with at least
# MIN_REPLIES of each)
WARN_SHARE = 0.75
MIN_REPLIES = 20


@dataclass
class ReplyScores:
    """Replies right in full, and token accuracy, by the reply's place in its conversation (0 = first)."""

    replies: Counter[int] = field(default_factory=Counter)
    replies_right: Counter[int] = field(default_factory=Counter)
    tokens: Counter[int] = field(default_factory=Counter)
    tokens_right: Counter[int] = field(default_factory=Counter)

    def add(self, other: ReplyScores) -> None:
        for mine, theirs in zip(self.counters(), other.counters(), strict=True):
            mine.update(theirs)

    def counters(self) -> tuple[Counter[int], ...]:
        return self.replies, self.replies_right, self.tokens, self.tokens_right

    def rate(self, place: int) -> float:
        return self.replies_right[place] / self.replies[place]


def reply_runs(supervised: torch.Tensor) -> list[torch.Tensor]:
    """The positions of each run of consecutive supervised label positions (one reply each)."""
    positions = supervised.nonzero().flatten()
    if not len(positions):
        return []
    breaks = (positions[1:] != positions[:-1] + 1).nonzero().flatten() + 1
    return list(torch.tensor_split(positions, breaks.tolist()))


def score_replies(logits: torch.Tensor, labels: torch.Tensor) -> ReplyScores:
    """Teacher-forced scores of a batch: logits [B, S, V] predict labels [B, S] one position later."""
    return score_predictions(logits[:, :-1].argmax(-1), labels[:, 1:])


def score_predictions(predicted: torch.Tensor, targets: torch.Tensor) -> ReplyScores:
    """Scores of argmax tokens `predicted` [B, T] against `targets` [B, T] (IGNORE_INDEX off the replies)."""
    scores = ReplyScores()
    for row in range(targets.shape[0]):
        right = predicted[row] == targets[row]
        for place, positions in enumerate(reply_runs(targets[row] != IGNORE_INDEX)):
            hits = int(right[positions].sum())
            scores.replies[place] += 1
            scores.replies_right[place] += hits == len(positions)
            scores.tokens[place] += len(positions)
            scores.tokens_right[place] += hits
    return scores


def spread_indices(total: int, wanted: int) -> list[int]:
    """`wanted` indices spread evenly over range(total) (all of them when wanted >= total)."""
    if wanted >= total:
        return list(range(total))
    return [i * total // wanted for i in range(wanted)]


@torch.inference_mode()
def probe_teacher(
    teacher: Any, dataset: LlavaDataset, pad_token_id: int, examples: int, batch_size: int = 16
) -> ReplyScores:
    """Score `teacher` on `examples` of `dataset`'s examples (its teacher_ tensors where it has them)."""
    collate = PaddingCollator(pad_token_id)
    indices = spread_indices(len(dataset), examples)
    scores = ReplyScores()
    for start in tqdm(range(0, len(indices), batch_size), desc="probe the teacher", leave=False):
        batch = collate([dataset[i] for i in indices[start : start + batch_size]])
        scores.add(score_predictions(*predict_replies(teacher, batch)))
    return scores


@torch.inference_mode()
def predict_replies(teacher: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax tokens, targets), both [B, S - 1]: the teacher's prediction of each next token where some
    row's next token is a reply token (-1 elsewhere), and the labels one position on."""
    prefix = "teacher_" if "teacher_input_ids" in batch else ""
    device = next(teacher.parameters()).device
    inputs = {
        name: batch[prefix + name].to(device)
        for name in ("input_ids", "attention_mask", "pixel_values")
        if prefix + name in batch
    }
    targets = batch[prefix + "labels"][:, 1:]
    # the LM head only where it is needed: a 7B teacher's logits at every position would take gigabytes
    keep = (targets != IGNORE_INDEX).any(0).nonzero().flatten()
    logits = teacher(**inputs, logits_to_keep=keep.to(device)).logits
    predicted = torch.full_like(targets, -1)
    predicted[:, keep] = logits.argmax(-1).cpu()
    return predicted, targets


def report(scores: ReplyScores, examples: int) -> list[str]:
    """The per-reply lines, and a warning line where a later reply falls far under the first."""
    places = sorted(scores.replies)
    lines = [
        f"teacher fit ({examples} examples, teacher forcing): replies right in full (tokens right), "
        "by their place in the conversation:"
    ]
    lines += [
        f"  reply {place + 1}: {100 * scores.rate(place):.1f}% ({100 * scores.tokens_right[place] / scores.tokens[place]:.1f}%)"
        f" of {scores.replies[place]}"
        for place in places
    ]
    weak = [
        place
        for place in places[1:]
        if scores.replies[place] >= MIN_REPLIES
        and scores.replies[0] >= MIN_REPLIES
        and scores.rate(place) < WARN_SHARE * scores.rate(0)
    ]
    if weak:
        worst = min(weak, key=scores.rate)
        lines.append(
            f"warning: the teacher gets reply {worst + 1} right {100 * scores.rate(worst):.1f}% of the time against "
            f"{100 * scores.rate(0):.1f}% for the first: it has not learnt conversations of this form, and KD would "
            "pass on its guesses there. Distill on data shaped like its own training data (data.split_turns=true "
            "if it was trained on single questions)"
        )
    return lines
