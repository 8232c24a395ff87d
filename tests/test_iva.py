"""IVA (Align-TI): the term equals a naive reference computed from full logits and eager attention;
runs resolve l* from the teacher's irs.json, record it in the saved config, and refuse what cannot
work (no l*, unequal visual-token counts)."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from distill.configuration import ConfigError, read_yaml
from distill.data import PaddingCollator
from distill.irs import write_irs
from distill.losses import attention_weights
from distill.pairing import PairError
from distill.train import fit, setup
from tests.conftest import make_model
from tests.test_trainer import config


@pytest.fixture
def teacher_with_irs(tmp_path, teacher_dir):
    path = tmp_path / "teacher"
    shutil.copytree(teacher_dir, path)
    write_irs(path, {"scores": [0.1, 0.2], "best_layer": 1, "pairs": 2, "data": "-", "seed": 0})
    return path


def test_attention_weights_sum_to_one_and_fall_back_to_uniform():
    weights = attention_weights(torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]))


def naive_iva(student, teacher, batch, layer):
    """sum_k w_k KL(P_T||P_S) over visual positions, w from eager teacher attention, mean over images."""
    image_id = student.config.image_token_id
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    teacher.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            t_out = teacher(**inputs, output_attentions=True)
    finally:
        teacher.set_attn_implementation({"text_config": "sdpa"})
    s_logits = student(**inputs).logits
    total = 0.0
    for b in range(batch["input_ids"].shape[0]):
        visual = batch["input_ids"][b] == image_id
        instruction = batch["instruction_mask"][b]
        alpha = t_out.attentions[layer][b][:, instruction][:, :, visual].mean(dim=(0, 1))
        w = alpha / alpha.sum()
        kl = F.kl_div(
            F.log_softmax(s_logits[b][visual], -1),
            F.log_softmax(t_out.logits[b][visual], -1),
            reduction="none",
            log_target=True,
        ).sum(-1)
        total = total + (w * kl).sum()
    return total / batch["input_ids"].shape[0]


def test_iva_term_equals_the_naive_reference(tmp_path, shapes, teacher_with_irs):
    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(teacher_with_irs)},
        loss={"w_sft": 0.0, "w_iva": 1.0, "kl_chunk_size": 5},
    )
    s = setup(cfg)
    assert cfg.loss.iva_layer == 1  # read from irs.json
    batch = PaddingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(3)])
    student = s.trainer.model.eval()
    teacher = s.trainer.accelerator.unwrap_model(s.trainer.teacher)
    terms = s.trainer.loss_terms(student, batch)
    expected = naive_iva(student, teacher, batch, layer=1)
    torch.testing.assert_close(terms["iva"], expected, atol=1e-5, rtol=1e-4)
    terms["iva"].backward()  # gradients reach the student
    assert student.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("weights", ["teacher", "student", "uniform"])
def test_iva_runs_log_the_term_and_record_the_layers(tmp_path, shapes, teacher_with_irs, weights):
    cfg = config(
        shapes,
        tmp_path / weights,
        teacher={"path": str(teacher_with_irs)},
        loss={"w_kd": 1.0, "w_iva": 1.0, "iva_weights": weights},
        train={"max_steps": 2},
    )
    final = fit(setup(cfg))
    stored = read_yaml(final / "run_config.yaml")["loss"]
    assert stored["iva_layer"] == (None if weights == "uniform" else 1)
    assert stored["iva_student_layer"] == (1 if weights == "student" else None)  # same relative depth
    logs = json.loads((final / "train_summary.json").read_text())["log_history"]
    assert all(torch.isfinite(torch.tensor(e["loss_iva"])) for e in logs if "loss" in e)


def test_without_l_star_the_run_says_how_to_get_it(tmp_path, shapes, teacher_dir):
    cfg = config(shapes, tmp_path / "run", teacher={"path": str(teacher_dir)}, loss={"w_iva": 1.0})
    with pytest.raises(ConfigError, match="python -m distill irs --model"):
        setup(cfg)


def test_unequal_visual_token_counts_are_refused(tmp_path, shapes, tokenizer):
    from distill.modeling import save_llava

    teacher, processor = make_model(tokenizer, image_size=64)  # 16 visual tokens against the student's 4
    path = save_llava(teacher, processor, tmp_path / "big-image-teacher")
    cfg = config(
        shapes, tmp_path / "run", teacher={"path": str(path)}, loss={"w_iva": 1.0, "iva_weights": "uniform"}
    )
    with pytest.raises(PairError, match="same number of visual tokens"):
        setup(cfg)
