"""Divergences and the chunked (logits-from-hidden-states) forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    DIVERGENCES,
    chunked_cross_entropy,
    chunked_divergence,
    normalized_sum,
    per_position_divergence,
)


def _logits(n=7, v=11, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * scale


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_of_a_distribution_with_itself_is_zero(name):
    logits = _logits()
    assert torch.allclose(per_position_divergence(name, logits, logits.clone()), torch.zeros(7), atol=1e-6)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergences_are_positive_for_different_distributions(name):
    assert (per_position_divergence(name, _logits(seed=1), _logits(seed=2)) > 0).all()


def test_forward_kl_matches_the_definition():
    t, s = _logits(seed=1), _logits(seed=2)
    p, q = t.softmax(-1), s.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(per_position_divergence("forward_kl", t, s), expected, atol=1e-5)
    assert torch.allclose(
        per_position_divergence("reverse_kl", t, s), (q * (q.log() - p.log())).sum(-1), atol=1e-5
    )
    assert torch.allclose(per_position_divergence("tvd", t, s), 0.5 * (p - q).abs().sum(-1), atol=1e-6)


@pytest.mark.parametrize(
    "name, beta",
    [
        ("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9), ("jsd", 1.0),
        ("skew_forward_kl", 0.1), ("skew_forward_kl", 0.9), ("skew_forward_kl", 0.0),
        ("skew_reverse_kl", 0.1), ("skew_reverse_kl", 0.9), ("skew_reverse_kl", 0.0), ("tvd", 0.5),
    ],
)  # fmt: skip
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_closed_form_divergences_equal_autograds_chain(name, beta, temperature, dtype):
    """The closed forms' values and gradients (forward and reverse KL, the generalized JSD with beta,
    the skew KLs with alpha, TVD) against the log_softmax + kl_div chain through autograd, under a
    non-uniform upstream gradient, for float32 and bfloat16 student logits."""
    teacher = _logits(n=9, v=40, seed=3).to(dtype)
    student = _logits(n=9, v=40, seed=4).to(dtype)
    upstream = torch.linspace(0.5, 2.0, 9)
    values, grads = [], []
    for closed_form in (True, False):
        s = student.clone().requires_grad_()
        kl = per_position_divergence(name, teacher, s, temperature, beta, beta, closed_form=closed_form)
        assert ("LogitsDivergence" in type(kl.grad_fn).__name__) == closed_form
        (kl * upstream).sum().backward()
        values.append(kl.detach())
        grads.append(s.grad.float())
    assert values[0].dtype == torch.float32
    assert torch.allclose(values[0], values[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6 if dtype == torch.float32 else 1e-2)
    assert grads[0].abs().max() > 1e-3  # a gradient that can be wrong


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_divergences_keep_autograd_when_the_teacher_needs_a_gradient(name):
    teacher = _logits(seed=5).requires_grad_()
    per_position_divergence(name, teacher, _logits(seed=6)).sum().backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def test_jsd_limits_and_symmetry():
    t, s = _logits(seed=1), _logits(seed=2)
    fkl = per_position_divergence("forward_kl", t, s)
    rkl = per_position_divergence("reverse_kl", t, s)
    assert torch.allclose(per_position_divergence("jsd", t, s, jsd_beta=0.0), fkl)
    assert torch.allclose(per_position_divergence("jsd", t, s, jsd_beta=1.0), rkl)
    half = per_position_divergence("jsd", t, s, jsd_beta=0.5)
    assert torch.allclose(half, per_position_divergence("jsd", s, t, jsd_beta=0.5), atol=1e-6)
    assert (half <= math.log(2) + 1e-6).all()  # JSD is bounded by log 2


def test_temperature_softens_both_distributions():
    t, s = _logits(seed=1), _logits(seed=2)
    hot = per_position_divergence("forward_kl", t, s, temperature=4.0)
    assert torch.allclose(hot, per_position_divergence("forward_kl", t / 4, s / 4), atol=1e-6)
    assert hot.mean() < per_position_divergence("forward_kl", t, s).mean()


def test_normalized_sum_guards_an_empty_batch():
    assert normalized_sum(torch.zeros(0), 0).item() == 0.0
    assert normalized_sum(torch.tensor([1.0, 3.0]), 4).item() == 1.0
    assert normalized_sum(torch.tensor([1.0, 3.0])).item() == 2.0


def _heads(hs=16, ht=24, v=50, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(hs, v, bias=False), torch.nn.Linear(ht, v, bias=False)


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_chunked_divergence_equals_naive_with_gradients(name, chunk_size):
    student_head, teacher_head = _heads()
    hidden = torch.randn(10, 16, requires_grad=True)
    teacher_hidden = torch.randn(10, 24)

    naive = per_position_divergence(name, teacher_head(teacher_hidden).detach(), student_head(hidden))
    (naive * torch.arange(1.0, 11.0)).sum().backward()  # a non-uniform upstream gradient
    grads = hidden.grad.clone(), student_head.weight.grad.clone()
    hidden.grad, student_head.weight.grad = None, None

    chunked = chunked_divergence(hidden, teacher_hidden, student_head, teacher_head, name, chunk_size)
    teacher_head.weight.grad = None
    (chunked * torch.arange(1.0, 11.0)).sum().backward()

    assert torch.allclose(chunked, naive, atol=1e-6)
    assert torch.allclose(hidden.grad, grads[0], atol=1e-6)
    assert torch.allclose(student_head.weight.grad, grads[1], atol=1e-6)
    assert teacher_head.weight.grad is None  # the teacher is never trained


def test_chunked_divergence_truncates_to_the_shared_vocabulary():
    student_head, _ = _heads(v=50)
    teacher_head = torch.nn.Linear(24, 64, bias=False)  # a teacher with a padded LM head
    hidden, teacher_hidden = torch.randn(5, 16), torch.randn(5, 24)
    got = chunked_divergence(hidden, teacher_hidden, student_head, teacher_head, chunk_size=2, vocab_size=40)
    want = per_position_divergence(
        "forward_kl", teacher_head(teacher_hidden)[:, :40], student_head(hidden)[:, :40]
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_chunked_divergence_refuses_misaligned_positions():
    student_head, teacher_head = _heads()
    with pytest.raises(ValueError, match="supervised positions"):
        chunked_divergence(torch.randn(5, 16), torch.randn(4, 24), student_head, teacher_head)


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_chunked_cross_entropy_equals_torch(chunk_size):
    head = torch.nn.Linear(16, 30)
    hidden = torch.randn(9, 16, requires_grad=True)
    targets = torch.randint(0, 30, (9,))
    got = chunked_cross_entropy(hidden, head, targets, chunk_size)
    got.sum().backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    want = F.cross_entropy(head(hidden), targets, reduction="none")
    want.sum().backward()
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(grad, hidden.grad, atol=1e-6)


@pytest.mark.parametrize(
    "name, beta",
    [
        ("forward_kl", 0.5),
        ("reverse_kl", 0.5),
        ("jsd", 0.3),
        ("skew_forward_kl", 0.2),
        ("skew_reverse_kl", 0.2),
        ("tvd", 0.5),
    ],
)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_head_divergence_equals_checkpointed_chunks(name, beta, temperature):
    """closed_form.HeadDivergence (one pass per chunk, one head-gradient buffer) against
    torch.utils.checkpoint over each chunk: values, hidden-state and head gradients, with the heads
    padded beyond the shared vocabulary and uneven chunks."""
    student_head, teacher_head = _heads(v=53)
    teacher_head.requires_grad_(False)
    hidden = torch.randn(11, 16, requires_grad=True)
    teacher_hidden = torch.randn(11, 24)
    upstream = torch.linspace(0.5, 2.0, 11)
    results = []
    for head_function in (True, False):
        hidden.grad = student_head.weight.grad = None
        per_position = chunked_divergence(
            hidden, teacher_hidden, student_head, teacher_head, name, 4, vocab_size=50,
            temperature=temperature, jsd_beta=beta, skew_alpha=beta, head_function=head_function,
        )  # fmt: skip
        assert ("HeadDivergence" in per_position.grad_fn.name()) == head_function
        (per_position * upstream).sum().backward()
        results.append((per_position.detach(), hidden.grad.clone(), student_head.weight.grad.clone()))
    for fused, checkpointed in zip(*results):
        assert torch.allclose(fused, checkpointed, atol=1e-6)
    assert torch.equal(results[0][2][50:], torch.zeros(3, 16))  # rows past the vocabulary get nothing
    assert results[0][2].abs().max() > 1e-3


@pytest.mark.parametrize(
    "name", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"]
)
def test_head_divergence_in_bf16_is_as_close_to_float64_as_checkpointed_chunks(name):
    """bf16 heads and hidden states (DeepSpeed's bf16 on a GPU, where the head Function runs): the
    head-gradient buffer accumulates in bf16 across chunks, as autograd's per-chunk gradients do."""
    student_head, teacher_head = (head.bfloat16() for head in _heads(hs=64, ht=96, v=503))
    teacher_head.requires_grad_(False)
    hidden = torch.randn(70, 64, dtype=torch.bfloat16, requires_grad=True)
    teacher_hidden = torch.randn(70, 96, dtype=torch.bfloat16)
    exact_hidden = hidden.detach().double().requires_grad_()
    exact_weight = student_head.weight.detach().double().requires_grad_()
    exact = per_position_divergence(
        name,
        F.linear(teacher_hidden.double(), teacher_head.weight.double()),
        F.linear(exact_hidden, exact_weight),
    )
    exact.sum().backward()

    def error(value: torch.Tensor, reference: torch.Tensor) -> float:
        return float((value.double() - reference).norm() / reference.norm())

    for head_function in (True, False):
        hidden.grad = student_head.weight.grad = None
        value = chunked_divergence(
            hidden, teacher_hidden, student_head, teacher_head, name, 16, head_function=head_function
        )
        assert ("HeadDivergence" in value.grad_fn.name()) == head_function
        value.sum().backward()
        assert error(value.detach(), exact.detach()) < 1e-3
        # TVD's gradient steps with sign(Q - P_T), which bf16 rounding flips where the two are close:
        # 3-5% off float64 here, the checkpointed chunks as much as the head Function
        tolerance = 1e-1 if name == "tvd" else 1e-2
        assert error(hidden.grad, exact_hidden.grad) < tolerance
        assert error(student_head.weight.grad, exact_weight.grad) < tolerance


def test_head_divergence_leaves_a_frozen_head_without_gradient():
    student_head, teacher_head = _heads()
    student_head.requires_grad_(False)
    hidden = torch.randn(6, 16, requires_grad=True)
    chunked_divergence(
        hidden, torch.randn(6, 24), student_head, teacher_head, "forward_kl", 4
    ).sum().backward()
    assert hidden.grad is not None and student_head.weight.grad is None


def test_heads_that_are_not_plain_weights_go_through_checkpointing():
    """A head with a bias or a forward hook (DeepSpeed ZeRO-3 and accelerate gather weights in hooks),
    or a pass under autocast, keeps the checkpointed chunks."""
    student_head, teacher_head = _heads()
    hidden, teacher_hidden = torch.randn(6, 16, requires_grad=True), torch.randn(6, 24)

    def via(s_head, t_head):
        return chunked_divergence(hidden, teacher_hidden, s_head, t_head, "forward_kl", 4).grad_fn.name()

    assert "HeadDivergence" in via(student_head, teacher_head)
    with_bias = torch.nn.Linear(16, 50)
    assert "HeadDivergence" not in via(with_bias, teacher_head)
    hooked = torch.nn.Linear(24, 50, bias=False)
    hooked.register_forward_pre_hook(lambda module, args: None)
    assert "HeadDivergence" not in via(student_head, hooked)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "HeadDivergence" not in via(student_head, teacher_head)
