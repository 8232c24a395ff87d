"""The MME scorer reproduces convert_answer_to_mme.py + eval_tool/calculation.py (../shared/eval-spec.md)."""

import json

import pytest

from eval import mme
from eval.records import ScoreError, read_jsonl

SUFFIX = "\nAnswer the question using a single word or phrase."
YES_NO = " Please answer yes or no."


@pytest.mark.parametrize(
    "response, label",
    [
        ("yes", "yes"),
        ("No", "no"),
        ("YES", "yes"),  # lowercased first
        ("Yes, there is a cat.", "yes"),
        ("No.", "no"),
        ("not sure", "no"),  # "no" inside the first four characters
        ("none", "no"),
        ("know", "no"),
        ("Nope", "no"),
        ("eyes", "yes"),
        (" yes", "yes"),
        ("  yes", "other"),  # "yes" is not within the first four characters
        ("I think yes", "other"),
        ("unknown", "other"),
        ("maybe", "other"),
        ("", "other"),
    ],
)
def test_parse_like_calculation_py(response, label):
    assert mme.parse_answer(response) == label
    assert mme.parse_answer(response + "\n") == label  # the line's newline never changes the label


def _world(tmp_path, truth, layout=None):
    """An MME root: truth maps (category, image stem) to [(question, "Yes"|"No"), ...]."""
    root = tmp_path / "MME_Benchmark_release_version"
    for (category, stem), lines in truth.items():
        if (layout or {}).get(category) == "images":
            (root / category / "images").mkdir(parents=True, exist_ok=True)
            folder = root / category / "questions_answers_YN"
        elif (layout or {}).get(category) == "synthetic":
            folder = root / category / "questions_answers_YN"  # no images/: get_gt does not look here
        else:
            folder = root / category
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in lines))
    return root


def _answer(question_id, question, text):
    return {"question_id": question_id, "prompt": question + SUFFIX, "text": text}


def _questions(answers):
    return [{"question_id": a["question_id"], "text": a["prompt"]} for a in answers]


def _score(answers, root):
    return mme.score(answers, _questions(answers), root)


def _pair_world(tmp_path, category="existence", images=2):
    truth = {
        (category, f"{i:04d}"): [
            (f"Is there a cat {i}?{YES_NO}", "Yes"),
            (f"Is there a dog {i}?{YES_NO}", "No"),
        ]
        for i in range(images)
    }
    return _world(tmp_path, truth)


def test_acc_plus_needs_both_answers_of_a_pair(tmp_path):
    root = _pair_world(tmp_path)
    answers = [
        _answer("existence/0000.jpg", "Is there a cat 0?", "Yes"),
        _answer("existence/0000.jpg", "Is there a dog 0?", "No"),
        _answer("existence/0001.jpg", "Is there a cat 1?", "Yes"),
        _answer("existence/0001.jpg", "Is there a dog 1?", "Yes"),  # wrong: this pair is half right
    ]
    m = _score(answers, root)["subtasks"]["existence"]
    assert (m["acc"], m["acc_plus"], m["score"], m["questions"]) == (75.0, 50.0, 125.0, 4)


def test_pairs_are_consecutive_lines_in_answer_order(tmp_path):
    root = _pair_world(tmp_path)
    answers = [
        _answer("existence/0000.jpg", "Is there a cat 0?", "Yes"),
        _answer("existence/0001.jpg", "Is there a cat 1?", "Yes"),
        _answer("existence/0000.jpg", "Is there a dog 0?", "No"),
        _answer("existence/0001.jpg", "Is there a dog 1?", "maybe"),  # other: wrong
    ]
    m = _score(answers, root)["subtasks"]["existence"]
    # calculation.py pairs lines 1+2 and 3+4, whatever images they are about
    assert (m["acc"], m["acc_plus"], m["other"], m["pairs_across_images"]) == (75.0, 50.0, 1, 2)


def test_perception_and_cognition_totals_leave_out_absent_subtasks(tmp_path):
    truth = {
        ("count", "0000"): [(f"Two?{YES_NO}", "Yes"), (f"Three?{YES_NO}", "No")],
        ("OCR", "0000"): [(f"Hello?{YES_NO}", "Yes"), (f"Bye?{YES_NO}", "No")],
        ("code_reasoning", "0000"): [(f"Prints 1?{YES_NO}", "Yes"), (f"Prints 2?{YES_NO}", "No")],
    }
    answers = [
        _answer("count/0000.jpg", "Two?", "Yes"),
        _answer("count/0000.jpg", "Three?", "No"),
        _answer("OCR/0000.jpg", "Hello?", "yes"),
        _answer("OCR/0000.jpg", "Bye?", "Yes"),
        _answer("code_reasoning/0000.png", "Prints 1?", "Yes, it prints 1."),
        _answer("code_reasoning/0000.png", "Prints 2?", "No."),
    ]
    result = _score(answers, _world(tmp_path, truth))
    assert result["perception"] == 200.0 + 50.0 and result["cognition"] == 200.0
    assert set(result["subtasks"]) == {"count", "OCR", "code_reasoning"}
    assert "existence" in result["absent"] and "text_translation" in result["absent"]
    assert len(result["absent"]) == 11
    text = mme.report(result)
    assert "=========== Perception ===========\ntotal score: 250.0 \n\n\t count  score: 200.0" in text
    assert text.index("OCR  score: 50.0") < text.index("=========== Cognition ===========")
    assert "\t code_reasoning  score: 200.0" in text and "left out: existence, position" in text


def test_question_ids_with_and_without_images_folder(tmp_path):
    truth = {
        ("artwork", "10002"): [(f"A painting?{YES_NO}", "Yes"), (f"Glassware?{YES_NO}", "No")],
        ("color", "000001"): [(f"Is it red?{YES_NO}", "Yes"), (f"Is it blue?{YES_NO}", "No")],
    }
    root = _world(tmp_path, truth, layout={"artwork": "images"})
    answers = [
        _answer("artwork/images/10002.jpg", "A painting?", "Yes"),
        _answer("artwork/images/10002.jpg", "Glassware?", "No"),
        _answer("color/000001.png", "Is it red?", "Yes"),
        _answer("color/000001.png", "Is it blue?", "No"),
    ]
    result = _score(answers, root)
    assert result["subtasks"]["artwork"]["score"] == 200.0 and result["subtasks"]["color"]["score"] == 200.0
    assert mme.locate("scene/images/Places365_val_00000001.jpg") == ("scene", "Places365_val_00000001.txt")
    assert mme.locate("count/a.b.png") == ("count", "a.txt")  # cut at the first dot, not the last


def test_double_space_fallback_and_prompts_already_asking_yes_or_no(tmp_path):
    truth = {
        ("position", "0001"): [("Is it left?  Please answer yes or no.", "Yes"), (f"Right?{YES_NO}", "No")]
    }
    root = _world(tmp_path, truth)
    answers = [
        _answer("position/0001.jpg", "Is it left?", "Yes"),  # only the two-space form is in the ground truth
        {"question_id": "position/0001.jpg", "prompt": f"Right?{YES_NO}", "text": "No"},  # used as is
    ]
    assert _score(answers, root)["subtasks"]["position"]["score"] == 200.0


def test_a_subtask_answered_only_with_other_scores_zero(tmp_path):
    root = _pair_world(tmp_path, images=1)
    answers = [
        _answer("existence/0000.jpg", "Is there a cat 0?", "Maybe"),
        _answer("existence/0000.jpg", "Is there a dog 0?", "I cannot tell"),
    ]
    m = _score(answers, root)["subtasks"]["existence"]
    assert (m["score"], m["other"]) == (0.0, 2)


def test_inputs_the_official_scripts_stop_on(tmp_path):
    root = _pair_world(tmp_path)
    pair = [
        _answer("existence/0000.jpg", "Is there a cat 0?", "Yes"),
        _answer("existence/0000.jpg", "Is there a dog 0?", "No"),
    ]
    with pytest.raises(ScoreError, match="no ground truth for answer 'existence/0000.jpg'"):
        _score([*pair, _answer("existence/0000.jpg", "Is there a cow 0?", "No")], root)
    with pytest.raises(ScoreError, match="3 answers, an odd number"):
        _score([*pair, _answer("existence/0001.jpg", "Is there a cat 1?", "Yes")], root)
    with pytest.raises(ScoreError, match="is not one line of text"):
        _score([pair[0], _answer("existence/0000.jpg", "Is there a dog 0?", "No.\nThere is a cat.")], root)
    with pytest.raises(ScoreError, match="not in the question file"):
        mme.score(pair, [{"question_id": "existence/0001.jpg", "text": "?"}], root)


def test_ground_truth_only_in_questions_answers_yn_without_images_is_not_read(tmp_path):
    truth = {("existence", "0000"): [(f"Cat?{YES_NO}", "Yes"), (f"Dog?{YES_NO}", "No")]}
    root = _world(tmp_path, truth, layout={"existence": "synthetic"})
    answers = [_answer("existence/0000.jpg", "Cat?", "Yes"), _answer("existence/0000.jpg", "Dog?", "No")]
    with pytest.raises(ScoreError, match="has questions_answers_YN/ but no images/"):
        _score(answers, root)


def test_the_synthetic_world_scores_full_marks(shapes, tmp_path):
    """Answers that are the ground truth give 200 per subtask present."""
    bench = shapes / "benchmarks" / "mme"
    truth = mme.read_ground_truth(bench / "MME_Benchmark_release_version")
    questions = read_jsonl(bench / "llava_mme.jsonl")
    answers = []
    for q in questions:
        category, file = mme.locate(q["question_id"])
        question = q["text"].removesuffix(SUFFIX) + YES_NO
        answers.append(
            {"question_id": q["question_id"], "prompt": q["text"], "text": truth[category, file, question]}
        )
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    result = mme.run(path, bench / "llava_mme.jsonl", bench / "MME_Benchmark_release_version")
    assert result["subtasks"] and all(m["score"] == 200.0 for m in result["subtasks"].values())
    assert result["perception"] == 200.0 * len(set(result["subtasks"]) & set(mme.PERCEPTION))
    assert result["unanswered"] == 0 and not result["unscored_categories"]
    assert all(m["pairs_across_images"] == 0 for m in result["subtasks"].values())
