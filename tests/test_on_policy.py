"""GKD's on-policy batches: the last response is found, cut and replaced by the student's own
sample (left-padded batched sampling gives what one prompt at a time gives), the teacher's view
gets the same tokens, and a GKD run logs how many of its batches were on-policy."""

import json

import torch

from distill.data import PaddingCollator
from distill.on_policy import completions, last_response_start, on_policy_batch, splice
from tests.test_trainer import config

X = -100


def test_last_response_start_finds_the_final_run_of_supervised_tokens():
    labels = torch.tensor(
        [
            [X, X, 5, 6, X, X, 7, 8, 9, X],  # two turns: the second answer starts at 6
            [X, X, X, 4, 4, X, X, X, X, X],  # one turn, then padding
        ]
    )
    assert last_response_start(labels).tolist() == [6, 3]


def test_completions_stop_after_the_first_end_of_turn_token():
    generated = torch.tensor([[3, 4, 9, 0, 0], [5, 5, 5, 5, 5]])
    rows = completions(generated, eos_token_ids=[9])
    assert [r.tolist() for r in rows] == [[3, 4, 9], [5, 5, 5, 5, 5]]


def test_splice_replaces_the_tail_and_supervises_the_new_tokens_only():
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 4, 5, 0], [1, 2, 3, 4, 5, 6]]),
        "labels": torch.tensor([[X, 2, X, 4, 5, X], [X, X, X, X, 5, 6]]),
        "instruction_mask": torch.tensor([[0, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
    }
    starts = last_response_start(batch["labels"])
    out = splice(batch, "", starts, [torch.tensor([7]), torch.tensor([8, 9, 9])], pad_token_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 7, 0, 0, 0], [1, 2, 3, 4, 8, 9, 9]]
    assert out["labels"].tolist() == [[X, 2, X, 7, X, X, X], [X, X, X, X, 8, 9, 9]]  # turn 1's label kept
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert out["instruction_mask"][1].tolist() == [False, True, True, False, False, False, False]


def _batch(shapes, tmp_path, teacher_dir, n=3, **loss):
    from distill.train import setup

    cfg = config(shapes, tmp_path / "run", teacher={"path": str(teacher_dir)}, loss={"w_kd": 1.0, **loss})
    s = setup(cfg)
    batch = PaddingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(n)])
    return s, batch


def test_batched_sampling_matches_one_prompt_at_a_time(tmp_path, shapes, teacher_dir):
    """Near-zero temperature makes sampling greedy, so left-padded batched sampling must give each
    prompt what generating it alone gives."""
    s, batch = _batch(shapes, tmp_path, teacher_dir)
    student = s.trainer.model.eval()
    pad = s.processor.tokenizer.pad_token_id
    eos = [student.generation_config.eos_token_id]
    out = on_policy_batch(student, batch, pad, eos, temperature=1e-4, max_new_tokens=6)
    starts = last_response_start(batch["labels"])
    image_rows = 0
    for b, start in enumerate(starts.tolist()):
        has_image = bool((batch["input_ids"][b] == student.config.image_token_id).any())
        pixels = batch["pixel_values"][image_rows : image_rows + 1] if has_image else None
        image_rows += has_image
        alone = student.generate(
            input_ids=batch["input_ids"][b : b + 1, :start],
            pixel_values=pixels,
            do_sample=False,
            max_new_tokens=6,
            eos_token_id=eos,
            pad_token_id=pad,
        )[0, start:]
        expected = completions(alone[None], eos)[0]
        n = int(out["attention_mask"][b].sum())
        assert torch.equal(out["input_ids"][b, :start], batch["input_ids"][b, :start])  # prompt kept
        assert out["input_ids"][b, start:n].tolist() == expected.tolist()
        assert out["labels"][b, start:n].tolist() == expected.tolist()


def test_the_teachers_own_view_gets_the_same_sampled_tokens(tmp_path, shapes, teacher_dir):
    s, batch = _batch(shapes, tmp_path, teacher_dir, n=2)
    # a teacher view with a longer prompt (as with more visual tokens): two extra leading tokens
    batch["teacher_input_ids"] = torch.cat([batch["input_ids"][:, :2], batch["input_ids"]], 1)
    batch["teacher_labels"] = torch.cat([torch.full_like(batch["labels"][:, :2], X), batch["labels"]], 1)
    batch["teacher_attention_mask"] = torch.cat([batch["attention_mask"][:, :2], batch["attention_mask"]], 1)
    batch["teacher_instruction_mask"] = torch.cat(
        [batch["instruction_mask"][:, :2], batch["instruction_mask"]], 1
    )
    student = s.trainer.model.eval()
    out = on_policy_batch(
        student, batch, s.processor.tokenizer.pad_token_id, [student.generation_config.eos_token_id]
    )
    for b in range(2):
        n, m = int(out["attention_mask"][b].sum()), int(out["teacher_attention_mask"][b].sum())
        assert m == n + 2
        assert out["teacher_labels"][b, 2:m].tolist() == out["labels"][b, :n].tolist()


def test_a_gkd_run_grades_the_students_own_answers(tmp_path, shapes, teacher_dir):
    from distill.train import fit, setup

    cfg = config(
        shapes,
        tmp_path / "run",
        teacher={"path": str(teacher_dir)},
        loss={"w_sft": 0.0, "w_kd": 1.0, "divergence": "jsd", "jsd_beta": 0.5, "on_policy_ratio": 1.0},
        train={"max_steps": 2, "logging_steps": 1},
    )
    final = fit(setup(cfg))
    logs = [e for e in json.loads((final / "train_summary.json").read_text())["log_history"] if "loss" in e]
    assert len(logs) == 2 and all(e["on_policy_share"] == 1.0 and e["loss_kd"] > 0 for e in logs)


def test_sampling_runs_in_eval_mode_and_restores_training(tmp_path, shapes, teacher_dir):
    """Gradient checkpointing turns the KV cache off in training mode; sampling must not pay for that."""
    s, batch = _batch(shapes, tmp_path, teacher_dir, n=2)
    student = s.trainer.model.train()
    modes = []
    student.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    on_policy_batch(
        student, batch, s.processor.tokenizer.pad_token_id, [student.generation_config.eos_token_id]
    )
    assert modes and not any(modes) and student.training
