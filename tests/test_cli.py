"""The command line: help texts, clear errors without tracebacks, and each command end to end."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.__main__ import COMMANDS, main
from distill.modeling import load_llava

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "distill", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_lists_every_command():
    done = cli("--help")
    assert done.returncode == 0
    for name in COMMANDS:
        assert name in done.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "python -m distill" in capsys.readouterr().out


def test_console_script_is_installed():
    done = subprocess.run([Path(sys.executable).parent / "distill", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "quickstart" in done.stdout
    done = subprocess.run(
        [Path(sys.executable).parent / "distill-eval", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and all(command in done.stdout for command in ("run", "score", "suite"))


def test_bad_config_key_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  path: x\ntrain:\n  max_stepz: 3\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "error: unknown config key 'train.max_stepz' (known keys under 'train.': "
        + err.split("(known keys under 'train.': ")[1].strip()
    )
    assert "Traceback" not in err


def test_check_reports_a_pair_and_data(shapes, student_dir, teacher_dir, capsys):
    assert (
        main(
            [
                "check",
                "--student",
                str(student_dir),
                "--teacher",
                str(teacher_dir),
                "--data",
                str(shapes / "train.json"),
                "--verify-images",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "shared vocabulary" in out and "records used, 0 skipped" in out and "ok:" in out


def test_check_refuses_a_teacher_with_another_vocabulary(tmp_path, student_dir, teacher_dir, capsys):
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "teacher"
    shutil.copytree(teacher_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<new>"])
    tokenizer.save_pretrained(other)
    assert main(["check", "--student", str(student_dir), "--teacher", str(other)]) == 2
    assert "vocabularies differ" in capsys.readouterr().err


def test_train_command_runs_a_config_with_overrides(tmp_path, shapes, one_layer_arch):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "tokenizer": str(shapes / "tokenizer"),
                    "arch": one_layer_arch,
                },
                "data": {"train_json": str(shapes / "train.json")},
                "train": {"output_dir": str(tmp_path / "out"), "max_steps": 50, "report_to": "none"},
            }
        )
    )
    done = cli("train", str(cfg), "train.max_steps=2", "train.batch_size=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 steps" in done.stdout
    model, _ = load_llava(tmp_path / "out" / "final")
    assert model.config.text_config.num_hidden_layers == 1
    again = cli("train", str(cfg), "train.max_steps=2")
    assert again.returncode == 2 and "pass --resume" in again.stderr
