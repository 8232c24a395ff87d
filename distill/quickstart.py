"""`python -m distill quickstart`: the tiny default, end to end, on a laptop CPU in about ten minutes.

    python -m distill quickstart                       # data/shapes + runs/tiny
    python -m distill quickstart --launcher accelerate --accelerate-config configs/accelerate/zero2.yaml

1. synth:    the synthetic shapes world (data/shapes), unless it is already there
   vision:   the teacher's vision tower pretrained on the world's scenes    -> runs/tiny/vision/final
             (`distill pretrain-vision`: the stand-in for a real LLaVA's pretrained SigLIP)
2. teacher:  SFT of the tiny teacher (configs/tiny-teacher.yaml)           -> runs/tiny/teacher/final
3. student:  vanilla KD from the teacher (configs/tiny-student-kd.yaml)    -> runs/tiny/student-kd/final
4. baseline: the same student with SFT alone (configs/tiny-student-sft.yaml) -> runs/tiny/student-sft/final
   irs:      the teacher's Instruction-Relevance Score per layer -> l* in runs/tiny/teacher/final/irs.json
             (for Align-TI students: configs/tiny-student-align-ti.yaml)
5. table:    accuracy per question family on the held-out split, with parameter counts and chance
             (printed, and written to runs/tiny/heldout.md and .json)
6. suite:    the three models on the synthetic world's six benchmark files, scored by the official
             scorers (`python -m eval suite`; runs/tiny/eval/suite.md, .json and .png)

A stage whose final model exists is skipped; one that was interrupted resumes from its last
checkpoint. With `--launcher accelerate` each training stage runs as
`accelerate launch --config_file FILE -m distill train CONFIG ...` (the Docker `train` service).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from distill.configuration import load_config
from distill.heldout import evaluate_model, format_table
from distill.irs import compute_irs, read_best_layer, write_irs
from distill.launching import accelerate_train_command, run_launched
from distill.pretrain_vision import DEFAULT_STEPS as VISION_STEPS
from distill.pretrain_vision import pretrain_to
from distill.run_config import RunConfig
from distill.synth.make import synthesize
from distill.train import FINAL_DIR, run_training

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    ("teacher", "tiny-teacher.yaml"),
    ("student-kd", "tiny-student-kd.yaml"),
    ("student-sft", "tiny-student-sft.yaml"),
)


def stage_overrides(name: str, data: Path, out: Path, extra: list[str]) -> list[str]:
    overrides = [
        f"train.output_dir={out / name}",
        f"data.train_json={data / 'train.json'}",
        f"model.tokenizer={data / 'tokenizer'}",
    ]
    tower_from = "vision" if name == "teacher" else "teacher"  # the students share the teacher's tower
    overrides.append(f"model.vision_init={out / tower_from / FINAL_DIR}")
    if name == "student-kd":
        overrides.append(f"teacher.path={out / 'teacher' / FINAL_DIR}")
    return overrides + extra


def launcher_overrides(accelerate_config: str | Path) -> list[str]:
    """Overrides an accelerate config forces on the tiny configs. Muon orthogonalises whole weight
    matrices, while DeepSpeed ZeRO steps the optimizer on flat partitions of them, so under
    DeepSpeed the tiny stages train with AdamW instead (and say so)."""
    path = Path(accelerate_config)
    settings = yaml.safe_load((path if path.is_absolute() else ROOT / path).read_text()) or {}
    if settings.get("distributed_type") == "DEEPSPEED":
        print("note: DeepSpeed cannot step Muon; the tiny stages train with AdamW (train.optimizer=adamw)")
        return ["train.optimizer=adamw"]
    return []


def train_stage(name: str, config: Path, overrides: list[str], out: Path, args: argparse.Namespace) -> None:
    run_dir = out / name
    resume = run_dir.is_dir() and any(run_dir.glob("checkpoint-*"))
    if args.launcher == "python":
        run_training(load_config(RunConfig, config, overrides), resume=resume)
        return
    command = accelerate_train_command(
        args.accelerate_config, args.num_processes, config, overrides, resume=resume
    )
    run_launched(command, name, ROOT)


def vision_stage(out: Path, steps: int) -> None:
    """The teacher's pretrained vision tower (`distill pretrain-vision`), unless it is already there."""
    final = out / "vision" / FINAL_DIR
    if final.is_dir():
        print(f"== vision: already pretrained ({final}); delete it to pretrain again", flush=True)
        return
    print(
        "== vision: pretraining the teacher's vision tower on the world's scenes (pretrain-vision)",
        flush=True,
    )
    final, report = pretrain_to(ROOT / "configs" / "tiny-teacher.yaml", out / "vision", steps)
    accuracy = ", ".join(f"{name} {100 * value:.0f}%" for name, value in report["held_out_accuracy"].items())
    print(f"== vision: done in {report['seconds']:.0f} s; held-out scenes: {accuracy}", flush=True)


def run_stages(args: argparse.Namespace) -> dict[str, Path]:
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    forced = launcher_overrides(args.accelerate_config) if args.launcher == "accelerate" else []
    if not (out / "teacher" / FINAL_DIR).is_dir():
        vision_stage(out, args.vision_steps)
    finals = {}
    for name, config_name in STAGES:
        final = out / name / FINAL_DIR
        finals[name] = final
        if final.is_dir():
            print(f"== {name}: already trained ({final}); delete it to train again", flush=True)
            continue
        print(f"== {name}: training ({config_name})", flush=True)
        start = time.perf_counter()
        overrides = stage_overrides(name, data, out, [*forced, *args.overrides])
        train_stage(name, ROOT / "configs" / config_name, overrides, out, args)
        print(f"== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return finals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="data/shapes", help="dataset folder (made if missing; default: %(default)s)"
    )
    parser.add_argument("--out", default="runs/tiny", help="where the three runs go (default: %(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic world (default: %(default)s)"
    )
    parser.add_argument(
        "--per-family", type=int, default=None, help="evaluate at most this many questions per family"
    )
    parser.add_argument(
        "--suite-limit",
        type=int,
        default=None,
        help="answer at most this many questions of each benchmark file in the suite (smoke tests)",
    )
    parser.add_argument(
        "--vision-steps",
        type=int,
        default=VISION_STEPS,
        help="steps of the vision tower's pretraining (default: %(default)s)",
    )
    parser.add_argument(
        "--launcher",
        choices=["python", "accelerate"],
        default="python",
        help="train in this process, or through `accelerate launch` (multi-GPU, DeepSpeed)",
    )
    parser.add_argument(
        "--accelerate-config",
        default=str(ROOT / "configs" / "accelerate" / "single.yaml"),
        help="accelerate config for --launcher accelerate (default: %(default)s)",
    )
    parser.add_argument(
        "--num-processes", type=int, default=None, help="processes (GPUs) for --launcher accelerate"
    )
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides applied to every training stage, e.g. train.max_steps=50",
    )


def teacher_layer(teacher: Path, val: Path, pairs: int = 300) -> None:
    """IRS of the teacher's layers, so Align-TI students (configs/tiny-student-align-ti.yaml) find l*."""
    stored = read_best_layer(teacher)
    if stored is not None:
        print(f"== irs: l* = {stored} already stored with {teacher}", flush=True)
        return
    result = compute_irs(teacher, val, n_pairs=pairs, progress=False)
    write_irs(teacher, result)
    scores = ", ".join(f"{s:.3f}" for s in result["scores"])
    print(
        f"== irs: IRS per teacher layer [{scores}] over {result['pairs']} pairs -> l* = {result['best_layer']}",
        flush=True,
    )


def benchmark_suite(models: list[Path], data: Path, out: Path, limit: int | None) -> None:
    """The models on the synthetic benchmark files, scored as GQA, SQA, TextVQA, POPE, MME, MMBench."""
    from eval.__main__ import build_parser
    from eval.suite import run as run_suite

    print("\n== benchmarks: the synthetic world's benchmark files, official scorers (python -m eval suite)")
    images, root = data / "images" / "test", data / "benchmarks"
    arguments = ["suite", "--models", *map(str, models), "--root", str(root), "--images", str(images)]
    arguments += ["--out", str(out), "--batch-size", "32", "--quiet"]
    if limit:
        arguments += ["--limit", str(limit)]
    run_suite(build_parser().parse_args(arguments))


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print(f"== synth: {args.data}", flush=True)
    manifest = synthesize(args.data, seed=args.seed)
    print(f"   {json.dumps(manifest['records'])} records, vocabulary {manifest['vocab_size']}", flush=True)
    finals = run_stages(args)
    teacher_layer(finals["teacher"], Path(args.data) / "val.json")
    print("== held-out evaluation", flush=True)
    test = Path(args.data) / "test.json"
    results = {name: evaluate_model(path, test, args.per_family) for name, path in finals.items()}
    table = format_table(results)
    out = Path(args.out)
    (out / "heldout.md").write_text(table + "\n")
    (out / "heldout.json").write_text(json.dumps(results, indent=1))
    print("\nAccuracy (%) per question family on the held-out split (greedy decoding):\n")
    print(table)
    print(f"\nmodels: {', '.join(str(p) for p in finals.values())}")
    benchmark_suite(list(finals.values()), Path(args.data), out / "eval", args.suite_limit)
    print(
        f"table: {out / 'heldout.md'}; every answer: {out / 'heldout.json'}; total {time.perf_counter() - start:.0f} s"
    )
    return 0
