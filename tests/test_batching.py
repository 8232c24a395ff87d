"""Length-grouped batches: every record once, batches of similar length, the order a function of
(seed, epoch) only."""

import random

import pytest

from distill.batching import LengthGroupedSampler


def spread(lengths, batch):
    return max(lengths[i] for i in batch) - min(lengths[i] for i in batch)


def test_every_record_once_in_batches_of_similar_length_with_the_short_batch_last():
    lengths = [random.Random(i).randint(20, 120) for i in range(1000)]
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=0, group=10)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000)) and len(sampler) == 1000
    assert [len(b) for b in batches] == [16] * 62 + [8]
    assert list(sampler) == [i for b in batches for i in b]
    grouped = sum(spread(lengths, b) for b in batches[:-1]) / 62
    shuffled = list(range(1000))
    random.Random(0).shuffle(shuffled)
    at_random = sum(spread(lengths, shuffled[k : k + 16]) for k in range(0, 992, 16)) / 62
    assert grouped < at_random / 5


def test_the_batches_are_shuffled_not_a_run_from_long_to_short():
    lengths = list(range(640))
    batches = LengthGroupedSampler(lengths, batch_size=16, seed=0, group=40).batches()  # one group
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)


def test_the_order_depends_on_seed_and_epoch_only():
    lengths = [random.Random(i).randint(20, 120) for i in range(300)]
    first = LengthGroupedSampler(lengths, 8, seed=1)
    again = LengthGroupedSampler(lengths, 8, seed=1)
    assert list(first) == list(again)  # a resumed run redraws the same batches
    again.set_epoch(1)
    assert list(first) != list(again)
    assert list(first) != list(LengthGroupedSampler(lengths, 8, seed=2))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size and group must be positive"):
        LengthGroupedSampler([3, 4], batch_size=0, seed=0)
