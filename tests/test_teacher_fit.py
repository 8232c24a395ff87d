"""The teacher-fit probe: replies scored under teacher forcing by their place in the conversation."""

import json

import torch

from distill.__main__ import main
from distill.configuration import load_config
from distill.conversation import IGNORE_INDEX
from distill.run_config import RunConfig
from distill.teacher_fit import ReplyScores, reply_runs, report, score_replies, spread_indices
from distill.train import warn_on_unseen_layout

VOCAB = 11


def logits_predicting(tokens: list[int]) -> torch.Tensor:
    """[1, S, V] logits whose argmax at position i is tokens[i]."""
    return torch.nn.functional.one_hot(torch.tensor([tokens]), VOCAB).float()


def test_a_reply_is_right_only_when_every_token_is_predicted_one_position_earlier():
    ignored = IGNORE_INDEX
    # two replies: positions 2-3 and 6-8
    labels = torch.tensor([[ignored, ignored, 4, 5, ignored, ignored, 7, 8, 9]])
    shifted = [0, 4, 5, 0, 0, 7, 8, 9, 0]  # the logits at i predict the label at i + 1
    scores = score_replies(logits_predicting(shifted), labels)
    assert dict(scores.replies) == {0: 1, 1: 1} and dict(scores.replies_right) == {0: 1, 1: 1}
    assert dict(scores.tokens) == {0: 2, 1: 3} and dict(scores.tokens_right) == {0: 2, 1: 3}

    unshifted = labels[0].clamp(min=0).tolist()  # right token, wrong position: nothing counts
    assert sum(score_replies(logits_predicting(unshifted), labels).replies_right.values()) == 0

    one_wrong = [0, 4, 5, 0, 0, 7, 3, 9, 0]
    scores = score_replies(logits_predicting(one_wrong), labels)
    assert dict(scores.replies_right) == {0: 1, 1: 0} and dict(scores.tokens_right) == {0: 2, 1: 2}


def test_reply_runs_split_at_gaps():
    runs = reply_runs(torch.tensor([False, True, True, False, True, False, True, True, True]))
    assert [r.tolist() for r in runs] == [[1, 2], [4], [6, 7, 8]]
    assert reply_runs(torch.zeros(4, dtype=torch.bool)) == []


def test_spread_indices():
    assert spread_indices(10, 4) == [0, 2, 5, 7]
    assert spread_indices(3, 8) == [0, 1, 2]


def scores_with(rates: dict[int, tuple[int, int]]) -> ReplyScores:
    scores = ReplyScores()
    for place, (right, total) in rates.items():
        scores.replies[place], scores.replies_right[place] = total, right
        scores.tokens[place], scores.tokens_right[place] = total, right
    return scores


def test_report_warns_only_when_a_later_reply_falls_far_under_the_first():
    fits = report(scores_with({0: (88, 100), 1: (80, 100), 2: (70, 100)}), 100)
    assert not any(line.startswith("warning") for line in fits)
    assert "reply 2: 80.0% (80.0%) of 100" in "\n".join(fits)
    unseen = report(scores_with({0: (80, 100), 1: (62, 100), 2: (35, 100), 3: (10, 19)}), 100)
    assert unseen[-1].startswith("warning: the teacher gets reply 3 right 35.0%")  # reply 4: too few to judge


def test_check_probes_the_teacher_by_reply_place(shapes, student_dir, teacher_dir, capsys):
    records = json.loads((shapes / "train.json").read_text())
    base = [
        "check",
        "--student",
        str(student_dir),
        "--teacher",
        str(teacher_dir),
        "--data",
        str(shapes / "train.json"),
    ]
    assert main([*base, "--probe-teacher", str(len(records))]) == 0
    out = capsys.readouterr().out
    replies = [line for line in out.splitlines() if line.startswith("  reply ")]
    most_turns = max(len(r["conversations"]) // 2 for r in records)
    assert len(replies) == most_turns
    firsts = sum(1 for r in records if r["conversations"])
    assert replies[0].endswith(f" of {firsts}")

    assert main([*base, "--split-turns", "--probe-teacher", "5"]) == 0
    out = capsys.readouterr().out
    assert "teacher fit (5 examples" in out and "one example per question" in out
    replies = [line for line in out.splitlines() if line.startswith("  reply ")]
    assert replies == [replies[0]] and replies[0].endswith(" of 5")


def test_check_needs_a_teacher_to_probe(shapes, student_dir):
    import pytest

    with pytest.raises(SystemExit, match="needs a teacher and data"):
        main(
            [
                "check",
                "--student",
                str(student_dir),
                "--data",
                str(shapes / "train.json"),
                "--probe-teacher",
                "4",
            ]
        )


def test_training_on_conversations_warns_about_a_single_question_teacher(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "run_config.yaml").write_text("data:\n  split_turns: true\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  path: s\nteacher:\n  path: {teacher}\n")
    warn_on_unseen_layout(load_config(RunConfig, config))
    assert "trained on single questions" in capsys.readouterr().out
    warn_on_unseen_layout(load_config(RunConfig, config, ["data.split_turns=true"]))
    assert capsys.readouterr().out == ""


def test_the_probe_predicts_the_reply_tokens_as_the_full_logits_would(shapes, teacher_dir):
    from distill.data import LlavaDataset, ModelView, PaddingCollator
    from distill.modeling import image_token_count, load_llava
    from distill.teacher_fit import predict_replies

    model, processor = load_llava(teacher_dir)
    model.eval()
    view = ModelView.from_processor(processor, image_token_count(model.config), 512)
    dataset = LlavaDataset(shapes / "train.json", {"student": view}, progress=False)
    batch = PaddingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(6)])
    predicted, targets = predict_replies(model, batch)
    with torch.inference_mode():
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
    replies = targets != IGNORE_INDEX
    assert replies.sum() > 20
    assert torch.equal(predicted[replies], logits[:, :-1].argmax(-1)[replies])
    assert len(set(predicted[replies].tolist())) > 3  # a random model's argmax varies: the check can fail
