"""Global magnitude pruning with `torch.nn.utils.prune` (the baseline users pick for sparsity)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import prune

from ..base import Editor
from ..registry import register_editor
from .common import prunable_weights, pruning_reason


@dataclass
class MagnitudePruningHyper:
    sparsity: float | None = field(default=None, metadata={
        "help": "target fraction of zero weights; None: from a `sparsity >=` requirement"})
    default_sparsity: float = field(default=0.5, metadata={
        "help": "fraction of zero weights when neither `sparsity` nor a `sparsity >=` requirement says"})


@register_editor
class MagnitudePruning(Editor):
    """Zero the smallest-magnitude weights across all Linear/Conv layers (no fine-tuning)."""

    name = "magnitude-pruning"
    description = "Global magnitude pruning (torch.nn.utils.prune), no fine-tuning"
    kind = "baseline"
    targets = ("sparsity",)
    Hyper = MagnitudePruningHyper

    def supports(self, bundle, data) -> str | None:
        return pruning_reason(bundle)

    def _target(self, requirements) -> float:
        if self.hparams.sparsity is not None:
            return float(self.hparams.sparsity)
        for r in requirements:
            if r.metric == "sparsity" and r.op == ">=":
                return float(r.threshold)
        return float(self.hparams.default_sparsity)

    def _edit(self, model: nn.Module, data, requirements, device, callback, *, log, **_):
        amount = self._target(requirements)
        params = prunable_weights(model, log)
        total = sum(m.weight.numel() for m, _ in params)
        # at least the share asked for (rounding down would leave `sparsity >= amount` just unmet)
        count = int(math.ceil(amount * total - 1e-9))
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=count)
        for m, p in params:
            prune.remove(m, p)
        log.append({"step": "prune", "sparsity": amount, "weights": total})
        return {"sparsity": amount}
