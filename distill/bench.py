"""`python -m distill bench`: step time and peak memory of SFT vs vanilla KD, and of the KD loss
alone, chunked vs naive, at a real vocabulary size.

    python -m distill bench                                    # both parts, default sizes
    python -m distill bench --part loss --positions 4096 --vocab 151936
    python -m distill bench --part steps --methods kd,iva,tpa-kv,tpa-ribbon,align-ti
    python -m distill bench --part steps --methods kd,tpa-kv,align-ti \
        --teacher runs/tiny/teacher/final --student runs/tiny/student-kd/final   # after the quickstart

Part "steps": the tiny teacher/student pair of configs/tiny-*.yaml (random weights unless --teacher
and --student name checkpoints) trains for --steps steps through the real training loop, once per
method (default: SFT and vanilla KD); each runs in its own process so its peak memory is its own,
and the processes run together, taking their training steps in turn (distill/lockstep.py), so that
a machine whose speed drifts slows every method alike. --repeats rounds of that. Reported: median
step time and peak RSS (CUDA peak on a GPU), each relative to KD (the median of the rounds' ratios,
their range in brackets). The weights matter for TPA alone: a candidate equal to the response token it replaces needs no extra pass, and a
trained student proposes that token far more often than a random one; the table gives the share of
candidates that were continued.

Part "paired" (distill/bench_paired.py; only when asked for): the same pair and methods in one
process, each method's loss and backward pass on the same batch back to back, --steps batches;
reported: the median per batch and the median of the per-batch ratios to KD. Without the optimizer
step and data loading, and no memory figures, but far less spread than processes started apart.

    python -m distill bench --part paired --methods kd,iva,tpa-kv,align-ti
    python -m distill bench --part paired --methods kd,tpa-kv,tpa-ribbon,align-ti --steps 4 \
        --teacher runs/random/qwen2-1.5b-tiny-vision --student runs/random/qwen2-0.5b-tiny-vision \
        --set train.batch_size=2 --set teacher.dtype=bfloat16      # real LLM shapes (`distill random-student`)

Part "loss": the KD loss (forward KL; --divergence reverse_kl, jsd, a skew KL or tvd for EM-KD's, GKD's,
DistiLLM's or TVD's) alone, forward and backward, on random hidden states of --positions positions and LM heads of --vocab rows
(student width --student-hidden, teacher width --teacher-hidden), naive (whole logits) vs chunked
(--chunk-size positions at a time, closed_form.HeadDivergence), and the chunked form three times
more: under torch.utils.checkpoint instead, so again with the divergence's gradient through
autograd's chain instead of its closed form, and on 4 KiB pages only; each in its own
process, timed after a warm-up on 64 positions. Reported: peak memory above the inputs, time, and
the loss values (they must agree).

    python -m distill bench --part loss --divergence jsd

Part "scale" (distill/bench_scale.py; only when asked for): a Qwen2-0.5B-shaped student distilled
from a Qwen2-1.5B-shaped teacher for 20 steps through accelerate + DeepSpeed ZeRO-2, bf16 on a GPU.
Reported: median step time, tokens/s and peak CUDA memory.

    python -m distill bench --part scale
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from distill.bench_methods import METHODS, mean_step_line
from distill.bench_paired import bench_paired, describe_pair, report_paired
from distill.bench_scale import add_arguments as add_scale_arguments
from distill.bench_scale import bench_scale, report_scale
from distill.closed_form import CLOSED_FORMS
from distill.configuration import ConfigError
from distill.process_memory import HUGE_PAGES, current_rss_mib, peak_rss_mib
from distill.staging import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


# -- measurement helpers (run inside the worker process) ------------------------------------------
def device_peak_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# -- part "loss" -------------------------------------------------------------------------------------
def loss_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from distill.losses import chunked_divergence, normalized_sum

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    n, v = spec["positions"], spec["vocab"]
    student_head = torch.nn.Linear(spec["student_hidden"], v, bias=False, device=device)
    teacher_head = torch.nn.Linear(spec["teacher_hidden"], v, bias=False, device=device).requires_grad_(False)
    hidden = torch.randn(n, spec["student_hidden"], device=device, requires_grad=True)
    teacher_hidden = torch.randn(n, spec["teacher_hidden"], device=device)

    def forward_backward(positions: slice) -> torch.Tensor:
        loss = normalized_sum(
            chunked_divergence(
                hidden[positions],
                teacher_hidden[positions],
                student_head,
                teacher_head,
                spec.get("divergence", "forward_kl"),
                spec["chunk_size"],
                closed_form=spec.get("closed_form", True),
                head_function=spec.get("head_function", True),
            ),
            n,
        )
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    # Warm-up on a few positions (library and kernel initialisation is not the loss's cost).
    forward_backward(slice(0, min(n, 64)))
    hidden.grad = student_head.weight.grad = None
    baseline_rss, baseline_dev = (
        current_rss_mib(),
        (torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None),
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = forward_backward(slice(0, n))
    seconds = time.perf_counter() - start
    peak = device_peak_mib() - baseline_dev if device == "cuda" else peak_rss_mib() - baseline_rss
    return {
        "loss": loss.item(),
        "peak_mib": peak,
        "seconds": seconds,
        "device": device,
        "huge_pages": os.environ.get(HUGE_PAGES, "0") not in ("0", "false", "False", ""),
    }


# -- part "steps" ------------------------------------------------------------------------------------
def trainer_overrides(spec: dict[str, Any]) -> list[str]:
    """The dotted overrides of one timed method's run: data, student, teacher, and the method's terms."""
    overrides = [
        f"train.output_dir={spec['output_dir']}",
        f"train.max_steps={spec.get('steps', 1) + spec.get('warmup', 0)}",
        "train.report_to=none",
        "train.save_steps=100000",
        f"data.train_json={spec['data']}",
        # every method on the same unpacked rows: the layout terms (IVA, TPA, hidden states, EM-KD,
        # on-policy samples) refuse packed ones, and KD packed against them unpacked would time the packing
        "data.pack=false",
    ]
    if spec.get("student"):  # a trained student: TPA's candidates then often hold the response token
        overrides += [f"model.path={spec['student']}", "model.arch=null", "model.tokenizer=null"]
        overrides += ["model.vision_init=null"]
    else:  # a fresh one sharing the teacher's vision tower
        overrides += [f"model.vision_init={spec['teacher']}", f"model.tokenizer={spec['tokenizer']}"]
    teacher = ["teacher.path=null"] if spec["mode"] == "sft" else [f"teacher.path={spec['teacher']}"]
    return overrides + teacher + METHODS[spec["mode"]] + spec.get("overrides", [])


def step_time(seconds: list[float], on_policy: bool) -> tuple[float, str]:
    """A method's step time and the statistic it is: the median of its steps, but the mean for an
    on-policy method, whose steps are of two kinds (a coin per step samples the student's answers
    first): the median would pick one kind, the mean is what a run of many steps costs."""
    return (statistics.mean(seconds), "mean") if on_policy else (statistics.median(seconds), "median")


def step_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from distill.configuration import load_config
    from distill.lockstep import Lockstep
    from distill.run_config import RunConfig
    from distill.train import setup

    cfg = load_config(RunConfig, spec["config"], trainer_overrides(spec))
    s = setup(cfg)
    ring = Lockstep(**spec["lockstep"])
    s.trainer.add_callback(ring)
    rss_before = current_rss_mib()
    s.trainer.train()
    step_s, statistic = step_time(ring.step_seconds[spec["warmup"] :], cfg.loss.on_policy_ratio > 0)
    return {
        "mode": spec["mode"],
        "step_s": step_s,
        "step_statistic": statistic,
        "peak_rss_mib": peak_rss_mib(),
        "rss_growth_mib": peak_rss_mib() - rss_before,
        "cuda_peak_mib": device_peak_mib(),
        "tpa_candidates": dict(s.trainer.tpa_candidate_counts),
        "input_tokens": s.trainer.state.num_input_tokens_seen,  # over the same steps as the candidates
    }


WORKERS = {"loss": loss_worker, "step": step_worker}


def worker_command(kind: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "distill.bench", "--worker", kind, json.dumps(spec)]


def in_subprocess(kind: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, so its peak memory is its own (`env`: variables
    set for it on top of this process's)."""
    done = subprocess.run(
        worker_command(kind, spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_failure(processes: list[subprocess.Popen]) -> int | None:
    """Wait until all processes end, or one fails: the index of the first that failed, else None."""
    while True:
        codes = [process.poll() for process in processes]
        failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None or None not in codes:
            return failed
        time.sleep(0.2)


def in_lockstep(specs: list[dict[str, Any]], turn_file: Path) -> list[dict[str, Any]]:
    """Step workers, one process each (each its own peak memory), running together and taking their
    training steps in turn (distill/lockstep.py), so every method's steps see the machine alike."""
    write_text_atomic(turn_file, "0")
    with tempfile.TemporaryDirectory(prefix="distill-lockstep-") as logs:
        processes = []
        for index, spec in enumerate(specs):
            ring = {"turn_file": str(turn_file), "index": index, "members": len(specs)}
            out, err = (open(Path(logs) / f"{index}.{kind}", "w+") for kind in ("out", "err"))  # noqa: SIM115
            command = worker_command("step", {**spec, "lockstep": ring})
            processes.append(
                (subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT), out, err)
            )
        failed = first_failure([process for process, *_ in processes])
        if failed is not None:  # the others would wait for its turn: stop them now
            for process, *_ in processes:
                process.kill()
                process.wait()
            err = processes[failed][2]
            err.seek(0)
            raise RuntimeError(f"bench worker step ({specs[failed]['mode']}) failed:\n{err.read()[-3000:]}")
        results = []
        for _, out, err in processes:
            out.seek(0)
            results.append(json.loads(out.read().strip().splitlines()[-1]))
            out.close()
            err.close()
    return results


# -- orchestration ---------------------------------------------------------------------------------
def bench_loss(args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "positions": args.positions,
        "vocab": args.vocab,
        "student_hidden": args.student_hidden,
        "teacher_hidden": args.teacher_hidden,
        "divergence": args.divergence,
    }
    naive = in_subprocess("loss", {**spec, "chunk_size": 0})
    chunked = in_subprocess("loss", {**spec, "chunk_size": args.chunk_size})
    # the same chunks under torch.utils.checkpoint (closed_form.LogitsDivergence in each), and so
    # again with the divergence's gradient through autograd's log_softmax + kl_div chain
    checkpointed = in_subprocess("loss", {**spec, "chunk_size": args.chunk_size, "head_function": False})
    autograd = in_subprocess("loss", {**spec, "chunk_size": args.chunk_size, "closed_form": False})
    # the same chunks on 4 KiB pages only: what distill/__main__.py's default of HUGE_PAGES saves
    small_pages = in_subprocess("loss", {**spec, "chunk_size": args.chunk_size}, env={HUGE_PAGES: "0"})
    return {
        "spec": spec,
        "chunk_size": args.chunk_size,
        "naive": naive,
        "chunked": chunked,
        "chunked_checkpointed": checkpointed,
        "chunked_autograd": autograd,
        "chunked_small_pages": small_pages,
        "memory_ratio": chunked["peak_mib"] / naive["peak_mib"],
        "time_ratio": chunked["seconds"] / naive["seconds"],
    }


def tiny_pair(workdir: Path, data: Path) -> tuple[str, str]:
    """A random-weight tiny teacher saved to disk (shapes of configs/tiny-teacher.yaml)."""
    from transformers import AutoTokenizer

    from distill.configuration import load_config
    from distill.modeling import build_llava, save_llava
    from distill.run_config import RunConfig

    tokenizer_dir = data.parent / "tokenizer"
    teacher_cfg = load_config(
        RunConfig, ROOT / "configs" / "tiny-teacher.yaml", [f"model.tokenizer={tokenizer_dir}"]
    )
    model, processor = build_llava(teacher_cfg.model.arch, AutoTokenizer.from_pretrained(tokenizer_dir))  # type: ignore[arg-type]
    return str(save_llava(model, processor, workdir / "teacher")), str(tokenizer_dir)


def pair_spec(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Config, data, teacher and student of the timed runs (data and a random teacher made in `work`
    when none are given)."""
    from distill.synth.make import synthesize

    data = Path(args.data)
    if not data.is_file():
        synthesize(work / "shapes", n_train=256, n_val=8, n_test=8, per_family=2)
        data = work / "shapes" / "train.json"
    teacher, tokenizer = (args.teacher, args.teacher) if args.teacher else tiny_pair(work, data)
    return {
        "config": str(ROOT / "configs" / "tiny-student-kd.yaml"),
        "data": str(data),
        "teacher": teacher,
        "tokenizer": tokenizer,
        "student": args.student,
        "overrides": list(args.set),
    }


def pair_weights(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "teacher": args.teacher or "random weights, shapes of configs/tiny-teacher.yaml",
        "student": args.student or "fresh, shapes of configs/tiny-student-kd.yaml",
        "overrides": list(args.set),
    }


def bench_steps(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        work = Path(tmp)
        spec = {**pair_spec(work, args), "steps": args.steps, "warmup": 2}
        rounds = []
        for r in tqdm(range(args.repeats), desc="rounds of the step timing", leave=False):
            specs = [{**spec, "mode": mode, "output_dir": str(work / f"{mode}-{r}")} for mode in args.methods]
            rounds.append(dict(zip(args.methods, in_lockstep(specs, work / "turn"), strict=True)))
    return combine_rounds(rounds, args)


def bench_paired_part(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        work = Path(tmp)
        spec = {**pair_spec(work, args), "output_dir": str(work / "paired")}
        results = bench_paired(spec, args.methods, args.steps)
    return {**results, "weights": pair_weights(args)}


def combine_rounds(rounds: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Each method's figures over the rounds: medians of the step times and peaks, and its ratios to KD
    as the median of the ratios within a round (the steps of a round interleave, so a machine that
    speeds up or slows down shifts both sides of a ratio alike)."""

    def median_of(mode: str, key: str) -> float:
        return statistics.median(r[mode][key] for r in rounds)

    results: dict[str, Any] = {}
    for mode in args.methods:
        results[mode] = {
            "step_s": median_of(mode, "step_s"),
            "step_statistic": rounds[0][mode]["step_statistic"],
            "peak_rss_mib": median_of(mode, "peak_rss_mib"),
            "rss_growth_mib": median_of(mode, "rss_growth_mib"),
            "cuda_peak_mib": rounds[0][mode]["cuda_peak_mib"] and median_of(mode, "cuda_peak_mib"),
            "tpa_candidates": {
                key: sum(r[mode]["tpa_candidates"][key] for r in rounds) for key in ("continued", "all")
            },
            "input_tokens": sum(r[mode]["input_tokens"] for r in rounds),
            "rounds": [r[mode] for r in rounds],
        }
    results["weights"] = pair_weights(args)
    results["repeats"] = args.repeats

    def ratio(mode: str, base: str, key: str) -> float:
        return statistics.median(r[mode][key] / r[base][key] for r in rounds)

    if "kd" in args.methods:
        for mode in args.methods:
            results[mode]["time_over_kd"] = ratio(mode, "kd", "step_s")
            results[mode]["time_over_kd_rounds"] = [r[mode]["step_s"] / r["kd"]["step_s"] for r in rounds]
            results[mode]["peak_rss_over_kd"] = ratio(mode, "kd", "peak_rss_mib")
    if {"kd", "sft"} <= set(args.methods):
        results["kd_over_sft_time"] = ratio("kd", "sft", "step_s")
        results["kd_over_sft_peak_rss"] = ratio("kd", "sft", "peak_rss_mib")
    return results


def spread(values: list[float]) -> str:
    """ " (lowest-highest)" of a ratio's rounds, or nothing for one round (or KD's own 1.00)."""
    return f" ({min(values):.2f}-{max(values):.2f})" if max(values) > min(values) else ""


def report_loss(r: dict[str, Any]) -> list[str]:
    """The loss part's table: each form measured, then each ratio against the kit's chunked form."""
    s, chunked = r["spec"], r["chunked"]
    divergence = s.get("divergence", "forward_kl")
    forms = [
        ("naive (whole logits)", r["naive"]),
        (f"chunked ({r['chunk_size']} positions; closed_form.HeadDivergence)", chunked),
    ]
    ratios = [
        f"chunked / naive: memory {100 * r['memory_ratio']:.1f}%, time {r['time_ratio']:.2f}x, "
        f"loss difference {abs(r['naive']['loss'] - chunked['loss']):.2e}"
    ]

    def against(label: str, form: dict[str, Any], other: dict[str, Any]) -> str:
        def ratio(key: str) -> str:  # a small test's peak can be 0 MiB above its inputs
            return f"{form[key] / other[key]:.2f}x" if other[key] > 0 else "n/a"

        return f"{label}: time {ratio('seconds')}, memory {ratio('peak_mib')}"

    checkpointed, autograd = r.get("chunked_checkpointed"), r.get("chunked_autograd")
    if checkpointed:
        forms.append(("chunked, torch.utils.checkpoint over closed_form.LogitsDivergence", checkpointed))
        ratios.append(against("HeadDivergence / checkpointed chunks", chunked, checkpointed))
    if checkpointed and autograd:
        forms.append(("chunked, checkpointed, gradient through autograd (log_softmax + kl_div)", autograd))
        ratios.append(
            against("closed-form gradient / autograd's (both checkpointed)", checkpointed, autograd)
        )
    small = r.get("chunked_small_pages")
    if small and chunked["huge_pages"]:
        forms.append((f"chunked, 4 KiB pages only ({HUGE_PAGES}=0)", small))
        ratios.append(
            against(f"huge pages ({HUGE_PAGES}=1, the kit's default) / 4 KiB pages", chunked, small)
        )
    return [
        f"Distillation loss alone ({divergence}, forward + backward), {s['positions']} positions x {s['vocab']:,} vocabulary, "
        f"student width {s['student_hidden']}, teacher width {s['teacher_hidden']}, on {r['naive']['device']}:",
        "| form | peak memory above inputs (MiB) | time (s) | loss |",
        "|---|---|---|---|",
        *(f"| {label} | {m['peak_mib']:.0f} | {m['seconds']:.2f} | {m['loss']:.6f} |" for label, m in forms),
        *ratios,
    ]


def report(results: dict[str, Any]) -> str:
    lines = []
    if "steps" in results:
        r = results["steps"]
        lines += [
            f"Training step, tiny student (batch of the tiny-student-kd config), median over steps; {r['repeats']} "
            "round(s), a process per method taking its steps in turn with the others; a ratio is the median of the "
            "rounds' ratios (their range in brackets);",
            describe_pair(r["weights"]),
        ]
        modes = [mode for mode in METHODS if mode in r]
        tpa = any(r[mode].get("tpa_candidates", {}).get("all") for mode in modes)
        if tpa:
            lines.append(
                "TPA kv continues only the candidates that differ from the response token they replace "
                "(distill/continuation.py)."
            )
        lines += [
            "| method | step time (ms) | peak RSS (MiB) | RSS growth in training (MiB) | time / KD | peak RSS / KD |"
            + (" TPA candidates continued |" if tpa else ""),
            "|---|---|---|---|---|---|" + ("---|" if tpa else ""),
        ]
        for mode in modes:
            m = r[mode]
            ratios = (
                f"{m['time_over_kd']:.2f}x{spread(m['time_over_kd_rounds'])} | {m['peak_rss_over_kd']:.2f}x"
                if "time_over_kd" in m
                else "- | -"
            )
            row = f"| {mode} | {1000 * m['step_s']:.1f} | {m['peak_rss_mib']:.0f} | {m['rss_growth_mib']:.0f} | {ratios} |"
            if tpa:
                counts = m.get("tpa_candidates", {})
                row += (
                    f" {100 * counts['continued'] / counts['all']:.0f}% of {counts['all']:,}, "
                    f"{counts['continued'] / m['input_tokens']:.2f} per input token |"
                    if counts.get("all")
                    else " - |"
                )
            lines.append(row)
        lines += [mean_step_line(mode) for mode in modes if r[mode]["step_statistic"] == "mean"]
        if "kd_over_sft_time" in r:
            lines.append(
                f"KD / SFT: step time {r['kd_over_sft_time']:.2f}x, peak RSS {r['kd_over_sft_peak_rss']:.2f}x"
            )
        lines.append("")
    if "loss" in results:
        lines += report_loss(results["loss"])
    if "paired" in results:
        lines += report_paired(results["paired"], results["paired"]["weights"])
    if "scale" in results:
        lines += report_scale(results["scale"])
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--part",
        choices=["all", "steps", "loss", "paired", "scale"],
        default="all",
        help="what to measure (all: steps and loss; paired: the objectives' passes back to back on the same "
        "batches in one process; scale: real-size KD under DeepSpeed, see below)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=20,
        help="timed training steps per method (after 2 warm-up steps); batches for the paired part",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="rounds of the step timing; in each, one process per method, all running together and taking "
        "their steps in turn (distill/lockstep.py), so the machine's drift falls on every method alike",
    )
    parser.add_argument("--data", default="data/shapes/train.json", help="training data for the step timing")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted override of configs/tiny-student-kd.yaml for the steps and paired parts, applied after "
        "each method's own (repeatable), e.g. train.batch_size=2 data.max_length=256 teacher.dtype=bfloat16 "
        "for checkpoints of real shapes (`distill random-student`); there use the paired part, which holds one "
        "student and one teacher (the steps part holds a process per method at once)",
    )
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher checkpoint for the step timing (default: random weights of the tiny teacher's shapes)",
    )
    parser.add_argument(
        "--student",
        default=None,
        help="student checkpoint to start the step timing from (default: a fresh tiny student). TPA's cost "
        "depends on it: a trained student often proposes the response token itself, which needs no pass",
    )
    parser.add_argument(
        "--methods",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        default=None,
        help=f"training objectives to time, comma-separated, from {', '.join(METHODS)} (default: sft,kd "
        "for the steps part, kd for the scale part); each is also reported relative to kd when kd is among them",
    )
    parser.add_argument(
        "--positions", type=int, default=4096, help="supervised positions in the loss-only test"
    )
    parser.add_argument(
        "--vocab", type=int, default=151_936, help="vocabulary of the loss-only test (Qwen2's)"
    )
    parser.add_argument("--student-hidden", type=int, default=896, help="student width (Qwen2-0.5B: 896)")
    parser.add_argument("--teacher-hidden", type=int, default=1536, help="teacher width (Qwen2-1.5B: 1536)")
    parser.add_argument("--chunk-size", type=int, default=512, help="positions per chunk of the chunked loss")
    parser.add_argument(
        "--divergence",
        choices=list(CLOSED_FORMS),
        default="forward_kl",
        help="the divergence of the loss-only test: forward_kl (KD, IVA, TPA), reverse_kl (EM-KD's VSD), "
        "jsd (GKD; beta 0.5), skew_forward_kl / skew_reverse_kl (DistiLLM's; alpha 0.1) or tvd",
    )
    parser.add_argument(
        "--out", default="runs/bench/distill_bench.json", help="write the figures here as JSON"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    add_scale_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.methods is None:
        args.methods = ["kd"] if args.part == "scale" else ["sft", "kd"]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    results: dict[str, Any] = {}
    if args.part in ("all", "steps"):
        results["steps"] = bench_steps(args)
    if args.part in ("all", "loss"):
        results["loss"] = bench_loss(args)
    if args.part == "paired":
        results["paired"] = bench_paired_part(args)
    if args.part == "scale":
        results["scale"] = bench_scale(args)
    print(report(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=1))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = parser.parse_args()
    if not parsed.worker:
        sys.exit(run(parsed))
    kind, spec_json = parsed.worker
    print(json.dumps(WORKERS[kind](json.loads(spec_json))))
