"""`drop-features`: zero the first-layer columns of all but the k most important raw features,
without retraining (their mean contribution is folded into the bias)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...models.architectures import first_layer
from ..registry import register_editor
from .feature_importance import KeepFeatures, KeepFeaturesHyper


@dataclass
class DropFeaturesHyper(KeepFeaturesHyper):
    impute_mean: bool = field(default=True, metadata={
        "help": "fold the dropped inputs' training mean into the first-layer bias"})


@register_editor
class DropFeatures(KeepFeatures):
    """Zero the first-layer columns of all but the k most important raw features, without retraining.
    With `impute_mean` the dropped inputs' mean contribution (on training data) moves into the bias,
    as if they were replaced by their mean."""

    name = "drop-features"
    description = "Keep the k most important raw features: zero the other first-layer columns, no retraining"
    Hyper = DropFeaturesHyper

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        keep, dropped, importance = self._choose(model, data, requirements)
        _, layer = first_layer(model)
        with torch.no_grad():
            cols = torch.as_tensor(dropped, dtype=torch.long, device=layer.weight.device)
            if self.hparams.impute_mean and layer.bias is not None and len(dropped):
                mean = data.train.X[:, dropped].mean(0).to(layer.weight.device)
                layer.bias += layer.weight[:, cols] @ mean
            layer.weight[:, cols] = 0
        gone = [f for f in data.feature_groups if f not in keep]  # raw features, by name
        log.append({"step": "drop", "kept": keep, "dropped": gone, "dropped_inputs": len(dropped)})
        log.append({"step": "note", "message": f"kept {len(keep)} raw feature(s): {', '.join(map(str, keep))}; "
                                               f"dropped {len(gone)}: {', '.join(map(str, gone)) or 'none'}"})
        return {"kept": keep, "dropped": gone, "importance": importance, "k": len(keep)}
