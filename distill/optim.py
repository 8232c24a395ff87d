"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer object.

The split follows Keller Jordan's Muon recipe (github.com/KellerJordan/Muon): the weights of the
Linear layers inside the network (attention, MLP, projector) get orthogonalised momentum updates
(torch.optim.Muon); embeddings, the LM head, norms, biases and convolutions get AdamW. Muon learns
the tiny default's question-conditioned lookups several times faster than AdamW alone.

    optimizer = MuonWithAdamW.for_model(model, lr=5e-4, muon_lr=2e-3, weight_decay=0.01)

It is a torch.optim.Optimizer for the LR scheduler, accelerate and checkpointing (its state_dict
holds both halves). It needs whole matrices on each process, so it is refused under DeepSpeed ZeRO.
"""

from __future__ import annotations

from typing import Any

import torch


def muon_parameter_names(model: torch.nn.Module) -> set[str]:
    """Weights of nn.Linear layers, except the output (LM) head."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            names.add(f"{module_name}.weight" if module_name else "weight")
    return names


class MuonWithAdamW(torch.optim.Optimizer):
    """Two inner optimizers behind one Optimizer interface; param_groups are shared with them."""

    def __init__(
        self, muon_groups: list[dict], adamw_groups: list[dict], muon_kwargs: dict, adamw_kwargs: dict
    ) -> None:
        self.muon = torch.optim.Muon(muon_groups, **muon_kwargs) if muon_groups else None
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_kwargs)
        self.inner = [o for o in (self.muon, self.adamw) if o is not None]
        self.defaults = dict(self.adamw.defaults)
        self.param_groups = [group for o in self.inner for group in o.param_groups]
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}
        self._optimizer_state_dict_pre_hooks: dict = {}
        self._optimizer_state_dict_post_hooks: dict = {}
        self._optimizer_load_state_dict_pre_hooks: dict = {}
        self._optimizer_load_state_dict_post_hooks: dict = {}
        self._zero_grad_profile_name = "Optimizer.zero_grad#MuonWithAdamW.zero_grad"

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        lr: float,
        muon_lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> MuonWithAdamW:
        """Group the trainable parameters: Muon for hidden matrices, AdamW (no decay on 1-D) for the rest."""
        hidden = muon_parameter_names(model)
        muon, adamw_decay, adamw_plain = [], [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name in hidden:
                muon.append(param)
            elif param.ndim >= 2:
                adamw_decay.append(param)
            else:
                adamw_plain.append(param)
        adamw_groups = [
            g
            for g in (
                {"params": adamw_decay, "weight_decay": weight_decay},
                {"params": adamw_plain, "weight_decay": 0.0},
            )
            if g["params"]
        ]
        muon_kwargs = {
            "lr": muon_lr,
            "weight_decay": weight_decay,
            "momentum": 0.95,
            "adjust_lr_fn": "match_rms_adamw",
        }
        adamw_kwargs = {"lr": lr, "betas": betas, "eps": eps}
        muon_groups = [{"params": muon}] if muon else []
        return cls(muon_groups, adamw_groups, muon_kwargs, adamw_kwargs)

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        merged: dict[Any, Any] = {}
        for optimizer in self.inner:
            merged.update(optimizer.state)
        return merged

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for optimizer in self.inner:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.inner:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict() if self.muon else None, "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.muon is not None:
            self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [group for o in self.inner for group in o.param_groups]

    def __repr__(self) -> str:
        return f"MuonWithAdamW(muon={self.muon!r}, adamw={self.adamw!r})"
