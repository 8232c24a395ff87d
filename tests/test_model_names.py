"""Model folders get the shortest names that tell them apart, in every table that lists several."""

import pytest

from distill import heldout
from distill.__main__ import main
from distill.model_names import model_name, unique_names


@pytest.mark.parametrize(
    "paths, names",
    [
        (["runs/tiny/student-kd/final", "runs/tiny/student-sft/final"], ["student-kd", "student-sft"]),
        (["runs/ablate/kd/seed-0/final", "runs/ablate/sft/seed-0/final"], ["kd/seed-0", "sft/seed-0"]),
        (["runs/a/checkpoint-600", "runs/b/checkpoint-600"], ["a/checkpoint-600", "b/checkpoint-600"]),
    ],
)
def test_models_get_the_shortest_names_that_tell_them_apart(paths, names, tmp_path):
    assert unique_names([tmp_path / p for p in paths]) == names


def test_a_final_folder_is_named_after_its_run(tmp_path):
    assert model_name(tmp_path / "runs" / "teacher" / "final") == "teacher"
    assert model_name(tmp_path / "runs" / "teacher" / "checkpoint-200") == "checkpoint-200"


def test_heldout_keeps_one_column_per_model_when_folder_names_repeat(tmp_path, monkeypatch, capsys):
    def scored(model_dir, data, per_family, batch_size):  # the table's shape, without a model to run
        families = {"overall": {"n": 1, "accuracy": 1.0 if "/a/" in str(model_dir) else 0.0, "chance": 0.5}}
        return {"families": families, "llm_parameters": 1, "parameters": 1}

    monkeypatch.setattr(heldout, "evaluate_model", scored)
    models = [str(tmp_path / "a" / "checkpoint-600"), str(tmp_path / "b" / "checkpoint-600")]
    assert main(["heldout", "--model", *models]) == 0
    table = capsys.readouterr().out
    assert "| family | a/checkpoint-600 | b/checkpoint-600 | chance |" in table
    assert "| overall (n=1) | 100.0 | 0.0 | 50.0 |" in table
