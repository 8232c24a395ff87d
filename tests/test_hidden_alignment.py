"""LLaVADI's hidden-state alignment: layers pair by relative depth, the trainer's term equals a
naive MSE through the learned map, the map trains with the student, stays out of the saved model
and survives a resume; one-to-one visual alignment across unequal token counts is refused."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from distill.data import PaddingCollator
from distill.hidden_alignment import PROJECTION_ATTRIBUTE, layer_pairs
from distill.pairing import PairError
from distill.train import fit, run_training, setup
from tests.conftest import make_model
from tests.test_trainer import config


def test_layers_pair_by_relative_depth():
    assert layer_pairs([-1, 0, 1], student_layers=2, teacher_layers=4) == [(2, 4), (0, 0), (1, 2)]
    assert layer_pairs([1], student_layers=3, teacher_layers=4) == [(1, 1)]  # round(4/3)
    with pytest.raises(ValueError, match="outside the student's hidden states 0..2"):
        layer_pairs([3], student_layers=2, teacher_layers=4)


def naive_hidden(student, teacher, batch, pairs, projection):
    """MSE over response-predicting and visual positions, per layer, then averaged over layers."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    s_out = student(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=True)
    predicting = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    predicting[:, :-1] = batch["labels"][:, 1:] != -100
    visual = batch["input_ids"] == student.config.image_token_id
    per_layer = []
    for i, (s, t) in enumerate(pairs):
        s_sel = torch.cat([s_out.hidden_states[s][predicting], s_out.hidden_states[s][visual]])
        t_sel = torch.cat([t_out.hidden_states[t][predicting], t_out.hidden_states[t][visual]])
        per_layer.append(F.mse_loss(projection.maps[i](s_sel), t_sel, reduction="none").mean(-1))
    return torch.stack(per_layer).mean(0).mean()


def test_hidden_term_equals_the_naive_reference(tmp_path, shapes, teacher_dir):
    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(teacher_dir)},
        loss={"w_sft": 0.0, "w_hidden": 1.0, "hidden_layers": [1, -1], "hidden_tokens": "both"},
    )
    s = setup(cfg)
    batch = PaddingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(3)])
    student = s.trainer.model.eval()
    teacher = s.trainer.accelerator.unwrap_model(s.trainer.teacher)
    projection = getattr(student, PROJECTION_ATTRIBUTE)
    assert len(projection.maps) == 2  # student width 32, teacher 48: one learned map per layer
    terms = s.trainer.loss_terms(student, batch)
    expected = naive_hidden(student, teacher, batch, [(1, 1), (2, 2)], projection)
    torch.testing.assert_close(terms["hidden"], expected, atol=1e-5, rtol=1e-4)
    terms["hidden"].backward()
    assert projection.maps[0].weight.grad.abs().sum() > 0  # the map learns
    assert student.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_the_map_is_checkpointed_but_not_part_of_the_model(tmp_path, shapes, teacher_dir):
    sections = dict(teacher={"path": str(teacher_dir)}, loss={"w_kd": 1.0, "w_hidden": 1.0})
    first = fit(setup(config(shapes, tmp_path / "run", train={"max_steps": 2, "save_steps": 1}, **sections)))
    weights = load_file(first / "model.safetensors")
    assert not any(PROJECTION_ATTRIBUTE in key for key in weights)  # a plain LLaVA checkpoint
    saved_map = load_file(tmp_path / "run" / "checkpoint-2" / "hidden_projection.safetensors")
    assert set(saved_map) == {"maps.0.weight", "maps.0.bias"}
    # resuming restores the map along with the model, and training continues
    final = run_training(config(shapes, tmp_path / "run", train={"max_steps": 3}, **sections), resume=True)
    logs = [e for e in json.loads((final / "train_summary.json").read_text())["log_history"] if "loss" in e]
    assert logs[-1]["step"] == 3 and logs[-1]["loss_hidden"] > 0


def test_visual_alignment_needs_equal_visual_token_counts(tmp_path, shapes, tokenizer):
    from distill.modeling import save_llava

    teacher, processor = make_model(tokenizer, image_size=64)
    path = save_llava(teacher, processor, tmp_path / "big-image-teacher")
    cfg = config(shapes, tmp_path / "run", teacher={"path": str(path)}, loss={"w_hidden": 1.0})
    with pytest.raises(PairError, match="hidden_tokens=response"):
        setup(cfg)
