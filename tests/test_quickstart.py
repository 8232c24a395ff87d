"""The main job end to end at a few steps per stage: data, teacher, KD and SFT students, table."""

import json

import pytest

from distill.__main__ import main
from distill.quickstart import launcher_overrides


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_prints_the_table(tmp_path, capsys):
    args = [
        "quickstart",
        "--data",
        str(tmp_path / "shapes"),
        "--out",
        str(tmp_path / "runs"),
        "--per-family",
        "3",
        "--suite-limit",
        "4",
        "--vision-steps",
        "2",
        "--overrides",
        "train.max_steps=2",
        "train.save_steps=1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "== vision: done" in out
        and (tmp_path / "runs" / "vision" / "final" / "pretrain_vision.json").is_file()
    )
    for stage in ("teacher", "student-kd", "student-sft"):
        assert (tmp_path / "runs" / stage / "final" / "model.safetensors").is_file()
        assert f"== {stage}: done" in out
    table = (tmp_path / "runs" / "heldout.md").read_text()
    assert "| family | teacher | student-kd | student-sft | chance |" in table
    for family in ("colour", "shape", "count", "position", "reading", "yes/no", "multiple-choice", "overall"):
        assert f"| {family} (n=" in table
    results = json.loads((tmp_path / "runs" / "heldout.json").read_text())
    assert results["student-kd"]["llm_parameters"] * 4 <= results["teacher"]["llm_parameters"]
    suite = (tmp_path / "runs" / "eval" / "suite.md").read_text()
    assert (
        "| model | GQA | SQA-IMG | TextVQA | POPE F1 | MME-P | MMBench |" in suite
        and "| student-sft |" in suite
    )
    assert suite.strip() in out  # printed too
    irs = json.loads((tmp_path / "runs" / "teacher" / "final" / "irs.json").read_text())
    assert f"-> l* = {irs['best_layer']}" in out  # the Align-TI config finds the teacher's layer

    assert main(args) == 0  # a second run reuses everything
    again = capsys.readouterr().out
    assert again.count("already trained") == 3 and "already stored" in again


def test_deepspeed_launches_switch_the_tiny_stages_from_muon_to_adamw(capsys):
    assert launcher_overrides("configs/accelerate/zero2.yaml") == ["train.optimizer=adamw"]
    assert "DeepSpeed cannot step Muon" in capsys.readouterr().out
    assert launcher_overrides("configs/accelerate/single.yaml") == []
