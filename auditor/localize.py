"""Where in the network a misbehaviour lives: Captum attributions per layer, per feature, per pixel.

A layer is read as a linear associative memory: its keys are its inputs (for a convolution, the
unfolded input patch at every output position), its values its outputs. `rank_layers` runs
Captum's layer integrated gradients (or layer conductance) with the corrupted input as baseline
and its clean twin as input, so by completeness every layer's attributions sum to the same
prediction gap f(clean) - f(corrupted); it then projects them on the rank-one edit direction
C^-1 k* (C the uncentred second moment of clean keys, k* the corrupted key) and ranks layers by
the Frobenius norm of that projection: the layer where a small rank-one edit moves the most gap.

    >>> from auditor import load_model, load_data
    >>> from auditor.localize import rank_layers
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> data = load_data("digits-trojan")
    >>> clean, corrupted, labels = data.pairs(1, seed=0)
    >>> rank_layers(bundle.model, corrupted, clean, reference=data.train.X)  # doctest: +SKIP

Hooks, keys and second moments live in `auditor.layers`; every function here leaves no hook
behind, also when it raises (`auditor.layers.hook_guard`).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients, LayerConductance, LayerIntegratedGradients
from torch import nn

from .errors import AuditorError
from .layers import (
    capture_inputs,
    check_editable,
    hook_guard,
    input_fingerprint,
    layer_keys,
    layer_values,
    model_device,
    model_hash,
    resolve_layer,
    second_moments,
    solve_moment,
    used_layers,
)
from .models.architectures import memory_layers

METHODS = ("integrated_gradients", "conductance")
# Captum's integration rule: the trapezoid rule is as exact as Gauss-Legendre here for our step
# counts and avoids recomputing Legendre nodes on every call (most of a small model's time)
RULE = "riemann_trapezoid"


# ---------------------------------------------------------------------------------------------
# Which pairs show the misbehaviour

PICKS = ("misbehaving", "random")


def decision_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the logit of `labels` minus the largest other logit (> 0 where the label is predicted)."""
    idx = labels[:, None]
    other = logits.scatter(1, idx, float("-inf")).amax(1)
    return logits.gather(1, idx).squeeze(1) - other


@torch.no_grad()
def _logits(model: nn.Module, X: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    dev = model_device(model)
    return torch.cat([model(X[i:i + batch].to(dev)).float().cpu() for i in range(0, len(X), batch)])


def pick_pairs(model: nn.Module, data, n: int, seed: int = 0, split: str = "train", pick: str = "misbehaving",
               seen: tuple | None = None, exclude=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """n (clean, corrupted, label) pairs of `split` (rows of the stamp's target class skipped), on the CPU,
    and `info` saying which rows and how they were chosen.

    "misbehaving": drawn by `seed` among the rows the model gets right whose corrupted twin it gets wrong
    (the pairs that show the misbehaviour), topped up by the largest drops of the decision margin when
    too few; none when no twin lowers it. "random": drawn at random. `seen`: the clean and corrupted
    logits of those rows, when already computed. `exclude`: rows not to draw (pairs used before)."""
    if pick not in PICKS:
        raise AuditorError(f'pick must be "misbehaving" or "random", got {pick!r}')
    sp = data.split(split)
    rows = np.arange(len(sp))
    if data.stamp is not None:
        rows = rows[sp.y.numpy() != data.stamp.target]
    if len(exclude):
        if seen is not None:
            raise AuditorError("pick_pairs: give `seen` logits or rows to `exclude`, not both")
        rows = np.setdiff1d(rows, np.asarray(list(exclude), dtype=rows.dtype))
        if not len(rows):
            return sp.X[:0], sp.X[:0], sp.y[:0], {"split": split, "pick": pick, "candidates": 0, "rows": []}
        n = min(n, len(rows))
    if n > len(rows):
        raise AuditorError(f"asked for {n} samples but split {split!r} has only {len(rows)}")
    info: dict = {"split": split, "pick": pick, "candidates": int(len(rows))}
    if pick == "random":
        chosen = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    else:
        y = sp.y[rows]
        a, b = seen if seen is not None else (_logits(model, sp.X[rows]), _logits(model, data.corrupt(split, rows)))
        bad = (a.argmax(1) == y) & (b.argmax(1) != y)
        drop = (decision_margin(a, y) - decision_margin(b, y)).numpy()
        pool = rows[bad.numpy()]
        info["misbehaving"] = int(len(pool))
        if len(pool) >= n:
            chosen = np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))
        else:
            in_pool = set(pool.tolist())
            rest = [r for r in rows[np.argsort(-drop, kind="stable")] if r not in in_pool]
            extra = [r for r in rest[:n - len(pool)] if drop[np.searchsorted(rows, r)] > 0]
            chosen = np.sort(np.concatenate([pool, np.asarray(extra, dtype=rows.dtype)]))
    info["rows"] = [int(r) for r in chosen]
    if len(chosen) == 0:
        return sp.X[:0], sp.X[:0], sp.y[:0], info
    return sp.X[chosen], data.corrupt(split, chosen), sp.y[chosen], info


# ---------------------------------------------------------------------------------------------
# Layer ranking


@torch.no_grad()
def _layer_keys_all(model: nn.Module, modules: dict[str, nn.Module], X: torch.Tensor) -> dict[str, torch.Tensor]:
    with capture_inputs(model, modules) as store:
        model(X)
    return {name: layer_keys(layer, store[name][0]) for name, layer in modules.items()}


def _targets(model: nn.Module, clean: torch.Tensor, target) -> torch.Tensor:
    n = clean.shape[0]
    if target is None:
        with torch.no_grad():
            return model(clean).argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=clean.device).reshape(-1)
    return t.expand(n).clone() if t.numel() == 1 else t


def _layer_attribution(model: nn.Module, layer: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor,
                       target: torch.Tensor, method: str, n_steps: int) -> torch.Tensor:
    if method == "integrated_gradients":
        attr = LayerIntegratedGradients(model, layer).attribute(clean, baselines=corrupted, target=target,
                                                                n_steps=n_steps, method=RULE)
    elif method == "conductance":
        attr = LayerConductance(model, layer).attribute(clean, baselines=corrupted, target=target, n_steps=n_steps,
                                                        method=RULE)
    else:
        raise AuditorError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(attr, (tuple, list)):
        attr = attr[0]
    return attr.detach()


def rank_layers(model: nn.Module, corrupted: torch.Tensor, clean: torch.Tensor, target=None, *,
                layers: Sequence[str] | None = None, reference: torch.Tensor | None = None,
                method: str = "integrated_gradients", n_steps: int = 32, ridge: float = 1e-3,
                max_rows: int = 4096) -> pd.DataFrame:
    """Rank a model's Linear/Conv2d layers by how much of the clean-vs-corrupted gap a rank-one edit
    there can move.

    For each layer l, Captum's layer integrated gradients (or conductance) with baseline
    `corrupted` and input `clean` give M^l (one value per output unit and position; by
    completeness each layer sums to f(clean) - f(corrupted) for the `target` logit, by default the
    model's prediction on the clean inputs). M^l is projected on the edit direction d = C^-1 k*
    (k* the corrupted key at each position, C the regularised second moment of keys over
    `reference`, clean inputs such as `data.train.X`; identity when None):
    M* = sum over examples and positions of M^l[:, p] d_p^T, and score = ||M*||_F.

    Returns a DataFrame sorted by rank with columns `layer, type, score, rank, share, attribution`
    (the layer's attribution total: the same gap for every layer, a completeness check),
    `magnitude` (||M^l||), `keys` (positions whose key the corruption changes) and `parameters`.
    Works on any `nn.Module`; no hook is left on it, also when it raises.
    """
    if corrupted.shape != clean.shape:
        raise AuditorError(f"corrupted inputs {tuple(corrupted.shape)} and clean inputs {tuple(clean.shape)} "
                           "must have the same shape (one corrupted twin per clean input)")
    if method not in METHODS:
        raise AuditorError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    key = _ranking_key(model, corrupted, clean, target, layers, reference, method, n_steps, ridge, max_rows)
    with _RANKINGS_LOCK:
        if key in _RANKINGS:
            _RANKINGS.move_to_end(key)
            return _RANKINGS[key].copy()
    df = _rank_layers(model, corrupted, clean, target, layers=layers, reference=reference, method=method,
                      n_steps=n_steps, ridge=ridge, max_rows=max_rows)
    with _RANKINGS_LOCK:
        _RANKINGS[key] = df.copy()
        while len(_RANKINGS) > _RANKINGS_SIZE:
            _RANKINGS.popitem(last=False)
    return df


_RANKINGS: OrderedDict[tuple, pd.DataFrame] = OrderedDict()  # recent rankings, by all they are computed from
_RANKINGS_SIZE = 32
_RANKINGS_LOCK = threading.Lock()


def clear_ranking_cache() -> None:
    """Forget the rankings kept in memory (benchmarks time cold edits with this)."""
    with _RANKINGS_LOCK:
        _RANKINGS.clear()


def _ranking_key(model, corrupted, clean, target, layers, reference, method, n_steps, ridge, max_rows) -> tuple:
    """What a ranking depends on: the model's weights and every input and setting (the same model ranked
    again on the same pairs, e.g. an edit after Localize or a page drawn again, is not recomputed)."""
    prints = tuple(None if x is None else input_fingerprint(torch.as_tensor(x)) for x in (corrupted, clean, target))
    ref = None if reference is None else input_fingerprint(reference[:max_rows])
    return (model_hash(model), prints, None if layers is None else tuple(layers), ref, method, n_steps,
            float(ridge), max_rows)


def _rank_layers(model: nn.Module, corrupted: torch.Tensor, clean: torch.Tensor, target, *, layers, reference,
                 method: str, n_steps: int, ridge: float, max_rows: int) -> pd.DataFrame:
    named = dict(memory_layers(model))
    used = used_layers(model, clean)
    names = list(layers) if layers is not None else used  # a layer the forward never calls is not ranked
    if not names:
        raise AuditorError("the model has no Linear or ungrouped Conv2d layer to rank")
    unused = [n for n in names if n in named and n not in used]
    if unused:
        raise AuditorError(f"layer(s) {unused} never run in the model's forward pass; pick layers the model uses")
    dev = model_device(model)
    clean, corrupted = clean.to(dev), corrupted.to(dev)
    was_training = model.training
    model.eval()
    rows = []
    try:
        with hook_guard(model):
            tgt = _targets(model, clean, target)
            modules = {}
            for name in names:
                modules[name] = resolve_layer(model, name)
                check_editable(modules[name], name)
            k_bad, k_good = _layer_keys_all(model, modules, corrupted), _layer_keys_all(model, modules, clean)
            moments = (second_moments(model, names, reference, max_rows=max_rows)
                       if reference is not None else {})
            for name, layer in modules.items():
                M = _layer_attribution(model, layer, clean, corrupted, tgt, method, n_steps)
                Mv = layer_values(layer, M).double()  # (N, P, out)
                K = k_bad[name].double()  # (N, P, D)
                if name in moments:  # C^-1 k* at every example and position, from C's cached factor
                    flat = K.reshape(-1, K.shape[-1])
                    Dm = solve_moment(moments[name], ridge, flat.T.contiguous()).T.reshape(K.shape)
                else:
                    Dm = K
                Mstar = torch.einsum("npo,npd->od", Mv, Dm)
                changed = ((k_bad[name] - k_good[name]).abs().amax(-1) > 1e-6).sum().item()
                rows.append({"layer": name, "type": type(layer).__name__, "score": float(Mstar.norm()),
                             "attribution": float(M.double().sum() / max(len(clean), 1)),
                             "magnitude": float(M.double().norm()), "keys": int(changed),
                             "parameters": int(sum(p.numel() for p in layer.parameters(recurse=False)))})
    finally:
        model.train(was_training)
    df = pd.DataFrame(rows)
    total = df["score"].sum()
    df["share"] = df["score"] / total if total > 0 else 0.0
    df = df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df[["layer", "type", "score", "rank", "share", "attribution", "magnitude", "keys", "parameters"]]


def rank_layers_for(model: nn.Module, data, n: int = 1, seed: int = 0, split: str = "train",
                    **kwargs) -> pd.DataFrame:
    """`rank_layers` on n (clean, corrupted) pairs of an `AuditData` with a trigger, cue or twins;
    the keys' second moment comes from the clean training inputs."""
    clean, corrupted, labels = data.pairs(n, seed, split=split)
    kwargs.setdefault("reference", data.train.X)
    kwargs.setdefault("target", labels)
    return rank_layers(model, corrupted, clean, **kwargs)


# ---------------------------------------------------------------------------------------------
# Feature and pixel attributions (the Localize view)


def _ig(model: nn.Module, X: torch.Tensor, baselines, target: torch.Tensor, n_steps: int) -> torch.Tensor:
    with hook_guard(model):
        return IntegratedGradients(model).attribute(X, baselines=baselines, target=target, n_steps=n_steps,
                                                    method=RULE).detach()


def feature_attributions(model: nn.Module, X: torch.Tensor, feature_groups: dict[str, list[int]] | None = None,
                         *, baseline: torch.Tensor | None = None, target=None, n_steps: int = 32,
                         feature_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Integrated gradients per raw feature of a tabular model, over the rows X.

    One-hot inputs are summed back to their raw feature through `feature_groups` ({feature: [input
    indices]}, e.g. `data.feature_groups`); without it every input is its own feature. The baseline
    is `baseline` (one row or one per row), by default the mean of X. `target`: the class whose
    logit is explained, by default each row's predicted class.
    Returns a DataFrame sorted by importance: `feature, attribution` (mean signed attribution),
    `importance` (mean absolute attribution), `share` (of total importance), `inputs`, `rank`.
    """
    if X.dim() != 2:
        raise AuditorError(f"feature_attributions takes rows of features (N, inputs); got shape {tuple(X.shape)} "
                           "(for images use pixel_attributions)")
    dev = model_device(model)
    X = X.to(dev).float()
    base = X.mean(0, keepdim=True) if baseline is None else baseline.to(dev).float().reshape(-1, X.shape[1])
    if base.shape[0] == 1:
        base = base.expand_as(X)
    was_training = model.training
    model.eval()
    try:
        tgt = _targets(model, X, target)
        A = _ig(model, X, base, tgt, n_steps).double().cpu()
    finally:
        model.train(was_training)
    if feature_groups is None:
        names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(X.shape[1])]
        feature_groups = {n: [i] for i, n in enumerate(names)}
    rows = []
    for feat, idx in feature_groups.items():
        if not idx:
            continue
        a = A[:, list(idx)].sum(1)
        rows.append({"feature": feat, "attribution": float(a.mean()), "importance": float(a.abs().mean()),
                     "inputs": len(idx)})
    df = pd.DataFrame(rows)
    total = df["importance"].sum()
    df["share"] = df["importance"] / total if total > 0 else 0.0
    df = df.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df[["feature", "attribution", "importance", "share", "inputs", "rank"]]


def pixel_attributions(model: nn.Module, clean: torch.Tensor, corrupted: torch.Tensor, target=None, *,
                       n_steps: int = 32) -> dict[str, torch.Tensor]:
    """Per-pixel integrated gradients for image pairs (clean vs corrupted side by side).

    Returns tensors shaped like the inputs (N, C, H, W), on CPU:
    `clean`: attribution of the clean prediction (or `target`) with the corrupted twin as baseline
    (where the corruption took evidence away); `corrupted`: attribution of the corrupted
    prediction with the clean twin as baseline (where the corruption pushes, e.g. the trigger);
    plus `clean_prediction` and `corrupted_prediction` (N,) class indices.
    """
    if corrupted.shape != clean.shape:
        raise AuditorError("clean and corrupted images must have the same shape")
    dev = model_device(model)
    clean, corrupted = clean.to(dev).float(), corrupted.to(dev).float()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p_clean, p_corr = model(clean).argmax(1), model(corrupted).argmax(1)
        t_clean = _targets(model, clean, target) if target is not None else p_clean
        a_clean = _ig(model, clean, corrupted, t_clean, n_steps)
        a_corr = _ig(model, corrupted, clean, p_corr, n_steps)
    finally:
        model.train(was_training)
    return {"clean": a_clean.cpu(), "corrupted": a_corr.cpu(), "clean_prediction": p_clean.cpu(),
            "corrupted_prediction": p_corr.cpu()}


class _Margin(nn.Module):
    """Logit of the positive class minus the negative class, as a one-output model."""

    def __init__(self, model: nn.Module, positive: int = 1, negative: int = 0):
        super().__init__()
        self.model, self.positive, self.negative = model, positive, negative

    def forward(self, x):
        out = self.model(x)
        return (out[:, self.positive] - out[:, self.negative])[:, None]


def fairness_layers(model: nn.Module, X: torch.Tensor, groups, *, positive: int = 1, n_pairs: int = 256,
                    seed: int = 0, method: str = "integrated_gradients", n_steps: int = 32,
                    layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Which layers carry the gap in scores between two groups (for a fairness requirement).

    `groups` holds one group label per row of X (e.g. `data.test.groups["sex"]`). The group with
    the highest mean positive margin (logit positive - logit negative) is `high`, the lowest
    `low`. Rows of `high` are paired at random with rows of `low`; layer integrated gradients
    with the `low` row as baseline and the `high` row as input attribute the gap to every layer's
    units (completeness: each layer sums to the same gap). Per layer: `gap` (that sum, averaged
    over pairs), `score` (norm of the per-unit mean attribution: how much of the gap flows
    through units that carry it consistently), `concentration` (share of |attribution| in the
    top 10% of units), `top_units` (the three units carrying most), sorted by score with `rank`.
    """
    g = pd.Series(np.asarray(groups)).astype(str).reset_index(drop=True)
    if len(g) != len(X):
        raise AuditorError(f"{len(g)} group labels for {len(X)} rows")
    labels = sorted(g.unique())
    if len(labels) < 2:
        raise AuditorError("fairness_layers needs at least two groups; the protected attribute has one value")
    dev = model_device(model)
    X = X.to(dev).float()
    margin = _Margin(model, positive, 1 - positive if positive in (0, 1) else 0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            score = margin(X)[:, 0].cpu().numpy()
        means = {lab: float(score[(g == lab).to_numpy()].mean()) for lab in labels}
        high, low = max(means, key=means.get), min(means, key=means.get)
        rng = np.random.default_rng(seed)
        hi_rows = rng.choice(np.flatnonzero((g == high).to_numpy()), size=n_pairs, replace=True)
        lo_rows = rng.choice(np.flatnonzero((g == low).to_numpy()), size=n_pairs, replace=True)
        xi, xb = X[hi_rows], X[lo_rows]
        used = used_layers(model, X)
        names = list(layers) if layers is not None else used  # a layer the forward never calls is not ranked
        unused = [n for n in names if n not in used]
        if unused:
            raise AuditorError(f"layer(s) {', '.join(map(repr, unused))} are not called by the model's forward pass "
                               "(a weight read directly, as nn.MultiheadAttention reads its out_proj), so nothing "
                               f"flows through them to attribute; the model's layers that are: {used}")
        if not names:
            raise AuditorError("the model has no Linear or ungrouped Conv2d layer its forward pass calls")
        rows = []
        with hook_guard(model):
            for name in names:
                layer = resolve_layer(model, name)
                M = _layer_attribution(margin, layer, xi, xb, torch.zeros(len(xi), dtype=torch.long, device=dev),
                                       method, n_steps).double()
                unit = M.reshape(M.shape[0], M.shape[1], -1).sum(-1).mean(0) if M.dim() > 2 else M.mean(0)
                mag = unit.abs()
                k = max(1, int(np.ceil(0.1 * mag.numel())))
                top = torch.topk(mag, min(3, mag.numel())).indices.cpu().tolist()
                rows.append({"layer": name, "type": type(layer).__name__, "score": float(unit.norm()),
                             "gap": float(M.sum() / len(xi)),
                             "concentration": (float(torch.topk(mag, k).values.sum() / mag.sum())
                                               if mag.sum() > 0 else 0.0),
                             "top_units": top, "high_group": high, "low_group": low,
                             "score_gap": means[high] - means[low]})
    finally:
        model.train(was_training)
    df = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df
