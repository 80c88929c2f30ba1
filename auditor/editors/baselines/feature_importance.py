"""Importance of raw features, and the base of the editors that keep the k most important
(`drop-features`, `retrain-k-features`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...data.base import AuditData
from ...errors import AuditorError
from ...models.architectures import first_layer, predict_logits
from ..base import Editor
from .common import find_requirement, tabular_mlp_reason


def feature_importance(model: nn.Module, data: AuditData, split: str = "val", method: str = "permutation",
                       seed: int = 0, repeats: int = 2) -> dict[str, float]:
    """Importance of each raw feature (all its one-hot inputs together).

    `permutation`: accuracy lost when the feature's inputs are shuffled jointly across rows
    (mean over `repeats`); `weight-norm`: norm of the feature's first-layer columns.
    """
    groups = {k: v for k, v in data.feature_groups.items() if v}
    if method == "weight-norm":
        w = first_layer(model)[1].weight.detach().cpu()
        return {k: float(w[:, idx].norm()) for k, idx in groups.items()}
    if method != "permutation":
        raise AuditorError(f"unknown importance {method!r}; choose 'permutation' or 'weight-norm'")
    sp = data.split(split)
    base = float((predict_logits(model, sp.X).argmax(1) == sp.y).double().mean())
    rng = np.random.default_rng(seed)
    out = {}
    for name, idx in groups.items():
        drops = []
        for _ in range(repeats):
            X = sp.X.clone()
            X[:, idx] = sp.X[torch.as_tensor(rng.permutation(len(sp)))][:, idx]
            drops.append(base - float((predict_logits(model, X).argmax(1) == sp.y).double().mean()))
        out[name] = float(np.mean(drops))
    return out


def top_features(importance: dict[str, float], k: int) -> list[str]:
    return [name for name, _ in sorted(importance.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


@dataclass
class KeepFeaturesHyper:
    k: int | None = field(default=None, metadata={
        "help": "raw features to keep; None: from a `features_used <= k` requirement"})
    default_k: int = field(default=5, metadata={
        "help": "raw features to keep when neither `k` nor a `features_used <= k` requirement says (one fewer "
                "than the model reads, when it reads this many or fewer)"})
    importance: str = field(default="permutation", metadata={
        "help": '"permutation" (on the validation split) or "weight-norm"',
        "choices": ["permutation", "weight-norm"]})
    seed: int = field(default=0, metadata={"help": "random seed (row order, sampling, initialisation)"})


class KeepFeatures(Editor):
    """Base of the editors that keep the k most important raw features."""

    kind = "baseline"
    targets = ("features_used",)

    def supports(self, bundle, data) -> str | None:
        reason = tabular_mlp_reason(bundle, data)
        if reason is None and not data.feature_groups:
            reason = f"data set {data.name!r} has no feature groups"
        return reason

    def _choose(self, model, data, requirements) -> tuple[list[str], list[int], dict[str, float]]:
        hp = self.hparams
        req = find_requirement(requirements, ("features_used",), "<=")
        n = sum(1 for v in data.feature_groups.values() if v)
        if hp.k is not None:
            k = int(hp.k)
        elif req is not None:  # "features_used <= 10" on 4 features already holds: keep them all
            k = min(int(req.threshold), n)
        else:  # no word on k: `default_k`, or one fewer than the model reads when it reads fewer
            k = max(1, min(int(hp.default_k), n - 1))
        if not 1 <= k <= n:
            raise AuditorError(f"k must be between 1 and the {n} raw features; got {k}")
        importance = feature_importance(model, data, method=hp.importance, seed=hp.seed)
        keep = top_features(importance, k)
        dropped = sorted(i for name, idx in data.feature_groups.items() if name not in keep for i in idx)
        return keep, dropped, importance
