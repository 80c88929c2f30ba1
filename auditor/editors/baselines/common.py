"""Helpers the tabular baselines share: which models and data they take, group codes, the hard
fairness of predictions, picking a requirement, and seeded batches and row samples."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...data.base import AuditData
from ...errors import AuditorError
from ...models.architectures import computed_weight, editable_layers, first_layer, predict_logits
from ...requirements import Requirement, surrogates

FAIRNESS_METRICS = surrogates.FAIRNESS_SURROGATES  # ("demographic_parity", "equalized_odds")


def tabular_mlp_reason(bundle, data: AuditData) -> str | None:
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
        name = next(n for n, m in bundle.model.named_modules() if m is layer)
        return (f"needs an MLP whose first layer is a Linear over {data.name!r}'s {data.n_inputs} inputs; this "
                f"model's first Linear layer, {name!r}, reads {layer.in_features} values, so it is not one")
    return None


def prunable_weights(model: nn.Module, log: list[dict] | None = None) -> list[tuple[nn.Module, str]]:
    """(layer, "weight") of every Linear and Conv2d layer `torch.nn.utils.prune` can prune: a weight a
    parametrization computes (`weight_norm`) is left out, and said in `log`."""
    layers = editable_layers(model)
    left = [n for n, m in layers if computed_weight(m)]
    if left and log is not None:
        log.append({"step": "note", "message": f"layer(s) {', '.join(left)} left unpruned: their weights are computed "
                                                "by a parametrization (weight_norm, spectral_norm), which "
                                                "torch.nn.utils.prune cannot prune"})
    return [(m, "weight") for n, m in layers if n not in left]


def pruning_reason(bundle) -> str | None:
    """None when the model has a layer `prunable_weights` takes, else why not."""
    if bundle is None:
        return None
    if not editable_layers(bundle.model):
        return "the model has no Linear or Conv2d layer to prune"
    if not prunable_weights(bundle.model):
        return ("every Linear and Conv2d layer's weight is computed by a parametrization (weight_norm, spectral_norm), "
                "which torch.nn.utils.prune cannot prune")
    return None


def tabular_model_reason(bundle, data: AuditData) -> str | None:
    """None when `bundle` reads `data`'s rows (a tabular model of any architecture, which the editors that
    fine-tune every weight can edit), else why not."""
    if data.kind != "tabular":
        return f"needs tabular data; {data.name!r} is {data.kind}"
    if bundle is None:
        return None
    if not editable_layers(bundle.model):
        return "the model has no Linear or Conv2d layer to edit"
    X = next((s.X[:2] for s in (data.train, data.val, data.test) if len(s)), None)
    if X is None:
        return None
    try:
        out = predict_logits(bundle.model, X)
    except Exception as exc:  # noqa: BLE001 - any failure says the model does not read these rows
        return f"the model cannot run on {data.name!r}'s rows ({type(exc).__name__})"
    if out.dim() != 2 or out.shape[1] < len(data.class_names):
        return f"the model returns outputs of shape {list(out.shape[1:])} for {len(data.class_names)} classes"
    return None


def fairness_reason(bundle, data: AuditData) -> str | None:
    reason = tabular_model_reason(bundle, data)
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
    """Demographic parity / equalized odds difference of hard predictions `pred` with labels `y` and
    integer group codes `groups` over every group (fairlearn's definition, without its overhead)."""
    p, g, t = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(groups), torch.as_tensor(y)
    return float(surrogates.fairness_gap(metric, p, t, g, reduce="max"))


def find_requirement(requirements: list[Requirement], metrics, op: str | None = None) -> Requirement | None:
    """The first requirement on one of `metrics` (with comparison `op` when given)."""
    for r in requirements:
        if r.metric in metrics and (op is None or r.op == op):
            return r
    return None


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Shuffled index batches over n rows."""
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def sample_rows(n: int, rows: int | None, gen: torch.Generator) -> torch.Tensor:
    """All n row indices, or a sorted random subset of `rows` of them."""
    if rows is None or rows >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=gen)[:rows].sort().values


class ZerosKept:
    """The exact zeros of weight matrices (pruned entries, inputs a minimisation edit dropped) kept at zero through
    training steps: call it after each optimizer step. A fine-tune used to bring back the features an earlier
    edit had dropped. Dense trained weights hold no exact zeros, so it changes nothing there."""

    def __init__(self, params):
        self.kept = [(p, p.detach() != 0) for p in params if p.dim() >= 2 and bool((p.detach() == 0).any())]
        self.count = int(sum(int((~m).sum()) for _, m in self.kept))

    @torch.no_grad()
    def __call__(self) -> None:
        for p, mask in self.kept:
            p.mul_(mask)
