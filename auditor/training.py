"""Plain supervised training used to build sample models, populations and retraining baselines."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                     callback=None) -> nn.Module:
    """Adam on cross-entropy, deterministic for a given seed; returns the model in eval mode."""
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), config.batch_size):
            idx = order[i:i + config.batch_size]
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
        if callback:
            callback((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs}")
    return model.eval()
