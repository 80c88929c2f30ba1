"""`retrain-k-features`: retrain the MLP (same architecture, from scratch) on the k most important
raw features, or on the raw features named in `keep` (e.g. the ones another editor kept); the other
first-layer columns are zero."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...backend import seeded_global_rng
from ...errors import AuditorError
from ...models.architectures import ARCHITECTURES, build_architecture, first_layer
from ..registry import register_editor
from .feature_importance import KeepFeatures, KeepFeaturesHyper


@dataclass
class RetrainKHyper(KeepFeaturesHyper):
    epochs: int = field(default=10, metadata={"help": "training passes over the training rows"})
    batch_size: int = field(default=256, metadata={"help": "rows per training batch"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (Adam)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay"})
    warm_start: bool = field(default=False, metadata={
        "help": "start from the given weights instead of a fresh initialisation"})
    keep: list[str] | None = field(default=None, metadata={
        "help": "raw features to keep (None: the k most important); e.g. the ones another editor kept"})


@register_editor
class RetrainKFeatures(KeepFeatures):
    """Retrain the same architecture on the k most important raw features (other inputs zeroed);
    the dropped features' first-layer columns are exactly zero afterwards."""

    name = "retrain-k-features"
    description = "Retrain the MLP on the k most important raw features (the rest zeroed)"
    Hyper = RetrainKHyper

    def supports(self, bundle, data) -> str | None:
        reason = super().supports(bundle, data)
        arch = (bundle.spec.arch or {}) if bundle is not None and bundle.spec else {}
        if reason is None and bundle is not None and not self.hparams.warm_start \
                and arch.get("name") not in ARCHITECTURES:
            reason = (f"retraining from a fresh initialisation needs an architecture the auditor can build "
                      f"({', '.join(sorted(ARCHITECTURES))}); this model is {arch.get('name', 'unnamed')!r}: "
                      "use --set warm_start=true to retrain from its own weights")
        return reason

    def _edit(self, model, data, requirements, device, callback, *, log, bundle=None, **_):
        from ...training import TrainConfig, train_classifier

        hp = self.hparams
        if hp.keep:
            unknown = [f for f in hp.keep if f not in data.feature_groups]
            if unknown:
                raise AuditorError(f"retrain-k-features: unknown raw features {unknown}; the data has "
                                   f"{list(data.feature_groups)}")
            keep, importance = list(hp.keep), {}
            dropped = sorted(i for name, idx in data.feature_groups.items() if name not in keep for i in idx)
        else:
            keep, dropped, importance = self._choose(model, data, requirements)
        if not hp.warm_start:
            if bundle is None or not bundle.spec or not bundle.spec.arch:
                raise AuditorError("retrain-k-features needs the model's architecture spec; use warm_start=True")
            with seeded_global_rng(hp.seed):  # a fresh initialisation, the same whatever other threads do
                fresh = build_architecture(bundle.spec.arch)
            fresh.to(device)
            model.load_state_dict(fresh.state_dict())
        X = data.train.X.clone()
        X[:, dropped] = 0
        cfg = TrainConfig(epochs=hp.epochs, batch_size=hp.batch_size, lr=hp.lr, weight_decay=hp.weight_decay,
                          seed=hp.seed)
        train_classifier(model, X.to(device), data.train.y.to(device), cfg, callback=callback)
        with torch.no_grad():
            first_layer(model)[1].weight[:, torch.as_tensor(dropped, dtype=torch.long, device=device)] = 0
        for prm in model.parameters():
            prm.grad = None
        log.append({"step": "retrain", "kept": keep, "epochs": hp.epochs, "warm_start": hp.warm_start})
        return {"kept": keep, "importance": importance, "k": len(keep)}
