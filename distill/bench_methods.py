"""The training objectives `python -m distill bench --methods ...` times, as dotted config overrides.

    python -m distill bench --part steps --methods kd,iva,tpa-kv,tpa-ribbon,align-ti,gkd
    python -m distill bench --part scale --methods kd,align-ti      # at real model shapes

Each entry switches terms on over vanilla SFT + KD; the benches apply them to the same student,
teacher and data, so the step times differ by the objective alone.
"""

from __future__ import annotations

IVA = ["loss.w_iva=1.0", "loss.iva_layer=1"]  # a fixed layer: random-weight teachers have no l* to find
TPA = ["loss.w_tpa=1.0", "loss.tpa_candidates=4"]
METHODS: dict[str, list[str]] = {
    "sft": ["loss.w_kd=0.0"],
    "kd": ["loss.w_kd=1.0"],
    "iva": ["loss.w_kd=1.0", *IVA],
    "tpa-kv": ["loss.w_kd=1.0", *TPA, "loss.tpa_impl=kv"],
    "tpa-ribbon": ["loss.w_kd=1.0", *TPA, "loss.tpa_impl=ribbon"],
    "align-ti": ["loss.w_kd=1.0", *IVA, *TPA, "loss.tpa_impl=kv"],
    # GKD with TRL's defaults: generalized JSD, half of the batches answered by the student
    "gkd": [
        "loss.w_sft=0.0",
        "loss.w_kd=1.0",
        "loss.divergence=jsd",
        "loss.on_policy_ratio=0.5",
        "loss.on_policy_max_new_tokens=32",
    ],
    "llavadi": ["loss.w_kd=1.0", "loss.w_hidden=1.0"],
    "emkd": ["loss.w_kd=1.0", "loss.w_vsd=1.0", "loss.w_vlad=1.0"],  # same visual-token count in the benches
}


def uses_tpa(method: str) -> bool:
    """TPA continues the first pass's KV cache, which gradient checkpointing does not keep."""
    return any(o.startswith("loss.w_tpa=") for o in METHODS[method])


def mean_step_line(method: str) -> str:
    """The line under a bench's table for a method whose step figure is a mean."""
    return (
        f"{method}: the mean step, not the median (a coin per step samples the student's answers first, so "
        "its steps are of two kinds)."
    )
