"""IRS: pairs of questions about one image, the instruction mask of a prompt, the score itself on
hand-built attention vectors, and `distill irs` end to end on a tiny teacher saved to disk."""

import json

import pytest
import torch

from distill.__main__ import main
from distill.conversation import ConversationEncoder, DataError, encode_instruction_prompt
from distill.irs import irs_scores, question_pairs, read_best_layer


def test_pairs_share_an_image_and_differ_in_the_question():
    records = [
        {
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nQ1"},
                {"from": "gpt", "value": "x"},
                {"from": "human", "value": "Q2"},
                {"from": "gpt", "value": "y"},
            ],
        },
        {
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "x"}],
        },
        {
            "image": "b.png",
            "conversations": [{"from": "human", "value": "<image>\nQ3"}, {"from": "gpt", "value": "z"}],
        },
        {"conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "z"}]},
    ]
    assert question_pairs(records, 10) == [(("a.png", "Q1"), ("a.png", "Q2"))]
    with pytest.raises(DataError, match="two different questions"):
        question_pairs(records[2:], 10)


def test_instruction_mask_covers_the_question_and_nothing_else(tokenizer):
    encoder = ConversationEncoder(tokenizer)
    question = "What color is the circle?\nAnswer the question using a single word or phrase."
    ids, mask = encode_instruction_prompt(encoder, "<image>\n" + question)
    assert tokenizer.decode(ids[mask].tolist()) == question
    assert encoder.image_token_id in ids.tolist() and not mask[ids == encoder.image_token_id].any()


def test_irs_is_zero_for_identical_focus_and_one_for_disjoint_focus():
    one, two = ("i", "q1"), ("i", "q2")
    vectors = {one: torch.tensor([[1.0, 0.0], [1.0, 0.0]]), two: torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    assert irs_scores(vectors, [(one, two)]) == pytest.approx([0.0, 1.0])


@pytest.mark.slow
def test_irs_command_scores_every_layer_and_stores_l_star(tmp_path, shapes, teacher_dir, capsys):
    import shutil

    model = tmp_path / "teacher"
    shutil.copytree(teacher_dir, model)
    plot = tmp_path / "irs.png"
    args = [
        "irs",
        "--model",
        str(model),
        "--data",
        str(shapes / "val.json"),
        "--pairs",
        "12",
        "--plot",
        str(plot),
    ]
    assert main(args) == 0
    stored = json.loads((model / "irs.json").read_text())
    layers = json.loads((model / "config.json").read_text())["text_config"]["num_hidden_layers"]
    assert len(stored["scores"]) == layers and stored["pairs"] == 12
    assert stored["best_layer"] == max(range(layers), key=lambda i: stored["scores"][i])
    assert all(0.0 <= s <= 2.0 for s in stored["scores"])
    assert read_best_layer(model) == stored["best_layer"] and plot.stat().st_size > 0
    assert f"l* = {stored['best_layer']}" in capsys.readouterr().out
