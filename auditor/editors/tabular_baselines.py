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
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from ..data.base import AuditData
from ..errors import AuditorError
from ..models.architectures import build_architecture, editable_layers, first_layer, predict_logits
from ..requirements import Requirement
from .base import Editor
from .registry import register_editor

FAIRNESS_METRICS = ("demographic_parity", "equalized_odds")


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
    index = {n: i for i, n in enumerate(names)}
    codes = data.split(split).groups[attribute].astype(str).map(index).to_numpy()
    return torch.as_tensor(codes.astype(np.int64)), names


def fairness_gap(p: torch.Tensor, groups: torch.Tensor, y: torch.Tensor | None, metric: str,
                 n_groups: int | None = None) -> torch.Tensor:
    """Differentiable gap: largest minus smallest group mean of `p` (a positive-class probability
    or a hard 0/1 prediction). `demographic_parity`: over all rows; `equalized_odds`: the same gap
    within y=1 and within y=0, summed (fairlearn's metric takes the larger of the two).
    Groups absent from the batch are skipped."""
    n_groups = int(n_groups if n_groups is not None else int(groups.max()) + 1)

    def gap(mask: torch.Tensor | None) -> torch.Tensor:
        pp, gg = (p, groups) if mask is None else (p[mask], groups[mask])
        sums = torch.zeros(n_groups, dtype=p.dtype, device=p.device).index_add(0, gg, pp)
        counts = torch.bincount(gg, minlength=n_groups).to(p.dtype)
        present = counts > 0
        if int(present.sum()) < 2:
            return p.new_zeros(())
        means = sums[present] / counts[present]
        return means.max() - means.min()

    if metric == "demographic_parity":
        return gap(None)
    if metric == "equalized_odds":
        if y is None:
            raise AuditorError("equalized_odds needs the labels")
        return gap(y == 1) + gap(y == 0)
    raise AuditorError(f"no fairness surrogate for {metric!r}; choose one of {FAIRNESS_METRICS}")


def hard_fairness(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, metric: str) -> float:
    """The metric on hard predictions (same definition as fairlearn's, without its overhead)."""
    p, g, t = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(groups), torch.as_tensor(y)
    if metric == "demographic_parity":
        return float(fairness_gap(p, g, None, metric))
    return float(max(fairness_gap(p[t == 1], g[t == 1], None, "demographic_parity"),
                     fairness_gap(p[t == 0], g[t == 0], None, "demographic_parity")))


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
    checks_per_epoch: int = 4  # how often the target is checked on the validation split
    margin: float = 0.8  # stop once the validation gap is at most margin * target
    adapt: bool = True  # double the strength after an epoch that did not reach the target
    lr: float = 1e-3
    batch_size: int = 512
    rows: int | None = None  # training rows used (None: all)
    seed: int = 0


@register_editor
class FairnessFineTune(Editor):
    """Fine-tune every weight on cross-entropy + strength * (group gap of the positive probability).

    The protected attribute only weights the training loss; it is never an input. With a target
    (`demographic_parity <= 0.05`) training stops as soon as the validation split meets
    `margin * target`, doubling the strength after an epoch that did not.

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
        vX, vy = data.val.X, data.val.y.numpy()
        vg = group_codes(data, attribute, "val")[0].numpy()

        def check() -> tuple[float, float]:
            pred = predict_logits(model, vX).argmax(1).numpy()
            return hard_fairness(pred, vy, vg, metric), float((pred == vy).mean())

        gap0, acc0 = check()
        self.log.append({"step": 0, "metric": metric, "attribute": attribute, "val_gap": gap0, "val_accuracy": acc0,
                         "strength": hp.strength})
        if target is not None and gap0 <= hp.margin * target:
            return {"metric": metric, "attribute": attribute, "target": target, "val_gap": gap0,
                    "val_accuracy": acc0, "steps": 0, "strength": hp.strength, "reached": True}
        opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
        n_batches = math.ceil(len(X) / hp.batch_size)
        check_every = max(1, n_batches // max(1, hp.checks_per_epoch))
        strength, steps, reached = float(hp.strength), 0, False
        gap, acc = gap0, acc0
        model.train()
        for epoch in range(hp.epochs):
            for b, idx in enumerate(_batches(len(X), hp.batch_size, gen)):
                logits = model(X[idx])
                p = logits.softmax(1)[:, 1]
                penalty = fairness_gap(p, g[idx], y[idx], metric, len(names))
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
            self.log.append({"step": steps, "epoch": epoch + 1, "val_gap": gap, "val_accuracy": acc,
                             "strength": strength, "loss": float(loss.detach())})
            callback((epoch + 1) / hp.epochs, f"epoch {epoch + 1}/{hp.epochs}: val {metric} {gap:.3f}")
            if reached:
                break
            if target is not None and hp.adapt:
                strength *= 2.0
        model.eval()
        for prm in model.parameters():
            prm.grad = None
        return {"metric": metric, "attribute": attribute, "target": target, "val_gap": gap, "val_accuracy": acc,
                "steps": steps, "strength": strength, "reached": reached if target is not None else None}
