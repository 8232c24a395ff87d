"""Batches of records of similar length (`train.group_by_length: true`), so a step pays for little padding.

    sampler = LengthGroupedSampler(dataset.lengths, batch_size=64, seed=0)
    sampler.set_epoch(epoch)            # the Trainer calls it; the order is a function of (seed, epoch)
    DataLoader(dataset, batch_size=64, sampler=sampler)

Each epoch the records are shuffled, cut into groups of `group` batches, each group sorted by length
and cut into batches, and the batches shuffled together: a step sees records of one length but no
longer a run of steps of one length, as transformers' own LengthGroupedSampler gives (it leaves each
group's batches longest first). A short last batch stays last, so it never shifts the batches after
it. The order depends only on (seed, epoch), so a resumed run skips exactly the batches it had drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> None:
        if batch_size < 1 or group < 1:
            raise ValueError(f"batch_size and group must be positive, got {batch_size} and {group}")
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.group * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            members = sorted(order[start : start + span], key=self.lengths.__getitem__, reverse=True)
            batches += [members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]  # at most one: the data's remainder
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return shuffled + short

    def __iter__(self) -> Iterator[int]:
        return iter([index for batch in self.batches() for index in batch])
