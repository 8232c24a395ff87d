"""data.pack (distill/packing.py): rows packed first fit within the longest example; a packed batch gives
the padded batch's SFT and KD losses and gradients (position ids restart per example, no example sees
another); runs with it train, and the terms that need one example per row refuse it."""

import pytest
import torch

from distill.configuration import ConfigError
from distill.data import PaddingCollator
from distill.packing import PackingCollator, pack_rows
from distill.train import fit, setup
from tests.test_trainer import config


def test_rows_are_filled_first_fit_by_decreasing_length():
    lengths = [5, 9, 3, 4, 2, 7]
    rows = pack_rows(lengths, max(lengths))
    assert rows == [[1], [4, 5], [0, 3], [2]]  # 9; 7 + 2; 5 + 4; 3
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 9 for row in rows) and len(rows) == 4
    with pytest.raises(ValueError, match="example 0 has 5 tokens, more than a row's 4"):
        pack_rows([5], 4)


def loss_and_gradients(trainer, model, batch):
    model.zero_grad()
    terms = trainer.loss_terms(model, batch)
    total = sum(terms.values())
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("with_teacher", [False, True])
def test_a_packed_batch_gives_the_padded_batchs_loss_and_gradients(
    tmp_path, shapes, teacher_dir, with_teacher, implementation
):
    extra = (
        {"teacher": {"path": str(teacher_dir)}, "loss": {"w_kd": 1.0, "kl_chunk_size": 7}}
        if with_teacher
        else {}
    )
    s = setup(
        config(
            shapes,
            tmp_path / "run",
            data={"split_turns": True},
            model={"attn_implementation": implementation},
            **extra,
        )
    )
    by_length = sorted(range(len(s.dataset)), key=lambda i: s.dataset.lengths[i])
    items = [s.dataset[i] for i in by_length[:8] + by_length[-4:]]  # short questions beside long descriptions
    pad = s.processor.tokenizer.pad_token_id
    padded, packed = PaddingCollator(pad)(items), PackingCollator(pad)(items)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows
    assert packed["input_ids"].shape[1] <= 2 * padded["input_ids"].shape[1]  # at most twice the longest
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()  # the same real tokens
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum()
    model = s.trainer.model.train()
    model.config.get_text_config().dropout = 0.0
    expected_terms, expected_grads = loss_and_gradients(s.trainer, model, padded)
    terms, grads = loss_and_gradients(s.trainer, model, packed)
    assert set(terms) == ({"sft", "kd"} if with_teacher else {"sft"})
    for name in terms:
        torch.testing.assert_close(terms[name], expected_terms[name], atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4)


def test_a_packed_run_trains_and_layout_terms_refuse_packing(tmp_path, shapes, teacher_dir):
    cfg = config(
        shapes,
        tmp_path / "run",
        data={"pack": True, "split_turns": True},
        train={"max_steps": 3, "save_steps": 100},
    )
    fit(setup(cfg))
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="data.pack packs several examples into a row, which loss.w_tpa"):
        config(
            shapes,
            tmp_path / "bad",
            data={"pack": True},
            teacher={"path": str(teacher_dir)},
            loss={"w_tpa": 1.0},
        )
