"""`distill bench --part scale` runs the real-size KD path (random teacher saved to disk, a student
built from its shape, accelerate + DeepSpeed ZeRO-2) end to end, here at tiny shapes on the CPU.
The figures are measurements printed by the command; the test checks that they are reported."""

import argparse
import json
from pathlib import Path

import pytest

from distill.__main__ import main
from distill.bench_scale import LLM_SHAPES, VISION_SHAPES, arch_of, gradient_checkpointing, method_overrides

pytest.importorskip("deepspeed")


def test_real_size_shapes_match_the_named_models():
    student = arch_of("qwen2-0.5b", "siglip-so400m-336", 151_936)
    teacher = arch_of("qwen2-1.5b", "siglip-so400m-336", 151_936)
    assert (student.hidden_size, student.num_layers, student.intermediate_size) == (896, 24, 4864)
    assert (teacher.hidden_size, teacher.num_layers, teacher.intermediate_size) == (1536, 28, 8960)
    assert (student.image_size // student.patch_size) ** 2 == 576  # as LLaVA-1.5
    assert set(LLM_SHAPES) >= {"tiny"} and set(VISION_SHAPES) >= {"tiny"}


@pytest.mark.slow
def test_scale_part_trains_through_deepspeed_and_reports(tmp_path, shapes, capsys):
    out = tmp_path / "scale.json"
    args = ["bench", "--part", "scale", "--data", str(shapes / "train.json"), "--out", str(out)]
    args += ["--scale-student", "tiny", "--scale-teacher", "tiny", "--scale-vision", "tiny"]
    args += ["--scale-vocab", "1000", "--scale-steps", "4", "--scale-batch-size", "2", "--num-processes", "1"]
    args += ["--methods", "kd,tpa-kv", "--scale-set", "train.cudnn_attention=true"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "with train.cudnn_attention=true:" in printed
    assert "Distillation at real sizes" in printed and "zero2.yaml" in printed
    assert "gradient checkpointing off" in printed  # TPA keeps the KV cache, so no method checkpoints
    assert "| kd | 1 of 4 |" in printed and "| 1.00x | 1.00x |" in printed
    scale = json.loads(out.read_text())["scale"]
    assert scale["vocab_size"] == 1000 and scale["visual_tokens"] == 16
    for method in ("kd", "tpa-kv"):
        assert scale["throughput"][method]["steps"] == 4 and scale["throughput"][method]["tokens_per_s"] > 0
        assert scale["throughput"][method]["step_statistic"] == "median"  # neither samples on-policy
    assert scale["teacher_parameters"]["llm"] == scale["student_parameters"]["llm"]  # same tiny shape


def test_scale_set_overrides_come_last_and_decide_checkpointing():
    args = argparse.Namespace(methods=["kd", "tpa-kv"], scale_set=[])
    assert not gradient_checkpointing(args)  # TPA keeps the KV cache
    args.scale_set = ["train.gradient_checkpointing=true", "train.cudnn_attention=true"]
    assert gradient_checkpointing(args)
    overrides = method_overrides("kd", args, Path("/runs"))
    assert overrides[-2:] == args.scale_set  # the user's settings win over the bench's
    assert "train.gradient_checkpointing=true" in overrides and "train.output_dir=/runs/kd" in overrides
    assert not gradient_checkpointing(
        argparse.Namespace(methods=["kd"], scale_set=["train.gradient_checkpointing=off"])
    )


def test_an_on_policy_methods_scale_row_is_its_mean_step(tmp_path):
    from distill.bench_scale import report_scale, stage_figures
    from distill.configuration import save_config
    from distill.run_config import LossConfig, ModelConfig, RunConfig, TeacherConfig

    figures = {"steps": 6, "warmup_steps_excluded": 3, "tokens_per_s": 10.0, "median_tokens_per_step": 384}
    figures |= {"peak_cuda_allocated_mib": None, "peak_cuda_reserved_mib": None, "peak_rss_mib": 1000.0}
    # a stage's final folder: its summary and its resolved config decide which step time is compared
    for name, ratio in (("kd", 0.0), ("gkd", 0.5)):
        final = tmp_path / name
        final.mkdir()
        steps = {"median_step_s": 1.0, "mean_step_s": 1.1 if name == "kd" else 2.2}
        (final / "train_summary.json").write_text(json.dumps({"throughput": {**figures, **steps}}))
        stage = RunConfig(ModelConfig(path="student"), teacher=TeacherConfig(path="teacher"))
        stage.loss = LossConfig(w_kd=1.0, on_policy_ratio=ratio)
        save_config(stage, final / "run_config.yaml")
    kd, gkd = stage_figures(tmp_path / "kd"), stage_figures(tmp_path / "gkd")
    assert (kd["step_s"], kd["step_statistic"]) == (1.0, "median")
    assert (gkd["step_s"], gkd["step_statistic"]) == (2.2, "mean")
    results = {
        "student": "tiny",
        "teacher": "tiny",
        "vision": "tiny",
        "student_parameters": {"total": 10**6, "llm": 10**6},
        "teacher_parameters": {"total": 10**6, "llm": 10**6},
        "visual_tokens": 16,
        "vocab_size": 1000,
        "accelerate_config": "single.yaml",
        "processes": 1,
        "batch_size_per_process": 2,
        "bf16": False,
        "gradient_checkpointing": False,
        "device": "cpu",
        "overrides": [],
        "throughput": {"kd": kd, "gkd": gkd},
    }
    lines = report_scale(results)
    assert "| kd | 3 of 6 | 1000.0 |" in lines[4] and "| gkd | 3 of 6 | 2200.0 |" in lines[5]
    assert lines[5].endswith("| 2.20x | 1.00x |")
    assert lines[6].startswith("gkd: the mean step, not the median")
