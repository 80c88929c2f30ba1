"""Attribution-guided rank-one rectification of Trojans and spurious cues (static and dynamic).

A Linear or Conv2d layer is a linear associative memory: keys are its inputs (for a convolution
the unfolded input patch at each output position), values its outputs. For a corrupted input
(trigger or cue) and its clean twin, the corrupted keys k* should produce the values v* the clean
twin produces. With C the uncentred second moment of keys over clean training data, the update
that does so while disturbing clean keys least is, for one key,

    W' = W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)

and for several keys K (pairs, or every position whose patch the corruption changes) the joint
least-squares solution `dW = R^T K (mu C + K^T K)^-1` (R = V* - K W^T, mu small), which is the
formula above for one key and mu -> 0. Computing the change (`compute_delta`) is kept apart from
applying it (`apply_delta`), and `WeightDelta` in the result reverts it bit for bit.

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> result = get_editor("dynamic-rank-one", samples=1).edit(bundle, load_data("digits-trojan"),
    ...                                                       ["attack_success_rate <= 0.02"])  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data.base import AuditData, Split
from ..errors import AuditorError
from ..layers import check_editable, inverse_moment, layer_io, layer_matrix, regularised, resolve_layer, second_moment
from ..localize import METHODS, rank_layers
from ..models.architectures import editable_layers
from ..requirements import Requirement, compute_metrics, parse_requirement
from .base import Editor
from .registry import register_editor


@dataclass
class RankOneUpdate:
    """A computed change of one layer (not yet applied): `delta` acts on the layer's keys
    (out x D, bias in the last column when the layer has one)."""

    layer: str
    delta: torch.Tensor
    keys: int
    residual: float  # ||V* - W K|| before the change
    residual_after: float  # ||V* - (W + delta) K|| (0 for an exact fit)

    @property
    def rank(self) -> int:
        return int(torch.linalg.matrix_rank(self.delta.double(), rtol=1e-6).item())


def corrupted_keys(model: nn.Module, layer_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                   tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys K* (S, D) of the corrupted inputs and values V* (S, out) of their clean twins, at every
    example and position whose key the corruption changes (for a Trojan on a convolution: each
    patch position overlapping the trigger)."""
    k_bad, _ = layer_io(model, layer_name, corrupted)
    k_good, v_good = layer_io(model, layer_name, clean)
    changed = (k_bad - k_good).abs().amax(-1) > tol
    return k_bad[changed], v_good[changed]


def compute_delta(model: nn.Module, layer_name: str, clean: torch.Tensor, corrupted: torch.Tensor,
                  reference: torch.Tensor, *, ridge: float = 1e-3, mu: float = 1e-2, rank: int | None = None,
                  strength: float = 1.0, max_rows: int = 4096, tol: float = 1e-6) -> RankOneUpdate:
    """The change of `layer_name` that maps the corrupted keys to the clean values.

    `reference`: clean inputs for C (cached per model hash and layer). `strength` scales the
    target move (1 maps k* to v* exactly; >1 moves past the clean value). `rank` truncates the
    joint solution (the best rank-r fit of the residuals). Runs on the model's device.
    """
    layer = resolve_layer(model, layer_name)
    check_editable(layer, layer_name)
    K, V = corrupted_keys(model, layer_name, clean, corrupted, tol)
    W = layer_matrix(layer)
    if K.shape[0] == 0:
        return RankOneUpdate(layer_name, torch.zeros_like(W), 0, 0.0, 0.0)
    dtype = torch.float32 if K.device.type == "mps" else torch.float64
    K, V, W = K.to(dtype), V.to(dtype), W.to(dtype)
    R = strength * (V - K @ W.T)  # (S, out)
    if rank is not None and rank < min(R.shape):
        U, S, Vh = torch.linalg.svd(R, full_matrices=False)
        R = (U[:, :rank] * S[:rank]) @ Vh[:rank]
    C0 = second_moment(model, layer_name, reference, max_rows=max_rows)
    Cinv = inverse_moment(C0, ridge).to(K.device, dtype)
    # dW = R^T K (mu C + K^T K)^-1: W' k_s = v_s for every key (exact for S <= D as mu -> 0), mu C
    # protects clean keys. For S <= D the same in its dual form, the one-key formula for S = 1:
    # dW = R^T (mu I + K C^-1 K^T)^-1 (C^-1 K^T)^T
    if K.shape[0] <= K.shape[1]:
        U = Cinv @ K.T  # (D, S) = C^-1 K^T
        G = K @ U + mu * torch.eye(K.shape[0], dtype=dtype, device=K.device)
        delta = torch.linalg.solve(G, R).T @ U.T  # (out, D)
    else:
        C = regularised(C0.to(K.device, dtype), ridge)
        delta = torch.linalg.solve(mu * C + K.T @ K, K.T @ R).T
    after = float((R - K @ delta.T).norm())
    return RankOneUpdate(layer_name, delta, int(K.shape[0]),
                         float(R.norm()), after)


@torch.no_grad()
def apply_delta(model: nn.Module, update: RankOneUpdate, scale: float = 1.0) -> None:
    """Add `scale * update.delta` to the layer's weight (and bias) in place."""
    layer = resolve_layer(model, update.layer)
    d = update.delta * scale
    if layer.bias is not None:
        layer.bias.add_(d[:, -1].to(layer.bias.dtype))
        d = d[:, :-1]
    layer.weight.add_(d.reshape(layer.weight.shape).to(layer.weight.dtype))


def _snapshot(model: nn.Module, layer_name: str) -> dict[str, torch.Tensor]:
    layer = resolve_layer(model, layer_name)
    return {n: p.detach().clone() for n, p in layer.named_parameters(recurse=False)}


@torch.no_grad()
def _restore(model: nn.Module, layer_name: str, saved: dict[str, torch.Tensor]) -> None:
    layer = resolve_layer(model, layer_name)
    for n, p in layer.named_parameters(recurse=False):
        p.copy_(saved[n])


def check_metrics(model: nn.Module, data: AuditData, split: str) -> dict[str, float]:
    """Every metric of `model` on one split (the dynamic loop checks after each step)."""
    return compute_metrics(model, data, split).metrics


def implicit_requirements(data: AuditData) -> list[Requirement]:
    """What a rank-one editor aims for when no requirement is given."""
    if data.trigger is not None:
        return [parse_requirement("attack_success_rate <= 0.02")]
    if data.cue is not None:
        return [parse_requirement("cue_gap <= 0.05")]
    return []


def needs_pairs(bundle, data: AuditData) -> str | None:
    """None when `data` has (clean, corrupted) pairs and the model a Linear or Conv2d layer, else why not."""
    if data is None:
        return None
    if data.stamp is None and data.train.corrupted is None:
        return (f"data set {data.name!r} has no trigger, cue or corrupted twins; rank-one rectification needs "
                "(clean, corrupted) pairs (a Trojan or cue data set, or an .npz case)")
    if bundle is not None and not editable_layers(bundle.model):
        return "the model has no Linear or Conv2d layer"
    return None


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
    rank: int | None = field(default=None, metadata={
        "help": "truncate the joint least-squares change to this rank (None: exact fit)"})
    attribution: str = field(default="integrated_gradients", metadata={
        "help": 'or "conductance" (Captum layer method for ranking)',
        "choices": "attribution"})
    n_steps: int = field(default=16, metadata={
        "help": "integration steps of the attribution (the ranking is stable from 8 on)"})
    max_rows: int = field(default=4096, metadata={"help": "clean training rows used for C"})
    split: str = field(default="train", metadata={"help": "where the pairs come from", "choices": "split"})


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

    def _update(self, model, data, layer, clean, corrupted, strength=None) -> RankOneUpdate:
        hp = self.hparams
        return compute_delta(model, layer, clean, corrupted, data.train.X, ridge=hp.ridge, mu=hp.mu, rank=hp.rank,
                             strength=hp.strength if strength is None else strength, max_rows=hp.max_rows)

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        self._check()
        clean, corrupted, labels = self._pairs(data, device)
        callback(0.1, "localizing")
        layer, ranking = self._layer(model, data, clean, corrupted, labels)
        callback(0.5, f"editing {layer}")
        update = self._update(model, data, layer, clean, corrupted)
        apply_delta(model, update)
        log.append({"step": 1, "action": "edit", "layer": layer, "keys": update.keys,
                    "residual": update.residual, "residual_after": update.residual_after,
                    "rank": update.rank, "norm": float(update.delta.norm()), "strength": self.hparams.strength})
        return {"layer": layer, "ranking": ranking, "keys": update.keys, "samples": int(len(clean))}


@dataclass
class DynamicRankOneHyper(RankOneHyper):
    max_edits: int = field(default=8, metadata={"help": "budget of edit steps (accepted or rolled back)"})
    max_accuracy_drop: float = field(default=0.01, metadata={
        "help": "utility budget: clean accuracy lost on the check rows (clean training rows plus `check_split`)"})
    max_strength: float = field(default=2.0, metadata={
        "help": "most a layer's accepted edits add up to when strengthened (1: the exact fit of the pairs)"})
    check_train_rows: int = field(default=2000, metadata={
        "help": "clean training rows added to `check_split` to judge requirement and budget (0: `check_split` only)"})
    strength_step: float = field(default=0.5, metadata={
        "help": "how much a strengthening step adds along an accepted edit (halved on rollback)"})
    check_split: str = field(default="val", metadata={
        "help": "held-out clean split where requirement and utility are checked",
        "choices": "split"})
    gap_tol: float = field(default=0.05, metadata={
        "help": "the pairs count as rectified when their decision gap is below this share of the start"})
    pick: str = field(default="misbehaving", metadata={
        "help": 'which clean samples: "misbehaving" (drawn among those whose corrupted twin is misclassified) '
                'or "random"', "choices": ["misbehaving", "random"]})


def decision_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the logit of `labels` minus the largest other logit (> 0 where the label is predicted)."""
    idx = labels[:, None]
    other = logits.scatter(1, idx, float("-inf")).amax(1)
    return logits.gather(1, idx).squeeze(1) - other


@torch.no_grad()
def _logits(model: nn.Module, X: torch.Tensor, device, batch: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(X[i:i + batch].to(device)).float().cpu() for i in range(0, len(X), batch)])


@register_editor
class DynamicRankOneEditor(RankOneEditor):
    """Re-localize, edit, check requirement and utility on held-out data, roll back, repeat.

    The clean samples are drawn among the clean rows of `split` whose corrupted twin the model
    actually gets wrong (the start of the log names them). Each step: while the pairs still show a
    gap in the model's decision between clean and corrupted twin (the clean label's margin over the
    best other class, clean minus corrupted), rank the layers on the current model and edit the
    best-ranked layer not yet rolled back; once the pairs are rectified but the requirement still
    fails, strengthen the last accepted edit along its own direction. Requirement and utility are
    judged on clean training rows plus the held-out `check_split` (so one row is a small fraction
    of the budget; the log says when the budget is finer than one row). A step that costs more
    clean accuracy than the budget, or does not improve the requirement, is rolled back. Stops when
    every requirement holds or the budget of steps runs out. The log records every step, and an
    edit that changes nothing says why.
    """

    name = "dynamic-rank-one"
    description = "Re-localize, rank-one edit, check on held-out data, roll back, repeat (from n clean samples)"
    kind = "rank-one"
    Hyper = DynamicRankOneHyper

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
        return data, hp.check_split, {"rows": len(held), "train_rows": n_train,
                                      "split_rows": len(held) - n_train}

    def _status(self, model, data, reqs, split=None):
        m = check_metrics(model, data, split or self.hparams.check_split)
        results = [r.check(m) for r in reqs]
        # how far from meeting every requirement (0 when all hold)
        shortfall = sum(abs(r.value - r.threshold) for r in results if not r.passed)
        return m, results, shortfall

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

    def _pick(self, model, data: AuditData, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """The clean samples and their twins: drawn (by `seed`) among the rows of `split` the model gets
        right whose corrupted twin it gets wrong; topped up by the largest decision gaps if too few."""
        hp = self.hparams
        sp = data.split(hp.split)
        rows = np.arange(len(sp))
        if data.stamp is not None:
            rows = rows[sp.y.numpy() != data.stamp.target]
        if hp.samples > len(rows):
            raise AuditorError(f"asked for {hp.samples} samples but split {hp.split!r} has only {len(rows)}")
        info: dict = {"split": hp.split, "pick": hp.pick, "candidates": int(len(rows))}
        if hp.pick == "random":
            chosen = np.sort(np.random.default_rng(hp.seed).choice(rows, size=hp.samples, replace=False))
        else:
            X, Xc, y = sp.X[rows], data.corrupt(hp.split, rows), sp.y[rows]
            a, b = _logits(model, X, device), _logits(model, Xc, device)
            bad = (a.argmax(1) == y) & (b.argmax(1) != y)
            drop = (decision_margin(a, y) - decision_margin(b, y)).numpy()
            pool = rows[bad.numpy()]
            info["misbehaving"] = int(len(pool))
            if len(pool) >= hp.samples:
                chosen = np.sort(np.random.default_rng(hp.seed).choice(pool, size=hp.samples, replace=False))
            else:
                in_pool = set(pool.tolist())
                rest = [r for r in rows[np.argsort(-drop, kind="stable")] if r not in in_pool]
                extra = [r for r in rest[:hp.samples - len(pool)] if drop[np.searchsorted(rows, r)] > 0]
                chosen = np.sort(np.concatenate([pool, np.asarray(extra, dtype=rows.dtype)]))
        info["rows"] = [int(r) for r in chosen]
        if len(chosen) == 0:
            return sp.X[:0].to(device), sp.X[:0].to(device), sp.y[:0].to(device), info
        return (sp.X[chosen].to(device), data.corrupt(hp.split, chosen).to(device), sp.y[chosen].to(device), info)

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        self._check()
        hp = self.hparams
        if hp.pick not in ("misbehaving", "random"):
            raise AuditorError(f'pick must be "misbehaving" or "random", got {hp.pick!r}')
        if hp.check_train_rows < 0:
            raise AuditorError(f"check_train_rows must be at least 0, got {hp.check_train_rows}")
        reqs = list(requirements) or implicit_requirements(data)
        if not reqs:
            raise AuditorError("dynamic-rank-one needs a requirement to check (e.g. 'attack_success_rate <= 0.02')")
        clean, corrupted, labels, picked = self._pick(model, data, device)
        check_data, split, rows = self._check_data(data)
        status = lambda: self._status(model, check_data, reqs, split)  # noqa: E731
        m0, res0, short = status()
        acc0 = m0["accuracy"]
        one_row = 1.0 / max(rows["rows"], 1)
        budget = hp.max_accuracy_drop
        utility = {"rows": rows["rows"], "train_rows": rows["train_rows"], "split_rows": rows["split_rows"],
                   "one_row": one_row, "budget": budget, "budget_rows": int(np.floor(budget / one_row + 1e-9))}
        if budget + 1e-12 < one_row:
            utility["note"] = (f"the budget of {100 * budget:.2f} pt is finer than one row ({100 * one_row:.2f} pt of "
                               f"{rows['rows']}): it cannot be judged here, so an edit may cost at most one row")
            budget = one_row
        gap0 = self._gap(model, clean, corrupted, labels) if len(clean) else 0.0
        log.append({"step": 0, "action": "start", "split": hp.check_split, "accuracy": acc0,
                    "requirements": [r.to_dict() for r in res0], "pair_gap": gap0, "pairs": picked,
                    "utility": utility})
        rejected: set[str] = set()
        last: RankOneUpdate | None = None
        strength_of: dict[str, float] = {}
        step_size = hp.strength_step
        rankings = []
        reason = None
        if short == 0:
            reason = "every requirement already holds on the check rows"
        elif len(clean) == 0 or gap0 <= 0:
            reason = (f"no clean sample of split {hp.split!r} has a corrupted twin the model gets wrong "
                      "(the pairs show no gap in its decision to rectify)")
        for step in range(1, hp.max_edits + 1):
            if short == 0 or reason:
                break
            callback(step / (hp.max_edits + 1), f"step {step}")
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
                if not candidates:
                    reason = "every layer's edit was rolled back"
                    entry.update(action="stop", reason=reason)
                    log.append(entry)
                    break
                layer = candidates[0]
                update = self._update(model, data, layer, clean, corrupted, strength=1.0)
                scale, action = 1.0, "edit"
            elif last is not None and strength_of.get(last.layer, 0.0) + step_size > hp.max_strength + 1e-9:
                reason = f"the edit of {last.layer} is already at its strongest (max_strength {hp.max_strength:g})"
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
            saved = _snapshot(model, layer)
            apply_delta(model, update, scale)
            m, res, new_short = status()
            drop = acc0 - m["accuracy"]
            entry.update(action=action, layer=layer, keys=update.keys, scale=scale,
                         norm=float(update.delta.norm() * scale), accuracy=m["accuracy"], accuracy_drop=drop,
                         rows_lost=int(round(drop / one_row)), requirements=[r.to_dict() for r in res])
            if drop > budget + 1e-12 or new_short >= short:
                _restore(model, layer, saved)
                entry.update(accepted=False, reason=("over the utility budget" if drop > budget + 1e-12
                                                     else "does not bring the requirement closer"))
                if action == "edit":
                    rejected.add(layer)
                elif step_size / 2 >= hp.strength_step / 4:
                    step_size /= 2  # a smaller step along the same direction next
                else:
                    log.append(entry)
                    reason = "strengthening the edit no longer pays within the budget"
                    log.append({"step": step, "action": "stop", "reason": reason})
                    break
            else:
                entry["accepted"] = True
                short = new_short
                strength_of[layer] = strength_of.get(layer, 0.0) + scale
                if action == "edit":
                    last = update
            log.append(entry)
        m, res, short = status()
        out = {"layers": sorted(strength_of), "strength": strength_of, "samples": int(len(clean)),
               "sample_rows": picked["rows"], "steps": sum(1 for e in log if e.get("action") in ("edit", "strengthen")),
               "check_split": hp.check_split, "check_rows": rows["rows"], "requirements_met_on_check_split": short == 0,
               "check_metrics": {k: float(v) for k, v in m.items()}, "rankings": rankings}
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
        return editable_layers(model)[-1][0], None
