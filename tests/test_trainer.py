"""Training runs end to end on tiny models: loss goes down, KD logs its terms, runs resume exactly."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from distill.configuration import ConfigError, from_dict
from distill.data import LlavaDataset, ModelView, PaddingCollator
from distill.modeling import image_token_count, load_llava
from distill.run_config import RunConfig
from distill.train import fit, resume_point, run_training, setup
from tests.conftest import TINY


def config(shapes, out, **sections) -> RunConfig:
    data = {
        "name": "test",
        "model": {"tokenizer": str(shapes / "tokenizer"), "arch": dict(TINY)},
        "data": {"train_json": str(shapes / "train.json"), "max_length": 256},
        "train": {
            "output_dir": str(out),
            "max_steps": 6,
            "batch_size": 4,
            "learning_rate": 3e-3,
            "logging_steps": 1,
            "save_steps": 2,
            "save_total_limit": 5,
            "report_to": "none",
            "warmup_ratio": 0.0,
            "seed": 3,
        },
    }
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return from_dict(RunConfig, data)


def align_ti_on_one_batch(tmp_path, shapes, teacher_dir, device=None, **loss):
    """A trainer with the whole Align-TI objective (SFT + KD + IVA at teacher layer 1 + TPA, `loss`
    overriding), its student in training mode without dropout, and a batch of four samples, all on
    `device` (the trainer's own by default)."""
    terms = {"w_kd": 1.0, "w_iva": 1.0, "iva_layer": 1, "w_tpa": 1.0, **loss}
    s = setup(config(shapes, tmp_path / "run", teacher={"path": str(teacher_dir)}, loss=terms))
    model = s.trainer.model.to(device or s.trainer.model.device).train()
    s.trainer.teacher.to(model.device)
    model.config.get_text_config().dropout = 0.0
    batch = PaddingCollator(s.processor.tokenizer.pad_token_id)([s.dataset[i] for i in range(4)])
    return s.trainer, model, {key: value.to(model.device) for key, value in batch.items()}


def fixed_batch_loss(model_dir, shapes):
    model, processor = load_llava(model_dir)
    view = ModelView.from_processor(processor, image_token_count(model.config), 256)
    dataset = LlavaDataset(shapes / "val.json", {"student": view}, progress=False)
    batch = PaddingCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(6)])
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items()}).loss.item()


def test_training_lowers_the_loss_and_writes_a_complete_model(tmp_path, shapes):
    cfg = config(shapes, tmp_path / "run", train={"max_steps": 1, "save_steps": 100})
    before = fixed_batch_loss(run_training(cfg), shapes)
    cfg = config(shapes, tmp_path / "run2", train={"max_steps": 40, "save_steps": 100})
    final = run_training(cfg)
    assert fixed_batch_loss(final, shapes) < before - 0.5
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        "run_config.yaml",
        "train_summary.json",
        "generation_config.json",
    ):
        assert (final / name).is_file(), name
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["global_step"] == 40 and "0 skipped" in summary["data"]
    throughput = summary["throughput"]
    assert throughput["steps"] == 40 and throughput["warmup_steps_excluded"] == 3
    assert (
        throughput["median_step_s"] > 0 and throughput["mean_step_s"] > 0 and throughput["tokens_per_s"] > 0
    )
    # every sample carries at least its image tokens and at most max_length tokens
    batch_size = cfg.train.batch_size
    image_tokens = (cfg.model.arch.image_size // cfg.model.arch.patch_size) ** 2
    assert (
        batch_size * image_tokens < throughput["median_tokens_per_step"] <= batch_size * cfg.data.max_length
    )


def test_kd_run_logs_each_term_and_trains_only_the_chosen_modules(tmp_path, shapes, teacher_dir):
    cfg = config(
        shapes,
        tmp_path / "kd",
        teacher={"path": str(teacher_dir)},
        loss={"w_kd": 1.0, "kl_chunk_size": 7},
        train={"train_modules": ["projector", "language_model"], "max_steps": 4},
    )
    s = setup(cfg)
    vision_before = {k: v.clone() for k, v in s.trainer.model.model.vision_tower.state_dict().items()}
    fit(s)
    logs = [entry for entry in s.trainer.state.log_history if "loss" in entry]
    assert all("loss_kd" in e and "loss_sft" in e for e in logs)
    assert all(abs(e["loss"] - e["loss_kd"] - e["loss_sft"]) < 1e-3 for e in logs)
    for k, v in s.trainer.model.model.vision_tower.state_dict().items():
        assert torch.equal(v, vision_before[k]), k


def test_teacher_with_its_own_image_size_is_fed_its_own_view(tmp_path, shapes, tokenizer):
    from distill.modeling import save_llava
    from tests.conftest import make_model

    model, processor = make_model(tokenizer, image_size=64)
    teacher = save_llava(model, processor, tmp_path / "teacher64")
    cfg = config(
        shapes, tmp_path / "kd64", teacher={"path": str(teacher)}, loss={"w_kd": 1.0}, train={"max_steps": 2}
    )
    s = setup(cfg)
    assert s.dataset.teacher_separate and not s.pair.same_visual_tokens
    fit(s)
    assert s.trainer.state.global_step == 2


class StopAt(TrainerCallback):
    """Simulates a killed run: raises right after step `step` ends."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def weights(final):
    return load_file(final / "model.safetensors")


@pytest.mark.parametrize("grouped", [False, True], ids=["random batches", "length-grouped single turns"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, shapes, grouped):
    # 2 records of 4-5 questions: an epoch every 2-3 steps, so the resumed run starts a new one
    grouped_sections = {"train": {"group_by_length": True}, "data": {"split_turns": True, "max_records": 2}}
    sections = grouped_sections if grouped else {}
    reference = weights(run_training(config(shapes, tmp_path / "straight", **sections)))

    cfg = config(shapes, tmp_path / "killed", **sections)
    s = setup(cfg)
    s.trainer.add_callback(StopAt(5))
    with pytest.raises(KeyboardInterrupt):
        fit(s)
    assert resume_point(cfg.train.output_dir, resume=True).endswith("checkpoint-4")
    assert not (tmp_path / "killed" / ".partial").exists()  # no empty staging folder left behind
    with pytest.raises(FileExistsError, match="pass --resume"):
        run_training(cfg)
    resumed = weights(run_training(cfg, resume=True))
    assert resumed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=1e-6)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, shapes, monkeypatch):
    cfg = config(shapes, tmp_path / "crash")
    original = Trainer._save_optimizer_and_scheduler
    calls = {"n": 0}

    def flaky(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("killed while writing the optimizer state")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", flaky)
    with pytest.raises(OSError, match="killed while writing"):
        run_training(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "crash"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (run_dir / "checkpoint-2" / "optimizer.pt").is_file()
    assert resume_point(str(run_dir), resume=True).endswith("checkpoint-2")
    assert not (run_dir / ".partial").exists()  # the half-written save is cleaned away
    final = run_training(cfg, resume=True)
    assert json.loads((final / "train_summary.json").read_text())["global_step"] == 6


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, shapes):
    big = weights(run_training(config(shapes, tmp_path / "big", train={"max_steps": 1, "batch_size": 4})))
    accumulated = weights(
        run_training(
            config(
                shapes,
                tmp_path / "acc",
                train={"max_steps": 1, "batch_size": 2, "gradient_accumulation_steps": 2},
            )
        )
    )
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-5)


def test_profiled_steps_print_a_table_write_a_trace_and_stay_out_of_the_timing(tmp_path, shapes, capsys):
    cfg = config(shapes, tmp_path / "run", train={"max_steps": 6, "save_steps": 100, "profile_steps": 2})
    final = run_training(cfg)
    printed = capsys.readouterr().out
    assert "profile of steps 4-5, by cpu_time_total" in printed
    assert (tmp_path / "run" / "profile" / "trace.json").stat().st_size > 0
    throughput = json.loads((final / "train_summary.json").read_text())["throughput"]
    assert throughput["steps"] == 6 and throughput["warmup_steps_excluded"] == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="FlexAttention trains on GPUs")
def test_flex_attention_on_cpu_is_refused_before_anything_is_built(tmp_path, shapes):
    cfg = config(shapes, tmp_path / "run", model={"attn_implementation": "flex_attention"})
    with pytest.raises(ConfigError, match="flex_attention trains on GPUs only"):
        setup(cfg)


def test_the_fused_kernel_without_a_gpu_or_under_zero_3_is_refused_before_anything_is_built(tmp_path, shapes):
    cfg = config(shapes, tmp_path / "run", loss={"fused_kernel": True})
    with pytest.raises(ConfigError, match="need a CUDA GPU"):
        setup(cfg)
    cfg = config(
        shapes,
        tmp_path / "run",
        loss={"fused_kernel": True},
        train={"deepspeed": str(Path(__file__).parents[1] / "configs/deepspeed/zero3.json")},
    )
    with pytest.raises(ConfigError, match="ZeRO-3 partitions"):
        setup(cfg)


@pytest.mark.gpu
def test_an_align_ti_run_with_the_fused_kernel_logs_the_chunked_runs_first_losses(
    tmp_path, shapes, teacher_dir
):
    pytest.importorskip("liger_kernel")
    logs = {}
    for fused in (False, True):
        cfg = config(
            shapes,
            tmp_path / f"fused-{fused}",
            teacher={"path": str(teacher_dir)},
            loss={"w_kd": 1.0, "w_tpa": 1.0, "w_iva": 1.0, "iva_layer": 1, "fused_kernel": fused},
            train={"max_steps": 2, "bf16": False},
        )
        s = setup(cfg)
        fit(s)
        logs[fused] = next(entry for entry in s.trainer.state.log_history if "loss" in entry)
    for term in ("loss_sft", "loss_kd", "loss_tpa", "loss_iva"):
        assert logs[True][term] == pytest.approx(logs[False][term], rel=1e-3), term
