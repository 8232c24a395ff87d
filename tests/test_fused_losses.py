"""distill/fused_losses.py: liger-kernel's fused SFT and KD losses equal the chunked forms of
distill/losses.py, gradients included, alone and inside the trainer's whole Align-TI objective;
without a GPU or liger-kernel, clear errors.

The equality tests need liger-kernel and a CUDA GPU, or Triton's interpreter on the CPU:
    TRITON_INTERPRET=1 python -m pytest tests/test_fused_losses.py      # with liger-kernel + triton installed
"""

import os

import pytest
import torch

from distill.configuration import ConfigError, from_dict
from distill.fused_losses import (
    fused_cross_entropy_sum,
    fused_divergence_sum,
    head_weight,
    require_fused_kernel,
)
from distill.losses import chunked_cross_entropy, chunked_divergence
from distill.run_config import LossConfig


def test_the_fused_kernel_needs_a_gpu_and_a_divergence_it_covers():
    with pytest.raises(ConfigError, match="need a CUDA GPU"):
        require_fused_kernel(torch.device("cpu"))
    with pytest.raises(ConfigError, match="not skew_forward_kl"):
        from_dict(LossConfig, {"w_kd": 1.0, "divergence": "skew_forward_kl", "fused_kernel": True})
    from_dict(LossConfig, {"w_kd": 1.0, "divergence": "jsd", "fused_kernel": True})


def test_a_partitioned_or_biased_head_is_refused():
    with pytest.raises(ConfigError, match="ZeRO-3"):
        head_weight(torch.nn.Linear(0, 0, bias=False), None)
    with pytest.raises(ConfigError, match="bias"):
        head_weight(torch.nn.Linear(4, 6, bias=True), None)
    assert head_weight(torch.nn.Linear(4, 6, bias=False), 5).shape == (5, 4)


@pytest.fixture
def device():
    """Where liger's Triton kernels can run here: a CUDA GPU, or the CPU under Triton's interpreter."""
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install -e '.[gpu]')")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("needs a CUDA GPU, or TRITON_INTERPRET=1 to run the kernels in Triton's interpreter")


def heads(device, student_width=16, teacher_width=24, vocabulary=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.nn.Linear(student_width, vocabulary, bias=False).to(device)
    teacher = torch.nn.Linear(teacher_width, vocabulary, bias=False).to(device)
    with torch.no_grad():
        for head in (student, teacher):
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator))  # logits of std 4-5
    hidden_s = torch.randn(37, student_width, generator=generator).to(device).requires_grad_()
    hidden_t = torch.randn(37, teacher_width, generator=generator).to(device)
    return student, teacher, hidden_s, hidden_t


def gradients(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("name, temperature", [("forward_kl", 1.0), ("reverse_kl", 2.0), ("jsd", 1.0)])
def test_fused_divergence_equals_the_chunked_one_with_gradients(device, name, temperature):
    student, teacher, hidden_s, hidden_t = heads(device)
    arguments = dict(name=name, vocab_size=290, temperature=temperature, jsd_beta=0.3)
    fused = fused_divergence_sum(hidden_s, hidden_t, student, teacher, **arguments)
    chunked = chunked_divergence(hidden_s, hidden_t, student, teacher, chunk_size=8, **arguments).sum()
    assert fused.item() == pytest.approx(chunked.item(), rel=1e-4)
    for got, want in zip(
        gradients(fused, hidden_s, student.weight), gradients(chunked, hidden_s, student.weight)
    ):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-3)


def test_fused_cross_entropy_equals_the_chunked_one_with_gradients(device):
    student, _, hidden_s, _ = heads(device)
    targets = torch.randint(0, 290, (37,), generator=torch.Generator().manual_seed(1)).to(device)
    fused = fused_cross_entropy_sum(hidden_s, student, targets, 290)
    chunked = chunked_cross_entropy(hidden_s, student, targets, 8, 290).sum()
    assert fused.item() == pytest.approx(chunked.item(), rel=1e-4)
    for got, want in zip(
        gradients(fused, hidden_s, student.weight), gradients(chunked, hidden_s, student.weight)
    ):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_the_align_ti_objective_gives_the_same_terms_and_gradients_with_the_fused_kernels(
    device, tmp_path, shapes, teacher_dir, divergence
):
    """The trainer's whole objective (SFT + KD + IVA + TPA) with loss.fused_kernel against the
    chunked losses, on one batch: the same terms and gradients, the TPA candidates drawn alike."""
    from tests.test_packing import loss_and_gradients
    from tests.test_trainer import align_ti_on_one_batch

    trainer, model, batch = align_ti_on_one_batch(
        tmp_path, shapes, teacher_dir, device, divergence=divergence, kl_chunk_size=7
    )
    results = []
    for fused in (False, True):
        trainer.loss_config.fused_kernel = fused
        torch.manual_seed(0)  # the same TPA candidates
        results.append(loss_and_gradients(trainer, model, batch))
    (chunked_terms, chunked_grads), (fused_terms, fused_grads) = results
    assert set(fused_terms) == {"sft", "kd", "iva", "tpa"}
    for name in chunked_terms:
        assert fused_terms[name].item() == pytest.approx(chunked_terms[name].item(), rel=1e-4), name
    assert fused_grads.keys() == chunked_grads.keys()
    for name in chunked_grads:
        torch.testing.assert_close(fused_grads[name], chunked_grads[name], atol=1e-5, rtol=1e-3)
