"""Attribution-guided rank-one rectification of Trojans and spurious cues (static and dynamic).

A Linear or Conv2d layer is a linear associative memory: keys are its inputs (for a convolution
the unfolded input patch at each output position), values its outputs. For a corrupted input
(trigger or cue) and its clean twin, the corrupted keys k* should produce the values v* the clean
twin produces. With C the uncentred second moment of keys over clean training data, the update
that does so while disturbing clean keys least is, for one key,

    W' = W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)

and for several keys K (pairs, or every position whose patch the corruption changes) either the
joint least-squares solution `dW = R^T K (mu C + K^T K)^-1` (R = V* - K W^T, mu small; `rank`
"joint": rank up to the number of keys, e.g. one key per patch position a trigger touches on a
convolution), or an update along r principal key directions fitted over every key: `rank` 1 is
the seed method's true rank-one update (the principal direction of the keys, or their mean), and
`rank` "samples" takes one direction per clean sample. The default, "auto", is rank 1 from one
sample (the joint fit of one image's patch positions overfits it) and the joint edit from several
(measured on `auditor.rectify_zoo`'s population: `benchmarks/results/rectify_population.md`). All
are the formula above for one key and mu -> 0; all solves are on the few keys (C factored once per
layer). The result and the log state the rank applied and the change's size relative to the
layer's weights. Inside a residual block the skip path still carries the corruption, so the
target values are skip-aware by default (`target` "merge": what the layer must output so that the
input of the layer reading the block's sum matches the clean twin's; in a plain chain this is the
layer's own clean output). Computing the change (`compute_delta`) is kept apart from applying it
(`apply_delta`), and `WeightDelta` in the result reverts it bit for bit. The dynamic editor may end
with a refit of the output layer on clean training rows (`refit_output_delta`: least squares
toward the unedited model's logits), which gives back part of what the edits cost clean inputs;
it is not rank one, and the log and the result's per-layer changes say so.

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> result = get_editor("dynamic-rank-one", samples=1).edit(bundle, load_data("digits-trojan"),
    ...                                                       ["attack_success_rate <= 0.02"])  # doctest: +SKIP
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..backend import pick_device
from ..data.base import AuditData, Split
from ..errors import AuditorError
from ..layers import (
    ModelSplit,
    check_editable,
    inherit_digests,
    input_fingerprint,
    layer_io,
    layer_keys,
    layer_matrix,
    layer_values,
    load_moments,
    model_device,
    model_hash,
    moments_file,
    output_layer,
    regularised,
    resolve_layer,
    save_moments,
    second_moment,
    sibling_layers,
    solve_moment,
    split_model,
    used_layers,
)
from ..localize import METHODS, PICKS, decision_margin, pick_pairs, rank_layers
from ..models.architectures import batch_rows, computed_weight, editable_layers, memory_layers
from ..requirements import Requirement, compute_metrics, parse_requirement, parse_requirements
from ..requirements.uncertainty import intervals
from .base import Editor
from .registry import register_editor
from .unchanged_rows import ChainBound

DIRECTIONS = ("principal", "mean")
TARGETS = ("merge", "own")


@dataclass
class RankOneUpdate:
    """A computed change of one layer (not yet applied): `delta` acts on the layer's keys
    (out x D, bias in the last column when the layer has one).

    `rank` is the rank the change really has (from the small k x k system it was solved in, not an
    SVD of `delta`), `directions` the key directions it was fitted along (1 for the rank-one update,
    up to `keys` for the joint edit), `relative_norm` its size as ||delta|| / ||W|| of the layer."""

    layer: str
    dense: torch.Tensor | None  # `delta` as given (None: formed from `factors` when first asked for)
    keys: int
    residual: float  # ||V* - W K|| before the change
    residual_after: float  # ||V* - (W + delta) K|| (0 for an exact fit)
    rank: int = 0
    directions: int = 0
    weight_norm: float = 0.0
    siblings: list = field(default_factory=list)  # changes of the layers reading the same input, applied with it
    factors: tuple | None = None  # (L, R) with delta = L @ R.T (out x r, D x r), when solved on the keys

    @property
    def layers(self) -> list[str]:
        """Every layer this change touches (the layer, then its siblings)."""
        return [self.layer, *(u.layer for u in self.siblings)]

    @property
    def delta(self) -> torch.Tensor:
        if self.dense is None:
            L, R = self.factors
            self.dense = L @ R.T
        return self.dense

    @property
    def norm(self) -> float:
        if self.dense is None:  # ||L R^T||_F from the factors' r x r Gram matrices
            L, R = self.factors
            return float(((L.T @ L) * (R.T @ R)).sum().clamp(min=0).sqrt())
        return float(self.delta.norm())

    @property
    def relative_norm(self) -> float:
        return self.norm / self.weight_norm if self.weight_norm else float("inf") if self.norm else 0.0

    def describe(self) -> dict:
        """What the change is, for logs and reports."""
        out = {"layer": self.layer, "keys": self.keys, "rank": self.rank, "directions": self.directions,
               "norm": self.norm, "relative_norm": self.relative_norm, "residual": self.residual,
               "residual_after": self.residual_after}
        if self.siblings:
            out["with"] = [u.describe() for u in self.siblings]
        return out


def corrupted_keys(model: nn.Module, layer_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                   tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys K* (S, D) of the corrupted inputs and values V* (S, out) of their clean twins, at every
    example and position whose key the corruption changes (for a Trojan on a convolution: each
    patch position overlapping the trigger). Keys are read where the layer reads them (a hook on
    its input: inside residual blocks, behind BatchNorm, in nested modules alike); values are the
    layer's own output for the clean twin (before any BatchNorm or skip connection that follows)."""
    K, V, _ = _changed_keys(model, layer_name, clean, corrupted, tol)
    return K, V


def _changed_keys(model, layer_name, clean, corrupted, tol):
    k_bad, _ = layer_io(model, layer_name, corrupted)
    k_good, v_good = layer_io(model, layer_name, clean)
    changed = (k_bad - k_good).abs().amax(-1) > tol
    return k_bad[changed], v_good[changed], changed


class _Stop(Exception):
    """Ends a forward pass once the value it was run for is captured."""


def merge_reader(model: nn.Module, layer_name: str, X: torch.Tensor) -> str | None:
    """The first editable layer after `layer_name` (in execution order) whose input depends on its
    output: where a residual block's sum (branch + skip) is read; None when no later layer reads it."""
    from ..layers import execution_order, hook_guard

    order = execution_order(model, X[:1])
    editable = {n for n, _ in memory_layers(model)}
    if layer_name not in order:
        return None
    later = [n for n in order[order.index(layer_name) + 1:] if n in editable]
    if not later:
        return None
    modules = dict(model.named_modules())
    seen: dict[tuple[bool, str], torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for shifted in (False, True):
                with hook_guard(model):
                    if shifted:
                        g = torch.Generator().manual_seed(0)
                        modules[layer_name].register_forward_hook(
                            lambda m, a, o, _g=g: o + torch.randn(o.shape, generator=_g).to(o))
                    for n in later:
                        modules[n].register_forward_pre_hook(
                            lambda m, a, _n=n, _s=shifted: seen.setdefault((_s, _n), a[0].detach()))
                    model(X[:1].to(model_device(model)))
    finally:
        model.train(was_training)
    for n in later:
        a, b = seen.get((False, n)), seen.get((True, n))
        if a is not None and b is not None and not torch.equal(a, b):
            return n
    return None


def merge_values(model: nn.Module, layer_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                 changed: torch.Tensor, *, steps: int = 60, tol: float = 1e-4) -> torch.Tensor | None:
    """Skip-aware values: what `layer_name` must output for the corrupted inputs (at the positions
    `changed`, (N, P)) so that the input of the layer reading its block's sum (`merge_reader`)
    equals that input for the clean twins. Inside a residual block the skip path still carries the
    corruption, so the layer's own clean output is not enough. Found by L-BFGS on the layer's
    output, starting from its clean output. None when no later layer reads the output or the clean
    output already gives the clean reader input (a plain chain: nothing else carries the corruption)."""
    from ..layers import hook_guard

    reader = merge_reader(model, layer_name, clean)
    if reader is None:
        return None
    layer, read = resolve_layer(model, layer_name), resolve_layer(model, reader)
    dev = model_device(model)
    was_training = model.training
    model.eval()
    got: dict[str, torch.Tensor] = {}

    def grab(name):
        def hook(_m, args):
            got[name] = args[0]
            raise _Stop
        return hook

    def keep(_m, _a, out):
        got["out"] = out.detach()

    try:
        with torch.no_grad(), hook_guard(model):
            layer.register_forward_hook(keep)
            read.register_forward_pre_hook(grab("target"))
            try:
                model(clean.to(dev))
            except _Stop:
                pass
        base, target = got["out"], got["target"].detach()
        if base.dim() == 4:
            mask = changed.reshape(base.shape[0], 1, *base.shape[2:]).to(base.dtype)
        else:
            mask = changed.reshape(base.shape[0], *([1] * (base.dim() - 2)), -1)[..., :1].to(base.dtype)
            mask = mask.expand_as(base) if mask.shape[-1] == 1 else mask
        d = torch.zeros_like(base, requires_grad=True)

        def reader_input(dv):
            with hook_guard(model):
                layer.register_forward_hook(lambda m, a, o: base + mask * dv)
                read.register_forward_pre_hook(grab("now"))
                try:
                    model(corrupted.to(dev))
                except _Stop:
                    pass
            return got["now"]

        scale = float(target.pow(2).sum()) or 1.0
        reg = 1e-4 / max(float(base.pow(2).mean()), 1e-12)
        with torch.enable_grad():
            loss0 = float((reader_input(d) - target).pow(2).sum().detach()) / scale
            if loss0 <= tol:
                return None
            opt = torch.optim.LBFGS([d], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = (reader_input(d) - target).pow(2).sum() / scale + reg * (mask * d).pow(2).mean()
                loss.backward()
                return loss

            opt.step(closure)
        v = (base + mask * d).detach()
    finally:
        model.train(was_training)
    return layer_values(layer, v)[changed]


def _factor_rank(left: torch.Tensor, right: torch.Tensor, rtol: float = 1e-6) -> int:
    """Numerical rank of left @ right.T (out x r and D x r, r small) without forming it: the same
    singular values as left @ T.T with right = Q T (thin QR)."""
    if left.numel() == 0 or right.numel() == 0:
        return 0
    T = torch.linalg.qr(right, mode="r").R
    return int(torch.linalg.matrix_rank(left @ T.T, rtol=rtol).item())


def check_rank(rank: int | None, direction: str) -> None:
    """A clear error for a `rank` / `direction` setting that names no edit."""
    if direction not in DIRECTIONS:
        raise AuditorError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise AuditorError(f"rank must be a whole number of at least 1 (or None for the joint edit), got {rank!r}")
    if direction == "mean" and rank not in (None, 1):
        raise AuditorError('direction "mean" gives one key direction: use it with rank 1')


def resolve_rank(rank: int | str | None, samples: int, direction: str = "principal") -> int | None:
    """The `rank` setting as `compute_delta` takes it: r key directions, or None for the joint edit.
    "auto": 1 from one clean sample, the joint edit from several; "samples": one key direction per clean
    sample (rank n; 1 with `direction` "mean"); "joint" (or None): every changed key; a whole number r
    (also written as text, as a form or --set gives it)."""
    if isinstance(rank, str):
        text = rank.strip().lower()
        if text in ("joint", "none"):
            rank = None
        elif text == "auto":
            rank = 1 if samples <= 1 else None
        elif text == "samples":
            rank = 1 if direction == "mean" else max(int(samples), 1)
        elif text.isdigit():
            rank = int(text)
        else:
            raise AuditorError(f'rank must be "auto", "samples", "joint" or a whole number of at least 1, got {rank!r}')
    check_rank(rank, direction)
    return rank


def key_combinations(K: torch.Tensor, U: torch.Tensor, rank: int | None, direction: str,
                     G: torch.Tensor | None = None) -> torch.Tensor:
    """Which combinations of the S keys K (columns, S x r) the change is fitted along; U = C^-1 K^T.

    None (or rank >= S): every key (the joint edit). `rank` r: the r principal key directions,
    the top eigenvectors of G = K C^-1 K^T (the keys' Gram matrix in the metric of clean keys), from G
    when given, else (many keys: G, S x S, never formed) from the D x D problem: with K = Q T (thin QR),
    G = Q (T C^-1 T^T) Q^T and C^-1 T^T = U Q. `direction` "mean" with rank 1: the mean corrupted key."""
    S = K.shape[0]
    check_rank(rank, direction)
    if rank is None or rank >= S:
        return torch.eye(S, dtype=K.dtype, device=K.device)
    if direction == "mean":
        if rank != 1:
            raise AuditorError('direction "mean" gives one key direction: use it with rank 1')
        return torch.full((S, 1), 1.0 / S, dtype=K.dtype, device=K.device)
    if G is None:
        Q, T = torch.linalg.qr(K)
        M = T @ (U @ Q)
        return Q @ torch.linalg.eigh((M + M.T) / 2)[1][:, -rank:].flip(-1)
    _, vecs = torch.linalg.eigh(G)  # ascending
    return vecs[:, -rank:].flip(-1)


def compute_delta(model: nn.Module, layer_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                  reference: torch.Tensor, *, ridge: float = 1e-3, mu: float = 1e-2, rank: int | None = None,
                  direction: str = "principal", strength: float = 1.0, max_rows: int = 4096,
                  tol: float = 1e-6, target: str = "merge") -> RankOneUpdate:
    """The change of `layer_name` that maps the corrupted keys to the clean values.

    `reference`: clean inputs for C (cached per layer and what feeds it). `strength` scales the
    target move (1 maps k* to v* exactly; >1 moves past the clean value).

    `rank` None: the joint least-squares edit over all S keys, dW = R^T (mu I + K C^-1 K^T)^-1 K C^-1
    (R = V* - K W^T), of rank <= S (exact for S <= D as mu -> 0). `rank` 1: the seed method's
    rank-one update W + Lambda (C^-1 k)^T along one key direction k (`direction`: the principal
    direction of the keys or their mean), Lambda fitted by least squares over every key; for one
    key both are the closed form (v* - W k*)(C^-1 k*)^T / ((C^-1 k*)^T k*). `rank` r: the r
    principal key directions. Every solve is on the S x S system of the keys (C is factored once
    per layer and cached); the rank comes from that small system. Runs on the model's device.
    """
    check_rank(rank, direction)
    layer = resolve_layer(model, layer_name)
    check_editable(layer, layer_name)
    if target not in TARGETS:
        raise AuditorError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    K, V, changed = _changed_keys(model, layer_name, clean, corrupted, tol)
    if target == "merge" and K.shape[0]:
        merged = merge_values(model, layer_name, clean, corrupted, changed)
        if merged is not None:
            V = merged.to(V)
    W = layer_matrix(layer)
    w_norm = float(W.norm())  # for the change's relative size
    if K.shape[0] == 0:
        return RankOneUpdate(layer_name, torch.zeros_like(W), 0, 0.0, 0.0, 0, 0, w_norm)
    dtype = torch.float32 if K.device.type == "mps" else torch.float64
    K, V, W = K.to(dtype), V.to(dtype), W.to(dtype)
    R = strength * (V - K @ W.T)  # (S, out)
    C0 = second_moment(model, layer_name, reference, max_rows=max_rows)
    S, D = K.shape
    if rank is None and S > D:
        # more keys than dimensions: the primal form, dW = R^T K (mu C + K^T K)^-1 (D x D)
        C = regularised(C0.to(K.device, dtype), ridge)
        delta = torch.linalg.solve(mu * C + K.T @ K, K.T @ R).T
        r = int(torch.linalg.matrix_rank(delta, rtol=1e-6).item())
        return RankOneUpdate(layer_name, delta, S, float(R.norm()), float((R - K @ delta.T).norm()), r, S, w_norm)
    # dual form on the S keys: U = C^-1 K^T (D x S), G = K C^-1 K^T (S x S); along key combinations A
    # (S x r) the change is dW = L (U A)^T with L^T = (P^T P + mu A^T G A)^-1 P^T R, P = G A
    U = solve_moment(C0, ridge, K.T.contiguous())
    G = None
    if rank is None or rank >= S or S <= D:  # with more keys than dimensions, a rank-r edit never forms G
        G = K @ U
        G = (G + G.T) / 2
    A = key_combinations(K, U, rank, direction, G)
    P = G @ A if G is not None else K @ (U @ A)  # G A
    if rank is None or rank >= S:  # every key: L^T = (G + mu I)^-1 R
        L = torch.linalg.solve(G + mu * A, R).T
    elif direction == "principal":  # eigenvectors of G: L^T = diag(1 / (lambda + mu)) A^T R
        L = (R.T @ A) / ((A * P).sum(0).clamp(min=0) + mu)
    else:
        M = P.T @ P + mu * (A.T @ P)
        L = torch.linalg.solve(M + 1e-12 * torch.eye(len(M), dtype=dtype, device=K.device) * M.diagonal().max(),
                               P.T @ R).T
    right = U @ A  # (D, r)
    return RankOneUpdate(layer_name, None, S, float(R.norm()), float((R - P @ L.T).norm()),
                         _factor_rank(L, right), int(A.shape[1]), w_norm, factors=(L, right))


@torch.no_grad()
def refit_output_delta(model: nn.Module, layer_name: str, X: torch.Tensor, logits: torch.Tensor, *,
                       ridge: float = 1e-3, inputs: torch.Tensor | None = None) -> RankOneUpdate:
    """The change of the output layer `layer_name` that brings the model's logits for the clean rows `X`
    back, in least squares, to `logits` (the unedited model's): with F the layer's keys for `X` as the
    model now stands, W' = argmin ||F W'^T - logits||^2 + lam ||W' - W||^2, lam = `ridge` times the mean
    diagonal of F^T F. Undoes what an edit below cost the clean rows as far as the output layer can,
    from clean data alone (the corrupted twins are left out: what they give is the edit's business).
    `inputs`: the layer's inputs for `X` when already at hand (the model is then not run)."""
    layer = resolve_layer(model, layer_name)
    keys = layer_io(model, layer_name, X)[0] if inputs is None else layer_keys(layer, inputs)
    F = keys.reshape(-1, keys.shape[-1])  # one row per example (and position, for a layer applied per token)
    dtype = torch.float32 if F.device.type == "mps" else torch.float64  # MPS has no float64
    F, W = F.to(dtype), layer_matrix(layer).to(dtype)
    Z = logits.to(F.device, dtype).reshape(len(F), -1)
    A = F.T @ F
    lam = ridge * float(A.diagonal().mean()) or ridge
    W_new = torch.linalg.solve(A + lam * torch.eye(len(A), dtype=A.dtype, device=A.device), F.T @ Z + lam * W.T).T
    delta = (W_new - W).to(layer.weight.dtype)
    residual = float((F @ W.T - Z).norm())
    return RankOneUpdate(layer_name, delta, len(X), residual, float((F @ W_new.T - Z).norm()),
                         int(torch.linalg.matrix_rank(delta.to(dtype), rtol=1e-6).item()), len(X),
                         float(W.norm()))


@torch.no_grad()
def _add_to_weight(layer: nn.Module, name: str, delta: torch.Tensor) -> None:
    """Add `delta` to the layer's weight. A weight computed by a parametrization (`weight_norm`) is written
    through it (its `right_inverse` sets the parametrization's own tensors), and must then be the weight asked
    for: one that cannot hold it (`spectral_norm` normalises any weight again) is refused, never edited in
    a computed copy that is thrown away."""
    if not computed_weight(layer):
        layer.weight.add_(delta.to(layer.weight.dtype))
        return
    want = layer.weight.detach() + delta.to(layer.weight.dtype)
    kinds = ", ".join(type(p).__name__.lstrip("_") for p in layer.parametrizations.weight)
    saved = {n: p.detach().clone() for n, p in layer.parametrizations.weight.named_parameters()}
    fix = ("edit another layer (--layer), or remove the parametrization (torch.nn.utils.parametrize."
           "remove_parametrizations) and save the weights again")
    try:
        layer.weight = want
    except Exception as exc:  # noqa: BLE001 - a parametrization without a right inverse
        raise UneditableWeight(f"layer {name!r}: its weight is computed by a parametrization ({kinds}) that cannot be "
                               f"set to an edited weight ({type(exc).__name__}); {fix}") from None
    got = layer.weight.detach()
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max().clamp_min(1e-12))):
        for n, p in layer.parametrizations.weight.named_parameters():
            p.copy_(saved[n])
        raise UneditableWeight(f"layer {name!r}: its weight is computed by a parametrization ({kinds}) that does not "
                               f"keep an edited weight (it computes another one from it); {fix}")


class UneditableWeight(AuditorError):
    """A layer whose weight a parametrization computes and cannot be set to an edited one (`spectral_norm`)."""


@torch.no_grad()
def holds_edits(model: nn.Module, name: str) -> bool:
    """Whether an edit of layer `name`'s weight is kept as written (a plain weight, or one a parametrization such
    as `weight_norm` computes and can be set to); tried with a change of a tenth of the weight's size (as large
    as edits are), then undone exactly."""
    layer = resolve_layer(model, name)
    if not computed_weight(layer):
        return True
    saved = _snapshot(model, name)
    w = layer.weight.detach()
    try:
        _add_to_weight(layer, name, 0.1 * w.std() * torch.randn(
            w.shape, generator=torch.Generator().manual_seed(0)).to(w))
        return True
    except UneditableWeight:
        return False
    finally:
        _restore(model, name, saved)


@torch.no_grad()
def apply_delta(model: nn.Module, update: RankOneUpdate, scale: float = 1.0) -> None:
    """Add `scale * update.delta` to the layer's weight (and bias) in place."""
    layer = resolve_layer(model, update.layer)
    if update.dense is None and isinstance(layer, nn.Linear):  # W += scale L R^T without forming it
        L, R = (f.to(layer.weight) for f in update.factors)
        Rw = R[:-1] if layer.bias is not None else R
        if computed_weight(layer):  # the weight first: a refused one leaves the bias as it was
            _add_to_weight(layer, update.layer, scale * (L @ Rw.T))
        else:
            layer.weight.addmm_(L, Rw.T, alpha=scale)
        if layer.bias is not None:
            layer.bias.add_(L @ R[-1], alpha=scale)
        for sibling in update.siblings:
            apply_delta(model, sibling, scale)
        return
    d = update.delta * scale
    w = d[:, :-1] if layer.bias is not None else d
    _add_to_weight(layer, update.layer, w.reshape(layer.weight.shape))
    if layer.bias is not None:
        layer.bias.add_(d[:, -1].to(layer.bias.dtype))
    for sibling in update.siblings:
        apply_delta(model, sibling, scale)


def _snapshot(model: nn.Module, layer_name: str) -> dict[str, torch.Tensor]:
    """The layer's own tensors (a parametrized weight's too: `parametrizations.weight.original0`, ...)."""
    layer = resolve_layer(model, layer_name)
    return {n: p.detach().clone() for n, p in layer.named_parameters()}


@torch.no_grad()
def _restore(model: nn.Module, layer_name: str, saved: dict[str, torch.Tensor]) -> None:
    layer = resolve_layer(model, layer_name)
    for n, p in layer.named_parameters():
        p.copy_(saved[n])


def check_metrics(model: nn.Module, data: AuditData, split: str):
    """Every metric of `model` on one split, with the outcomes per row (the dynamic loop checks after each step)."""
    return compute_metrics(model, data, split)


def implicit_requirements(data: AuditData) -> list[Requirement]:
    """What a rank-one editor aims for when no requirement is given."""
    if data.trigger is not None:
        return [parse_requirement("attack_success_rate <= 0.02")]
    if data.cue is not None:
        return [parse_requirement("cue_gap <= 0.05")]
    return []


def needs_pairs(bundle, data: AuditData, what: str = "rank-one rectification") -> str | None:
    """None when `data` has (clean, corrupted) pairs and the model a Linear or Conv2d layer, else why not
    (`what` names the method that needs them)."""
    if data is None:
        return None
    if data.stamp is None and data.train.corrupted is None:
        return (f"data set {data.name!r} has no trigger, cue or corrupted twins; {what} needs "
                "(clean, corrupted) pairs (a Trojan or cue data set, or an .npz case)")
    if bundle is not None and not editable_layers(bundle.model):
        return "the model has no Linear or Conv2d layer"
    return None


def _what_changed(model: nn.Module, updates: list[RankOneUpdate], start: dict[str, torch.Tensor]) -> dict:
    """The result's summary of the applied changes, per layer: the keys, the rank applied (the sum of
    the ranks of its distinct edits; strengthening an edit adds none) and the size of the net change
    ||W_end - W_start|| / ||W_start|| (weight and bias as one matrix); `start`: each layer's matrix before."""
    per: dict[str, dict] = {}
    updates = [v for u in updates for v in (u, *u.siblings)]
    for u in updates:
        p = per.setdefault(u.layer, {"keys": 0, "rank": 0, "edits": 0})
        p["keys"] = max(p["keys"], u.keys)
        p["rank"] += u.rank
        p["edits"] += 1
    for name, p in per.items():
        W0 = start[name].double()
        dW = layer_matrix(resolve_layer(model, name)).double() - W0.to(model_device(model))
        p["norm"] = float(dW.norm())
        p["relative_norm"] = p["norm"] / float(W0.norm()) if float(W0.norm()) else None
    return {"keys": max((p["keys"] for p in per.values()), default=0),
            "rank": sum(p["rank"] for p in per.values()),
            "relative_norm": max((p["relative_norm"] or 0.0 for p in per.values()), default=0.0),
            "changes": per}


@dataclass
class RankOneHyper:
    samples: int = field(default=1, metadata={"help": "clean samples (each with its corrupted twin) from `split`"})
    seed: int = field(default=0, metadata={"help": "which samples"})
    layer: str | None = field(default=None, metadata={
        "help": "layer to edit; None: the top-ranked one",
        "choices": "layer"})
    strength: float = field(default=1.0, metadata={
        "help": "1 maps corrupted keys exactly to clean values; >1 moves past them"})
    ridge: float = field(default=1e-3, metadata={
        "help": "relative ridge added to C (keys clean data never spans stay editable)"})
    mu: float = field(default=1e-2, metadata={"help": "weight of clean-key disturbance against fitting the pairs"})
    rank: str | int | None = field(default="auto", metadata={
        "help": '"auto" (default): from one clean sample the seed method\'s rank-one update (one key direction), '
                'from several the joint edit; "joint": the least-squares edit of every changed key (rank <= '
                'keys; for a convolution, one key per patch position the corruption touches); 1: one key '
                'direction whatever n; "samples": one direction per clean sample (rank <= n); r: r directions'})
    direction: str = field(default="principal", metadata={
        "help": 'the key direction of a rank-1 edit: "principal" (of the keys, in the metric of clean keys) '
                'or "mean" (the mean corrupted key)', "choices": list(DIRECTIONS)})
    target: str = field(default="merge", metadata={
        "help": '"merge": the values the layer must output so that the input of the layer reading its block\'s '
                'sum (branch + skip) matches the clean twin\'s (a residual block\'s skip path still carries the '
                'corruption; the same as "own" in a plain chain); "own": the layer\'s own clean output',
        "choices": list(TARGETS)})
    attribution: str = field(default="integrated_gradients", metadata={
        "help": 'or "conductance" (Captum layer method for ranking)',
        "choices": "attribution"})
    n_steps: int = field(default=16, metadata={
        "help": "integration steps of the attribution (the ranking is stable from 8 on)"})
    max_rows: int = field(default=4096, metadata={"help": "clean training rows used for C"})
    split: str = field(default="train", metadata={"help": "where the pairs come from", "choices": "split"})
    keep_moments: bool = field(default=False, metadata={
        "help": "keep the keys' second moments beside the model file (<model>.moments.safetensors): read when "
                "there, written after the edit, so the next run from the command line starts warm"})


@register_editor
class RankOneEditor(Editor):
    """One closed-form rank-one edit of the chosen (or top-ranked) layer from n (clean, corrupted) pairs."""

    name = "rank-one"
    description = "Attribution-guided rank-one edit of one layer (closed form), from n clean samples"
    kind = "rank-one"
    targets = ("attack_success_rate", "cue_gap", "cue_accuracy", "worst_group_accuracy")
    Hyper = RankOneHyper

    def supports(self, bundle, data) -> str | None:
        return needs_pairs(bundle, data)

    def _check(self) -> None:
        hp = self.hparams
        if hp.samples < 1:
            raise AuditorError(f"samples must be at least 1, got {hp.samples}")
        resolve_rank(hp.rank, hp.samples, hp.direction)
        if hp.attribution not in METHODS:
            raise AuditorError(f"unknown attribution {hp.attribution!r}; choose one of {', '.join(METHODS)}")

    def _pairs(self, data: AuditData, device: torch.device):
        clean, corrupted, labels = data.pairs(self.hparams.samples, self.hparams.seed, split=self.hparams.split)
        return clean.to(device), corrupted.to(device), labels.to(device)

    def _rank(self, model, data, clean, corrupted, labels):
        hp = self.hparams
        return rank_layers(model, corrupted, clean, target=labels, reference=data.train.X, method=hp.attribution,
                           n_steps=hp.n_steps, ridge=hp.ridge, max_rows=hp.max_rows)

    def _layer(self, model, data, clean, corrupted, labels) -> tuple[str, list[dict] | None]:
        if self.hparams.layer:
            return self.hparams.layer, None
        table = self._rank(model, data, clean, corrupted, labels)
        return str(table.iloc[0]["layer"]), table.to_dict("records")

    def _rank_setting(self) -> int | None:
        hp = self.hparams
        return resolve_rank(hp.rank, hp.samples, hp.direction)

    def _update(self, model, data, layer, clean, corrupted, strength=None, rank="default") -> RankOneUpdate:
        hp = self.hparams
        return compute_delta(model, layer, clean, corrupted, data.train.X, ridge=hp.ridge, mu=hp.mu,
                             rank=self._rank_setting() if rank == "default" else rank,
                             direction=hp.direction, strength=hp.strength if strength is None else strength,
                             max_rows=hp.max_rows, target=hp.target)

    def _edit(self, model, data, requirements, device, callback, *, log, bundle=None, **_):
        kept = self._kept_moments(bundle)
        if kept is not None:
            log.append({"step": 0, "action": "moments", "file": str(kept), "read": load_moments(kept)})
        out = self._run(model, data, requirements, device, callback, log=log)
        if kept is not None:
            fp = input_fingerprint(data.train.X[:self.hparams.max_rows])
            names = [n for n, _ in editable_layers(model)]
            written = save_moments(kept, names, match=lambda key: key[2] == fp)
            log.append({"step": "end", "action": "moments", "file": str(kept), "written": written})
        return out

    def _kept_moments(self, bundle):
        """The file beside the model where its keys' second moments are kept (`keep_moments`), or None."""
        source = getattr(bundle, "source", "") if bundle is not None else ""
        if not self.hparams.keep_moments or not source or not Path(source).is_file():
            return None
        return moments_file(source)

    def _run(self, model, data, requirements, device, callback, *, log):
        self._check()
        clean, corrupted, labels = self._pairs(data, device)
        callback(0.1, "localizing")
        layer, ranking = self._layer(model, data, clean, corrupted, labels)
        callback(0.5, f"editing {layer}")
        update = self._update(model, data, layer, clean, corrupted)
        start = {layer: layer_matrix(resolve_layer(model, layer)).clone()}
        apply_delta(model, update)
        log.append({"step": 1, "action": "edit", **update.describe(), "strength": self.hparams.strength})
        return {"layer": layer, "ranking": ranking, "samples": int(len(clean)), **_what_changed(model, [update], start)}


@dataclass
class DynamicRankOneHyper(RankOneHyper):
    max_edits: int = field(default=8, metadata={"help": "budget of edit steps (accepted or rolled back)"})
    max_accuracy_drop: float = field(default=0.01, metadata={
        "help": "utility budget: clean accuracy lost on the check rows (clean training rows plus `check_split`)"})
    partial_edits: int = field(default=2, metadata={
        "help": "a new edit over the utility budget is tried again this many times, smaller each time (first "
                "as the rank-one update of the same keys when the edit has rank > 1, then at half the size) "
                "before its layer is set aside; 0: never"})
    max_strength: float = field(default=3.0, metadata={
        "help": "most a layer's accepted edits add up to when strengthened (1: the exact fit of the pairs)"})
    check_train_rows: int = field(default=2000, metadata={
        "help": "clean training rows added to `check_split` to judge requirement and budget (0: `check_split` only)"})
    strength_step: float = field(default=0.5, metadata={
        "help": "how much a strengthening step adds along an accepted edit (halved on rollback)"})
    check_split: str = field(default="val", metadata={
        "help": "held-out clean split where requirement and utility are checked",
        "choices": "split"})
    fresh_pairs: int = field(default=2, metadata={
        "help": "rounds of fresh pairs: when the edit can be strengthened no further and a requirement still "
                "fails on the check rows, draw `samples` new clean rows (of `split`) whose corrupted twin the "
                "edited model still gets wrong and edit again for them together with the earlier pairs (which "
                "the next edit must keep rectified); 0: never"})
    gap_tol: float = field(default=0.05, metadata={
        "help": "the pairs count as rectified when their decision gap is below this share of the start"})
    scan: bool = field(default=True, metadata={
        "help": "try the ranked layers in order until one's edit meets every requirement within the budget "
                "(else keep the one that comes closest); off: the first layer whose edit is kept"})
    siblings: bool = field(default=True, metadata={
        "help": "edit, in the same step, every other layer that reads the edited layer's input (a residual "
                "block's first convolution and its projection shortcut), each toward its own clean output, so "
                "no path around the edit still carries the corruption"})
    verdict: str = field(default="strict", metadata={
        "help": '"strict": a requirement counts as met on the check rows only when its whole 95 % interval '
                'lies within the threshold (the report\'s default verdict), so that it also holds on rows the '
                'loop never saw; "point": the point estimate alone', "choices": ["strict", "point"]})
    budget_on: str = field(default="check", metadata={
        "help": '"check": the utility budget is judged on every check row (training rows too: enough rows to '
                'resolve it); "held-out": on the `check_split` rows only (the training rows understate what an '
                'edit costs, as their keys set C and the model fits them with wide margins, but a small split '
                'rejects edits that were fine)', "choices": ["check", "held-out"]})
    pick: str = field(default="misbehaving", metadata={
        "help": 'which clean samples: "misbehaving" (drawn among those whose corrupted twin is misclassified) '
                'or "random"', "choices": ["misbehaving", "random"]})
    refit_output: bool = field(default=True, metadata={
        "help": "when the edits cost the check rows accuracy, refit the output layer in least squares so the "
                "clean training rows get the unedited model's logits back (what the edits cost, undone as far "
                "as the output layer can; all of the refit, else half, else a quarter); kept only when every "
                "requirement still holds, within the budget, and the held-out check rows lose nothing"})
    search: bool = field(default=True, metadata={
        "help": "when the loop's result misses a requirement on the check rows, or costs more than `search_above` "
                "of the utility budget, run the loop again held to each editable layer in turn (`layer`) and keep "
                "the result that meets every requirement at the least accuracy cost on the check rows"})
    search_above: float = field(default=0.5, metadata={
        "help": "share of the utility budget a result that meets every requirement may cost before the search runs"})
    search_layers: int = field(default=12, metadata={
        "help": "most runs the search makes, one per layer in rank order (bounds its cost on a deep model; "
                "0: every layer)"})
    refit_ridge: float = field(default=1e-3, metadata={
        "help": "ridge of the output layer's refit, relative to the mean squared key (pulls it toward the "
                "layer as edited)"})


REFIT_SCALES = (1.0, 0.5, 0.25)  # how much of the output layer's refit is tried, in turn
LOOP_RESAMPLES = 500  # the loop's intervals: a decision, not a reported figure (the report uses 2000)


_FIRST_CHECKS: OrderedDict[tuple, tuple] = OrderedDict()  # (model hash, device, ...): (outputs, cuts, bytes)
_FIRST_CHECKS_SIZE = 4  # entries; their kept values together at most the loop's `max_bytes`
_FIRST_CHECKS_LOCK = threading.Lock()


def clear_check_cache() -> None:
    """Forget the kept checks before any edit (benchmarks time cold edits with this)."""
    with _FIRST_CHECKS_LOCK:
        _FIRST_CHECKS.clear()


class _CheckModel(nn.Module):
    """Stands in for the model in the dynamic loop's checks. The first run of an input (the check
    before any edit) runs the whole model once and keeps, per editable layer, the values crossing
    the cut below it (`ModelSplit`, keyed by the input's content). `at(layer)`: after an edit of that
    layer, a kept input reruns only the part of the model above the layer. `accepted(layer)` drops
    the kept values that an accepted edit of `layer` changed (those of the layers above it). Where
    the model cannot be split (no torch.fx trace) or the values would pass `max_bytes`, the whole
    model runs; `stats` counts both. The first runs also keep each Linear layer's own output: a check
    after a new edit of such a layer (`at(layer, update, scale)`, nothing else changed in it) takes the
    kept output plus the edit's low-rank term, (x R) L^T, instead of the layer's matmul
    (`stats["low_rank_runs"]`; equal to the layer's output up to rounding). Where the part of the
    model above that layer is a chain of Linear layers and 1-Lipschitz elementwise functions (an MLP
    head), such a check before any accepted edit reruns it only on the rows whose decision the edit
    may flip (`ChainBound`); the others keep the first run's logits (`stats["rows_skipped"]`): the
    decisions, all the checks read, are exact; those rows' logits are the unedited model's.

    `start()` marks the checks before any edit as done and keeps their outputs and cuts, keyed by the
    model's weights (`model_hash`): the next edit of the same model (another setting, another seed,
    Edit after Localize) starts from them without running the model (`stats["kept_runs"]`)."""

    def __init__(self, model: nn.Module, layers: list[str], max_bytes: int = 256 * 2**20):
        super().__init__()
        self.model = model
        self.layer: str | None = None
        self.layers, self.max_bytes, self.bytes = layers, max_bytes, 0
        self.split: ModelSplit | None | bool = False  # False: not built yet
        self.cuts: dict[str, dict[str, tuple]] = {}
        self.stats = {"tail_runs": 0, "full_runs": 0, "kept_runs": 0, "low_rank_runs": 0, "rows_skipped": 0}
        self.edited: set[str] = set()  # layers with an accepted change
        self.bounds: dict[str, ChainBound | None] = {}
        self.first: dict[str, torch.Tensor] = {}  # the outputs of the runs before any edit, by input
        self.outs: dict[str, dict[str, torch.Tensor]] = {}  # Linear layers' own outputs before any edit, by input
        self.changed: set[str] = set()  # layers an accepted change touched (their kept outputs are gone)
        self.update: RankOneUpdate | None = None
        self.scale = 1.0
        self.key = (model_hash(model), str(model_device(model)), tuple(layers), max_bytes)
        with _FIRST_CHECKS_LOCK:
            kept = _FIRST_CHECKS.get(self.key)
            if kept is not None:
                _FIRST_CHECKS.move_to_end(self.key)
        if kept is not None:
            first, cuts, outs, self.bytes = kept
            self.first = dict(first)
            self.cuts = {name: dict(by_input) for name, by_input in cuts.items()}
            self.outs = {name: dict(by_input) for name, by_input in outs.items()}

    def start(self) -> None:
        """The checks before any edit are done: later whole-model runs are not kept, and what was kept is
        remembered for the next edit of the same model."""
        self.started = True
        kept = (dict(self.first), {name: dict(by_input) for name, by_input in self.cuts.items()},
                {name: dict(by_input) for name, by_input in self.outs.items()}, self.bytes)
        with _FIRST_CHECKS_LOCK:
            _FIRST_CHECKS[self.key] = kept
            _FIRST_CHECKS.move_to_end(self.key)
            total = sum(v[-1] for v in _FIRST_CHECKS.values())
            while len(_FIRST_CHECKS) > 1 and (len(_FIRST_CHECKS) > _FIRST_CHECKS_SIZE or total > self.max_bytes):
                total -= _FIRST_CHECKS.popitem(last=False)[1][-1]

    def at(self, layer: str | None, update: RankOneUpdate | None = None, scale: float = 1.0) -> _CheckModel:
        """Check after a change of `layer`; `update` (applied at `scale`): that change, when it is all that
        differs in `layer` from the model before any edit (its output is then the kept one plus the
        change's low-rank term)."""
        self.layer, self.update, self.scale = layer, update, scale
        return self

    def kept_input(self, layer: str, X: torch.Tensor) -> torch.Tensor | None:
        """The input of `layer` for `X` as kept by the last checks through here (None unless the cut below
        the layer is its input alone and was kept for every batch)."""
        if not self.split or layer not in self.split.layers or self.split.cut_values(layer) != 1:
            return None
        kept = self.cuts.get(layer, {})
        parts = [kept.get(key) for key in self._batch_keys(X)]
        return torch.cat([p[0] for p in parts]) if parts and all(p is not None for p in parts) else None

    def has_cut(self, layer: str, X: torch.Tensor) -> bool:
        """Whether the cut below `layer` is kept for every batch of `X`."""
        kept = self.cuts.get(layer, {})
        return bool(self.split) and all(key in kept for key in self._batch_keys(X))

    @staticmethod
    def _batch_keys(X: torch.Tensor) -> list[str]:
        """The keys of `X`'s batches as the checks run them (`predict_logits`' batches)."""
        batch_size = batch_rows(X)
        return [input_fingerprint(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]

    def first_logits(self, X: torch.Tensor) -> torch.Tensor | None:
        """What the unedited model gave for `X` when it ran through here in `predict_logits`' batches
        (None if it did not)."""
        outs = [self.first.get(key) for key in self._batch_keys(X)]
        return torch.cat(outs).float().cpu() if outs and all(o is not None for o in outs) else None

    @staticmethod
    def _size(cut: tuple) -> int:
        return sum(t.numel() * t.element_size() for t in cut)

    def accepted(self, layer: str) -> None:
        self.changed.add(layer)
        self.edited.add(layer)
        self._drop_outs(layer)
        if not self.split:
            return
        for name in list(self.cuts):
            if name != layer and self.split.depends(name, layer):
                self.bytes -= sum(self._size(c) for c in self.cuts[name].values())
                del self.cuts[name]
                self._drop_outs(name)

    def _drop_outs(self, name: str) -> None:
        for t in self.outs.pop(name, {}).values():
            self.bytes -= self._size((t,))

    def _low_rank(self, key: str):
        """The changed layer, its kept output for input `key` and the change's term as a function of the
        layer's input (None: not known)."""
        upd = self.update
        if (upd is None or upd.factors is None or upd.siblings or upd.layer != self.layer
                or self.layer in self.changed or key not in self.outs.get(self.layer, {})):
            return None
        kept, (L, R) = self.outs[self.layer][key], upd.factors
        layer = resolve_layer(self.model, self.layer)
        L, R = L.to(kept), R.to(kept)
        w, b = (R[:-1], R[-1]) if layer.bias is not None else (R, None)
        scale = self.scale

        def term(x):
            k = x @ w
            return scale * ((k if b is None else k + b) @ L.T)
        return layer, kept, term

    def _chain_bound(self) -> ChainBound | None:
        """The bound on the logits' change above the edited layer, while nothing else has changed since the
        first runs (their logits stand for the rows it skips) and no run keeps a layer's input."""
        if self.edited or self.watch or not self.split:
            return None
        if self.layer not in self.bounds:
            steps = self.split.chain(self.layer)
            self.bounds[self.layer] = ChainBound(steps) if steps and ChainBound.worth(steps) else None
        return self.bounds[self.layer]

    def _tail_run(self, key: str, hit: tuple):
        """The output from the cut kept below the edited layer: with the kept output plus the change's
        low-rank term instead of the layer's matmul where that is known, and, where the part above is a
        chain (`ChainBound`), only for the rows whose decision the change may flip (the others keep the
        first run's logits; the checks read decisions alone)."""
        fast = self._low_rank(key)
        if fast is None:
            return self.split.run(self.layer, hit)
        self.stats["low_rank_runs"] += 1
        layer, kept, term = fast
        bound = self._chain_bound() if key in self.first else None
        rows = None
        if bound is not None:
            x = hit[0]
            same = bound.unchanged(kept, term(x), self.first[key])
            if same is not None:
                rows = torch.nonzero(~same).flatten()
                self.stats["rows_skipped"] += len(x) - len(rows)
                if not len(rows):
                    return self.first[key]
                kept, hit = kept[rows], (x[rows],)
        layer.forward = lambda x: kept + term(x)  # the changed layer's output without its matmul
        try:
            out = self.split.run(self.layer, hit)
        finally:
            del layer.forward
        if rows is None:
            return out
        full = self.first[key].clone()
        full[rows] = out
        return full

    def _keep_outs(self, key: str, names) -> list:
        """Hooks keeping the outputs of the Linear layers among `names` for input `key` (before any edit);
        a layer called more than once in a forward pass keeps none."""
        handles = []
        for name in names:
            layer = resolve_layer(self.model, name)
            if isinstance(layer, nn.Linear) and name not in self.changed:
                def hook(_m, _a, out, _n=name):
                    by_input = self.outs.setdefault(_n, {})
                    if key in by_input or _n in self.changed:  # a second call: its output is not the layer's one
                        self.changed.add(_n)
                        self._drop_outs(_n)
                    elif isinstance(out, torch.Tensor) and self.bytes + self._size((out,)) <= self.max_bytes:
                        by_input[key] = out.detach()
                        self.bytes += self._size((out,))
                handles.append(layer.register_forward_hook(hook))
        return handles

    def forward(self, X: torch.Tensor):
        if self.split is False:
            self.split = split_model(self.model, self.layers)
        key = input_fingerprint(X)
        watch = self.watch
        if (not watch or not self.split or watch not in self.split.layers or self.split.cut_values(watch) != 1
                or key in self.cuts.get(watch, {})):
            return self._forward(X, key)

        def keep(_m, args):  # the watched layer's input is its whole cut: kept as such
            if key not in self.cuts.get(watch, {}) and self.bytes + self._size(args[:1]) <= self.max_bytes:
                self.cuts.setdefault(watch, {})[key] = (args[0].detach(),)
                self.bytes += self._size(args[:1])

        handle = resolve_layer(self.model, watch).register_forward_pre_hook(keep)
        try:
            return self._forward(X, key)
        finally:
            handle.remove()

    watch: str | None = None  # a layer whose input the runs keep as its cut (the refit's output layer)

    def _forward(self, X: torch.Tensor, key: str):
        split = self.split
        if self.layer is None and not self.started and key in self.first and (
                split is None or all(key in self.cuts.get(name, {}) for name in split.layers)):
            self.stats["kept_runs"] += 1  # run before, on a model with the same weights
            return self.first[key]
        if split is None or (self.layer is not None and self.layer not in split.layers):
            return self._full(key, self.model(X))  # no cut below this layer (the loop edits one `layer` only)
        hit = self.cuts.get(self.layer, {}).get(key) if self.layer is not None else None
        if hit is not None:
            self.stats["tail_runs"] += 1
            return self._tail_run(key, hit)
        # with an edit applied, keep only the edited layer's own cut (its edit cannot change it; the
        # cuts of layers above it would hold the edit, and the edit may be rolled back)
        missing = [name for name in (split.layers if self.layer is None else [self.layer])
                   if key not in self.cuts.get(name, {})]
        handles = self._keep_outs(key, missing) if self.layer is None and not self.started else []
        try:
            out, got = split.capture(X, missing)
        finally:
            for h in handles:
                h.remove()
        for name, cut in got.items():
            if not all(isinstance(t, torch.Tensor) for t in cut):
                continue
            cut = tuple(t.detach() for t in cut)
            if self.bytes + self._size(cut) <= self.max_bytes:
                self.cuts.setdefault(name, {})[key] = cut
                self.bytes += self._size(cut)
        return self._full(key, out)

    def _full(self, key: str, out):
        self.stats["full_runs"] += 1
        if self.layer is None and not self.started and isinstance(out, torch.Tensor):
            self.first[key] = out.detach()
        return out

    started = False  # set by `start()` once the checks before any edit ran


@register_editor
class DynamicRankOneEditor(RankOneEditor):
    """Re-localize, edit, check requirement and utility on held-out data, roll back, repeat.

    The clean samples are drawn among the clean rows of `split` whose corrupted twin the model
    actually gets wrong (the start of the log names them). Each step: while the pairs still show a
    gap in the model's decision between clean and corrupted twin (the clean label's margin over the
    best other class, clean minus corrupted), rank the layers on the current model and edit the
    best-ranked layer not yet rolled back (`scan`: trying the ranked layers in order until one meets
    every requirement within the budget, or all but `gap_tol` of the shortfall, else keeping the one
    that comes closest; `siblings`: together with every other layer that reads the same input, e.g. a
    residual block's first convolution and its projection shortcut); once the pairs are rectified but
    the requirement still fails, strengthen the last accepted edit along its own direction; once that is
    spent (`max_strength`, or a step over the budget at its smallest), draw fresh pairs the edited model
    still gets wrong and edit for them and the earlier pairs together (`fresh_pairs` rounds, each with
    `max_edits` more steps). Requirement
    and utility are judged on clean training rows plus the held-out `check_split` (so one row is a small fraction
    of the budget; the log says when the budget is finer than one row). A step that costs more
    clean accuracy than the budget, or does not improve the requirement, is rolled back. Stops when
    every requirement holds or the budget of steps runs out. When the accepted edits cost the check
    rows accuracy, a last step (`refit_output`) refits the output layer so the clean training rows get
    the unedited model's logits back, kept only if every requirement holds as before and the held-out
    check rows lose nothing. When the result misses a requirement on the check rows, or costs more than
    `search_above` of the budget there, `search` runs the loop again held to each layer in turn (from the
    unedited weights) and keeps the run that meets every requirement at the least cost on the check rows.
    The log records every step, and an edit that changes nothing says why.
    """

    name = "dynamic-rank-one"
    description = ("Re-localize, rank-one edit, check on held-out data, roll back, repeat; refit the output layer "
                   "where the edits cost clean rows; fresh pairs when one edit is spent; search the layers where "
                   "the result misses or costs much (from n clean samples)")
    kind = "rank-one"
    Hyper = DynamicRankOneHyper
    _budget_n = 0  # rows at the end of the check split the budget is judged on (0: all)
    _held_n = 0  # rows at the end of the check split that are held out (the rest: training rows)

    def _update(self, model, data, layer, clean, corrupted, strength=None, rank="default") -> RankOneUpdate:
        """The change of `layer`; with `siblings`, together with the changes of the layers reading the same
        input (all toward their own clean outputs: together they make what follows see the clean twin)."""
        hp = self.hparams
        others = sibling_layers(model, layer, clean) if hp.siblings else []
        if not others:
            return super()._update(model, data, layer, clean, corrupted, strength, rank)
        kw = dict(ridge=hp.ridge, mu=hp.mu, rank=self._rank_setting() if rank == "default" else rank,
                  direction=hp.direction,
                  strength=hp.strength if strength is None else strength, max_rows=hp.max_rows, target="own")
        update = compute_delta(model, layer, clean, corrupted, data.train.X, **kw)
        update.siblings = [compute_delta(model, n, clean, corrupted, data.train.X, **kw) for n in others]
        return update

    def _check_data(self, data: AuditData) -> tuple[AuditData, str, dict]:
        """The data whose `check_split` holds the rows requirement and budget are judged on."""
        hp = self.hparams
        held = data.split(hp.check_split)
        n_train = 0
        if hp.check_train_rows > 0 and hp.check_split != "train":
            train = data.split("train")
            n_train = min(hp.check_train_rows, len(train))
            rows = np.sort(np.random.default_rng(0).choice(len(train), size=n_train, replace=False))
            held = Split.concat([train.subset(rows), held])
            data = data.with_splits(**{hp.check_split: held})
        self._budget_n = len(held) - n_train if hp.budget_on == "held-out" and n_train else 0
        self._held_n = len(held) - n_train
        return data, hp.check_split, {"rows": len(held), "train_rows": n_train,
                                      "split_rows": len(held) - n_train}

    def _status(self, model, data, reqs, split=None):
        """Metrics, requirement results and the shortfall from meeting them all (0 when all hold);
        `model` may be the loop's `_CheckModel`. Under the strict verdict the shortfall is measured from
        the far end of each requirement's 95 % interval. `m["budget_accuracy"]`: the accuracy the
        utility budget is judged on (`budget_on`)."""
        hp = self.hparams
        report = check_metrics(model, data, split or hp.check_split)
        m = dict(report.metrics)
        strict = hp.verdict == "strict"
        iv = (intervals({r.key: m[r.key] for r in reqs if r.key in m}, report.outcomes, resamples=LOOP_RESAMPLES)
              if strict else None)
        results = [r.check(m, iv, mode=hp.verdict) for r in reqs]

        def far(r):  # the end of the interval on the failing side (the point estimate without one)
            bound = r.high if r.op == "<=" else r.low
            return r.value if bound is None or not strict else bound

        # how far from meeting every requirement (0 when all hold)
        shortfall = sum(abs(far(r) - r.threshold) for r in results if not r.passed)
        oc = report.outcomes
        tail = oc.y[-self._budget_n:] == oc.pred[-self._budget_n:] if self._budget_n else None
        m["budget_accuracy"] = float(tail.mean()) if tail is not None and len(tail) else m["accuracy"]
        held = oc.y[-self._held_n:] == oc.pred[-self._held_n:] if self._held_n else None
        m["held_out_accuracy"] = float(held.mean()) if held is not None and len(held) else m["accuracy"]
        return m, results, shortfall

    def _refit(self, model, check_data, split, rows, checks, status, current, acc0, budget, start, accepted, log):
        """The last step: refit the output layer so the clean training rows among the check rows get the
        unedited model's logits back (`refit_output_delta`). Kept when every requirement holds as before,
        within the budget, and the held-out check rows (which the refit never saw) lose nothing; else
        rolled back. Returns the metrics, results and shortfall of the model as it then stands."""
        hp = self.hparams
        m, _, short = current
        held = check_data.split(split)
        n = rows["train_rows"]
        entry: dict = {"step": max(e["step"] for e in log if isinstance(e.get("step"), int)) + 1, "action": "refit"}
        head = output_layer(model, held.X)
        logits = checks.first_logits(held.X)
        edited = {x for u in accepted for x in u.layers}
        why = ("no clean training rows among the check rows" if n == 0 else
               "the model's output is not a Linear layer's own output" if head is None else
               f"the output layer {head} was edited itself" if head in edited else
               "the unedited model's logits for the check rows were not kept" if logits is None else None)
        if why:
            log.append({**entry, "accepted": False, "reason": f"not refitted: {why}"})
            return current
        # the model as it stands, once, keeping the output layer's inputs for the fit and the checks below: run
        # from the cut below an accepted layer when one is kept (only the part above it), else the whole model
        low = next((u.layer for u in accepted if not u.siblings and checks.has_cut(u.layer, held.X)), None)
        checks.watch = head
        try:
            status(low or head)
        finally:
            checks.watch = None
        inputs = checks.kept_input(head, held.X)
        update = refit_output_delta(model, head, held.X[:n], logits[:n], ridge=hp.refit_ridge,
                                    inputs=None if inputs is None else inputs[:n])
        saved = _snapshot(model, head)
        self._touched.setdefault(head, saved)
        before = layer_matrix(resolve_layer(model, head)).clone()
        tried = []
        for scale in REFIT_SCALES:  # the whole refit, then less of it (it may undo part of the edit)
            apply_delta(model, update, scale)
            m2, res2, short2 = status(head)
            drop = acc0 - m2["budget_accuracy"]
            why = ("a requirement is further from holding" if short2 > short + 1e-12 else
                   "over the utility budget" if drop > budget + 1e-12 else
                   "the held-out check rows lose accuracy"
                   if m2["held_out_accuracy"] < m["held_out_accuracy"] - 1e-12 else None)
            _restore(model, head, saved)
            if not why:
                break
            tried.append({"scale": scale, "reason": why})
        entry.update(layer=head, keys=n, rank=update.rank, scale=scale, norm=update.norm * scale,
                     relative_norm=update.relative_norm * scale, accuracy=m2["budget_accuracy"], accuracy_drop=drop,
                     held_out_accuracy=m2["held_out_accuracy"], requirements=[r.to_dict() for r in res2])
        if tried:
            entry["tried"] = tried
        if why:
            log.append({**entry, "accepted": False, "reason": why})
            return current
        apply_delta(model, update, scale)
        start.setdefault(head, before)
        checks.accepted(head)
        accepted.append(update)
        log.append({**entry, "accepted": True})
        what = "all of the fit" if scale == 1 else f"{scale:g} of the fit"
        log.append({"step": "note", "message": (
            f"the output layer {head} was refitted in least squares ({what}) so that {n} clean training rows get "
            f"the unedited model's logits back: it is not a rank-one change (rank {update.rank}, size "
            f"{100 * update.relative_norm * scale:.1f} % of the layer); the requirements hold as before on the "
            f"check rows, and the held-out ones lose no accuracy (set refit_output=false to leave it out)")})
        return m2, res2, short2

    @torch.no_grad()
    def _gap(self, model, clean, corrupted, labels) -> float:
        """How much the corrupted twins' decision falls short of the clean one: the clean label's
        margin over the best other class, clean minus corrupted, averaged (a twin past its clean
        margin counts as 0). Never one logit: a trigger may raise the label's logit and still win."""
        model.eval()
        a, b = model(clean), model(corrupted)
        return float((decision_margin(a, labels) - decision_margin(b, labels)).clamp(min=0).mean())

    @torch.no_grad()
    def _restored(self, model, corrupted, labels) -> bool:
        """Whether the model now gives every corrupted twin its clean label."""
        model.eval()
        return bool((model(corrupted).argmax(1) == labels).all())

    def _seen_logits(self, checks: _CheckModel, data: AuditData, check_data: AuditData, split: str,
                     rows: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The logits `_pick` needs (clean and corrupted, rows of the pick split outside the stamp's target),
        read off the checks before any edit when every row of the pick split leads the check rows in
        order; None otherwise (the pick then runs the model itself)."""
        if (data.stamp is None or self.hparams.split != "train" or split == "train"
                or rows["train_rows"] != len(data.split("train"))):
            return None
        held = check_data.split(split)
        y = held.y.numpy()
        kept = np.flatnonzero(y != data.stamp.target)
        a = checks.first_logits(held.X)
        b = checks.first_logits(check_data.corrupt(split, kept))
        if a is None or b is None:
            return None
        n = int((y[:rows["train_rows"]] != data.stamp.target).sum())
        return a[kept[:n]], b[:n]

    def _pick(self, model, data: AuditData, device, seen: tuple | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """The clean samples and their twins (`pick_pairs`: by default drawn, by `seed`, among the rows of
        `split` the model gets right whose corrupted twin it gets wrong), on `device`. `seen`: those rows'
        clean and corrupted logits, when already computed."""
        hp = self.hparams
        clean, corrupted, labels, info = pick_pairs(model, data, hp.samples, hp.seed, hp.split, hp.pick, seen)
        return clean.to(device), corrupted.to(device), labels.to(device), info

    def prepare(self, bundle, data: AuditData, requirements=(), *, device=None) -> dict:
        """Do ahead what an edit of `bundle` on `device` does first, kept by the model's weights: the checks
        on the unedited model, the pick of the clean samples and (without a fixed `layer`) the ranking of
        the layers for them. The edit that follows starts from there; Localize calls this. Returns the
        pick (as the edit's log names it)."""
        reason = self.supports(bundle, data)
        if reason:
            raise AuditorError(f"editor {self.name!r} cannot edit this model: {reason}")
        dev = pick_device(device) if not isinstance(device, torch.device) else device
        model = bundle.model
        if model_device(model) != dev:  # as the edit will: a copy on the device
            model = bundle.copy().model.to(dev)
            inherit_digests(bundle.model, model)
        was_training = model.training
        try:
            *_, (clean, corrupted, labels, picked) = self._begin(model, data, parse_requirements(requirements), dev)
            if len(clean) and not self.hparams.layer:
                self._rank(model, data, clean, corrupted, labels)
        finally:
            model.train(was_training)
        return picked

    def _begin(self, model, data, requirements, device):
        """What the loop does before its first edit: check the settings, run the checks on the unedited model
        (kept for the next edit of the same weights) and pick the clean samples."""
        self._check()
        hp = self.hparams
        if hp.pick not in PICKS:
            raise AuditorError(f'pick must be "misbehaving" or "random", got {hp.pick!r}')
        if hp.search_layers < 0:
            raise AuditorError(f"search_layers must be at least 0 (0: every layer), got {hp.search_layers}")
        if hp.check_train_rows < 0:
            raise AuditorError(f"check_train_rows must be at least 0, got {hp.check_train_rows}")
        if hp.verdict not in ("strict", "point"):
            raise AuditorError(f'verdict must be "strict" or "point", got {hp.verdict!r}')
        if hp.budget_on not in ("check", "held-out"):
            raise AuditorError(f'budget_on must be "check" or "held-out", got {hp.budget_on!r}')
        reqs = list(requirements) or implicit_requirements(data)
        if not reqs:
            raise AuditorError("dynamic-rank-one needs a requirement to check (e.g. 'attack_success_rate <= 0.02')")
        check_data, split, rows = self._check_data(data)
        checks = _CheckModel(model, [n for n, _ in memory_layers(model)])  # held to one `layer` too: one cache
        status = lambda layer=None, update=None, scale=1.0: self._status(  # noqa: E731
            checks.at(layer, update, scale), check_data, reqs, split)
        m0, res0, short = status()
        checks.start()
        pairs = self._pick(model, data, device, self._seen_logits(checks, data, check_data, split, rows))
        return reqs, check_data, split, rows, checks, status, (m0, res0, short), pairs

    def _run(self, model, data, requirements, device, callback, *, log):
        hp = self.hparams
        out = self._loop(model, data, requirements, device, callback, log=log)
        why = self._search_reason(out) if hp.search and not hp.layer else None
        if why is None:
            return out
        return self._search(model, data, requirements, device, callback, log, out, why)

    def _search_reason(self, out: dict) -> str | None:
        """Why the loop's result is worth a search over the layers (None: it is not)."""
        if not out.get("gap_at_start"):
            return None
        if not out["requirements_met_on_check_split"]:
            return "the loop's result misses a requirement on the check rows"
        if out["check_drop"] > self.hparams.search_above * out["budget"] + 1e-12:
            return (f"the loop's result costs {100 * out['check_drop']:.2f} pt of the {100 * out['budget']:.2f} pt "
                    "budget on the check rows")
        return None

    def _search(self, model, data, requirements, device, callback, log, first, why):
        """Run the loop again held to each editable layer (the ranked order first; a layer edited with the one
        before it, as its sibling, is not run twice) from the unedited weights, and keep the result that meets
        every requirement on the check rows at the least accuracy cost there (the first run on a tie)."""
        hp = self.hparams
        original = dict(self._touched)  # the unedited weights of every layer a run changed
        kept = {n: _snapshot(model, n) for n in original}  # the first run's weights
        best, best_log, tried, covered = first, None, [], set()
        ranked = [row[0] for row in next((e["ranking"] for e in log if e.get("ranking")), [])]
        order = list(dict.fromkeys([*ranked, *used_layers(model, data.split(hp.split).X)]))
        for i, layer in enumerate(order):
            if layer in covered:
                continue
            if hp.search_layers and len(tried) >= hp.search_layers:
                tried.append({"layer": layer, "skipped": f"search_layers {hp.search_layers} reached"})
                continue
            callback(0.5 + 0.45 * i / len(order), f"search: the loop held to {layer}")
            for n, snap in original.items():
                _restore(model, n, snap)
            sub = type(self)(**{**vars(hp), "layer": layer, "search": False})
            sublog: list = []
            try:
                out = sub._loop(model, data, requirements, device, lambda *_: None, log=sublog)
            except (AuditorError, RuntimeError) as exc:  # this layer cannot be edited so: the others still can
                tried.append({"layer": layer, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            finally:
                for n, snap in getattr(sub, "_touched", {}).items():
                    original.setdefault(n, snap)
            for e in sublog:
                if e.get("action") == "edit":
                    covered.update([e["layer"], *e.get("with", [])])
            met, drop = out["requirements_met_on_check_split"], out["check_drop"]
            tried.append({"layer": layer, "met_on_check_rows": met, "accuracy_drop": drop, "layers": out["layers"]})
            if met and (not best["requirements_met_on_check_split"] or drop < best["check_drop"] - 1e-12):
                best, best_log = out, sublog
                kept = {n: _snapshot(model, n) for n in sub._touched}
        for n, snap in original.items():
            _restore(model, n, snap)
        for n, snap in kept.items():
            _restore(model, n, snap)
        step = max(e["step"] for e in log if isinstance(e.get("step"), int)) + 1
        entry = {"step": step, "action": "search", "reason": why, "tried": tried}
        if best_log is None:
            log.append({**entry, "kept": "the first run"})
            log.append({"step": "note", "message": f"searched the layers ({why}): no loop held to one layer met "
                        "every requirement on the check rows at a smaller cost, so the first run's edit is kept"})
            return first
        held = best["search_layer"]
        for e in log:
            if e.get("accepted") and e.get("action") in ("edit", "strengthen", "refit"):
                e.update(accepted=False, reason=f"undone: the search kept the loop held to {held}")
        log.append({**entry, "kept": held})
        log.append({"step": "note", "message": (
            f"searched the layers ({why}): the loop held to {held} meets every requirement on the check rows at "
            f"{100 * best['check_drop']:.2f} pt of accuracy (the first run: "
            + (f"{100 * first['check_drop']:.2f} pt" if first["requirements_met_on_check_split"] else "not met")
            + "), so it is kept and the first run's edits are undone (set search=false to keep the first run)")})
        log.extend({**e, "held_to": held} for e in best_log)
        return best

    def _loop(self, model, data, requirements, device, callback, *, log):
        hp = self.hparams
        self._touched: dict[str, dict[str, torch.Tensor]] = {}  # layer -> its weights before this loop changed it
        reqs, check_data, split, rows, checks, status, (m0, res0, short), pairs = self._begin(
            model, data, requirements, device)
        clean, corrupted, labels, picked = pairs
        current = (m0, res0, short)  # the metrics of the model as it stands (a rollback restores it exactly)
        acc0 = m0["budget_accuracy"]
        judged = self._budget_n or rows["rows"]
        one_row = 1.0 / max(judged, 1)
        budget = hp.max_accuracy_drop
        utility = {"rows": rows["rows"], "train_rows": rows["train_rows"], "split_rows": rows["split_rows"],
                   "judged_on": ("the held-out check rows" if self._budget_n else "every check row"),
                   "judged_rows": judged, "verdict": hp.verdict,
                   "one_row": one_row, "budget": budget, "budget_rows": int(np.floor(budget / one_row + 1e-9))}
        if budget + 1e-12 < one_row:
            utility["note"] = (f"the budget of {100 * budget:.2f} pt is finer than one row ({100 * one_row:.2f} pt of "
                               f"{judged}): it cannot be judged here, so an edit may cost at most one row")
            budget = one_row
        gap0 = self._gap(model, clean, corrupted, labels) if len(clean) else 0.0
        log.append({"step": 0, "action": "start", "split": hp.check_split, "accuracy": acc0,
                    "requirements": [r.to_dict() for r in res0], "pair_gap": gap0, "pairs": picked,
                    "utility": utility})
        rejected: set[str] = set()
        accepted: list[RankOneUpdate] = []
        start: dict[str, torch.Tensor] = {}
        last: RankOneUpdate | None = None
        strength_of: dict[str, float] = {}
        strength = 0.0  # how much of the current edit is applied (1 when accepted, more when strengthened)
        step_size = hp.strength_step
        used_rows = list(picked["rows"])
        rounds = 0
        rankings = []
        reason = None
        if short == 0:
            reason = "every requirement already holds on the check rows"
        elif len(clean) == 0 or gap0 <= 0:
            reason = (f"no clean sample of split {hp.split!r} has a corrupted twin the model gets wrong "
                      "(the pairs show no gap in its decision to rectify)")
        gap_at_start = reason is None

        def attempt(layer, update, action, scale) -> dict:
            """Apply `update` (smaller on each retry over the budget) and check; leaves it applied."""
            saved = {n: _snapshot(model, n) for n in update.layers}
            for n, snap in saved.items():
                self._touched.setdefault(n, snap)  # the unedited weights (the search restores them)
            for n in update.layers:
                if n not in start:
                    start[n] = layer_matrix(resolve_layer(model, n)).clone()
            tried, drop = [], 0.0
            one = self._rank_setting() != 1 and update.rank > 1 and action == "edit" and hp.partial_edits > 0
            for attempt_no in range(hp.partial_edits + 1 if action == "edit" else 1):
                if attempt_no:  # over the utility budget: the rank-one update of the same keys (after an
                    # edit of rank > 1), then half of it, along the same direction
                    for n, snap in saved.items():
                        _restore(model, n, snap)
                    tried.append({"scale": scale, "rank": update.rank, "accuracy_drop": drop})
                    if one and attempt_no == 1:
                        update = self._update(model, data, layer, clean, corrupted, strength=1.0, rank=1)
                    else:
                        scale /= 2
                apply_delta(model, update, scale)
                # a change of several layers is checked on the whole model (a cut below one holds another's output)
                m, res, new_short = (status(layer, update if action == "edit" else None, scale)
                                     if not update.siblings
                                     else self._status(model, check_data, reqs, split))
                drop = acc0 - m["budget_accuracy"]
                if drop <= budget + 1e-12:
                    break
            return {"layer": layer, "update": update, "scale": scale, "saved": saved, "m": m, "res": res,
                    "short": new_short, "drop": drop, "tried": tried}

        def fresh(step: int, why: str) -> bool:
            """New pairs the edited model still gets wrong (a round of `fresh_pairs`); False when none."""
            nonlocal clean, corrupted, labels, gap0, last, strength, step_size, rounds, steps
            if rounds >= hp.fresh_pairs or short == 0:
                return False
            rounds += 1
            c2, k2, y2, info = pick_pairs(model, data, hp.samples, hp.seed + rounds, hp.split, "misbehaving",
                                          exclude=used_rows)
            entry = {"step": step, "action": "fresh pairs", "reason": why, "round": rounds, "pairs": info}
            if not info.get("misbehaving") or not len(c2):
                log.append({**entry, "found": 0})
                return False
            # the new pairs join the earlier ones, which the edits so far rectified: the next edit is fitted to
            # all of them, so it cannot undo what the earlier edits did for theirs
            clean = torch.cat([clean, c2.to(clean.device)])
            corrupted = torch.cat([corrupted, k2.to(clean.device)])
            labels = torch.cat([labels, y2.to(clean.device)])
            used_rows.extend(info["rows"])
            gap0 = self._gap(model, clean, corrupted, labels)
            last, strength, step_size = None, 0.0, hp.strength_step
            rejected.clear()
            steps = step + hp.max_edits
            log.append({**entry, "found": len(c2), "pairs_now": len(clean), "pair_gap": gap0})
            return True

        steps, step = hp.max_edits, 0  # each round of fresh pairs gets `max_edits` more steps
        while step < steps:
            step += 1
            if short == 0 or reason:
                break
            callback(step / (steps + 1), f"step {step}")
            gap = self._gap(model, clean, corrupted, labels)
            restored = self._restored(model, corrupted, labels)
            entry: dict = {"step": step, "pair_gap": gap, "pairs_restored": restored}
            if gap > hp.gap_tol * max(gap0, 1e-12) and not (restored and last is not None):
                if hp.layer:
                    candidates = [hp.layer]
                else:
                    table = self._rank(model, data, clean, corrupted, labels)
                    rankings.append(table.to_dict("records"))
                    entry["ranking"] = [(r["layer"], round(float(r["score"]), 6)) for r in rankings[-1]]
                    candidates = [str(x) for x in table["layer"]]
                candidates = [c for c in candidates if c not in rejected]
                held = [c for c in candidates if holds_edits(model, c)]
                if len(held) < len(candidates):  # a weight a parametrization recomputes (spectral_norm)
                    entry["not_editable"] = [c for c in candidates if c not in held]
                    rejected.update(entry["not_editable"])
                    candidates = held
                if not candidates:
                    reason = "every layer's edit was rolled back"
                    entry.update(action="stop", reason=reason)
                    log.append(entry)
                    break
                layer = candidates[0]
                update = self._update(model, data, layer, clean, corrupted, strength=1.0)
                scale, action = 1.0, "edit"
            elif last is not None and strength + step_size > hp.max_strength + 1e-9:
                why = f"the edit of {last.layer} is already at its strongest (max_strength {hp.max_strength:g})"
                if fresh(step, why):
                    continue
                reason = why
                entry.update(action="stop", reason=reason)
                log.append(entry)
                break
            elif last is not None:
                layer, update = last.layer, last
                scale, action = step_size, "strengthen"
            else:
                reason = "the pairs show no gap in the model's decision to rectify"
                entry.update(action="stop", reason=reason)
                log.append(entry)
                break
            if action == "edit" and hp.scan and len(candidates) > 1:
                # try the candidates in rank order until one meets every requirement within the budget (or
                # all but `gap_tol` of the shortfall: strengthening finishes it); else keep the closest
                best, scanned = None, []

                def order(got):
                    return (got["short"] > 0, got["drop"] if got["short"] == 0 else got["short"], got["drop"])

                covered: set[str] = set()
                for cand in candidates:
                    if cand in covered:  # edited already, with the layer it reads the same input as
                        continue
                    upd = update if cand == layer else self._update(model, data, cand, clean, corrupted, strength=1.0)
                    covered.update(upd.layers)
                    got = attempt(cand, upd, "edit", 1.0)
                    ok = got["drop"] <= budget + 1e-12 and got["short"] < short
                    scanned.append({"layer": cand, "accuracy_drop": got["drop"], "shortfall": got["short"], "ok": ok})
                    for n, snap in got["saved"].items():
                        _restore(model, n, snap)
                    if not ok:
                        rejected.add(cand)
                    elif best is None or order(got) < order(best):
                        best = got
                    if ok and got["short"] <= hp.gap_tol * short:  # met, or close enough to strengthen
                        break
                entry["scanned"] = scanned
                if best is None:
                    got = attempt(layer, update, "edit", 1.0)  # reported (and rolled back below) as before
                else:
                    apply_delta(model, best["update"], best["scale"])
                    got = best
            else:
                got = attempt(layer, update, action, scale)
            layer, update, scale, saved = got["layer"], got["update"], got["scale"], got["saved"]
            m, res, new_short, drop, tried = got["m"], got["res"], got["short"], got["drop"], got["tried"]
            if tried:
                entry["tried"] = tried
            entry.update(action=action, layer=layer, keys=update.keys, rank=update.rank,
                         directions=update.directions, scale=scale, norm=update.norm * scale,
                         relative_norm=update.relative_norm * scale, accuracy=m["budget_accuracy"], accuracy_drop=drop,
                         rows_lost=int(round(drop / one_row)), requirements=[r.to_dict() for r in res])
            if update.siblings:
                entry["with"] = [u.layer for u in update.siblings]
            if drop > budget + 1e-12 or new_short >= short:
                for n, snap in saved.items():
                    _restore(model, n, snap)
                entry.update(accepted=False, reason=("over the utility budget" if drop > budget + 1e-12
                                                     else "does not bring the requirement closer"))
                if action == "edit":
                    rejected.add(layer)
                elif step_size / 2 >= hp.strength_step / 4:
                    step_size /= 2  # a smaller step along the same direction next
                else:
                    log.append(entry)
                    why = "strengthening the edit no longer pays within the budget"
                    if fresh(step, why):
                        continue
                    reason = why
                    log.append({"step": step, "action": "stop", "reason": reason})
                    break
            else:
                entry["accepted"] = True
                short = new_short
                current = (m, res, new_short)
                for n in update.layers:
                    checks.accepted(n)
                strength_of[layer] = strength_of.get(layer, 0.0) + scale
                strength = scale if action == "edit" else strength + scale
                if action == "edit":
                    last = update
                    accepted.append(update)
            log.append(entry)
        if hp.refit_output and accepted and acc0 - current[0]["budget_accuracy"] > 1e-12:  # the edits cost rows
            current = self._refit(model, check_data, split, rows, checks, status, current, acc0, budget,
                                  start, accepted, log)
        m, res, short = current
        edited = sorted({n for u in accepted for n in u.layers} | set(strength_of))
        out = {"layers": edited, "strength": strength_of, "samples": len(used_rows), "search_layer": hp.layer,
               "gap_at_start": gap_at_start, "budget": budget, "check_drop": acc0 - m["budget_accuracy"],
               "sample_rows": used_rows, "fresh_pair_rounds": rounds,
               "steps": sum(1 for e in log if e.get("action") in ("edit", "strengthen", "refit") and "accuracy" in e),
               "check_split": hp.check_split, "check_rows": rows["rows"], "requirements_met_on_check_split": short == 0,
               "check_metrics": {k: float(v) for k, v in m.items()}, "rankings": rankings,
               "check_runs": dict(checks.stats), **_what_changed(model, accepted, start)}
        if not strength_of:
            why = reason or "every edit step was rolled back"
            out["no_edit_reason"] = why
            log.append({"step": "end", "action": "no edit", "reason": f"nothing was edited: {why}"})
        return out


@dataclass
class StaticRankOneLastHyper(RankOneHyper):
    layer: str | None = field(default=None, metadata={"help": "ignored: always the last Linear/Conv2d layer"})


@register_editor
class StaticRankOneLast(RankOneEditor):
    """The closed-form rank-one edit of the last layer, without attribution (baseline)."""

    name = "static-rank-one-last"
    description = "Rank-one edit of the last layer from n clean samples, no localization (baseline)"
    kind = "baseline"
    Hyper = StaticRankOneLastHyper

    def _layer(self, model, data, clean, corrupted, labels):
        return memory_layers(model)[-1][0], None
