"""EM-KD: Hungarian matching finds the least-cost pairing (and recovers a hidden permutation), the
affinity loss vanishes on identical inputs, and the trainer's VSD and VLAD on a student with 4
visual tokens against a teacher with 16 equal a naive reference from full logits."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from distill.data import PaddingCollator
from distill.emkd import affinity, affinity_loss, match_visual_tokens
from distill.modeling import save_llava
from distill.train import fit, setup
from tests.conftest import make_model
from tests.test_trainer import config


def test_matching_recovers_a_hidden_permutation_among_extra_teacher_tokens():
    torch.manual_seed(0)
    student = torch.softmax(torch.randn(4, 50) * 3, -1)
    extra = torch.softmax(torch.randn(6, 50) * 3, -1)
    order = torch.tensor([7, 2, 9, 0])  # where each student token sits among the teacher's 10
    teacher = torch.empty(10, 50)
    rest = [i for i in range(10) if i not in order.tolist()]
    teacher[order], teacher[rest] = student, extra
    match = match_visual_tokens(student, teacher)
    assert match.student.tolist() == [0, 1, 2, 3] and match.teacher.tolist() == order.tolist()


def test_matching_has_the_least_total_l1_cost():
    torch.manual_seed(1)
    student, teacher = torch.rand(3, 8), torch.rand(5, 8)
    match = match_visual_tokens(student, teacher, chunk=2)
    cost = torch.cdist(student, teacher, p=1)
    best = min(sum(cost[i, j] for i, j in enumerate(cols)) for cols in itertools.permutations(range(5), 3))
    torch.testing.assert_close(cost[match.student, match.teacher].sum(), best)


def test_affinity_loss_is_zero_for_identical_views_and_checks_text_lengths():
    text, visual = torch.randn(5, 8), torch.randn(3, 8)
    assert affinity_loss(text, visual, text * 2.0, visual).item() == pytest.approx(0.0, abs=1e-7)  # cosine
    with pytest.raises(ValueError, match="same text tokens"):
        affinity_loss(text, visual, text[:4], visual)


def naive_emkd(student, teacher, batch):
    """VSD and VLAD from full logits, matched per image with scipy on full probabilities."""
    image_id = student.config.image_token_id
    s_out = student(
        **{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}, output_hidden_states=True
    )
    with torch.no_grad():
        t_out = teacher(
            input_ids=batch["teacher_input_ids"],
            attention_mask=batch["teacher_attention_mask"],
            pixel_values=batch["teacher_pixel_values"],
            output_hidden_states=True,
        )
    vsd, vlad = [], []
    for b in range(batch["input_ids"].shape[0]):
        s_vis, t_vis = batch["input_ids"][b] == image_id, batch["teacher_input_ids"][b] == image_id
        if not s_vis.any():
            continue
        s_logits, t_logits = s_out.logits[b][s_vis], t_out.logits[b][t_vis]
        match = match_visual_tokens(torch.softmax(s_logits, -1), torch.softmax(t_logits, -1))
        s_log = F.log_softmax(s_logits[match.student], -1)
        t_log = F.log_softmax(t_logits[match.teacher], -1)
        vsd.append((s_log.exp() * (s_log - t_log)).sum(-1).mean())  # reverse KL
        s_text = batch["attention_mask"][b].bool() & ~s_vis
        t_text = batch["teacher_attention_mask"][b].bool() & ~t_vis
        s_h, t_h = s_out.hidden_states[-1][b], t_out.hidden_states[-1][b]
        a_s = affinity(s_h[s_text], s_h[s_vis][match.student])
        a_t = affinity(t_h[t_text], t_h[t_vis][match.teacher])
        vlad.append(F.smooth_l1_loss(a_s, a_t))
    return torch.stack(vsd).mean(), torch.stack(vlad).mean()


@pytest.fixture(scope="module")
def big_image_teacher(tmp_path_factory, tokenizer):
    teacher, processor = make_model(tokenizer, seed=5, image_size=64, hidden_size=48)  # 16 visual tokens
    return save_llava(teacher, processor, tmp_path_factory.mktemp("models") / "big-image-teacher")


def test_vsd_and_vlad_equal_the_naive_reference(tmp_path, shapes, big_image_teacher):
    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(big_image_teacher)},
        loss={"w_sft": 0.0, "w_vsd": 1.0, "w_vlad": 1.0, "kl_chunk_size": 3},
    )
    s = setup(cfg)
    batch = PaddingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(3)])
    student = s.trainer.model.eval()
    teacher = s.trainer.accelerator.unwrap_model(s.trainer.teacher)
    terms = s.trainer.loss_terms(student, batch)
    vsd, vlad = naive_emkd(student, teacher, batch)
    torch.testing.assert_close(terms["vsd"], vsd, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["vlad"], vlad, atol=1e-5, rtol=1e-4)
    (terms["vsd"] + terms["vlad"]).backward()
    assert student.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_an_emkd_run_trains_across_unequal_visual_tokens(tmp_path, shapes, big_image_teacher):
    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(big_image_teacher)},
        loss={"w_kd": 1.0, "w_vsd": 1.0, "w_vlad": 1.0},
        train={"max_steps": 2},
    )
    final = fit(setup(cfg))
    logs = [e for e in json.loads((final / "train_summary.json").read_text())["log_history"] if "loss" in e]
    assert logs and all(e["loss_vsd"] > 0 and e["loss_vlad"] > 0 and e["loss_kd"] > 0 for e in logs)
