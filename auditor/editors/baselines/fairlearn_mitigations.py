"""fairlearn's mitigations as baselines: ThresholdOptimizer (post-processing) and ExponentiatedGradient
(retraining). Neither is a weight edit of the given MLP, so neither is a registered `Editor`:

- `postprocess_threshold_optimizer` keeps the MLP unchanged and puts group-specific, randomised
  thresholds on its scores. It needs the protected attribute AT PREDICTION TIME, so it cannot be
  written into the model's weights or shipped as a model file.
- `retrain_exponentiated_gradient` trains a new randomised ensemble of sklearn classifiers
  (LogisticRegression by default, or `TorchMLPClassifier`: the given model's architecture trained
  from scratch) on the model's inputs; the MLP's weights are not used. The protected attribute is
  used only in training.
- `retrain_reweighing` retrains the given model's architecture from scratch with reweighing-style
  sample weights (Kamiran & Calders: w(g, y) = (P(g) P(y) / P(g, y)) ** power); attribute-blind at
  prediction time, the attribute is read only to weight the training rows.

Both return an `AlternativeResult` (metrics on a split, wall time, what the method needs), which the
benchmark and the trade-off chart put next to the editors' results.

>>> from auditor import load_model, load_data
>>> r = postprocess_threshold_optimizer(load_model("sample_models/adult_mlp.safetensors"),
...                                     load_data("adult"))  # doctest: +SKIP
>>> r.metrics["demographic_parity"] < 0.05  # doctest: +SKIP
True
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from ...backend import seeded_global_rng
from ...data.base import AuditData
from ...errors import AuditorError
from ...models.architectures import predict_logits
from ...models.files import ModelBundle
from .common import fairness_reason

CONSTRAINTS = ("demographic_parity", "equalized_odds")


# what each mitigation is (a trade-off row's kind, also when it could not run)
ALTERNATIVE_KINDS = {"threshold-optimizer": "post-processing", "exponentiated-gradient": "retraining",
                     "reweighing-retrain": "retraining"}


@dataclass
class AlternativeResult:
    """What a non-editing mitigation achieved: metrics on `split`, time to fit, what it needs."""

    method: str
    kind: str  # "post-processing" or "retraining"
    constraint: str
    attribute: str
    split: str
    metrics: dict[str, float]
    seconds: float  # fitting (thresholds or the new model), not counting prediction
    predict_seconds: float
    settings: dict = field(default_factory=dict)
    needs_protected_at_prediction: bool = False
    randomized: bool = True
    edits_given_model: bool = False  # never: the given model's weights are not changed
    note: str = ""
    predictions: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("predictions")
        return out


class TorchScores(ClassifierMixin, BaseEstimator):
    """A fitted sklearn classifier view of a torch model's class probabilities (float64).

    fairlearn's ThresholdOptimizer (prefit=True) calls `predict_proba`; float64 avoids a pandas 3
    failure on float32 scores.
    """

    def __init__(self, model=None):
        self.model = model

    def fit(self, X, y=None):  # already trained
        self.classes_ = np.array([0, 1])
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def predict_proba(self, X) -> np.ndarray:
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        return predict_logits(self.model, X).double().softmax(1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)


def _train_weighted(arch: dict, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, epochs: int,
                    lr: float, batch_size: int, seed: int) -> torch.nn.Module:
    """A fresh `arch` trained with Adam on (sample-weighted) cross-entropy; deterministic for `seed`."""
    from ...models.architectures import build_architecture

    with seeded_global_rng(seed):
        model = build_architecture(arch)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w = torch.ones(len(X)) if w is None else w / w.mean()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch_size):
            idx = order[i:i + batch_size]
            loss = (torch.nn.functional.cross_entropy(model(X[idx]), y[idx], reduction="none") * w[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


class TorchMLPClassifier(ClassifierMixin, BaseEstimator):
    """A torch architecture (`arch`, as in a model spec) trained from scratch as an sklearn classifier
    that honours `sample_weight`, so fairlearn's reductions can retrain the user's architecture."""

    def __init__(self, arch=None, epochs: int = 5, lr: float = 3e-3, batch_size: int = 256, seed: int = 0):
        self.arch, self.epochs, self.lr, self.batch_size, self.seed = arch, epochs, lr, batch_size, seed

    def fit(self, X, y, sample_weight=None):
        self.classes_ = np.array([0, 1])
        w = None if sample_weight is None else torch.tensor(np.asarray(sample_weight, dtype=np.float32))
        self.model_ = _train_weighted(self.arch, torch.tensor(np.asarray(X, dtype=np.float32)),
                                      torch.tensor(np.asarray(y, dtype=np.int64)), w, self.epochs, self.lr,
                                      self.batch_size, self.seed)
        return self

    def predict_proba(self, X) -> np.ndarray:
        return predict_logits(self.model_, torch.as_tensor(np.asarray(X, dtype=np.float32))).double().softmax(1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)


@contextmanager
def _quiet_fairlearn():
    """fairlearn 0.15 under pandas 3 warns about its own Series updates; those are not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"fairlearn(\.|$)")
        yield


def group_metrics(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Accuracy and fairness of hard predictions (fairlearn's definitions)."""
    acc_by = [float((pred[groups == g] == y[groups == g]).mean()) for g in np.unique(groups)]
    return {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "demographic_parity": float(demographic_parity_difference(y, pred, sensitive_features=groups)),
            "equalized_odds": float(equalized_odds_difference(y, pred, sensitive_features=groups)),
            "worst_group_accuracy": min(acc_by), "selection_rate": float(pred.mean())}


def _check(data: AuditData, constraint: str, attribute: str | None) -> str:
    if constraint not in CONSTRAINTS:
        raise AuditorError(f"unknown constraint {constraint!r}; choose one of {CONSTRAINTS}")
    if not data.protected:
        raise AuditorError(f"data set {data.name!r} names no protected attribute")
    attribute = attribute or data.protected[0]
    if attribute not in data.protected:
        raise AuditorError(f"unknown protected attribute {attribute!r}; {data.name!r} has {data.protected}")
    return attribute


def postprocess_threshold_optimizer(bundle: ModelBundle, data: AuditData, constraint: str = "demographic_parity",
                                    *, attribute: str | None = None, tol: float | None = None,
                                    objective: str = "accuracy_score", fit_split: str = "train",
                                    split: str = "test", seed: int = 0, grid_size: int = 1000) -> AlternativeResult:
    """Group-specific randomised thresholds on the MLP's scores (Hardt et al.; fairlearn ThresholdOptimizer).

    `tol` relaxes the constraint (None: exact). The model is not changed; predicting needs the
    protected attribute of every row.
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    reason = fairness_reason(bundle, data)
    if reason:
        raise AuditorError(f"threshold-optimizer cannot post-process this model: {reason}")
    attribute = _check(data, constraint, attribute)
    if tol is not None and constraint == "equalized_odds":
        raise AuditorError("fairlearn's ThresholdOptimizer supports a relaxed constraint (tol) only for "
                           "demographic_parity; use tol=None for equalized_odds")
    fit, ev = data.split(fit_split), data.split(split)
    opt = ThresholdOptimizer(estimator=TorchScores(bundle.model).fit(None), constraints=constraint,
                             objective=objective, prefit=True, predict_method="predict_proba",
                             grid_size=grid_size, tol=tol)
    start = time.perf_counter()
    with _quiet_fairlearn():
        opt.fit(fit.X.numpy().astype(np.float64), fit.y.numpy(),
                sensitive_features=fit.groups[attribute].astype(str).to_numpy())
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    groups = ev.groups[attribute].astype(str).to_numpy()
    with _quiet_fairlearn():
        pred = np.asarray(opt.predict(ev.X.numpy().astype(np.float64), sensitive_features=groups,
                                      random_state=seed))
    predict_seconds = time.perf_counter() - start
    return AlternativeResult(
        "threshold-optimizer", ALTERNATIVE_KINDS["threshold-optimizer"], constraint, attribute, split,
        group_metrics(ev.y.numpy(), pred.astype(int), groups), seconds, predict_seconds,
        {"tol": tol, "objective": objective, "fit_split": fit_split, "grid_size": grid_size, "seed": seed},
        needs_protected_at_prediction=True, randomized=True,
        note="the MLP is unchanged; per-group randomised thresholds need the protected attribute at prediction "
             "time, so this cannot be written into the model's weights", predictions=pred)


def retrain_exponentiated_gradient(data: AuditData, constraint: str = "demographic_parity", *,
                                   attribute: str | None = None, eps: float = 0.01, estimator=None,
                                   rows: int | None = None, max_iter: int = 50, split: str = "test",
                                   seed: int = 0) -> AlternativeResult:
    """Retrain with fairlearn's ExponentiatedGradient (reductions approach) on the model's inputs.

    The result is a new randomised ensemble of `estimator`s (default LogisticRegression), not the
    MLP. `eps` bounds the constraint violation on the training rows; `rows` subsamples them.
    """
    from fairlearn.reductions import DemographicParity, EqualizedOdds, ExponentiatedGradient

    attribute = _check(data, constraint, attribute)
    tr, ev = data.train, data.split(split)
    idx = np.arange(len(tr))
    if rows is not None and rows < len(tr):
        idx = np.sort(np.random.default_rng(seed).choice(len(tr), rows, replace=False))
    X, y = tr.X.numpy()[idx].astype(np.float64), tr.y.numpy()[idx]
    sens = tr.groups[attribute].astype(str).to_numpy()[idx]
    est = estimator if estimator is not None else LogisticRegression(solver="liblinear")
    moment = DemographicParity() if constraint == "demographic_parity" else EqualizedOdds()
    mitigator = ExponentiatedGradient(est, moment, eps=eps, max_iter=max_iter)
    start = time.perf_counter()
    with _quiet_fairlearn():
        mitigator.fit(X, y, sensitive_features=sens)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    groups = ev.groups[attribute].astype(str).to_numpy()
    with _quiet_fairlearn():
        pred = np.asarray(mitigator.predict(ev.X.numpy().astype(np.float64), random_state=seed))
    predict_seconds = time.perf_counter() - start
    return AlternativeResult(
        "exponentiated-gradient", ALTERNATIVE_KINDS["exponentiated-gradient"], constraint, attribute, split,
        group_metrics(ev.y.numpy(), pred.astype(int), groups), seconds, predict_seconds,
        {"eps": eps, "estimator": type(est).__name__, "rows": int(len(idx)), "max_iter": max_iter, "seed": seed,
         "predictors": int(len(mitigator.predictors_))},
        needs_protected_at_prediction=False, randomized=True,
        note=f"a new randomised ensemble of {type(est).__name__} retrained on the inputs, not an edit of the "
             "MLP; the protected attribute is used only in training", predictions=pred)


def reweighing_weights(groups: np.ndarray, y: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Kamiran & Calders' reweighing, P(g) P(y) / P(g, y) per row, raised to `power` (1: the original;
    larger: a stronger push towards equal positive rates)."""
    w = np.ones(len(y), dtype=np.float64)
    for g in np.unique(groups):
        for lab in (0, 1):
            cell = (groups == g) & (y == lab)
            if cell.any():
                w[cell] = ((groups == g).mean() * (y == lab).mean() / cell.mean()) ** power
    return w


def retrain_reweighing(bundle: ModelBundle, data: AuditData, constraint: str = "demographic_parity", *,
                       attribute: str | None = None, power: float = 1.0, epochs: int = 5, lr: float = 3e-3,
                       batch_size: int = 256, rows: int | None = None, split: str = "test",
                       seed: int = 0) -> AlternativeResult:
    """Retrain the model's architecture from scratch on reweighed training rows (`reweighing_weights`).

    Attribute-blind at prediction time (the attribute only weights the loss); `constraint` only names
    the figure the result is compared on (reweighing aims at demographic parity)."""
    attribute = _check(data, constraint, attribute)
    if not bundle.spec or not bundle.spec.arch:
        raise AuditorError("reweighing retrains the model's architecture; the model file has no architecture spec")
    tr, ev = data.train, data.split(split)
    idx = np.arange(len(tr))
    if rows is not None and rows < len(tr):
        idx = np.sort(np.random.default_rng(seed).choice(len(tr), rows, replace=False))
    y = tr.y.numpy()[idx]
    w = reweighing_weights(tr.groups[attribute].astype(str).to_numpy()[idx], y, power)
    start = time.perf_counter()
    model = _train_weighted(bundle.spec.arch, tr.X[idx], tr.y[idx], torch.as_tensor(w, dtype=torch.float32),
                            epochs, lr, batch_size, seed)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = predict_logits(model, ev.X).argmax(1).numpy()
    predict_seconds = time.perf_counter() - start
    groups = ev.groups[attribute].astype(str).to_numpy()
    return AlternativeResult(
        "reweighing-retrain", ALTERNATIVE_KINDS["reweighing-retrain"], constraint, attribute, split,
        group_metrics(ev.y.numpy(), pred, groups), seconds, predict_seconds,
        {"power": power, "epochs": epochs, "lr": lr, "rows": int(len(idx)), "seed": seed},
        needs_protected_at_prediction=False, randomized=False,
        note="the model's architecture retrained from scratch on reweighed rows; the protected attribute "
             "weights the training loss only", predictions=pred)


def alternative_reason(name: str, bundle: ModelBundle) -> str | None:
    """Why alternative `name` cannot run for this model (None: it can): reweighing retrains the model's own
    architecture, which must be one the auditor can build."""
    from ...models.architectures import ARCHITECTURES

    arch = (bundle.spec.arch or {}).get("name") if bundle.spec else None
    if name == "reweighing-retrain" and arch not in ARCHITECTURES:
        return (f"it retrains the model's architecture from scratch, and {arch or 'this model'!r} is not one the "
                "auditor can build (a registered mlp or cnn)")
    return None


ALTERNATIVES = {"threshold-optimizer": postprocess_threshold_optimizer,
                "exponentiated-gradient": retrain_exponentiated_gradient,
                "reweighing-retrain": retrain_reweighing}
