"""A model's own optimizer groups: per-group LR factors and LR-gated start steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scforge.training.config import OptimConfig
from scforge.training.optim import lr_multiplier, make_optimizer, make_scheduler_factory


class _TwoPart(nn.Module):
    def __init__(self, *, frozen_in_group: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)
        self.frozen_in_group = frozen_in_group

    def param_groups(self, weight_decay: float) -> list[dict]:
        if self.frozen_in_group:
            self.b.bias.requires_grad_(False)
        return [{"params": list(self.a.parameters()), "weight_decay": weight_decay,
                 "lr_scale": 1.0, "name": "a"},
                {"params": list(self.b.parameters()), "weight_decay": 0.0, "lr_scale": 0.25,
                 "start_step": 3, "name": "b"},
                {"params": [], "name": "empty"}]


def test_model_groups_scale_and_gate_the_schedule():
    cfg = OptimConfig(lr=1e-2, warmup_steps=2, schedule="cosine", min_lr_ratio=0.0)
    model = _TwoPart()
    opt = make_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["a", "b"]  # empty groups dropped
    sched = make_scheduler_factory(cfg, 10)(opt)
    before_b = [p.detach().clone() for p in model.b.parameters()]
    for step in range(6):
        want = lr_multiplier(step, warmup=2, total=10, schedule="cosine", min_ratio=0.0)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * want)
        assert opt.param_groups[1]["lr"] == (pytest.approx(2.5e-3 * want) if step >= 3 else 0.0)
        model.b(model.a(torch.ones(2, 3))).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        moved = any(not torch.equal(p, q) for p, q in zip(model.b.parameters(), before_b,
                                                          strict=True))
        assert moved == (step >= 3), step  # lr 0: no update and no weight decay


def test_frozen_parameter_in_a_model_group_is_refused():
    with pytest.raises(ValueError, match="requires_grad=False"):
        make_optimizer(_TwoPart(frozen_in_group=True), OptimConfig())
