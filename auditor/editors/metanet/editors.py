"""The registered learned editors: one forward pass of a trained metanetwork, then the weights are written.

    >>> from auditor.editors import get_editor
    >>> result = get_editor("metanet-pruning").edit(bundle, data, ["sparsity >= 0.9"])

| name                     | requirement read                     | setting (overrides it) |
|--------------------------|--------------------------------------|------------------------|
| `metanet-fairness`       | `demographic_parity <= v`            | `target`, `strength`   |
| `metanet-equalized-odds` | `equalized_odds <= v`                | `target`, `strength`   |
| `metanet-minimisation`   | `features_used <= k`                 | `k`                    |
| `metanet-pruning`        | `sparsity >= s`                      | `sparsity`             |

Weights come from `sample_models/metanet_<task>_<dp|eo|minimisation|pruning>.safetensors`
(`$AUDITOR_METANET_DIR` or the `weights` setting override the place). Structural requirements
hold exactly: the pruned fraction is ceil(s * weights) / weights, dropped features have all-zero
first-layer columns. The fairness editors are conditioned on a strength; given a target level
they pick the smallest strength whose edited model meets it (minus `margin`) on the calibration
split, by bisection over strengths of one metanetwork pass (the protected attribute is read only
there, never by the edited model). A model outside the trained family is refused by `supports`.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ...data.base import AuditData
from ...errors import AuditorError
from ..base import Editor
from ..registry import register_editor
from .train import KINDS, TrainedMetaNet, load_editor, write_params

SAMPLE_MODELS = Path(__file__).resolve().parents[3] / "sample_models"
_LOADED: dict[str, TrainedMetaNet] = {}


def editor_path(task: str, requirement: str, weights: str | None = None) -> Path:
    """Where the trained metanetwork for (task, requirement) lives."""
    if weights:
        return Path(weights)
    base = Path(os.environ.get("AUDITOR_METANET_DIR") or SAMPLE_MODELS)
    return base / f"metanet_{task}_{KINDS[requirement].stem}.safetensors"


def trained_editor(task: str, requirement: str, weights: str | None = None) -> TrainedMetaNet:
    """The trained metanetwork (loaded once per process and path)."""
    path = editor_path(task, requirement, weights)
    key = str(path.resolve())
    stamp = path.stat().st_mtime if path.exists() else None
    if key not in _LOADED or getattr(_LOADED[key], "_stamp", None) != stamp:
        trained = load_editor(path)
        if trained.info["requirement"] != requirement:
            raise AuditorError(f"{path.name} was trained for {trained.info['requirement']!r}, not {requirement!r}")
        trained._stamp = stamp
        _LOADED[key] = trained
    return _LOADED[key]


class _MetaNetEditor(Editor):
    kind = "learned"
    requirement: ClassVar[str] = ""

    def _trained(self, data: AuditData) -> TrainedMetaNet:
        return trained_editor(data.name, self.requirement, getattr(self.hparams, "weights", None))

    def supports(self, bundle, data) -> str | None:
        path = editor_path(data.name, self.requirement, getattr(self.hparams, "weights", None))
        if not path.exists():
            return (f"no trained metanetwork for task {data.name!r} ({path.name} is missing; train one with "
                    f"`auditor editor train --task {data.name} --requirement {self.requirement}`)")
        try:
            return self._trained(data).supports(bundle, data)
        except AuditorError as exc:
            return str(exc)

    def _write(self, model: nn.Module, params: dict[str, torch.Tensor], k: int = 0) -> None:
        write_params(model, {n: t[k] for n, t in params.items()})


# ------------------------------------------------------------------------------------------------

@dataclass
class MetaNetFairnessHyper:
    target: float | None = None  # fairness level to reach; None: from the requirement, else default_target
    default_target: float = 0.03
    strength: float | None = None  # fixed strength in [0, 1]: no calibration, no protected attribute read
    calibration_split: str = "val"  # rows used to pick the strength (needs the protected attribute)
    margin: float = 0.005  # aim this far below the target on the calibration rows
    bisection_steps: int = 7
    weights: str | None = None  # editor file (default: sample_models/metanet_<task>_dp.safetensors)


class _FairnessMetaNet(_MetaNetEditor):
    targets = ()

    def _target(self, requirements) -> float:
        if self.hparams.target is not None:
            return float(self.hparams.target)
        for r in requirements:
            if r.metric == self.requirement and r.op == "<=":
                return float(r.threshold)
        return float(self.hparams.default_target)

    def _edit(self, model, data, requirements, device, callback, **_):
        from .train import hard_fairness
        trained = self._trained(data)
        attr = trained.info["protected"]
        for r in requirements:
            if r.metric == self.requirement and r.attribute not in (None, attr):
                raise AuditorError(f"editor {self.name!r} was trained for {self.requirement}[{attr}], "
                                   f"not [{r.attribute}]")
        if self.hparams.strength is not None:
            t = float(min(max(self.hparams.strength, 0.0), 1.0))
            params = trained.propose(model, data, [t], device)
            self._write(model, params)
            self.log.append({"step": "metanet", "strength": t})
            return {"strength": t}
        target = self._target(requirements)
        aim = max(target - self.hparams.margin, 0.0)
        split = self.hparams.calibration_split
        sp = data.split(split)
        if attr not in sp.groups:
            raise AuditorError(f"calibrating {self.name!r} needs the protected attribute {attr!r} in the "
                               f"{split} split; or set a fixed strength (--set strength=0.8)")
        state = trained.encode(model, data, device)  # the one message-passing pass
        probe = copy.deepcopy(model)

        def level(t: float) -> float:
            self._write(probe, trained.decode(state, [t]))
            return hard_fairness(probe, data, split, self.requirement, attr)

        with torch.no_grad():
            lo, hi = 0.0, 1.0
            v_lo = level(0.0)
            steps = [{"strength": 0.0, self.requirement: v_lo}]
            if v_lo <= aim:
                best, best_v = 0.0, v_lo
            else:
                v_hi = level(1.0)
                steps.append({"strength": 1.0, self.requirement: v_hi})
                best, best_v = 1.0, v_hi
                if v_hi <= aim:
                    for _ in range(self.hparams.bisection_steps):
                        mid = (lo + hi) / 2
                        v = level(mid)
                        steps.append({"strength": mid, self.requirement: v})
                        if v <= aim:
                            hi, best, best_v = mid, mid, v
                        else:
                            lo = mid
            self._write(model, trained.decode(state, [best]))
        self.log.append({"step": "calibrate", "split": split, "target": target, "aim": aim, "strength": best,
                         self.requirement: best_v, "tried": steps})
        if best_v > aim:
            self.log.append({"step": "warning", "message": f"strength 1 reaches {best_v:.4f} on {split}, "
                                                           f"above {aim:.4f}"})
        return {"strength": best, f"{self.requirement}_{split}": best_v, "target": target}


@register_editor
class MetaNetFairness(_FairnessMetaNet):
    """Demographic parity by one pass of a graph metanetwork trained on a population of MLPs."""

    name = "metanet-fairness"
    description = "Learned editor (graph metanetwork): demographic parity in one forward pass"
    targets = ("demographic_parity",)
    requirement = "demographic_parity"
    Hyper = MetaNetFairnessHyper


@dataclass
class MetaNetEqualizedOddsHyper(MetaNetFairnessHyper):
    pass


@register_editor
class MetaNetEqualizedOdds(_FairnessMetaNet):
    """Equalized odds by one pass of a graph metanetwork trained on a population of MLPs."""

    name = "metanet-equalized-odds"
    description = "Learned editor (graph metanetwork): equalized odds in one forward pass"
    targets = ("equalized_odds",)
    requirement = "equalized_odds"
    Hyper = MetaNetEqualizedOddsHyper


@dataclass
class MetaNetMinimisationHyper:
    k: int | None = None  # raw features to keep; None: from a `features_used <= k` requirement
    default_k: int = 5
    weights: str | None = None


@register_editor
class MetaNetMinimisation(_MetaNetEditor):
    """Data minimisation: keep exactly k raw features (others get all-zero first-layer columns)."""

    name = "metanet-minimisation"
    description = "Learned editor (graph metanetwork): keep at most k raw input features, one forward pass"
    targets = ("features_used",)
    requirement = "features_used"
    Hyper = MetaNetMinimisationHyper

    def _k(self, requirements, n_features: int) -> int:
        k = self.hparams.k
        if k is None:
            k = next((int(r.threshold) for r in requirements if r.metric == "features_used" and r.op == "<="),
                     self.hparams.default_k)
        if not 1 <= int(k) <= n_features:
            raise AuditorError(f"k must be between 1 and {n_features} raw features, not {k}")
        return int(k)

    def _edit(self, model, data, requirements, device, callback, **_):
        k = self._k(requirements, len(data.feature_groups))
        trained = self._trained(data)
        self._write(model, trained.propose(model, data, [float(k)], device))
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        used = (first.weight != 0).any(0).cpu()
        kept = [f for f, cols in data.feature_groups.items() if bool(used[list(cols)].any())]
        self.log.append({"step": "metanet", "k": k, "kept": kept})
        return {"k": k, "kept_features": kept}


@dataclass
class MetaNetPruningHyper:
    sparsity: float | None = None  # fraction of weights to zero; None: from a `sparsity >= s` requirement
    default_sparsity: float = 0.9
    weights: str | None = None


@register_editor
class MetaNetPruning(_MetaNetEditor):
    """Pruning to an exact sparsity with learned keep scores and compensating residuals."""

    name = "metanet-pruning"
    description = "Learned editor (graph metanetwork): prune to a target sparsity in one forward pass"
    targets = ("sparsity",)
    requirement = "sparsity"
    Hyper = MetaNetPruningHyper

    def _edit(self, model, data, requirements, device, callback, **_):
        s = self.hparams.sparsity
        if s is None:
            s = next((float(r.threshold) for r in requirements if r.metric == "sparsity" and r.op == ">="),
                     self.hparams.default_sparsity)
        if not 0.0 <= s < 1.0:
            raise AuditorError(f"sparsity must be in [0, 1), not {s}")
        self._write(model, self._trained(data).propose(model, data, [float(s)], device))
        self.log.append({"step": "metanet", "sparsity": s})
        return {"sparsity": s}
