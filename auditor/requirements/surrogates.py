"""Differentiable surrogates of the requirements an editor optimises, and the utility divergence.

Every function takes torch tensors and returns a scalar tensor that gradients flow through, so
the same code serves learned editors (`auditor.editors.metanet`) and fine-tuning baselines
(`auditor.editors.baselines`). The hard metrics they stand in for live in
`auditor.requirements.metrics` (fairlearn-based); a surrogate of 0 means the relaxed requirement
holds exactly.

    >>> p = torch.tensor([0.9, 0.8, 0.2, 0.1]); g = torch.tensor([0, 0, 1, 1])
    >>> round(float(demographic_parity_gap(p, g)), 4)          # 0.85 - 0.15
    0.7
    >>> round(float(sparsity_gap(torch.full((10,), 0.5), target=0.9)), 4)   # keeps 50%, budget 10%
    0.4

Names (stable, imported by other modules):
- `positive_probability(logits, temperature)`: soft prediction of class 1 for a binary task.
- `demographic_parity_gap(p, groups)`: largest minus smallest group mean of p (fairlearn's
  `demographic_parity_difference` when p is the hard 0/1 prediction).
- `equalized_odds_gap(p, y, groups, reduce="max")`: the same gap among y=1 rows (TPR) and among
  y=0 rows (FPR), combined by max (fairlearn's `equalized_odds_difference`) or sum (smoother).
- `fairness_gap(metric, p, y, groups)`: dispatch by metric name.
- `feature_budget_gap(gates, k)`: how far soft per-raw-feature gates exceed a budget of k features.
- `group_gates(input_gates, feature_groups)`: per-input gates -> per-raw-feature gates (max).
- `sparsity_gap(keep, target)`: how far the kept fraction exceeds 1 - target sparsity.
- `js_divergence(logits_p, logits_q)`: Jensen-Shannon divergence between two output distributions.
- `group_codes(values)`: integer codes for a column of group labels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

FAIRNESS_SURROGATES = ("demographic_parity", "equalized_odds")


def positive_probability(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Probability of class 1 from (n, 2) logits; a temperature below 1 sharpens it towards the
    hard prediction (argmax), which makes a soft gap track the hard metric more closely."""
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"positive_probability needs (n, 2) logits of a binary task, got {tuple(logits.shape)}")
    return torch.sigmoid((logits[:, 1] - logits[:, 0]) / temperature)


def _group_means(p: torch.Tensor, groups: torch.Tensor, n_groups: int | None,
                 min_count: int = 1) -> torch.Tensor:
    n_groups = int(n_groups if n_groups is not None else int(groups.max()) + 1) if len(groups) else 0
    sums = torch.zeros(n_groups, dtype=p.dtype, device=p.device).index_add(0, groups, p)
    counts = torch.bincount(groups, minlength=n_groups).to(p.dtype)
    present = counts >= min_count
    return sums[present] / counts[present]


def demographic_parity_gap(p: torch.Tensor, groups: torch.Tensor, n_groups: int | None = None,
                           min_count: int = 1) -> torch.Tensor:
    """Largest minus smallest mean of `p` over groups (`groups`: int64 codes, one per row).

    With p = hard 0/1 predictions this is fairlearn's demographic parity difference. Groups with
    fewer than `min_count` rows in the batch are skipped; fewer than two groups give 0."""
    means = _group_means(p, groups.to(p.device), n_groups, min_count)
    if means.numel() < 2:
        return p.new_zeros(())
    return means.max() - means.min()


def equalized_odds_gap(p: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, n_groups: int | None = None,
                       reduce: str = "max", min_count: int = 1) -> torch.Tensor:
    """Gap of `p` between groups among positives (true-positive rate) and among negatives
    (false-positive rate), combined by `reduce`: "max" (fairlearn's equalized odds difference)
    or "sum" (gradients reach both rates at every step)."""
    y = y.to(p.device)
    groups = groups.to(p.device)
    tpr = demographic_parity_gap(p[y == 1], groups[y == 1], n_groups, min_count)
    fpr = demographic_parity_gap(p[y == 0], groups[y == 0], n_groups, min_count)
    if reduce == "max":
        return torch.maximum(tpr, fpr)
    if reduce == "sum":
        return tpr + fpr
    raise ValueError(f"reduce must be 'max' or 'sum', not {reduce!r}")


def fairness_gap(metric: str, p: torch.Tensor, y: torch.Tensor | None, groups: torch.Tensor,
                 n_groups: int | None = None, **kwargs) -> torch.Tensor:
    """`demographic_parity_gap` or `equalized_odds_gap` by metric name."""
    if metric == "demographic_parity":
        return demographic_parity_gap(p, groups, n_groups, **{k: v for k, v in kwargs.items() if k == "min_count"})
    if metric == "equalized_odds":
        if y is None:
            raise ValueError("equalized_odds needs the labels y")
        return equalized_odds_gap(p, y, groups, n_groups, **kwargs)
    raise ValueError(f"no fairness surrogate for {metric!r}; choose one of {FAIRNESS_SURROGATES}")


def group_gates(input_gates: torch.Tensor, feature_groups: dict[str, list[int]] | Sequence[Sequence[int]],
                reduce: str = "max") -> torch.Tensor:
    """Per-input gates (..., n_inputs) -> per-raw-feature gates (..., n_features).

    A raw feature (e.g. `education`, one-hot over 16 inputs) counts as used when any of its
    inputs is: `reduce="max"` follows that rule, `"mean"` is smoother."""
    groups = list(feature_groups.values()) if isinstance(feature_groups, dict) else list(feature_groups)
    cols = []
    for idx in groups:
        part = input_gates[..., list(idx)]
        cols.append(part.amax(-1) if reduce == "max" else part.mean(-1))
    return torch.stack(cols, -1)


def feature_budget_gap(gates: torch.Tensor, k: float) -> torch.Tensor:
    """Soft count of kept raw features (sum of gates in [0, 1]) above the budget k, >= 0.

    `gates` is (..., n_features); the result is averaged over leading dimensions."""
    return F.relu(gates.sum(-1) - k).mean()


def sparsity_gap(keep: torch.Tensor | Sequence[torch.Tensor], target: float) -> torch.Tensor:
    """Soft kept fraction of weights above 1 - target sparsity, >= 0.

    `keep` holds keep probabilities in [0, 1] for every weight (one tensor, or a list of tensors
    for several layers, counted together like `metrics.sparsity`)."""
    if isinstance(keep, torch.Tensor):
        kept, total = keep.sum(), keep.numel()
    else:
        kept = sum(k.sum() for k in keep)
        total = sum(k.numel() for k in keep)
    return F.relu(kept / max(total, 1) - (1.0 - target))


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between softmax(logits_p) and softmax(logits_q)
    per row, averaged (`reduction="mean"`) or not ("none"). Symmetric and bounded, so a few rows with
    confident disagreements cannot dominate the utility term."""
    lp = F.log_softmax(logits_p.float(), -1)
    lq = F.log_softmax(logits_q.float(), -1)
    lm = torch.logsumexp(torch.stack([lp, lq]), 0) - math.log(2.0)
    js = 0.5 * ((lp.exp() * (lp - lm)).sum(-1) + (lq.exp() * (lq - lm)).sum(-1))
    js = js.clamp_min(0.0)
    return js.mean() if reduction == "mean" else js


def group_codes(values, names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Integer codes (int64 tensor) for group labels (a pandas Series, array or list of strings),
    and the sorted names they index. Pass `names` to reuse the coding of another split."""
    arr = np.asarray(values).astype(str)
    names = sorted(set(arr.tolist())) if names is None else list(names)
    index = {n: i for i, n in enumerate(names)}
    missing = sorted(set(arr.tolist()) - set(index))
    if missing:
        raise ValueError(f"group labels {missing[:5]} are not among the known groups {names}")
    return torch.as_tensor([index[v] for v in arr.tolist()], dtype=torch.int64), names


__all__ = ["FAIRNESS_SURROGATES", "demographic_parity_gap", "equalized_odds_gap", "fairness_gap",
           "feature_budget_gap", "group_codes", "group_gates", "js_divergence", "positive_probability",
           "sparsity_gap"]
