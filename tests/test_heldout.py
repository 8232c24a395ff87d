"""The held-out table's scoring: per family, and yes/no and lettered choices by benchmark and category."""

from distill.heldout import format_breakdown, score, score_by_benchmark


def record(family, benchmark, answer, category=None, n_choices=2):
    extra = {"category": category} if category else {}
    return {
        "family": family,
        "benchmark": benchmark,
        "answer": answer,
        "n_choices": n_choices,
        "extra": extra,
    }


RECORDS = [
    record("yes/no", "pope", "Yes", "adversarial"),
    record("yes/no", "pope", "No", "adversarial"),
    record("yes/no", "mme", "Yes", "position"),
    record("multiple-choice", "sqa", "B", n_choices=4),
    record("colour", "gqa", "red", n_choices=6),
]
ANSWERS = ["Yes, there is.", "Yes", "yes", "B. circle", "red"]


def test_yes_no_and_choices_are_split_by_benchmark_and_category():
    groups = score_by_benchmark(RECORDS, ANSWERS)
    assert groups == {
        "multiple-choice: sqa": {"accuracy": 1.0, "n": 1},
        "yes/no: mme position": {"accuracy": 1.0, "n": 1},
        "yes/no: pope adversarial": {"accuracy": 0.5, "n": 2},
    }
    assert score(RECORDS, ANSWERS)["yes/no"]["accuracy"] == 2 / 3  # the family is the groups' union


def test_the_breakdown_table_has_a_column_per_model():
    results = {
        "teacher": {"by_benchmark": score_by_benchmark(RECORDS, ANSWERS)},
        "student": {"by_benchmark": score_by_benchmark(RECORDS, ["No", "No", "no", "A", "blue"])},
    }
    table = format_breakdown(results)
    assert "| benchmark | teacher | student |" in table
    assert "| yes/no: pope adversarial (n=2) | 50.0 | 50.0 |" in table
    assert "| yes/no: mme position (n=1) | 100.0 | 0.0 |" in table
