"""`python -m distill bench --part scale`: distillation at real model sizes for a few steps, through
`accelerate launch` + DeepSpeed, printing step time, tokens/s and peak memory of each objective.

    python -m distill bench --part scale        # Qwen2-0.5B-shaped student <- Qwen2-1.5B-shaped teacher,
                                                # SFT + KD, 20 steps, DeepSpeed ZeRO-2, bf16 on a GPU
    python -m distill bench --part scale --methods kd,tpa-kv,tpa-ribbon,align-ti   # each relative to KD
    python -m distill bench --part scale --methods kd,align-ti --scale-vision tiny --scale-steps 6 \
        --scale-batch-size 2 --accelerate-config configs/accelerate/single.yaml   # short sequences on a CPU
    python -m distill bench --part scale --scale-student tiny --scale-teacher tiny \\
        --scale-vision tiny --scale-vocab 0 --scale-steps 3          # a CPU-sized run of the same path

Both models have random weights (step time and memory do not depend on them) and share a vision
tower shape (the paper distils with one vision encoder). The teacher is built once, saved in bf16
to a temporary folder and loaded by the training stage as any teacher checkpoint is; the student is
built by the stage from its shape (`model.arch`). The data is the synthetic shapes world; the
processors resize its images to the vision tower's resolution, so every sample carries the full
count of visual tokens (576 at 336 px / patch 14, as LLaVA-1.5). Figures come from the training
stage's own StepTimer (distill/throughput.py), read back from its train_summary.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from distill.bench_methods import METHODS, mean_step_line, uses_tpa
from distill.launching import accelerate_train_command, run_launched
from distill.run_config import ArchConfig

ROOT = Path(__file__).resolve().parents[1]

# LLM shapes (Qwen2 configs of the named sizes) and vision tower shapes.
LLM_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864),
    "qwen2-1.5b": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    # LLaVA-1.5-7B's language model (Vicuna-7B, a Llama-2-7B): the serving bench's baseline shape
    "llama2-7b": dict(
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=11008,
        text_model_type="llama",
        rope_theta=10_000.0,
        tie_word_embeddings=False,
    ),
}
VISION_SHAPES: dict[str, dict[str, Any]] = {
    # SigLIP-so400m's width and depth at LLaVA-1.5's resolution: 24 x 24 = 576 visual tokens
    "siglip-so400m-336": dict(
        image_size=336,
        patch_size=14,
        vision_hidden_size=1152,
        vision_layers=27,
        vision_heads=16,
        vision_intermediate_size=4304,
    ),
    # LLaVA-1.5's CLIP ViT-L/14 at 336 px: 576 visual tokens (class token dropped), read at layer -2
    "clip-l-336": dict(
        image_size=336,
        patch_size=14,
        vision_hidden_size=1024,
        vision_layers=24,
        vision_heads=16,
        vision_intermediate_size=4096,
        vision_model_type="clip",
    ),
    "tiny": dict(
        image_size=64,
        patch_size=16,
        vision_hidden_size=64,
        vision_layers=1,
        vision_heads=2,
        vision_intermediate_size=128,
    ),
}


def arch_of(llm: str, vision: str, vocab_size: int) -> ArchConfig:
    """A shape by name; Qwen2's family, RoPE base and tied head unless the LLM shape says otherwise."""
    defaults = dict(text_model_type="qwen2", rope_theta=1_000_000.0, tie_word_embeddings=True)
    return ArchConfig(
        **VISION_SHAPES[vision],
        **{**defaults, **LLM_SHAPES[llm]},
        max_position_embeddings=4096,
        vocab_size=vocab_size,
    )


def parameter_counts(arch: ArchConfig, tokenizer: Any) -> dict[str, int]:
    """Total and LLM parameters of a model of this shape, counted on the meta device (no memory)."""
    from distill.modeling import build_llava, language_model_parameters

    with torch.device("meta"):
        model, _ = build_llava(arch, tokenizer)
    return {"total": sum(p.numel() for p in model.parameters()), "llm": language_model_parameters(model)}


def build_teacher(arch: ArchConfig, tokenizer: Any, out: Path) -> Path:
    """A random-weight teacher of this shape saved in bf16 (initialised on the GPU when there is one)."""
    from distill.modeling import build_llava, save_llava

    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model, processor = build_llava(arch, tokenizer)
    model = model.to(torch.bfloat16)
    path = save_llava(model, processor, out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path


def stage_config(
    args: argparse.Namespace, student: ArchConfig, teacher: Path, tokenizer: Path, data: Path, out: Path
) -> dict[str, Any]:
    """The run config of the measured stage: SFT + vanilla KD, everything trained, as stage 2 does."""
    return {
        "name": f"scale-{args.scale_student}-from-{args.scale_teacher}",
        "model": {"tokenizer": str(tokenizer), "arch": vars(student)},
        "teacher": {"path": str(teacher), "dtype": "bfloat16"},
        "data": {"train_json": str(data), "max_length": args.scale_max_length},
        "loss": {"w_sft": 1.0, "w_kd": 1.0, "divergence": "forward_kl", "kl_chunk_size": 1024},
        "train": {
            "output_dir": str(out),
            "train_modules": ["vision_tower", "projector", "language_model"],
            "max_steps": args.scale_steps,
            "batch_size": args.scale_batch_size,
            "optimizer": "adamw",
            "learning_rate": 2e-5,
            "warmup_ratio": 0.0,
            "lr_scheduler": "constant",
            "bf16": "auto",
            "gradient_checkpointing": True,
            "logging_steps": args.scale_steps,
            "save_steps": 10 * args.scale_steps,  # no intermediate checkpoint inside the timed steps
            "report_to": "none",
            "dataloader_num_workers": 2,
            "profile_steps": args.scale_profile_steps,
        },
    }


def process_count(args: argparse.Namespace) -> int:
    return args.num_processes or max(1, torch.cuda.device_count())


def launch(config_file: Path, args: argparse.Namespace, overrides: list[str], name: str) -> None:
    processes = process_count(args)
    command = accelerate_train_command(args.accelerate_config, processes, config_file, overrides)
    run_launched(command, name, ROOT)


def gradient_checkpointing(args: argparse.Namespace) -> bool:
    """On unless a TPA method is timed (then off for every method, so all run alike) or --scale-set says."""
    chosen = not any(uses_tpa(m) for m in args.methods)
    for override in args.scale_set:
        key, _, value = override.partition("=")
        if key == "train.gradient_checkpointing":
            chosen = value.strip().lower() in ("true", "1", "yes", "on")
    return chosen


def method_overrides(method: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The method's own terms, then the shared settings, then the user's --scale-set (which win)."""
    return [
        *METHODS[method],
        f"train.gradient_checkpointing={str(gradient_checkpointing(args)).lower()}",
        f"train.output_dir={out / method}",
        f"name=scale-{method}",
        *args.scale_set,
    ]


def stage_figures(final: Path) -> dict[str, Any]:
    """A timed stage's throughput figures (its train_summary.json) with the step time the bench compares:
    the median step, but the mean for an on-policy method (as read from the stage's resolved config),
    whose steps are of two kinds (a coin per step samples the student's answers first)."""
    from distill.configuration import read_yaml
    from distill.train import SUMMARY_NAME
    from distill.trainer import RUN_CONFIG_NAME

    figures = json.loads((final / SUMMARY_NAME).read_text())["throughput"]
    statistic = "mean" if read_yaml(final / RUN_CONFIG_NAME)["loss"]["on_policy_ratio"] > 0 else "median"
    return {**figures, "step_s": figures[f"{statistic}_step_s"], "step_statistic": statistic}


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from distill.synth.make import synthesize
    from distill.train import FINAL_DIR

    with tempfile.TemporaryDirectory(prefix="distill-scale-") as tmp:
        work = Path(tmp)
        data = Path(args.data)
        if not data.is_file():
            synthesize(work / "shapes", n_train=64 * args.scale_batch_size, n_val=8, n_test=8, per_family=2)
            data = work / "shapes" / "train.json"
        tokenizer_dir = data.parent / "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        student = arch_of(args.scale_student, args.scale_vision, args.scale_vocab)
        teacher_arch = arch_of(args.scale_teacher, args.scale_vision, args.scale_vocab)
        print(f"building a random {args.scale_teacher}-shaped teacher (bf16) ...", flush=True)
        teacher = build_teacher(teacher_arch, tokenizer, work / "teacher")
        config = stage_config(args, student, teacher, tokenizer_dir, data, work / "run")
        config_file = work / "scale.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        throughput = {}
        for method in args.methods:
            print(f"== {method}", flush=True)
            launch(config_file, args, method_overrides(method, args, work / "run"), f"scale-{method}")
            throughput[method] = stage_figures(work / "run" / method / FINAL_DIR)
            trace = work / "run" / method / "profile" / "trace.json"
            if trace.is_file():
                kept = Path(args.out).with_name(f"scale_trace_{method}.json")
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(trace, kept)
                print(f"profile trace kept as {kept}")
        return {
            "student": args.scale_student,
            "teacher": args.scale_teacher,
            "vision": args.scale_vision,
            "vocab_size": args.scale_vocab or len(tokenizer),
            "visual_tokens": (student.image_size // student.patch_size) ** 2,
            "student_parameters": parameter_counts(student, tokenizer),
            "teacher_parameters": parameter_counts(teacher_arch, tokenizer),
            "batch_size_per_process": args.scale_batch_size,
            "processes": process_count(args),
            "accelerate_config": str(args.accelerate_config),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            "gradient_checkpointing": gradient_checkpointing(args),
            "overrides": list(args.scale_set),
            "throughput": throughput,
        }


def peak_memory(t: dict[str, Any]) -> float:
    """CUDA peak (allocated) on a GPU, else peak RSS, in MiB: the figure methods are compared by."""
    return t["peak_cuda_allocated_mib"] if t["peak_cuda_allocated_mib"] is not None else t["peak_rss_mib"]


def report_scale(r: dict[str, Any]) -> list[str]:
    def count(n: int) -> str:
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"

    def size(counts: dict[str, int]) -> str:
        return f"{count(counts['total'])} parameters, {count(counts['llm'])} in the LLM"

    lines = [
        f"Distillation at real sizes: student {r['student']} ({size(r['student_parameters'])}) <- "
        f"teacher {r['teacher']} ({size(r['teacher_parameters'])}); vision {r['vision']} "
        f"({r['visual_tokens']} visual tokens); vocabulary {r['vocab_size']:,}",
        f"{r['accelerate_config']}, {r['processes']} process(es), batch {r['batch_size_per_process']} per process, "
        f"{'bf16' if r['bf16'] else 'fp32'}, gradient checkpointing {'on' if r['gradient_checkpointing'] else 'off'}, "
        f"on {r['device']}" + (f", with {' '.join(r['overrides'])}:" if r.get("overrides") else ":"),
        "| method | steps timed | median step (ms) | tokens/s | tokens/step | peak CUDA allocated (GiB) "
        "| peak CUDA reserved (GiB) | peak RSS (MiB) | time / KD | peak memory / KD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    kd = r["throughput"].get("kd")
    for method, t in r["throughput"].items():
        memory = (
            f"{t['peak_cuda_allocated_mib'] / 1024:.2f} | {t['peak_cuda_reserved_mib'] / 1024:.2f}"
            if t["peak_cuda_allocated_mib"] is not None
            else "- | -"
        )
        ratios = (
            f"{t['step_s'] / kd['step_s']:.2f}x | {peak_memory(t) / peak_memory(kd):.2f}x"
            if kd is not None
            else "- | -"
        )
        lines.append(
            f"| {method} | {t['steps'] - t['warmup_steps_excluded']} of {t['steps']} | {1000 * t['step_s']:.1f} | "
            f"{t['tokens_per_s']:,.0f} | {t['median_tokens_per_step']:,.0f} | {memory} | {t['peak_rss_mib']:.0f} | {ratios} |"
        )
    lines += [
        mean_step_line(method) for method, t in r["throughput"].items() if t["step_statistic"] == "mean"
    ]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("part scale (not in --part all: it needs a GPU to be quick)")
    group.add_argument(
        "--scale-student", choices=sorted(LLM_SHAPES), default="qwen2-0.5b", help="student LLM shape"
    )
    group.add_argument(
        "--scale-teacher", choices=sorted(LLM_SHAPES), default="qwen2-1.5b", help="teacher LLM shape"
    )
    group.add_argument(
        "--scale-vision",
        choices=sorted(VISION_SHAPES),
        default="siglip-so400m-336",
        help="vision tower shape",
    )
    group.add_argument(
        "--scale-vocab", type=int, default=151_936, help="LM-head rows (0: the tokenizer's size)"
    )
    group.add_argument("--scale-steps", type=int, default=20, help="training steps (the first 3 are warm-up)")
    group.add_argument("--scale-batch-size", type=int, default=8, help="samples per process per step")
    group.add_argument("--scale-max-length", type=int, default=1024, help="longest tokenized sample")
    group.add_argument(
        "--scale-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted config override for every timed stage, applied last (repeatable), "
        "e.g. train.cudnn_attention=true or model.attn_implementation=flex_attention",
    )
    group.add_argument(
        "--scale-profile-steps",
        type=int,
        default=0,
        help="also profile this many steps after the warm-up (torch.profiler tables + trace)",
    )
    group.add_argument(
        "--accelerate-config",
        type=Path,
        default=ROOT / "configs" / "accelerate" / "zero2.yaml",
        help="accelerate config of the launch (default: DeepSpeed ZeRO-2)",
    )
    group.add_argument(
        "--num-processes", type=int, default=0, help="processes to launch (default: one per GPU, or 1)"
    )
