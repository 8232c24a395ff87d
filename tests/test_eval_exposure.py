"""`python -m eval exposure`: per-step KL(P_T || P_S) along reference, student and teacher prefixes,
accumulated into E_train, E_test = R and E, and %ExAccErr (Align-TI appendix B.4)."""

import json

import pytest
import torch

from eval import exposure
from eval.__main__ import main


def test_curves_accumulate_steps_and_average_over_samples():
    kl = {
        "reference": torch.tensor([[1.0, 1.0], [3.0, 1.0]]),
        "student": torch.tensor([[2.0, 4.0], [2.0, 4.0]]),
        "teacher": torch.tensor([[1.0, 1.0], [1.0, 3.0]]),
    }
    c = exposure.curves(kl)
    assert c["E_train"] == [2.0, 3.0] and c["E_test"] == [2.0, 6.0] and c["E"] == [1.0, 3.0]
    assert c["ex_acc_err_percent"] == [100.0, 100.0]  # (R - E) / E * 100
    assert c["kl_per_step_student"] == [2.0, 4.0]
    zero = {k: torch.zeros(1, 2) for k in kl}
    assert exposure.curves(zero)["ex_acc_err_percent"] == [None, None]  # E = 0: no ratio


REPLY = "The image shows a red circle in the top left corner and a blue square in the bottom right corner."


@pytest.fixture
def long_replies(shapes, tmp_path):
    """Held-out records with long first replies and prompts of different lengths (+ one short reply)."""
    images = tmp_path / "images"
    images.mkdir()
    prompts = [
        "Describe it.",
        "Describe the picture in detail, please.",
        "What is in this image? Be thorough.",
    ]
    records = []
    for i, path in enumerate(sorted((shapes / "images" / "val").iterdir())[:4]):
        (images / path.name).write_bytes(path.read_bytes())
        reply = REPLY if i < 3 else "red"
        turns = [{"from": "human", "value": f"<image>\n{prompts[i % 3]}"}, {"from": "gpt", "value": reply}]
        records.append({"id": str(i), "image": f"images/{path.name}", "conversations": turns})
    data = tmp_path / "held_out.json"
    data.write_text(json.dumps(records))
    return data


def samples_of(data, model, min_tokens=6, length=6):
    return exposure.long_reply_samples(data, model.processor.tokenizer, min_tokens, length, 5)


def test_left_padded_batches_give_the_kl_of_one_sample_at_a_time(long_replies, teacher_dir, student_dir):
    teacher = exposure.load(teacher_dir, "cpu", "float32")
    student = exposure.load(student_dir, "cpu", "float32")
    samples = samples_of(long_replies, teacher)
    assert len(samples) == 3 and len({len(s.prompt) for s in samples}) == 3  # the short reply is left out
    replies = torch.tensor([s.reply for s in samples])
    batched = exposure.step_kl(teacher, student, samples, replies, "cpu")
    one_by_one = [
        exposure.step_kl(teacher, student, [s], replies[i : i + 1], "cpu") for i, s in enumerate(samples)
    ]
    torch.testing.assert_close(batched, torch.cat(one_by_one), atol=1e-5, rtol=1e-4)
    assert (batched > 0).all()
    itself = exposure.step_kl(teacher, teacher, samples, replies, "cpu")
    assert itself.abs().max() < 1e-5  # a model against itself


def test_sampled_prefixes_have_exactly_the_length_and_no_image_token(long_replies, student_dir):
    student = exposure.load(student_dir, "cpu", "float32")
    samples = samples_of(long_replies, student)
    torch.manual_seed(0)
    replies = exposure.sampled_replies(student, samples, 6, "cpu")
    assert replies.shape == (len(samples), 6)
    assert not (replies == student.image_token_id).any()


def test_command_prints_writes_the_curves_and_both_plots(
    long_replies, teacher_dir, student_dir, tmp_path, capsys
):
    out = tmp_path / "exposure"
    args = [
        "exposure",
        "--teacher",
        str(teacher_dir),
        "--student",
        str(student_dir),
        "--data",
        str(long_replies),
    ]
    assert main([*args, "--min-tokens", "6", "--length", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| student | l | E_train(l) | E_test(l) = R(l) | E(l) | %ExAccErr(l) |" in printed
    saved = json.loads((out / "exposure.json").read_text())
    assert saved["samples"] == 3
    c = saved["curves"]["student"]
    assert len(c["E_train"]) == len(c["E_test"]) == len(c["ex_acc_err_percent"]) == 6
    assert all(b >= a for a, b in zip(c["E_test"], c["E_test"][1:]))  # accumulated: never decreasing
    for name in ("accumulated_error.png", "excess_error.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert main([*args, "--min-tokens", "6", "--length", "7", "--out", str(out)]) == 2
    assert "--length must be between 1 and --min-tokens" in capsys.readouterr().err
    assert main([*args, "--min-tokens", "10000", "--length", "5", "--out", str(out)]) == 2
    assert "no record has a first reply of 10000 or more tokens" in capsys.readouterr().err


def test_a_student_with_another_vocabulary_is_refused(shapes, long_replies, teacher_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from distill.modeling import save_llava
    from tests.conftest import make_model

    tokenizer = AutoTokenizer.from_pretrained(shapes / "tokenizer")
    tokenizer.add_tokens(["<extra-token>"])
    model, processor = make_model(tokenizer)
    other = save_llava(model, processor, tmp_path / "other")
    args = [
        "exposure",
        "--teacher",
        str(teacher_dir),
        "--student",
        str(other),
        "--data",
        str(long_replies),
    ]
    assert main([*args, "--min-tokens", "6", "--length", "6", "--out", str(tmp_path / "x")]) == 2
    assert "vocabularies differ" in capsys.readouterr().err


def test_runs_of_one_method_share_a_colour_and_a_legend_entry():
    styles = exposure.line_styles(["kd/seed-0", "kd/seed-1", "align-ti/seed-0", "student-sft"])
    assert styles["kd/seed-0"]["color"] == styles["kd/seed-1"]["color"] != styles["align-ti/seed-0"]["color"]
    assert [s["label"] for s in styles.values()] == ["kd", None, "align-ti", "student-sft"]
