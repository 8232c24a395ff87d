"""Muon + AdamW behind one optimizer: the right split, schedulers work, checkpoints round-trip."""

import copy

import pytest
import torch

from distill.optim import MuonWithAdamW, muon_parameter_names
from tests.conftest import make_model


def test_hidden_matrices_get_muon_and_the_rest_adamw(tokenizer):
    model, _ = make_model(tokenizer)
    hidden = muon_parameter_names(model)
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in hidden
    assert "model.multi_modal_projector.linear_1.weight" in hidden
    assert "model.vision_tower.encoder.layers.0.mlp.fc1.weight" in hidden
    assert not any("embed" in n or "lm_head" in n or "norm" in n or n.endswith("bias") for n in hidden)
    optimizer = MuonWithAdamW.for_model(model, lr=1e-3, muon_lr=2e-3)
    muon_params = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in muon_params} == hidden & set(names.values())


def toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)
    )


def train(model, optimizer, steps, start=0):
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    for _ in range(start):
        scheduler.step()
    for step in range(start, start + steps):
        torch.manual_seed(step)
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


@pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)` before"
)  # the replayed schedule
def test_schedulers_drive_both_halves_and_state_round_trips():
    model = toy()
    optimizer = MuonWithAdamW.for_model(model, lr=1e-2, muon_lr=2e-2)
    reference, ref_optimizer = copy.deepcopy(model), None
    train(model, optimizer, 3)
    assert {round(g["lr"], 6) for g in optimizer.param_groups} == {round(1e-2 / 4, 6), round(2e-2 / 4, 6)}

    ref_optimizer = MuonWithAdamW.for_model(reference, lr=1e-2, muon_lr=2e-2)
    train(reference, ref_optimizer, 3)
    state = copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, 2, start=3)

    resumed = MuonWithAdamW.for_model(reference, lr=1e-2, muon_lr=2e-2)
    resumed.load_state_dict(state)
    train(reference, resumed, 2, start=3)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
