"""The TextVQA scorer reproduces LLaVA's eval_textvqa.py + m4c_evaluator.py, quirks included
(../shared/eval-spec.md), and scores the synthetic world's reference answers 100."""

import json

import pytest

from eval import textvqa
from eval.records import ScoreError, read_jsonl

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize(
    "answer, normalized",
    [
        ("a dog", "dog"),  # articles go
        ("A", ""),
        ("The An apple", "apple"),
        ("two", "2"),  # number words up to ten, and none
        ("None", "0"),
        ("eleven", "eleven"),
        ("x-y", "x y"),  # a mark that touches no space becomes a space
        ("x-y -z", "xy z"),  # one that touches a space somewhere is deleted everywhere
        ("a-b", "b"),  # ... and "a" is then an article
        ("(hello)", "hello"),
        ("hi!", "hi"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("3.", "3"),  # after a digit it goes (the lookbehind is written as a lookahead)
        ("e.g. this", "eg this"),
        ("." * 40 + "x", "." * 8 + "x"),  # at most 32 periods go (re.UNICODE as the count)
        ("." * 33 + "5", ".5"),
        ("dont", "don't"),  # contractions
        ("hes", "he's"),
        ("he's", "he 's"),  # ... but "'s" is split off first, so "he's" stays apart
        ("Coca-Cola's", "coca cola 's"),
        ("somebody'd", "somebodyd"),  # the table's own quirk
        ("1,000", "1000"),  # commas and question marks are deleted first
        ("why?", "why"),
        ("what ?", "what"),
        ("  Stop\n", "stop"),
        ("x\n-y z-w", "x y zw"),  # the newline is a space by the time punctuation is handled
    ],
)
def test_normalize_like_eval_ai_answer_processor(answer, normalized):
    assert textvqa.normalize(answer) == normalized


def test_tables_are_complete():
    assert len(textvqa.CONTRACTIONS) == 120 and textvqa.CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert len(textvqa.PUNCTUATION) == 21 and set(textvqa.NUMBER_WORDS.values()) == {
        str(n) for n in range(11)
    }


@pytest.mark.parametrize("matches, accuracy", [(10, 1.0), (4, 1.0), (3, 0.9), (2, 0.6), (1, 0.3), (0, 0.0)])
def test_soft_accuracy_leaves_one_out(matches, accuracy):
    gt = ["yes"] * matches + ["no"] * (10 - matches)
    assert textvqa.soft_accuracy("yes", gt) == pytest.approx(accuracy)


@pytest.mark.parametrize(
    "prompt, question",
    [
        ("What Is It?" + SUFFIX, "what is it?"),
        ("What is it?\nReference OCR token: STOP, Go" + SUFFIX, "what is it?"),
        ("Reference OCR token: STOP\nWhat is it?" + SUFFIX, "what is it?"),
        ("OCR tokens: stop go Question: What\nis it? Short answer:", "what\nis it?"),
    ],
)
def test_prompt_processor_forms(prompt, question):
    assert textvqa.question_from_prompt(prompt) == question


@pytest.mark.parametrize("prompt", ["What is it?", "a\nb\nc", "OCR tokens: stop"])
def test_prompt_processor_refuses_other_forms(prompt):
    with pytest.raises(ScoreError, match="TextVQA: prompt"):
        textvqa.question_from_prompt(prompt)


def _annotations(*entries):
    return {"data": [{"image_id": i, "question": q, "answers": a} for i, q, a in entries]}


def test_score_joins_on_image_id_and_lowercased_question():
    annotations = _annotations(
        ("img1", "What brand?", ["Nike"] * 3 + ["adidas"] * 7),
        ("img1", "What color?", ["red"] * 10),
        ("img2", "What brand?", ["puma"] * 10),
    )
    answers = [
        {"question_id": "img1", "prompt": "WHAT BRAND?" + SUFFIX, "text": "nike."},
        {"question_id": "img1", "prompt": "What color?" + SUFFIX, "text": "Blue"},
        {"question_id": "img2", "prompt": "What brand?" + SUFFIX, "text": "Puma"},
    ]
    result = textvqa.score(answers, annotations)
    assert result["samples"] == 3 and result["accuracy"] == pytest.approx(100 * 1.9 / 3)
    assert textvqa.report(result) == "Samples: 3\nAccuracy: 63.33%"


def test_score_errors_name_the_question():
    answer = {"question_id": "img1", "prompt": "What brand?" + SUFFIX, "text": "nike"}
    with pytest.raises(
        ScoreError, match="'What brand\\?' .* has 9 answers, where the official scorer asserts 10"
    ):
        textvqa.score([answer], _annotations(("img1", "What brand?", ["nike"] * 9)))
    with pytest.raises(ScoreError, match="no annotation for image_id 'img2' and question 'what brand\\?'"):
        textvqa.score([{**answer, "question_id": "img2"}], _annotations(("img1", "What brand?", ["x"] * 10)))
    with pytest.raises(ScoreError, match="no answers"):
        textvqa.score([], _annotations())


def test_run_reads_files_and_needs_a_prompt(tmp_path):
    annotations = tmp_path / "TextVQA_0.5.1_val.json"
    annotations.write_text(json.dumps(_annotations(("img1", "What?", ["yes"] * 10))))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": "img1", "prompt": "What?" + SUFFIX, "text": "Yes"}) + "\n")
    assert textvqa.run(answers, annotations) == {"samples": 1, "accuracy": 100.0}
    answers.write_text(json.dumps({"question_id": "img1", "text": "Yes"}) + "\n")
    with pytest.raises(ScoreError, match="line 1: no prompt field"):
        textvqa.run(answers, annotations)


def test_the_synthetic_world_textvqa_files_score_100(shapes):
    bench = shapes / "benchmarks" / "textvqa"
    questions = read_jsonl(bench / "llava_textvqa_val_v051_ocr.jsonl", ("question_id", "image", "text"))
    annotations = json.loads((bench / "TextVQA_0.5.1_val.json").read_text())
    reference = {(a["image_id"], a["question"].lower()): a["answers"][0] for a in annotations["data"]}
    answers = [
        {
            "question_id": q["question_id"],
            "prompt": q["text"],
            "text": reference[(q["question_id"], textvqa.question_from_prompt(q["text"]))],
        }
        for q in questions
    ]
    assert questions and len(annotations["data"]) == len(questions)
    assert textvqa.score(answers, annotations) == {"samples": len(questions), "accuracy": 100.0}
