"""`python -m distill bench --part paired`: each objective's forward + backward pass on the same
batches, back to back in one process, as a ratio to vanilla KD's on the same batch.

    python -m distill bench --part paired --methods kd,iva,tpa-kv,tpa-ribbon,align-ti,gkd,llavadi,emkd
    python -m distill bench --part paired --methods kd,align-ti \
        --teacher runs/tiny/teacher/final --student runs/tiny/student-kd/final      # after the quickstart

The steps part (`--part steps`) gives every method its own process, so each has its own peak
memory, and times whole training steps; but two processes are never quite alike on a shared VM,
and there its rounds' ratios spread by a tenth or more. Here one trainer, one student and one
teacher serve every method: for each batch, each method's loss terms and their backward pass run in
turn (the order rotating from batch to batch), so a method and KD see the same tokens within
milliseconds of each other; each ratio is the median over batches of the paired ratios, with the
middle half of them in brackets. Not timed: the optimizer step and data loading, the same for every
method (the gradients are dropped, so the student does not change from method to method). An
on-policy method (GKD) is timed on every batch both with the student's sampled answers and without,
and its row is the expectation at its lambda, not whatever its coin gave on a few batches.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from distill.bench_methods import METHODS

WARMUP_BATCHES = 2


def union_overrides(methods: list[str]) -> list[str]:
    """Overrides that set up a trainer able to run every method's terms: the teacher's attention
    capture for IVA and LLaVADI's learned projection are installed when the trainer is built."""
    switches = {override for method in methods for override in METHODS[method]}
    wanted = [o for o in switches if o.startswith(("loss.w_iva=", "loss.iva_layer=", "loss.w_hidden="))]
    return ["loss.w_kd=1.0", *sorted(wanted)]


def forward_backward_seconds(
    trainer: Any, model: torch.nn.Module, loss_config: Any, inputs: dict
) -> tuple[float, list[str], bool]:
    """One method's loss and backward pass on one batch (the gradients are dropped): its seconds, the
    terms it computed, and whether the student answered the batch first (on-policy)."""
    trainer.loss_config = loss_config
    trainer._term_sums.clear()  # the trainer's running sums of the logged terms
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.compute_loss(model, inputs).backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    sampled = trainer._term_sums.get("on_policy", 0.0) > 0
    return seconds, sorted(name for name in trainer._term_sums if name != "on_policy"), sampled


def on_policy_branches(loss_config: Any) -> dict[str, Any]:
    """An on-policy method (GKD) first answers a batch with the student with probability lambda
    (loss.on_policy_ratio), by a coin per batch; timing whatever the coin gives makes its figure a draw.
    The bench times both kinds on every batch instead: the loss configs of each."""
    return {
        "sampled": dataclasses.replace(loss_config, on_policy_ratio=1.0),
        "not": dataclasses.replace(loss_config, on_policy_ratio=0.0),
    }


def bench_paired(spec: dict[str, Any], methods: list[str], batches: int) -> dict[str, Any]:
    """spec: the steps part's (config, data, teacher, tokenizer, student)."""
    from distill.bench import trainer_overrides
    from distill.configuration import load_config
    from distill.run_config import RunConfig
    from distill.train import setup

    base = trainer_overrides({**spec, "mode": "kd", "output_dir": spec["output_dir"]})
    user = spec.get("overrides", [])  # --set: after every method's own, as in the steps part
    s = setup(load_config(RunConfig, spec["config"], base + union_overrides(methods) + user))
    loss_configs = {m: load_config(RunConfig, spec["config"], base + METHODS[m] + user).loss for m in methods}
    trainer, model = s.trainer, s.trainer.model
    model.train()
    loader = iter(trainer.get_train_dataloader())
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    terms: dict[str, set[str]] = {m: set() for m in methods}
    lambdas = {m: loss_configs[m].on_policy_ratio for m in methods if loss_configs[m].on_policy_ratio > 0}
    branches = {m: on_policy_branches(loss_configs[m]) for m in lambdas}
    branch_seconds: dict[str, dict[str, list[float]]] = {m: {"sampled": [], "not": []} for m in lambdas}
    for index in tqdm(range(WARMUP_BATCHES + batches), desc="paired batches", leave=False):
        inputs = trainer._prepare_inputs(next(loader))
        order = methods[index % len(methods) :] + methods[: index % len(methods)]
        for method in order:
            kinds = branches.get(method, {"": loss_configs[method]})
            timed = {}
            for kind, loss_config in kinds.items():
                timed[kind], computed, sampled = forward_backward_seconds(trainer, model, loss_config, inputs)
                if kind and sampled != (kind == "sampled"):
                    raise RuntimeError(f"{method}: the batch timed as {kind!r} was answered otherwise")
                terms[method].update(computed)
            if index < WARMUP_BATCHES:
                continue
            if method in lambdas:  # the expectation over the coin, on this batch
                for kind, elapsed in timed.items():
                    branch_seconds[method][kind].append(elapsed)
                share = lambdas[method]
                seconds[method].append(share * timed["sampled"] + (1 - share) * timed["not"])
            else:
                seconds[method].append(timed[""])
    results: dict[str, Any] = {"batches": batches, "methods": {}}
    for method in methods:
        entry = {
            "median_s": statistics.median(seconds[method]),
            "seconds": seconds[method],
            "terms": sorted(terms[method]),
        }
        if method in lambdas:
            entry.update(on_policy_ratio=lambdas[method], branches=branch_seconds[method])
        if "kd" in methods:
            ratios = sorted(a / b for a, b in zip(seconds[method], seconds["kd"], strict=True))
            quarter = len(ratios) // 4
            entry.update(
                over_kd=statistics.median(ratios), over_kd_middle=(ratios[quarter], ratios[-1 - quarter])
            )
        results["methods"][method] = entry
    return results


def describe_pair(weights: dict[str, Any]) -> str:
    """The report's line naming the timed pair and the user's overrides (--set)."""
    overrides = f"; with {' '.join(weights['overrides'])}" if weights.get("overrides") else ""
    return f"teacher: {weights['teacher']}; student: {weights['student']}{overrides}."


def report_paired(results: dict[str, Any], weights: dict[str, Any]) -> list[str]:
    lines = [
        f"Forward + backward of each objective on the same {results['batches']} batches (tiny-student-kd "
        "config), the methods back to back in one process; median per batch, and the median over batches of "
        "the ratio to KD on the same batch (the middle half of the ratios in brackets); optimizer step and "
        "data loading not included;",
        describe_pair(weights),
        "| method | terms | forward + backward (ms) | time / KD |",
        "|---|---|---|---|",
    ]
    for method, m in results["methods"].items():
        ratio = (
            f"{m['over_kd']:.2f}x ({m['over_kd_middle'][0]:.2f}-{m['over_kd_middle'][1]:.2f})"
            if "over_kd" in m and method != "kd"
            else ("1.00x" if method == "kd" else "-")
        )
        lines.append(f"| {method} | {' + '.join(m['terms'])} | {1000 * m['median_s']:.1f} | {ratio} |")
    lines += [on_policy_line(method, m) for method, m in results["methods"].items() if "branches" in m]
    return lines


def on_policy_line(method: str, m: dict[str, Any]) -> str:
    """How an on-policy method's row was made: both kinds timed on every batch, weighted by lambda."""
    sampled, unsampled = (1000 * statistics.median(m["branches"][kind]) for kind in ("sampled", "not"))
    share = m["on_policy_ratio"]
    return (
        f"{method}: each batch timed both ways, answers first sampled from the student ({sampled:.1f} ms, the "
        f"median) and not ({unsampled:.1f} ms); its row is the expectation at loss.on_policy_ratio {share} "
        f"({share} x sampled + {1 - share:g} x not, batch by batch)."
    )
