"""`eval attention`: the map is the eager attention of the question on the visual tokens, it follows
the question, the layer is chosen as documented, and the command writes a PNG panel per model and
its JSON, refusing bad input with a ScoreError (exit 2 once registered in eval/__main__)."""

import argparse
import json
import shutil

import pytest
import torch
from PIL import Image

from distill.conversation import ConversationEncoder
from distill.irs import _batch, write_irs
from distill.modeling import check_llava_dir, image_token_count, load_llava
from eval import attention
from eval.records import ScoreError
from tests.test_attention_capture import eager_alpha

QUESTION = "What color is the circle?"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_llava(teacher_dir)


@pytest.fixture
def image(shapes):
    return sorted((shapes / "images" / "test").glob("*.png"))[0]


def command(*argv):
    parser = argparse.ArgumentParser()
    attention.add_arguments(parser)
    return attention.run(parser.parse_args([str(a) for a in argv]))


def test_map_is_the_eager_attention_of_the_question_on_the_image(teacher, image):
    model, processor = teacher
    encoder = ConversationEncoder(processor.tokenizer)
    inputs, instruction = _batch(
        [(image.name, QUESTION)],
        encoder,
        processor.image_processor,
        image_token_count(model.config),
        image.parent,
    )
    visual = inputs["input_ids"] == model.config.image_token_id
    with torch.no_grad():
        expected = eager_alpha(model, {**inputs, "use_cache": False}, instruction, visual)
    for layer in range(model.config.get_text_config().num_hidden_layers):
        alpha = attention.attention_map(model, processor, image, QUESTION, layer)
        assert alpha.shape == (image_token_count(model.config),)
        torch.testing.assert_close(alpha, expected[layer][0], atol=1e-5, rtol=1e-5)
        assert (alpha >= 0).all() and alpha.sum() <= 1 + 1e-6


def test_different_questions_look_at_the_image_differently(teacher, image):
    model, processor = teacher
    one = attention.attention_map(model, processor, image, QUESTION, 1)
    two = attention.attention_map(model, processor, image, "How many squares are in the picture?", 1)
    assert not torch.allclose(one, two)


def test_heat_map_spans_the_image_and_top_tokens_are_grid_cells():
    alpha = torch.tensor([0.1, 0.4, 0.0, 0.2])  # 2x2 grid
    heat = attention.heat_map(alpha, 10, 6)
    assert heat.shape == (10, 6) and heat.min() == 0 and heat.max() == pytest.approx(1)
    assert [(row, col) for row, col, _ in attention.top_tokens(alpha, 3)] == [(0, 1), (1, 1), (0, 0)]
    with pytest.raises(ScoreError, match="square grid"):
        attention.grid_side(5)


def test_layer_is_asked_for_else_stored_l_star_else_the_middle(tmp_path, teacher_dir):
    model_dir = tmp_path / "teacher"
    shutil.copytree(teacher_dir, model_dir)
    config = check_llava_dir(model_dir)  # a 2-layer LLM: the middle layer is 1
    layer, reason = attention.choose_layer(model_dir, config, None)
    assert layer == 1 and reason.startswith("middle layer")
    write_irs(model_dir, {"scores": [0.3, 0.1], "best_layer": 0})
    layer, reason = attention.choose_layer(model_dir, config, None)
    assert layer == 0 and "l*" in reason
    assert attention.choose_layer(model_dir, config, 1) == (1, "--layer")
    with pytest.raises(ScoreError, match="has 2 layers"):
        attention.choose_layer(model_dir, config, 2)


def test_layer_flag_is_one_for_all_or_one_per_model():
    assert attention.parse_layers(None, 2) == [None, None]
    assert attention.parse_layers("3", 2) == [3, 3]
    assert attention.parse_layers(",0", 2) == [None, 0]
    with pytest.raises(ScoreError, match="2 layers for 3 models"):
        attention.parse_layers("1,2", 3)


def test_command_writes_a_panel_per_model_and_the_alphas(tmp_path, teacher_dir, student_dir, image, capsys):
    teacher_copy = tmp_path / "models" / "teacher"
    shutil.copytree(teacher_dir, teacher_copy)
    write_irs(teacher_copy, {"scores": [0.3, 0.1], "best_layer": 0})
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert command("--model", teacher_copy, "--image", image, "--question", QUESTION, "--out", one) == 0
    argv = ["--model", teacher_copy, "--model", student_dir, "--image", image, "--question", QUESTION]
    assert command(*argv, "--layer", ",0", "--out", two) == 0
    printed = capsys.readouterr().out
    assert "layer 0 of 2, l* stored" in printed and "layer 0 of 2, --layer" in printed
    assert printed.count("tokens (row, col) weight:") == 3  # top-5, or all 4 of a 2x2 grid
    assert one.read_bytes()[:8] == PNG_MAGIC and two.read_bytes()[:8] == PNG_MAGIC
    assert Image.open(two).size[0] > Image.open(one).size[0]
    record = json.loads(two.with_suffix(".json").read_text())
    assert record["question"] == QUESTION and [m["layer"] for m in record["models"]] == [0, 0]
    for model in record["models"]:
        assert len(model["alpha"]) == model["grid_side"] ** 2
        assert model["image_share"] == pytest.approx(sum(model["alpha"]), abs=1e-5)
    assert not list(tmp_path.glob("*partial*"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--layer": "2"}, "layer 2 .* out of range; the LLM has 2 layers"),
        ({"--image": "missing.png"}, "cannot read image"),
        ({"--model": "no-such-model"}, "no such model directory"),
    ],
)
def test_bad_input_is_a_score_error(tmp_path, teacher_dir, image, change, message):
    flags = {"--model": teacher_dir, "--image": image, "--question": QUESTION, "--out": tmp_path / "a.png"}
    flags.update({k: tmp_path / v if k != "--layer" else v for k, v in change.items()})
    with pytest.raises(ScoreError, match=message):
        command(*[x for pair in flags.items() for x in pair])
    assert not (tmp_path / "a.png").exists()


def test_the_eval_command_line_runs_it_and_turns_bad_input_into_one_line(student_dir, tmp_path, capsys):
    from eval.__main__ import main

    args = [
        "attention",
        "--model",
        str(student_dir),
        "--question",
        "What color?",
        "--out",
        str(tmp_path / "a.png"),
    ]
    assert main([*args, "--image", str(tmp_path / "missing.png")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "a.png").exists()
