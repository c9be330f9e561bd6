"""Small models, a config and data UIDs shared by the experiment tests."""

from __future__ import annotations

import enum

import torch
from torch import nn

__all__ = ["CONFIG", "UIDS", "Act", "make_model", "train"]


def make_model(width: int = 8, extra: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2)]
    if extra:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


CONFIG = {
    "lr": 1e-3,
    "batch_size": 32,
    "optimizer": {"name": "adam", "betas": (0.9, 0.999)},
    "tags": {"a", "b", "c"},
}
UIDS = [f"sample_{i}" for i in range(20)]


class Act(enum.Enum):
    RELU = 1


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
