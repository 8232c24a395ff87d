"""`python -m eval run`: LLaVA-format answer lines from any model the kit loads, batched generation
equal to one question at a time, resumption without duplicates or gaps, and the prompts of each
benchmark as LLaVA's generation scripts build them."""

import csv
import json

import pytest

from eval.__main__ import main
from eval.backends import TorchBackend
from eval.questions import CHOICE_SUFFIX, SHORT_SUFFIX, mmbench_prompt, read_questions
from eval.records import ScoreError, read_jsonl
from eval.run import answer_all, answered_keys, unanswered
from tests.conftest import save_lively_model


@pytest.fixture(scope="module")
def lively_student(tmp_path_factory, tokenizer):
    return save_lively_model(tokenizer, tmp_path_factory.mktemp("models") / "lively")


def pope_args(shapes, out, *extra):
    bench = shapes / "benchmarks" / "pope"
    return [
        "run",
        "--bench",
        "pope",
        "--questions",
        str(bench / "llava_pope_test.jsonl"),
        "--images",
        str(shapes / "images" / "test"),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        *extra,
    ]


def test_batched_answers_equal_one_question_at_a_time(shapes, lively_student):
    """Left padding must not change a greedy answer."""
    backend = TorchBackend(lively_student)
    questions = read_questions(
        "gqa", shapes / "benchmarks" / "gqa" / "llava_gqa_testdev_balanced.jsonl", shapes / "images" / "test"
    )[:10]
    one = [backend.answer([q], max_new_tokens=8)[0] for q in questions]
    assert backend.answer(questions, max_new_tokens=8) == one
    assert len(set(one)) > 5 and all(len(text) > 5 for text in one)  # varied, and long past the prompt


def test_answer_lines_have_llava_fields_and_the_run_prints_samples_per_second(
    shapes, student_dir, tmp_path, capsys
):
    out = tmp_path / "pope.jsonl"
    assert (
        main(
            [
                "run",
                "--model",
                str(student_dir),
                *pope_args(shapes, out, "--limit", "7", "--speed-check", "4")[1:],
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "samples/s at batch size 16" in printed
        and "batch size 1" in printed
        and "speed check on 4" in printed
    )
    lines = read_jsonl(out)
    assert len(lines) == 7
    questions = read_jsonl(shapes / "benchmarks" / "pope" / "llava_pope_test.jsonl")
    for line, question in zip(lines, questions):
        assert set(line) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert line["question_id"] == question["question_id"] and line["prompt"] == question["text"]
        assert line["prompt"].endswith(SHORT_SUFFIX) and line["model_id"] == "student"
    assert len({line["answer_id"] for line in lines}) == 7


def test_a_stopped_run_resumes_without_duplicates_or_gaps(shapes, student_dir, tmp_path):
    out = tmp_path / "pope.jsonl"
    base = ["run", "--model", str(student_dir), *pope_args(shapes, out)[1:]]
    assert main([*base, "--limit", "5"]) == 0
    with open(out, "a") as handle:  # a kill in the middle of a write
        handle.write('{"question_id": 6, "prompt": "Is th')
    assert main([*base, "--limit", "12", "--batch-size", "4"]) == 0
    ids = [line["question_id"] for line in read_jsonl(out)]
    assert ids == list(range(1, 13))
    assert main([*base, "--limit", "12"]) == 0  # nothing left: nothing added
    assert len(read_jsonl(out)) == 12


def test_resumption_counts_a_question_asked_twice(shapes, student_dir, tmp_path):
    """MME asks two questions per image under one question_id; the key is (question_id, prompt)."""
    questions = read_questions(
        "mme", shapes / "benchmarks" / "mme" / "llava_mme.jsonl", shapes / "images" / "test"
    )[:4]
    assert questions[0].question_id == questions[1].question_id
    twice = [questions[0], questions[0], questions[1]]
    out = tmp_path / "mme.jsonl"
    answer_all(TorchBackend(student_dir), twice[:1], out, 4, 2, progress=False)
    assert unanswered(twice, answered_keys(out)) == twice[1:]


def test_science_prompts_mark_image_questions_and_batches_mix_text_only(shapes, lively_student, tmp_path):
    image = sorted((shapes / "images" / "test").iterdir())[0].name
    records = [
        {"id": "t1", "conversations": [{"from": "human", "value": "Which is hot?\nA. ice\nB. fire"}]},
        {
            "id": "i1",
            "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat color?\nA. red"}],
        },
        {"id": "t2", "conversations": [{"from": "human", "value": "Which is wet?\nA. sand\nB. sea"}]},
    ]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(records))
    mixed = read_questions("sqa", path, shapes / "images" / "test")
    assert [q.image is not None for q in mixed] == [False, True, False]
    assert (
        mixed[1].recorded_prompt == "<image>\nWhat color?\nA. red" + CHOICE_SUFFIX
    )  # what SQA-IMG filters on
    assert mixed[0].recorded_prompt == mixed[0].prompt == "Which is hot?\nA. ice\nB. fire" + CHOICE_SUFFIX
    backend = TorchBackend(lively_student)
    assert backend.answer(mixed, 6) == [backend.answer([q], 6)[0] for q in mixed]


def test_mmbench_prompt_hint_options_and_answer_fields(tmp_path, shapes, student_dir):
    assert mmbench_prompt("Which?", "nan", ["x", "y"]) == "Which?\nA. x\nB. y"
    assert mmbench_prompt("Which?", "Look.", ["x"]) == "Look.\nWhich?\nA. x"
    out = tmp_path / "mmbench.jsonl"
    tsv = shapes / "benchmarks" / "mmbench" / "mmbench_dev_20230712.tsv"
    args = [
        "run",
        "--model",
        str(student_dir),
        "--bench",
        "mmbench",
        "--questions",
        str(tsv),
        "--out",
        str(out),
    ]
    assert main([*args, "--limit", "3", "--max-new-tokens", "3"]) == 0
    line = read_jsonl(out)[0]
    assert line["round_id"] == 0 and line["option_char"] == ["A", "B", "C", "D"][: len(line["options"])]
    assert not line["prompt"].endswith(
        CHOICE_SUFFIX
    )  # model_vqa_mmbench records the prompt before the suffix


def test_bad_inputs_name_the_problem(tmp_path, shapes):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "image": "broken.png", "text": "Is it?"}) + "\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (question,) = read_questions("pope", questions, tmp_path)
    with pytest.raises(ScoreError, match="broken.png: not a readable image"):
        question.image()
    with pytest.raises(ScoreError, match="needs --images"):
        read_questions("gqa", questions)
    tsv = tmp_path / "mmbench.tsv"
    with open(tsv, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "hint", "A", "B", "image"])
        writer.writerow([5, "Which?", "", "x", "y", "@@notbase64"])
    (row,) = read_questions("mmbench", tsv)
    with pytest.raises(ScoreError, match="index 5: the image column is not a base64-encoded image"):
        row.image()
    assert row.prompt == "Which?\nA. x\nB. y" + CHOICE_SUFFIX
    assert (
        main(
            [
                "run",
                "--model",
                "x",
                "--bench",
                "pope",
                "--questions",
                str(questions),
                "--out",
                str(tmp_path / "a"),
                "--batch-size",
                "0",
            ]
        )
        == 2
    )
