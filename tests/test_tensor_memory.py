"""serve/tensor_memory.py: the CPU counterpart of CUDA peak allocated counts the weights once (tied
storage shared), the most a call holds at once (not the sum of everything it allocates), and nothing
that was allocated before the call."""

import torch

from serve.tensor_memory import peak_allocated_during, peak_tensor_mib, running_peak, weight_bytes

MIB = 2**20


def test_running_peak_is_the_highest_total_in_time_order():
    assert running_peak([(3, -4), (1, 4), (2, 6), (4, 1)]) == 10
    assert running_peak([]) == 0


def test_weights_count_each_storage_once():
    model = torch.nn.Sequential(torch.nn.Embedding(256, 64), torch.nn.Linear(64, 256, bias=False))
    model[1].weight = model[0].weight  # tied, as a small LM's head is
    assert weight_bytes(model) == 256 * 64 * 4


def test_peak_is_what_the_call_holds_at_once():
    earlier = torch.zeros(8 * MIB // 4)  # allocated before: not the call's

    def call():
        first = torch.ones(4 * MIB // 4)
        del first
        second = torch.ones(2 * MIB // 4)
        third = torch.ones(MIB // 4)
        earlier.add_(1)
        return second.sum() + third.sum()

    peak = peak_allocated_during(call)
    assert 4 * MIB <= peak < 4.1 * MIB
    model = torch.nn.Linear(512, 512)
    assert abs(peak_tensor_mib(model, call) - (weight_bytes(model) + peak) / MIB) < 0.1
