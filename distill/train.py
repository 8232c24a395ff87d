"""`python -m distill train CONFIG.yaml [key.sub=value ...] [--resume]`: one training stage.

    python -m distill train configs/tiny-teacher.yaml
    python -m distill train configs/tiny-student-kd.yaml train.max_steps=50 --resume
    accelerate launch --config_file configs/accelerate/zero2.yaml -m distill train configs/qwen2-0.5b-student-stage2.yaml

setup -> fit -> save: the model (a checkpoint, a fresh tiny build or an assembled student) and the
optional teacher are loaded and checked against each other before any weights of the teacher are
read; the data is tokenized and checked up front; a `DistillTrainer` trains; the final model is
written atomically to OUTPUT_DIR/final with its processor and the resolved config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from distill.configuration import ConfigError, load_config, read_yaml, save_config, to_dict
from distill.conversation import reply_stop_warning
from distill.data import LlavaDataset, ModelView, PaddingCollator
from distill.float32_attention import use_float32_attention
from distill.fused_losses import require_fused_kernel
from distill.hidden_alignment import layer_pairs
from distill.irs import read_best_layer
from distill.modeling import (
    DTYPES,
    build_llava,
    check_llava_dir,
    image_token_count,
    language_model_parameters,
    load_llava,
    load_processor,
    set_trainable,
)
from distill.packing import PackingCollator
from distill.pairing import PairError, PairReport, check_pair
from distill.profiling import StepProfiler
from distill.run_config import ModelConfig, RunConfig
from distill.throughput import WARMUP_STEPS, StepTimer, describe
from distill.trainer import RUN_CONFIG_NAME, STAGING_DIR, DistillTrainer
from distill.vision_encoders import copy_vision_tower

FINAL_DIR = "final"
SUMMARY_NAME = "train_summary.json"


@dataclass
class Setup:
    config: RunConfig
    trainer: DistillTrainer
    dataset: LlavaDataset
    processor: Any
    pair: PairReport | None


def build_model(cfg: ModelConfig) -> tuple[Any, Any]:
    """The model to train: a checkpoint, or a fresh build (optionally with a donor vision tower)."""
    if cfg.path is not None:
        model, processor = load_llava(cfg.path, cfg.dtype, cfg.attn_implementation)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
        model, processor = build_llava(cfg.arch, tokenizer, cfg.attn_implementation)  # type: ignore[arg-type]
        model.to(DTYPES[cfg.dtype])
    if cfg.vision_init is not None:
        copy_vision_tower(model, cfg.vision_init)
    return model, processor


def resolve_iva_layers(cfg: RunConfig, student_config: Any, teacher_config: Any, pair: PairReport) -> None:
    """Fill in IVA's layers (the teacher's l* from `distill irs`; for student-side weights the student
    layer at the same relative depth) so the saved run config records them; refuse what cannot work."""
    loss = cfg.loss
    if loss.w_iva <= 0:
        return
    if not pair.same_visual_tokens:
        raise PairError(
            f"loss.w_iva > 0 compares the two models token by token over the image, so it needs the same number "
            f"of visual tokens (student {pair.student_visual_tokens}, teacher {pair.teacher_visual_tokens})"
        )
    if loss.iva_weights == "uniform":
        return
    teacher_layers = teacher_config.get_text_config().num_hidden_layers
    if loss.iva_layer is None:
        loss.iva_layer = read_best_layer(cfg.teacher.path)
        if loss.iva_layer is None:
            raise ConfigError(
                f"loss.w_iva > 0 needs the teacher layer l*: run `python -m distill irs --model {cfg.teacher.path}` "
                "(it writes irs.json there) or set loss.iva_layer"
            )
    if not 0 <= loss.iva_layer < teacher_layers:
        raise ConfigError(f"loss.iva_layer={loss.iva_layer} is outside the teacher's {teacher_layers} layers")
    if loss.iva_weights == "student":
        student_layers = student_config.get_text_config().num_hidden_layers
        if loss.iva_student_layer is None:
            loss.iva_student_layer = round(loss.iva_layer * (student_layers - 1) / max(teacher_layers - 1, 1))
        if not 0 <= loss.iva_student_layer < student_layers:
            raise ConfigError(
                f"loss.iva_student_layer={loss.iva_student_layer} is outside the student's {student_layers} layers"
            )


def check_term_shapes(cfg: RunConfig, student_config: Any, teacher_config: Any, pair: PairReport) -> None:
    """Refuse, before any weights are read, the comparison terms this pair cannot compute."""
    loss = cfg.loss
    if loss.w_hidden > 0:
        try:
            layer_pairs(
                loss.hidden_layers,
                student_config.get_text_config().num_hidden_layers,
                teacher_config.get_text_config().num_hidden_layers,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if loss.hidden_tokens != "response" and not pair.same_visual_tokens:
            raise PairError(
                f"loss.hidden_tokens={loss.hidden_tokens} aligns the visual tokens one to one, which needs equal "
                f"counts (student {pair.student_visual_tokens}, teacher {pair.teacher_visual_tokens}); "
                "use loss.hidden_tokens=response, or EM-KD's matched terms (loss.w_vsd, loss.w_vlad)"
            )


def load_teacher(cfg: RunConfig, student: Any, student_processor: Any) -> tuple[Any, Any, PairReport] | None:
    """Check the pair from configs and tokenizers first, then load the teacher's weights."""
    if not cfg.loss.needs_teacher or cfg.teacher.path is None:
        return None
    teacher_config = check_llava_dir(cfg.teacher.path)
    teacher_processor = load_processor(cfg.teacher.path)
    report = check_pair(student.config, student_processor, teacher_config, teacher_processor)
    resolve_iva_layers(cfg, student.config, teacher_config, report)
    check_term_shapes(cfg, student.config, teacher_config, report)
    warn_on_unseen_layout(cfg)
    teacher = LlavaForConditionalGeneration.from_pretrained(
        cfg.teacher.path, dtype=DTYPES[cfg.teacher.dtype], local_files_only=True
    )
    return teacher, teacher_processor, report


def warn_on_unseen_layout(cfg: RunConfig) -> None:
    """A teacher this kit trained on single questions (its stored run config says split_turns) knows
    nothing of whole conversations: distilled on them, it passes on guesses after the first reply."""
    stored = Path(cfg.teacher.path) / RUN_CONFIG_NAME
    if cfg.data.split_turns or not stored.is_file():
        return
    if read_yaml(stored).get("data", {}).get("split_turns"):
        print(
            f"warning: the teacher trained on single questions (data.split_turns in {stored}) but this run "
            "distills it on whole conversations, whose later replies it has never seen; set "
            "data.split_turns=true, or see `python -m distill check CONFIG --probe-teacher 200`"
        )


def use_bf16(setting: bool | str) -> bool:
    """train.bf16 for this machine: auto is a GPU with bf16; native is also a CPU with bf16 instructions."""
    if setting in ("auto", "native"):
        if torch.cuda.is_available():
            return torch.cuda.is_bf16_supported()
        return setting == "native" and cpu_has_native_bf16()
    if setting and not torch.cuda.is_available() and not cpu_has_native_bf16():
        print(
            "warning: train.bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): its bf16 matrix "
            "products are emulated and slower than float32 here; train.bf16=false trains in float32"
        )
    return bool(setting)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), where bf16 autocast
    makes CPU training faster (docs/tiny-world.md, "bf16 on a CPU")."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def deepspeed_config(cfg: RunConfig) -> str | None:
    """train.deepspeed, or the file `accelerate launch` was given in its config (ZeRO via accelerate)."""
    if cfg.train.deepspeed is not None:
        return cfg.train.deepspeed
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    return None


def zero_stage(cfg: RunConfig) -> int | None:
    """The ZeRO stage of the DeepSpeed config this run uses (None without DeepSpeed)."""
    path = deepspeed_config(cfg)
    if path is None:
        return None
    try:
        return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"train.deepspeed: {path} is not a readable DeepSpeed JSON config ({error})"
        ) from None


def training_arguments(cfg: RunConfig) -> TrainingArguments:
    t = cfg.train
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(t.output_dir) / "logs"))
    return TrainingArguments(
        output_dir=t.output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        adam_beta2=t.adam_beta2,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        lr_scheduler_kwargs=(
            {"num_decay_steps": round(t.decay_ratio * t.max_steps)}
            if t.lr_scheduler == "warmup_stable_decay"
            else None
        ),
        max_grad_norm=t.max_grad_norm,
        bf16=use_bf16(t.bf16),
        activation_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        deepspeed=deepspeed_config(cfg),
        dataloader_num_workers=t.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        report_to=[] if t.report_to == "none" else [t.report_to],
        remove_unused_columns=False,
        optim="adamw_torch",
        include_num_input_tokens_seen="non_padding",  # for the tokens/s of StepTimer
        use_cpu=not torch.cuda.is_available(),
    )


def setup(cfg: RunConfig) -> Setup:
    set_seed(cfg.train.seed)
    if cfg.train.torch_threads > 0:
        torch.set_num_threads(cfg.train.torch_threads)
    if cfg.model.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        raise ConfigError(
            "model.attn_implementation: flex_attention trains on GPUs only (PyTorch's FlexAttention has no "
            "backward pass on CPU); use sdpa here"
        )
    if cfg.loss.fused_kernel:
        require_fused_kernel(torch.device("cuda" if torch.cuda.is_available() else "cpu"), zero_stage(cfg))
    if torch.cuda.is_available() and not cfg.train.cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)  # flash / memory-efficient kernels instead
    model, processor = build_model(cfg.model)
    if warning := reply_stop_warning(processor.tokenizer):
        print(warning)
    loaded = load_teacher(cfg, model, processor)
    teacher, teacher_processor, pair = loaded if loaded else (None, None, None)
    counts = set_trainable(model, cfg.train.train_modules)
    args = training_arguments(cfg)
    if args.bf16 and not torch.cuda.is_available():
        for each in (model, teacher):  # CPU bf16 attention is the slow kernel: distill/float32_attention.py
            if each is not None:
                use_float32_attention(each)
    views = {
        "student": ModelView.from_processor(processor, image_token_count(model.config), cfg.data.max_length)
    }
    if teacher is not None:
        views["teacher"] = ModelView.from_processor(
            teacher_processor, image_token_count(teacher.config), cfg.data.max_length
        )
    dataset = LlavaDataset(
        cfg.data.train_json,
        views,
        cfg.data.image_folder,
        cfg.data.skip_bad_records,
        cfg.data.max_records,
        split_turns=cfg.data.split_turns,
        image_cache_mib=cfg.data.image_cache_mib,
    )
    trainer = DistillTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=(
            PackingCollator(processor.tokenizer.pad_token_id)
            if cfg.data.pack
            else PaddingCollator(processor.tokenizer.pad_token_id)
        ),
        processing_class=processor,
        loss_config=cfg.loss,
        vocab_size=pair.vocab_size if pair else len(processor.tokenizer),
        teacher=teacher,
        run_config=cfg,
    )
    if trainer.is_world_process_zero():
        lm = language_model_parameters(model)
        print(
            f"[{cfg.name}] model: {counts['total']:,} parameters ({lm:,} in the LLM), {counts['trainable']:,} trainable"
        )
        if pair is not None:
            print(f"[{cfg.name}] teacher: {cfg.teacher.path}; " + "; ".join(pair.lines()))
        print(
            f"[{cfg.name}] data: {dataset.report()}; checked and tokenized in {dataset.tokenize_seconds:.1f} s"
        )
    return Setup(cfg, trainer, dataset, processor, pair)


def resume_point(output_dir: str, resume: bool) -> str | None:
    """The last complete checkpoint when resuming; refuses to train over an existing run otherwise."""
    shutil.rmtree(Path(output_dir) / STAGING_DIR, ignore_errors=True)  # leftovers of a killed save
    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if last is not None and not resume:
        raise FileExistsError(
            f"{output_dir} already holds {Path(last).name}; pass --resume to continue it, or choose another train.output_dir"
        )
    return last


def check_resumed_config(cfg: RunConfig, checkpoint: str) -> None:
    stored = Path(checkpoint) / RUN_CONFIG_NAME
    if stored.is_file() and read_yaml(stored) != to_dict(cfg):
        print(f"warning: the config differs from the one stored in {checkpoint}; continuing with the new one")


def save_final(s: Setup, summary: dict[str, Any]) -> Path:
    """trainer.save_model gathers sharded weights (ZeRO-3) on every rank; rank 0 renames."""
    out = Path(s.config.train.output_dir)
    staging, final = out / STAGING_DIR / FINAL_DIR, out / FINAL_DIR
    s.trainer.save_model(str(staging))
    if s.trainer.is_world_process_zero():
        save_config(s.config, staging / RUN_CONFIG_NAME)
        (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    s.trainer.accelerator.wait_for_everyone()
    return final


def fit(s: Setup, checkpoint: str | None = None) -> Path:
    """Train (from `checkpoint` when given) and save the final model."""
    if checkpoint is not None and s.trainer.is_world_process_zero():
        check_resumed_config(s.config, checkpoint)
        print(f"[{s.config.name}] resuming from {checkpoint}")
    profile_steps = s.config.train.profile_steps
    timer = StepTimer(warmup=WARMUP_STEPS + profile_steps)
    s.trainer.add_callback(timer)
    if profile_steps:
        s.trainer.add_callback(StepProfiler(profile_steps, s.config.train.output_dir))
    start = time.perf_counter()
    result = s.trainer.train(resume_from_checkpoint=checkpoint)
    throughput = timer.summary()
    summary = {
        "name": s.config.name,
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "seconds": round(time.perf_counter() - start, 1),
        "data": s.dataset.report(),
        "throughput": throughput,
        "log_history": s.trainer.state.log_history,
    }
    final = save_final(s, summary)
    if s.trainer.is_world_process_zero():
        print(
            f"[{s.config.name}] {result.global_step} steps in {summary['seconds']} s; model saved to {final}"
        )
        print(f"[{s.config.name}] data: {s.dataset.report()}")
        print(f"[{s.config.name}] throughput: {describe(throughput)}")
    return final


def run_training(cfg: RunConfig, resume: bool = False) -> Path:
    checkpoint = resume_point(cfg.train.output_dir, resume)  # before any loading: fail fast
    return fit(setup(cfg), checkpoint)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20 loss.w_kd=0.5"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last complete checkpoint in train.output_dir"
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(RunConfig, args.config, args.overrides)
    run_training(cfg, resume=args.resume)
    return 0
