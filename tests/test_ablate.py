"""`distill ablate`: every (method, seed) run trains from the same teacher with its own objective and
seed, the table aggregates mean ± std per family, and a re-run reuses finished runs."""

import json
import shutil

import pytest

from distill import ablate
from distill.__main__ import main
from distill.configuration import read_yaml
from distill.irs import write_irs


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = [
        {"method": "kd", "families": {"colour": {"accuracy": a, "n": 4}, "overall": {"accuracy": a, "n": 4}}}
        for a in (0.5, 0.75, 1.0)
    ]
    table = ablate.summarize(runs)
    assert table["kd"]["colour"]["mean"] == pytest.approx(75.0)
    assert table["kd"]["colour"]["std"] == pytest.approx(25.0)  # sample std of 50, 75, 100
    assert table["kd"]["overall"]["n_seeds"] == 3


def test_each_method_changes_only_the_objective_and_the_seed(tmp_path):
    args = ablate_args(tmp_path, teacher=tmp_path / "t")
    kd, tpa = ablate.run_overrides("kd", 0, args), ablate.run_overrides("kd+tpa", 1, args)
    assert "loss.w_iva=0" in kd and "loss.w_tpa=0" in kd and "train.seed=0" in kd
    assert "loss.w_iva=0" in tpa and "loss.w_tpa=0" not in tpa and "train.seed=1" in tpa
    assert "teacher.path=null" in ablate.run_overrides("sft", 0, args)
    # the EM-KD student has its own (smaller) vision tower, so it is not initialised from the teacher's
    assert not any(o.startswith("model.vision_init=") for o in ablate.run_overrides("emkd", 0, args))
    assert read_yaml(ablate.METHODS["emkd"][0])["model"]["arch"]["image_size"] == 32


def ablate_args(tmp_path, teacher, **changes):
    import argparse

    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    args = parser.parse_args(["--teacher", str(teacher), "--out", str(tmp_path / "ablate")])
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def test_ablate_end_to_end_on_a_tiny_teacher(tmp_path, shapes, teacher_dir, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    write_irs(teacher, {"scores": [0.1, 0.2], "best_layer": 1, "pairs": 2, "data": "-", "seed": 0})
    arch = ["model.arch.hidden_size=32", "model.arch.num_layers=1", "model.arch.vision_hidden_size=32"]
    tower = [
        "model.arch.vision_layers=1",
        "model.arch.vision_heads=2",
        "model.arch.vision_intermediate_size=64",
    ]
    argv = [
        "ablate",
        *("--teacher", str(teacher), "--data", str(shapes), "--out", str(tmp_path / "ablate")),
        *("--methods", "sft", "align-ti", "--seeds", "0", "1", "--steps", "2", "--per-family", "2"),
        *(
            "--overrides",
            *arch,
            *tower,
            "model.arch.image_size=32",
            "train.batch_size=2",
            "data.max_length=256",
        ),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| family | sft | align-ti |" in out and "± " in out
    assert out.count(" steps in ") == 4  # each run trained once
    result = json.loads((tmp_path / "ablate" / "ablation.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [
        ("sft", 0),
        ("sft", 1),
        ("align-ti", 0),
        ("align-ti", 1),
    ]
    config = read_yaml(tmp_path / "ablate" / "align-ti" / "seed-1" / "final" / "run_config.yaml")
    assert (
        config["train"]["seed"] == 1 and config["loss"]["w_tpa"] == 1.0 and config["loss"]["iva_layer"] == 1
    )
    # a second call finds every final model and only evaluates
    assert main(argv) == 0
    assert " steps in " not in capsys.readouterr().out
