"""The POPE, GQA and ScienceQA-IMG scorers reproduce the official scripts, quirks included
(../shared/eval-spec.md), and `python -m eval score` reports and writes them."""

import json

import pytest

from eval import gqa, pope, sqa
from eval.__main__ import main
from eval.records import ScoreError, read_jsonl


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("No", "no"),
        ("no", "no"),
        ("There is not a dog.", "no"),
        ("No, there is none", "no"),  # commas are dropped before splitting
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # only No / no / not, exactly
        ("No!", "yes"),
        ("no\n", "yes"),
        ("", "yes"),
        ("Not", "yes"),
        ("nothing", "yes"),
    ],
)
def test_pope_parses_like_eval_pope(text, parsed):
    assert pope.parse_answer(text) == parsed


def _write_pope(tmp_path, answers, labels_by_split):
    questions, qid = [], 0
    for split, labels in labels_by_split.items():
        rows = []
        for label in labels:
            qid += 1
            questions.append({"question_id": qid, "category": split, "text": "Is there a cat?"})
            rows.append(json.dumps({"question_id": qid, "label": label}))
        (tmp_path / f"coco_pope_{split}.json").write_text("\n".join(rows) + "\n")
    (tmp_path / "notes.json").write_text("{}")  # not a label file: ignored
    q = tmp_path / "questions.jsonl"
    q.write_text("\n".join(json.dumps(x) for x in questions) + "\n")
    a = tmp_path / "answers.jsonl"
    a.write_text(
        "\n".join(json.dumps({"question_id": i + 1, "text": t}) for i, t in enumerate(answers)) + "\n"
    )
    return a, q


def test_pope_metrics_per_split_and_pairing_by_position(tmp_path):
    answers, questions = _write_pope(
        tmp_path, ["Yes", "No", "Yes", "yes"], {"random": ["yes", "no", "no", "yes"]}
    )
    result = pope.run(answers, questions, tmp_path)
    m = result["splits"]["random"]
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 0)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["yes_ratio"] == 0.75
    assert result["pope_f1"] == pytest.approx(100 * 0.8)
    # answers are matched to labels by position in the label file, not by question_id
    shuffled = tmp_path / "shuffled.jsonl"
    rows = read_jsonl(answers)
    shuffled.write_text("\n".join(json.dumps(r) for r in [rows[1], rows[0], rows[2], rows[3]]) + "\n")
    assert pope.run(shuffled, questions, tmp_path)["splits"]["random"]["TP"] == 1


def test_pope_names_the_official_division_by_zero(tmp_path):
    answers, questions = _write_pope(tmp_path, ["No", "no"], {"adversarial": ["yes", "no"]})
    with pytest.raises(ScoreError, match="no answer parses as yes"):
        pope.run(answers, questions, tmp_path)


def test_gqa_exact_match_after_rstrip_and_lower():
    questions = {
        "1": {"answer": "red", "isBalanced": True, "types": {"structural": "query"}},
        "2": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify"}},
        "3": {"answer": "the cat", "isBalanced": True, "types": {"structural": "query"}},
        "4": {"answer": "blue", "isBalanced": False, "types": {"structural": "query"}},
    }
    answers = [
        {"question_id": "1", "text": "Red..."},  # trailing periods go, case goes
        {"question_id": "2", "text": "Yes"},
        {"question_id": "3", "text": "cat"},  # no article stripping
    ]
    result = gqa.score(answers, questions)
    assert (
        result["accuracy"] == pytest.approx(200 / 3) and result["binary"] == 100.0 and result["open"] == 50.0
    )
    with pytest.raises(ScoreError, match="no prediction for balanced question '3'"):
        gqa.score(answers[:2], questions)
    assert gqa.score(answers[:2], questions, skip_missing=True)["scored"] == 2


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("C. a mammal", "C"),
        ("The answer is D. because", "D"),
        ("The answer is C", "FAILED"),  # the pattern's final '.' needs a character after the letter
        ("The answer is A. The answer is B. ", "FAILED"),  # two matches
        ("b", "FAILED"),
        ("Answer: B", "FAILED"),
    ],
)
def test_sqa_parse_order(text, letter):
    assert sqa.parse_letter(text) == letter


def test_sqa_accuracy_img_filter_out_of_range_letters_and_missing_predictions():
    problems = {
        "1": {"choices": ["x", "y"], "answer": 1},
        "2": {"choices": ["x", "y"], "answer": 0},
        "3": {"choices": ["x", "y", "z"], "answer": 2},
        "4": {"choices": ["x", "y"], "answer": 0},
    }
    answers = [
        {"question_id": "1", "text": "B", "prompt": "<image>\nQ"},
        {"question_id": "2", "text": "C", "prompt": "<image>\nQ"},  # C is beyond two choices: wrong
        {"question_id": "3", "text": "C", "prompt": "Q"},  # right, but text-only
    ]  # "4" has no prediction: wrong, and not IMG
    result = sqa.score(answers, problems, {"test": ["1", "2", "3", "4"]})
    assert (result["correct"], result["total"]) == (2, 4)
    assert result["img_accuracy"] == 50.0 and result["img_total"] == 2


def test_score_command_prints_and_writes_json(tmp_path, capsys):
    answers, questions = _write_pope(tmp_path, ["Yes", "No"], {"popular": ["yes", "no"]})
    argv = ["score", "--bench", "pope", "--answers", str(answers), "--questions", str(questions)]
    assert main([*argv, "--annotations", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Category: popular, # samples: 2" in out and "POPE (mean F1 over 1 splits): 100.00" in out
    saved = json.loads((tmp_path / "answers.pope-score.json").read_text())
    assert saved["pope_f1"] == 100.0
    assert main(argv) == 2 and "needs --annotations" in capsys.readouterr().err
    answers.write_text('{"question_id": 1, "text": "Yes"}\nnot json\n')
    assert main([*argv, "--annotations", str(tmp_path)]) == 2
    assert "answers.jsonl, line 2: not JSON" in capsys.readouterr().err


def test_the_synthetic_world_benchmark_files_score(shapes, tmp_path):
    """The files `distill synth` writes go through the scorers: the reference answers score 100."""
    bench = shapes / "benchmarks"
    questions = read_jsonl(bench / "pope" / "llava_pope_test.jsonl")
    labels = {}
    for path in (bench / "pope" / "coco").glob("coco_pope_*.json"):
        labels.update({r["question_id"]: r["label"] for r in read_jsonl(path)})
    answers = [
        {"question_id": q["question_id"], "text": labels[q["question_id"]].capitalize()} for q in questions
    ]
    assert pope.score(answers, questions, bench / "pope" / "coco")["pope_f1"] == pytest.approx(100.0)
    gqa_questions = json.loads((bench / "gqa" / "testdev_balanced_questions.json").read_text())
    gqa_answers = [{"question_id": k, "text": v["answer"] + "."} for k, v in gqa_questions.items()]
    assert gqa.score(gqa_answers, gqa_questions)["accuracy"] == 100.0
    science = bench / "scienceqa"
    records = json.loads((science / "llava_test_CQM-A.json").read_text())
    sqa_answers = [
        {
            "question_id": r["id"],
            "text": r["conversations"][1]["value"],
            "prompt": r["conversations"][0]["value"],
        }
        for r in records
    ]
    problems, splits = (json.loads((science / n).read_text()) for n in ("problems.json", "pid_splits.json"))
    assert sqa.score(sqa_answers, problems, splits)["img_accuracy"] == 100.0


def test_pope_leaves_out_a_split_without_answers_and_names_it(tmp_path):
    """A --limit run answers only the first split; the official script would divide by zero."""
    answers, questions = _write_pope(tmp_path, ["Yes", "No"], {"adversarial": ["yes", "no"]})
    (tmp_path / "coco_pope_random.json").write_text(json.dumps({"question_id": 99, "label": "yes"}) + "\n")
    result = pope.run(answers, questions, tmp_path)
    assert set(result["splits"]) == {"adversarial"} and result["absent_splits"] == ["random"]
    assert result["pope_f1"] == 100.0
    assert "(no answers, left out: random)" in pope.report(result)
