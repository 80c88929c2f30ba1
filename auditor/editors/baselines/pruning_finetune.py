"""`magnitude-pruning-finetune`: global magnitude pruning (`torch.nn.utils.prune`), fine-tuning with
the masks held, then the masks made permanent."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from ...errors import AuditorError
from ..base import Editor
from ..registry import register_editor
from .common import batches, find_requirement, prunable_weights, pruning_reason, sample_rows


@dataclass
class PruneFineTuneHyper:
    sparsity: float | None = field(default=None, metadata={
        "help": "target fraction of zero weights; None: from a `sparsity >=` requirement"})
    default_sparsity: float = field(default=0.9, metadata={
        "help": "fraction of zero weights when neither `sparsity` nor a `sparsity >=` requirement says"})
    epochs: int = field(default=3, metadata={"help": "fine-tuning passes with the masks held"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (Adam)"})
    batch_size: int = field(default=256, metadata={"help": "rows per training batch"})
    rows: int | None = field(default=None, metadata={"help": "training rows used (None: all)"})
    seed: int = field(default=0, metadata={"help": "random seed (row order, sampling, initialisation)"})


@register_editor
class MagnitudePruningFineTune(Editor):
    """Global magnitude pruning (torch.nn.utils.prune), then fine-tuning on cross-entropy with the
    pruning masks held (pruned weights stay exactly zero), then the masks made permanent."""

    name = "magnitude-pruning-finetune"
    description = "Global magnitude pruning then fine-tuning with the masks held (torch.nn.utils.prune)"
    kind = "baseline"
    targets = ("sparsity",)
    Hyper = PruneFineTuneHyper

    def supports(self, bundle, data) -> str | None:
        return pruning_reason(bundle)

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        hp = self.hparams
        req = find_requirement(requirements, ("sparsity",), ">=")
        amount = float(hp.sparsity if hp.sparsity is not None else (req.threshold if req else hp.default_sparsity))
        if not 0 <= amount < 1:
            raise AuditorError(f"sparsity must be in [0, 1); got {amount}")
        params = prunable_weights(model, log)
        total = sum(m.weight.numel() for m, _ in params)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=int(math.ceil(amount * total)))
        gen = torch.Generator().manual_seed(hp.seed)
        rows = sample_rows(len(data.train), hp.rows, gen)
        X, y = data.train.X[rows].to(device), data.train.y[rows].to(device)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.lr)
        loss = torch.tensor(float("nan"))
        try:
            model.train()
            for epoch in range(hp.epochs):
                for idx in batches(len(X), hp.batch_size, gen):
                    loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                callback((epoch + 1) / max(hp.epochs, 1), f"fine-tune epoch {epoch + 1}/{hp.epochs}")
                log.append({"step": "fine-tune", "epoch": epoch + 1, "loss": float(loss.detach())})
        finally:
            for m, p in params:
                prune.remove(m, p)
            for prm in model.parameters():
                prm.grad = None
            model.eval()
        log.insert(0, {"step": "prune", "sparsity": amount, "weights": total})
        return {"sparsity": amount, "epochs": hp.epochs}
