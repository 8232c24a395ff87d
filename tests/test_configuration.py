"""YAML configs load into dataclasses; overrides apply; bad keys and values name themselves."""

from pathlib import Path

import pytest

from distill.configuration import ConfigError, load_config, parse_override, save_config
from distill.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = "model:\n  path: some/checkpoint\n"


def test_every_shipped_run_config_loads():
    assert SHIPPED, "no configs shipped"
    for path in SHIPPED:
        cfg = load_config(RunConfig, path)
        assert cfg.train.output_dir, path


def test_dotted_overrides_are_typed(tmp_path):
    cfg = load_config(
        RunConfig,
        write(tmp_path, BASE),
        [
            "train.max_steps=20",
            "loss.temperature=2",
            "train.learning_rate=5e-3",
            "train.train_modules=[projector]",
            "teacher.path=t",
            "loss.w_kd=0.5",
        ],
    )
    assert cfg.train.max_steps == 20
    assert cfg.loss.temperature == 2.0 and isinstance(cfg.loss.temperature, float)
    assert cfg.train.learning_rate == 5e-3
    assert cfg.train.train_modules == ["projector"]
    assert cfg.teacher.path == "t" and cfg.loss.w_kd == 0.5


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (BASE + "train:\n  max_step: 5\n", [], "unknown config key 'train.max_step'"),
        (BASE, ["trian.max_steps=5"], "unknown config key 'trian'"),
        (BASE, ["train.max_steps=many"], "train.max_steps: expected an integer"),
        (BASE, ["loss.divergence=kl"], "loss.divergence: 'kl' is not one of"),
        (BASE, ["loss.jsd_beta=2"], "loss.jsd_beta = 2.0 is outside the allowed range"),
        (BASE, ["loss.w_kd=1"], "needs a teacher"),
        ("model:\n  tokenizer: t\n", [], "exactly one of model.path"),
        (BASE, ["train.train_modules=[eyes]"], "train.train_modules[0]"),
        (BASE, ["train.max_steps"], "not of the form key.sub=value"),
        (BASE, ["train.lr_scheduler=warmup_stable_decay"], "warmup_stable_decay needs train.max_steps"),
        (BASE, ["loss.w_sft=.nan"], "loss.w_sft: expected a number, got nan"),
        (BASE, ["train.output_dir=010"], "train.output_dir: expected a string, got 8"),  # YAML's octal
        (BASE, ["data.max_records=-3"], "data.max_records = -3 is outside"),
        (BASE, ["train.warmup_ratio=1.0"], "train.warmup_ratio = 1.0 is outside the allowed range"),
        (BASE, ["model.arch.hiden_size=64"], "unknown config key 'model.arch.hiden_size'"),  # nested, named
        (BASE, ["loss.skew_alpha=1"], "loss.skew_alpha = 1.0 is outside"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(RunConfig, write(tmp_path, text), overrides)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RunConfig, write(tmp_path, "model: [unclosed"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(RunConfig, write(tmp_path, BASE), ["train.max_steps=7"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(RunConfig, tmp_path / "resolved.yaml") == cfg


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("--a=null") == ("a", None)


def test_warmup_stable_decay_schedule_holds_the_peak_then_decays(tmp_path):
    import torch
    from transformers import get_scheduler

    from distill.train import training_arguments

    overrides = [
        f"train.output_dir={tmp_path}",
        "train.max_steps=100",
        "train.warmup_ratio=0.1",
        "train.lr_scheduler=warmup_stable_decay",
        "train.decay_ratio=0.2",
    ]
    args = training_arguments(load_config(RunConfig, write(tmp_path, BASE), overrides))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(args.max_steps),
        num_training_steps=args.max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[5] < 1.0 and rates[10:80] == [1.0] * 70 and rates[99] < 0.01


def test_bf16_on_a_cpu_warns_without_bf16_instructions_and_native_follows_them(monkeypatch, capsys):
    import torch

    from distill import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.use_bf16(True) is True
    assert "train.bf16=false" in capsys.readouterr().out
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.use_bf16(True) is True and capsys.readouterr().out == ""
    assert train.use_bf16("auto") is False and train.use_bf16(False) is False
    assert train.use_bf16("native") is True and capsys.readouterr().out == ""
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.use_bf16("native") is False and capsys.readouterr().out == ""
