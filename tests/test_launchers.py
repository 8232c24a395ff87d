"""The multi-process path: `accelerate launch` + DeepSpeed ZeRO-2 on two CPU processes (gloo), a
teacher wrapped for DeepSpeed, checkpoints in DeepSpeed's layout, and resume. Slow (DeepSpeed
compiles its CPU communication op the first time, about a minute)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.modeling import load_llava

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("deepspeed")


def accelerate_config(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / "zero2.yaml").read_text())
    config["deepspeed_config"]["deepspeed_config_file"] = str(ROOT / "configs" / "deepspeed" / "zero2.json")
    config.update(num_processes=2, use_cpu=True)
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(accelerate_yaml, run_yaml, *overrides):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(accelerate_yaml),
            "-m",
            "distill",
            "train",
            str(run_yaml),
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_deepspeed_zero2_on_two_processes_trains_distills_and_resumes(
    tmp_path, shapes, teacher_dir, one_layer_arch
):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "tokenizer": str(shapes / "tokenizer"),
                    "arch": one_layer_arch,
                },
                "teacher": {"path": str(teacher_dir)},
                "loss": {"w_kd": 1.0},
                "data": {"train_json": str(shapes / "train.json")},
                "train": {
                    "output_dir": str(tmp_path / "out"),
                    "max_steps": 3,
                    "batch_size": 2,
                    "save_steps": 2,
                    "report_to": "none",
                },
            }
        )
    )
    accelerate_yaml = accelerate_config(tmp_path)
    out = launch(accelerate_yaml, run_yaml)
    assert out.count("3 steps in") == 1  # one report, from the main process
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "global_step2").is_dir() and (checkpoint / "run_config.yaml").is_file()
    model, _ = load_llava(tmp_path / "out" / "final")
    assert model.config.text_config.num_hidden_layers == 1

    out = launch(accelerate_yaml, run_yaml, "train.max_steps=5", "--resume")
    assert "resuming from" in out and "5 steps in" in out


def test_a_failed_launched_stage_is_one_named_error_from_the_command_line(capsys):
    from distill.errors import KNOWN_ERRORS
    from distill.launching import StageError, run_launched

    with pytest.raises(StageError, match="scale-kd: the launched training stage exited with status 3"):
        run_launched([sys.executable, "-c", "import sys; sys.exit(3)"], "scale-kd")
    assert StageError in KNOWN_ERRORS  # printed as one `error:` line, exit status 2
