"""The MMBench scorer reads options as VLMEvalKit's exact matching does and scores circularly
(../shared/eval-spec.md, "## MMBench")."""

import csv
import json

import pytest

from eval import mmbench
from eval.records import ScoreError

ABC = {"A": "cat", "B": "dog", "C": "bird"}


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("The answer is B.", "B"),
        ("Answer: B) dog", "B"),
        ("**B**", "B"),
        ("B B", "B"),  # one letter, however often
        ("Failed to obtain answer via API B", None),
        ("I think it is B, the dog on the left.", None),  # B is not among the last four tokens
        ("B is the right one", None),  # five tokens: index 0 is not > 0
        ("A or B", None),  # two option letters
        ("E", None),  # not one of this question's letters
        ("b", None),  # letters are case-sensitive
        ("Z", "Z"),
        ("Cannot determine the answer, maybe B", "Z"),  # a refusal phrase wins
        ("", None),
    ],
)
def test_can_infer_option_follows_the_token_rules(text, letter):
    assert mmbench.can_infer_option(text, ABC) == letter


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        ("The dog.", "B"),  # no letter token: the one option text it contains
        ("A dog is at left", "B"),  # "A" is a letter token, but the first of five
        ("a cat and a dog", None),  # two option texts
        ("It is a dog, as anyone who looks carefully at the picture can see", None),  # too long
        ("E", None),
        ("Failed to obtain answer via API", None),
    ],
)
def test_can_infer_tries_letters_then_option_texts(text, letter):
    assert mmbench.can_infer(text, dict(ABC)) == letter


def test_options_stop_at_the_first_empty_cell():
    row = {"A": "yes", "B": "no", "C": "", "D": "maybe"}
    assert mmbench.options(row) == {"A": "yes", "B": "no"}
    assert mmbench.options({"A": "1", "B": "None", "C": "2", "D": ""}) == {
        "A": "1"
    }  # pandas reads "None" as NaN


def _row(index, options, answer, category="cat1", l2="coarse_perception"):
    cells = dict(zip("ABCD", [*options, "", "", "", ""][:4]))
    return {
        "index": str(index),
        "question": "Which animal is on the left?",
        "hint": "",
        **cells,
        "answer": answer,
        "category": category,
        "image": "aW1hZ2U=",
        "source": "test",
        "l2-category": l2,
        "comment": "",
        "split": "dev",
    }


def _circular(index, options, answer_index, **kwargs):
    """A question and its rotated copies, as in the real dev TSV."""
    rows = []
    for shift in range(len(options)):
        rotated = options[shift:] + options[:shift]
        letter = "ABCD"[(answer_index - shift) % len(options)]
        rows.append(_row(index + shift * mmbench.SHIFT, rotated, letter, **kwargs))
    return rows


def _right_answers(rows):
    return [{"question_id": int(r["index"]), "text": r["answer"]} for r in rows]


def test_a_question_counts_only_when_every_rotation_is_right():
    rows = _circular(0, ["cat", "dog", "bird"], 1) + _circular(1, ["red", "blue"], 0)
    answers = _right_answers(rows)
    assert mmbench.score(answers, rows)["accuracy"] == 100.0
    answers[1]["text"] = "The answer is B."  # question 0, first rotation (dog is A there): wrong
    result = mmbench.score(answers, rows)
    assert result["accuracy"] == 50.0 and result["correct"] == 1
    assert result["vanilla_accuracy"] == 100.0  # the originals alone are still right
    missing = [a for a in _right_answers(rows) if a["question_id"] != 1_000_001]
    result = mmbench.score(missing, rows)
    assert result["accuracy"] == 50.0 and result["answered"] == len(rows) - 1
    unreadable = _right_answers(rows)
    unreadable[0]["text"] = "I do not know"  # no option inferred: no LLM judge, so wrong
    result = mmbench.score(unreadable, rows)
    assert result["accuracy"] == 50.0 and result["unmatched"] == 1 and result["vanilla_accuracy"] == 50.0


def test_accuracy_per_category_and_l2_category():
    rows = (
        _circular(0, ["cat", "dog"], 0, category="animals", l2="coarse_perception")
        + _circular(1, ["red", "blue"], 1, category="colours", l2="coarse_perception")
        + _circular(2, ["one", "two"], 1, category="colours", l2="logic_reasoning")
    )
    answers = _right_answers(rows)
    answers[-1]["text"] = "B"  # question 2, its rotation (two is A there): wrong
    result = mmbench.score(answers, rows)
    assert result["category"] == {"animals": 100.0, "colours": 50.0}
    assert result["l2_category"] == {"coarse_perception": 100.0, "logic_reasoning": 0.0}
    assert result["accuracy"] == pytest.approx(200 / 3)
    text = mmbench.report(result)
    assert "Overall: 66.67 (2/3)" in text and "coarse_perception (CP): 100.00" in text


def test_bad_input_is_named():
    rows = _circular(0, ["cat", "dog"], 0)
    with pytest.raises(ScoreError, match="question_id 5 is not in the question file"):
        mmbench.score([{"question_id": 5, "text": "A"}], rows)
    with pytest.raises(ScoreError, match="copy of question 0, which the question file lacks"):
        mmbench.score([], rows[1:])
    with pytest.raises(ScoreError, match="answered twice"):
        mmbench.score([{"question_id": 0, "text": "A"}] * 2, rows)
    with pytest.raises(ScoreError, match="--all-rounds"):
        mmbench.score([{"question_id": 0, "text": "A", "round_id": 1}], rows)


def _write_tsv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def test_run_reads_a_tsv_with_huge_image_cells(tmp_path):
    rows = _circular(7, ["a\ttab", 'a "quoted" one', "multi\nline"], 2)
    for row in rows:
        row["image"] = "A" * 300_000  # over csv's default field limit
    _write_tsv(tmp_path / "mmbench.tsv", rows)
    answers = tmp_path / "answers.jsonl"
    lines = [
        {"question_id": int(r["index"]), "round_id": 0, "text": r["answer"], "options": [], "option_char": []}
        for r in rows
    ]
    answers.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert mmbench.read_tsv(tmp_path / "mmbench.tsv")[0]["C"] == "multi\nline"
    assert mmbench.run(answers, tmp_path / "mmbench.tsv")["accuracy"] == 100.0
    (tmp_path / "bad.tsv").write_text("index\tquestion\tA\tB\n0\tq\tx\ty\n")
    with pytest.raises(ScoreError, match="no C, D, answer, category, l2-category column"):
        mmbench.read_tsv(tmp_path / "bad.tsv")


def test_the_synthetic_world_file_scores_100(shapes):
    rows = mmbench.read_tsv(shapes / "benchmarks" / "mmbench" / "mmbench_dev_20230712.tsv")
    result = mmbench.score(_right_answers(rows), rows)
    assert result["questions"] > 0 and result["rows"] > result["questions"]
    assert result["accuracy"] == 100.0 and result["vanilla_accuracy"] == 100.0
