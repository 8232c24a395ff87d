"""`python -m distill ablate`: the paper's component ablation (Tables 5 and 14) on the tiny world.

    python -m distill ablate                                  # 5 methods x 3 seeds -> runs/ablate
    python -m distill ablate --methods kd align-ti --seeds 0 1 --steps 150
    python -m distill ablate --overrides train.torch_threads=2
    python -m distill ablate --methods kd gkd llavadi emkd       # the comparison methods

Trains one tiny student per (method, seed) from the same teacher (runs/tiny/teacher/final, which
`python -m distill quickstart` makes), evaluates each on the held-out split, and writes a markdown
table of mean ± sample standard deviation over the seeds per question family (ablation.md) and
every run's scores, time and throughput (ablation.json). Each method is configs/tiny-student-align-ti.yaml
with some loss terms switched off, so the runs differ in their objective and nothing else; the
seed sets the student's initialisation, the data order and the TPA candidate draws.

A run whose final model exists is evaluated again but not retrained; an interrupted one resumes
from its last checkpoint, so the command can be re-run after a kill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from distill.configuration import load_config, read_yaml
from distill.heldout import FAMILIES, evaluate_model
from distill.irs import compute_irs, read_best_layer, write_irs
from distill.run_config import RunConfig
from distill.train import FINAL_DIR, SUMMARY_NAME, run_training

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "tiny-student-align-ti.yaml"
NO_TEACHER = ["loss.w_kd=0", "loss.w_iva=0", "loss.w_tpa=0", "teacher.path=null"]
# method -> (config, overrides): the paper's Table 5 rows, plus the comparison methods
METHODS: dict[str, tuple[Path, list[str]]] = {
    "sft": (BASE_CONFIG, NO_TEACHER),
    "kd": (BASE_CONFIG, ["loss.w_iva=0", "loss.w_tpa=0"]),
    "kd+iva": (BASE_CONFIG, ["loss.w_tpa=0"]),
    "kd+tpa": (BASE_CONFIG, ["loss.w_iva=0"]),
    "align-ti": (BASE_CONFIG, []),
    "gkd": (ROOT / "configs" / "tiny-student-gkd.yaml", []),
    "llavadi": (ROOT / "configs" / "tiny-student-llavadi.yaml", []),
    "emkd": (ROOT / "configs" / "tiny-student-emkd.yaml", []),  # a 4-visual-token student
}
DEFAULT_METHODS = ["sft", "kd", "kd+iva", "kd+tpa", "align-ti"]


def run_overrides(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    data, teacher = Path(args.data).resolve(), Path(args.teacher).resolve()
    config, _ = METHODS[method]
    overrides = [
        f"train.output_dir={Path(args.out).resolve() / method / f'seed-{seed}'}",
        f"train.seed={seed}",
        f"data.train_json={data / 'train.json'}",
        f"model.tokenizer={data / 'tokenizer'}",
        f"teacher.path={teacher}",
        "train.report_to=none",
    ]
    if read_yaml(config)["model"].get("vision_init"):  # students that share the teacher's vision tower
        overrides.append(f"model.vision_init={teacher}")
    if args.steps is not None:
        overrides.append(f"train.max_steps={args.steps}")
    return overrides + METHODS[method][1] + list(args.overrides)


def train_one(method: str, seed: int, args: argparse.Namespace) -> Path:
    config, _ = METHODS[method]
    cfg = load_config(RunConfig, config, run_overrides(method, seed, args))
    final = Path(cfg.train.output_dir) / FINAL_DIR
    if final.is_dir():
        return final
    resume = any(Path(cfg.train.output_dir).glob("checkpoint-*"))
    return run_training(cfg, resume=resume)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> family -> {mean, std, n_seeds} of accuracy in percent (std: sample, over seeds)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        scores = [r["families"] for r in runs if r["method"] == method]
        table[method] = {}
        for family in [*FAMILIES, "overall"]:
            values = [100 * s[family]["accuracy"] for s in scores if family in s]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                table[method][family] = {"mean": statistics.fmean(values), "std": std, "n_seeds": len(values)}
    return table


def format_ablation(table: dict[str, dict[str, dict[str, float]]], runs: list[dict[str, Any]]) -> str:
    methods = list(table)
    families = [f for f in [*FAMILIES, "overall"] if f in table[methods[0]]]
    sizes = runs[0]["families"]
    rows = [
        "| family | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for family in families:
        cells = [f"{table[m][family]['mean']:.1f} ± {table[m][family]['std']:.1f}" for m in methods]
        label = f"**{family}**" if family == "overall" else family
        rows.append(f"| {label} (n={sizes[family]['n']}) | " + " | ".join(cells) + " |")
    step_times = []
    for m in methods:
        times = [r["median_step_ms"] for r in runs if r["method"] == m and r.get("median_step_ms")]
        step_times.append(f"{statistics.median(times):.0f}" if times else "-")
    rows.append("| median step (ms) | " + " | ".join(step_times) + " |")
    return "\n".join(rows)


def ensure_teacher_layer(teacher: Path, data: Path) -> None:
    """IVA needs the teacher's l*: compute and store it once (as the quickstart does)."""
    if read_best_layer(teacher) is None:
        print(f"== irs: computing l* for {teacher}", flush=True)
        write_irs(teacher, compute_irs(teacher, data / "val.json", n_pairs=300, progress=False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher", default="runs/tiny/teacher/final", help="the tiny teacher (default: %(default)s)"
    )
    parser.add_argument("--data", default="data/shapes", help="dataset folder (default: %(default)s)")
    parser.add_argument("--out", default="runs/ablate", help="runs and tables go here (default: %(default)s)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help="objectives to compare (default: %(default)s)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: %(default)s")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per run (default: the config's 300)"
    )
    parser.add_argument(
        "--per-family", type=int, default=None, help="evaluate at most this many questions per family"
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides for every run"
    )


def run(args: argparse.Namespace) -> int:
    teacher, data, out = Path(args.teacher), Path(args.data), Path(args.out)
    if not (teacher / "config.json").is_file():
        print(f"error: no teacher at {teacher}; run `python -m distill quickstart` first")
        return 2
    ensure_teacher_layer(teacher, data)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    jobs = [(m, s) for m in args.methods for s in args.seeds]
    for i, (method, seed) in enumerate(jobs, 1):
        print(
            f"== [{i}/{len(jobs)}] {method}, seed {seed} ({time.perf_counter() - start:.0f} s so far)",
            flush=True,
        )
        final = train_one(method, seed, args)
        summary = json.loads((final / SUMMARY_NAME).read_text())
        result = evaluate_model(final, data / "test.json", args.per_family, progress=False)
        runs.append(
            {
                "method": method,
                "seed": seed,
                "model": str(final),
                "families": result["families"],
                "train_seconds": summary["seconds"],
                "median_step_ms": 1000 * (summary["throughput"].get("median_step_s") or 0.0) or None,
            }
        )
        print(f"   overall {100 * result['families']['overall']['accuracy']:.1f}%", flush=True)
    table = summarize(runs)
    markdown = format_ablation(table, runs)
    (out / "ablation.md").write_text(markdown + "\n")
    (out / "ablation.json").write_text(json.dumps({"summary": table, "runs": runs}, indent=1))
    print(f"\nAccuracy (%) on the held-out split, mean ± std over seeds {args.seeds}:\n")
    print(markdown)
    print(
        f"\ntable: {out / 'ablation.md'}; every run: {out / 'ablation.json'}; total {time.perf_counter() - start:.0f} s"
    )
    return 0
