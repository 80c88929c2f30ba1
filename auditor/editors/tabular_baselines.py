"""Baseline editors for tabular MLPs, the ones a user would pick instead of a learned editor.

- `finetune-fairness`: fine-tune the whole MLP with cross-entropy plus a differentiable
  demographic-parity or equalized-odds penalty. The protected attribute is used only to compute
  the penalty during training; it is never an input, so the edited model does not need it.
- `magnitude-pruning-finetune`: global magnitude pruning (`torch.nn.utils.prune`), fine-tuning
  with the masks held, then the masks made permanent.
- `retrain-k-features`: retrain the MLP (same architecture, from scratch) on the k most important
  raw features; the other first-layer columns are zero.
- `drop-features`: zero the first-layer columns of all but the k most important raw features,
  without retraining (their mean contribution is folded into the bias).

Post-processing and retraining with fairlearn (ThresholdOptimizer, ExponentiatedGradient) are not
weight edits of the given MLP: they live in `auditor.editors.fairlearn_baselines`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from ..data.base import AuditData
from ..errors import AuditorError
from ..models.architectures import build_architecture, editable_layers, first_layer, predict_logits
from ..requirements import Requirement, surrogates
from .base import Editor
from .registry import register_editor

FAIRNESS_METRICS = surrogates.FAIRNESS_SURROGATES  # ("demographic_parity", "equalized_odds")


# ---------------------------------------------------------------------------------------------
# shared helpers

def _tabular_mlp_reason(bundle, data: AuditData) -> str | None:
    """None when `bundle` is an MLP whose first Linear layer reads `data`'s inputs, else why not."""
    if data.kind != "tabular":
        return f"needs tabular data; {data.name!r} is {data.kind}"
    try:
        _, layer = first_layer(bundle.model)
    except AuditorError as exc:
        return str(exc)
    if not isinstance(layer, nn.Linear):
        return "needs a model whose first layer is Linear (an MLP)"
    if layer.in_features != data.n_inputs:
        return f"the model reads {layer.in_features} inputs but {data.name!r} has {data.n_inputs}"
    return None


def _fairness_reason(bundle, data: AuditData) -> str | None:
    reason = _tabular_mlp_reason(bundle, data)
    if reason:
        return reason
    if not data.protected:
        return f"data set {data.name!r} names no protected attribute"
    if len(data.class_names) != 2:
        return "fairness metrics need a binary task"
    return None


def group_codes(data: AuditData, attribute: str, split: str) -> tuple[torch.Tensor, list[str]]:
    """Integer group code per row of `split` (codes shared by all splits) and the group names."""
    if attribute not in data.protected:
        raise AuditorError(f"unknown protected attribute {attribute!r}; {data.name!r} has {data.protected}")
    names = sorted({str(v) for s in ("train", "val", "test") for v in data.split(s).groups[attribute]})
    return surrogates.group_codes(data.split(split).groups[attribute].astype(str), names)


def hard_fairness(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, metric: str) -> float:
    """The metric on hard predictions (fairlearn's definition, without its overhead)."""
    p, g, t = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(groups), torch.as_tensor(y)
    return float(surrogates.fairness_gap(metric, p, t, g, reduce="max"))


def _requirement(requirements: list[Requirement], metrics, op: str | None = None) -> Requirement | None:
    for r in requirements:
        if r.metric in metrics and (op is None or r.op == op):
            return r
    return None


def _batches(n: int, batch_size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _rows(n: int, rows: int | None, gen: torch.Generator) -> torch.Tensor:
    if rows is None or rows >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=gen)[:rows].sort().values


# ---------------------------------------------------------------------------------------------
# fine-tuning with a fairness penalty

@dataclass
class FairFineTuneHyper:
    strength: float = 0.5  # weight of the fairness penalty against cross-entropy
    metric: str | None = None  # demographic_parity / equalized_odds; None: from the requirement
    target: float | None = None  # None: the requirement's threshold; no target: run all epochs
    attribute: str | None = None  # protected attribute; None: the requirement's, else the data's first
    epochs: int = 8  # at most this many passes over the training rows
    checks_per_epoch: int = 8  # how often the target is checked
    margin: float = 0.8  # stop once the gap on `check_split` is at most margin * target
    check_split: str = "train"  # rows the target is checked on: the 10x larger training split varies less
    # than the validation split (a gap between ~100 positive rows of a group is noisy)
    adapt: float = 1.5  # multiply the strength by this after an epoch that did not reach the target (1: fixed)
    lr: float = 1e-3
    batch_size: int = 512
    rows: int | None = None  # training rows used (None: all)
    min_group_rows: int = 5  # groups with fewer rows in a batch are left out of that batch's penalty
    seed: int = 0


@register_editor
class FairnessFineTune(Editor):
    """Fine-tune every weight on cross-entropy + strength * (group gap of the positive probability).

    The protected attribute only weights the training loss; it is never an input. With a target
    (`demographic_parity <= 0.05`) training stops as soon as `check_split` meets
    `margin * target`, raising the strength (x `adapt`) after an epoch that did not.

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> r = get_editor("finetune-fairness").edit(load_model("sample_models/adult_mlp.safetensors"),
    ...     load_data("adult"), ["demographic_parity <= 0.05"])  # doctest: +SKIP
    """

    name = "finetune-fairness"
    description = "Fine-tune with cross-entropy + a demographic-parity / equalized-odds penalty (baseline)"
    kind = "baseline"
    targets = FAIRNESS_METRICS
    Hyper = FairFineTuneHyper

    def supports(self, bundle, data) -> str | None:
        return _fairness_reason(bundle, data)

    def _settings(self, data: AuditData, requirements) -> tuple[str, float | None, str]:
        hp = self.hparams
        req = _requirement(requirements, FAIRNESS_METRICS, "<=")
        metric = hp.metric or (req.metric if req else "demographic_parity")
        if metric not in FAIRNESS_METRICS:
            raise AuditorError(f"finetune-fairness: metric {metric!r} is not one of {FAIRNESS_METRICS}")
        target = hp.target if hp.target is not None else (req.threshold if req and req.metric == metric else None)
        attribute = hp.attribute or (req.attribute if req and req.attribute else None) or data.protected[0]
        return metric, target, attribute

    def _edit(self, model, data, requirements, device, callback, **_):
        hp = self.hparams
        metric, target, attribute = self._settings(data, requirements)
        if hp.strength < 0 or hp.epochs < 1 or not 0 < hp.margin <= 1:
            raise AuditorError("finetune-fairness: strength must be >= 0, epochs >= 1 and 0 < margin <= 1; "
                               f"got {hp.strength}, {hp.epochs}, {hp.margin}")
        gen = torch.Generator().manual_seed(hp.seed)
        tr = data.train
        rows = _rows(len(tr), hp.rows, gen)
        g_all, names = group_codes(data, attribute, "train")
        X, y, g = tr.X[rows].to(device), tr.y[rows].to(device), g_all[rows].to(device)
        checked = data.split(hp.check_split)
        vX, vy = checked.X, checked.y.numpy()
        vg = group_codes(data, attribute, hp.check_split)[0].numpy()

        def check() -> tuple[float, float]:
            pred = predict_logits(model, vX).argmax(1).numpy()
            return hard_fairness(pred, vy, vg, metric), float((pred == vy).mean())

        gap0, acc0 = check()
        self.log.append({"step": 0, "metric": metric, "attribute": attribute, "check_split": hp.check_split,
                         "check_gap": gap0, "check_accuracy": acc0, "strength": hp.strength})
        if target is not None and gap0 <= hp.margin * target:
            return {"metric": metric, "attribute": attribute, "target": target, "check_gap": gap0,
                    "check_accuracy": acc0, "steps": 0, "strength": hp.strength, "reached": True}
        extra = {"min_count": max(1, hp.min_group_rows)}
        if metric == "equalized_odds":
            extra["reduce"] = "sum"  # gradients reach both the TPR and the FPR gap at every step
        opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
        n_batches = math.ceil(len(X) / hp.batch_size)
        check_every = max(1, n_batches // max(1, hp.checks_per_epoch))
        strength, steps, reached = float(hp.strength), 0, False
        gap, acc = gap0, acc0
        model.train()
        for epoch in range(hp.epochs):
            for b, idx in enumerate(_batches(len(X), hp.batch_size, gen)):
                logits = model(X[idx])
                p = surrogates.positive_probability(logits)
                penalty = surrogates.fairness_gap(metric, p, y[idx], g[idx], len(names), **extra)
                loss = nn.functional.cross_entropy(logits, y[idx]) + strength * penalty
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                if target is not None and ((b + 1) % check_every == 0 or b + 1 == n_batches):
                    gap, acc = check()
                    model.train()
                    if gap <= hp.margin * target:
                        reached = True
                        break
            if target is None:
                gap, acc = check()
                model.train()
            self.log.append({"step": steps, "epoch": epoch + 1, "check_gap": gap, "check_accuracy": acc,
                             "strength": strength, "loss": float(loss.detach())})
            callback((epoch + 1) / hp.epochs, f"epoch {epoch + 1}/{hp.epochs}: {hp.check_split} {metric} {gap:.3f}")
            if reached:
                break
            if target is not None:
                strength *= max(1.0, float(hp.adapt))
        model.eval()
        for prm in model.parameters():
            prm.grad = None
        return {"metric": metric, "attribute": attribute, "target": target, "check_gap": gap,
                "check_accuracy": acc, "steps": steps, "strength": strength,
                "reached": reached if target is not None else None}


# ---------------------------------------------------------------------------------------------
# pruning with fine-tuning

@dataclass
class PruneFineTuneHyper:
    sparsity: float | None = None  # target fraction of zero weights; None: from a `sparsity >=` requirement
    default_sparsity: float = 0.9
    epochs: int = 3  # fine-tuning passes with the masks held
    lr: float = 1e-3
    batch_size: int = 256
    rows: int | None = None  # training rows used (None: all)
    seed: int = 0


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
        if not editable_layers(bundle.model):
            return "the model has no Linear or Conv2d layer to prune"
        return None

    def _edit(self, model, data, requirements, device, callback, **_):
        hp = self.hparams
        req = _requirement(requirements, ("sparsity",), ">=")
        amount = float(hp.sparsity if hp.sparsity is not None else (req.threshold if req else hp.default_sparsity))
        if not 0 <= amount < 1:
            raise AuditorError(f"sparsity must be in [0, 1); got {amount}")
        params = [(m, "weight") for _, m in editable_layers(model)]
        total = sum(m.weight.numel() for m, _ in params)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=int(math.ceil(amount * total)))
        gen = torch.Generator().manual_seed(hp.seed)
        rows = _rows(len(data.train), hp.rows, gen)
        X, y = data.train.X[rows].to(device), data.train.y[rows].to(device)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.lr)
        loss = torch.tensor(float("nan"))
        try:
            model.train()
            for epoch in range(hp.epochs):
                for idx in _batches(len(X), hp.batch_size, gen):
                    loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                callback((epoch + 1) / max(hp.epochs, 1), f"fine-tune epoch {epoch + 1}/{hp.epochs}")
                self.log.append({"step": "fine-tune", "epoch": epoch + 1, "loss": float(loss.detach())})
        finally:
            for m, p in params:
                prune.remove(m, p)
            for prm in model.parameters():
                prm.grad = None
            model.eval()
        self.log.insert(0, {"step": "prune", "sparsity": amount, "weights": total})
        return {"sparsity": amount, "epochs": hp.epochs}


# ---------------------------------------------------------------------------------------------
# data minimisation: keep k raw features

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
    k: int | None = None  # raw features to keep; None: from a `features_used <= k` requirement
    default_k: int = 5
    importance: str = "permutation"  # "permutation" (on the validation split) or "weight-norm"
    seed: int = 0


class _KeepFeatures(Editor):
    kind = "baseline"
    targets = ("features_used",)

    def supports(self, bundle, data) -> str | None:
        reason = _tabular_mlp_reason(bundle, data)
        if reason is None and not data.feature_groups:
            reason = f"data set {data.name!r} has no feature groups"
        return reason

    def _choose(self, model, data, requirements) -> tuple[list[str], list[int], dict[str, float]]:
        hp = self.hparams
        req = _requirement(requirements, ("features_used",), "<=")
        k = int(hp.k if hp.k is not None else (req.threshold if req else hp.default_k))
        n = sum(1 for v in data.feature_groups.values() if v)
        if not 1 <= k <= n:
            raise AuditorError(f"k must be between 1 and the {n} raw features; got {k}")
        importance = feature_importance(model, data, method=hp.importance, seed=hp.seed)
        keep = top_features(importance, k)
        dropped = sorted(i for name, idx in data.feature_groups.items() if name not in keep for i in idx)
        return keep, dropped, importance


@dataclass
class DropFeaturesHyper(KeepFeaturesHyper):
    impute_mean: bool = True  # fold the dropped inputs' training mean into the first-layer bias


@register_editor
class DropFeatures(_KeepFeatures):
    """Zero the first-layer columns of all but the k most important raw features, without retraining.
    With `impute_mean` the dropped inputs' mean contribution (on training data) moves into the bias,
    as if they were replaced by their mean."""

    name = "drop-features"
    description = "Keep the k most important raw features: zero the other first-layer columns, no retraining"
    Hyper = DropFeaturesHyper

    def _edit(self, model, data, requirements, device, callback, **_):
        keep, dropped, importance = self._choose(model, data, requirements)
        _, layer = first_layer(model)
        with torch.no_grad():
            cols = torch.as_tensor(dropped, dtype=torch.long, device=layer.weight.device)
            if self.hparams.impute_mean and layer.bias is not None and len(dropped):
                mean = data.train.X[:, dropped].mean(0).to(layer.weight.device)
                layer.bias += layer.weight[:, cols] @ mean
            layer.weight[:, cols] = 0
        self.log.append({"step": "drop", "kept": keep, "dropped_inputs": len(dropped)})
        return {"kept": keep, "importance": importance, "k": len(keep)}


@dataclass
class RetrainKHyper(KeepFeaturesHyper):
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warm_start: bool = False  # start from the given weights instead of a fresh initialisation


@register_editor
class RetrainKFeatures(_KeepFeatures):
    """Retrain the same architecture on the k most important raw features (other inputs zeroed);
    the dropped features' first-layer columns are exactly zero afterwards."""

    name = "retrain-k-features"
    description = "Retrain the MLP on the k most important raw features (the rest zeroed)"
    Hyper = RetrainKHyper

    def _edit(self, model, data, requirements, device, callback, *, bundle=None, **_):
        from ..training import TrainConfig, train_classifier

        hp = self.hparams
        keep, dropped, importance = self._choose(model, data, requirements)
        if not hp.warm_start:
            if bundle is None or not bundle.spec or not bundle.spec.arch:
                raise AuditorError("retrain-k-features needs the model's architecture spec; use warm_start=True")
            torch.manual_seed(hp.seed)
            fresh = build_architecture(bundle.spec.arch).to(device)
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
        self.log.append({"step": "retrain", "kept": keep, "epochs": hp.epochs, "warm_start": hp.warm_start})
        return {"kept": keep, "importance": importance, "k": len(keep)}
