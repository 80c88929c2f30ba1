"""The registered learned editors: one forward pass of a trained metanetwork, then the weights are written.

    >>> from auditor.editors import get_editor
    >>> result = get_editor("metanet-pruning").edit(bundle, data, ["sparsity >= 0.9"])

| name                     | requirement read                     | setting (overrides it) |
|--------------------------|--------------------------------------|------------------------|
| `metanet-fairness`       | `demographic_parity <= v`            | `target`, `strength`   |
| `metanet-equalized-odds` | `equalized_odds <= v`                | `target`, `strength`   |
| `metanet-minimisation`   | `features_used <= k`                 | `k`                    |
| `metanet-pruning`        | `sparsity >= s`                      | `sparsity`             |

Weights are `metanet_<task>_<dp|eo|minimisation|pruning>.safetensors`, found on the editor search path
(`auditor.editors.weights`: `$AUDITOR_EDITOR_DIR`, `~/.auditor/editors`, then the shipped ones); the
`weights` setting names a file instead. Structural requirements
hold exactly: the pruned fraction is ceil(s * weights) / weights, dropped features have all-zero
first-layer columns (the kept weights are refitted in closed form on reference rows of the
data's training split, then the predicted residuals are added). The fairness editors are
conditioned on a strength; given a target level they pick the edit that meets it (minus `margin`)
on calibration rows (6000 fixed rows of the training split by default): a grid of strengths from
one pass of the heads, evaluated as one batch; for each, multiples of an attribute-blind group
proxy subtracted from the class-1 logit (a per-group output shift learned on those rows but applied
without the attribute: a linear function of the output layer's inputs, or, through a relay of one
hidden neuron per layer, of the model's inputs, fitted to the groups' rate gaps) and shifts of the
output bias (proxy and shift only change the output layer, so they cost no forward pass); the most
accurate edit on those rows that meets the target wins (the protected attribute is read only there,
never by the edited model, which stays an MLP of the same architecture). A model outside the
trained family is refused by `supports`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ...data.base import AuditData
from ...errors import AuditorError
from ..base import Editor
from ..registry import register_editor
from ..weights import PACKAGED_DIR, find_editor_weights
from .runtime import (
    KINDS,
    TrainedMetaNet,
    calibrate,
    calibration_rows,
    load_metanet,
    write_params,
)

_LOADED: dict[str, TrainedMetaNet] = {}
ONE_LOGIT_PRUNING = ("metanet-pruning makes exact zeros in two output rows, which a one-logit model (read as [0, z]) "
                     "cannot keep when they are read back as one row; magnitude-pruning applies")


def editor_path(task: str, requirement: str, weights: str | None = None, data: AuditData | None = None) -> Path:
    """Where the trained metanetwork for (task, requirement) lives: `weights` if given, else the first
    `metanet_<task>_<kind>.safetensors` on the editor search path (`auditor.editors.weights`), else (given
    `data`) one trained on a population of `data`'s family, whatever its task (`zoo.find_family_editor`:
    same input features and rows); when there is none, the place in the package where it would be shipped
    (which does not exist)."""
    if weights:
        return Path(weights)
    name = f"metanet_{task}_{KINDS[requirement].stem}.safetensors"
    found = find_editor_weights(name)
    if found is None and data is not None:
        from ...zoo import find_family_editor

        found = find_family_editor(data, requirement)
    return found or PACKAGED_DIR / name


def trained_editor(task: str, requirement: str, weights: str | None = None,
                   data: AuditData | None = None) -> TrainedMetaNet:
    """The trained metanetwork (loaded once per process and path)."""
    path = editor_path(task, requirement, weights, data)
    key = str(path.resolve())
    stamp = path.stat().st_mtime if path.exists() else None
    if key not in _LOADED or getattr(_LOADED[key], "_stamp", None) != stamp:
        trained = load_metanet(path)
        if trained.info["requirement"] != requirement:
            raise AuditorError(f"{path.name} was trained for {trained.info['requirement']!r}, not {requirement!r}")
        trained._stamp = stamp
        _LOADED[key] = trained
    return _LOADED[key]


def train_hint(task: str, requirement: str, data: AuditData | None = None) -> str:
    """How to get a metanetwork for `task`, said only as far as it works: `auditor editor train` needs a
    population of models of the task (`auditor.zoo.TASKS`), or one built from the user's `data`."""
    from ...zoo import TASKS, train_hint_for

    if task not in TASKS and data is not None and data.kind == "tabular":
        return train_hint_for(data, requirement)

    if task in TASKS:
        return (f"train one with `auditor editor train --task {task} --requirement {requirement}` (it builds the "
                f"task's population of models first, as `auditor zoo build --task {task}` does, and writes the "
                "editor to ~/.auditor/editors, where it is found)")
    return (f"a metanetwork is trained on a population of models of one task, and populations exist only for "
            f"{', '.join(TASKS)} (`auditor zoo build --task ...`), not for {task!r}; use an editor that "
            f"applies to this model instead, or pass `--set weights=FILE` with one trained on this family")


class _MetaNetEditor(Editor):
    kind = "learned"
    requirement: ClassVar[str] = ""

    def _trained(self, data: AuditData) -> TrainedMetaNet:
        return trained_editor(data.name, self.requirement, getattr(self.hparams, "weights", None), data)

    def supports(self, bundle, data) -> str | None:
        path = editor_path(data.name, self.requirement, getattr(self.hparams, "weights", None), data)
        if data.kind != "tabular" and not getattr(self.hparams, "weights", None):
            return f"metanetworks edit tabular MLPs (trained per task on a population of models); {data.name!r} " \
                   f"is {data.kind} data"
        if not path.exists():
            if bundle is not None:  # populations are of plain MLPs: no advice to build one for another model
                from .graph import not_an_mlp

                reason = not_an_mlp(bundle.model)
                if reason:
                    return reason
            return f"no trained metanetwork for task {data.name!r} ({path.name} is missing); " + \
                train_hint(data.name, self.requirement, data)
        if bundle is not None and _one_logit_layer(bundle.model) is not None:
            if not self.exact_on_one_logit:
                return ONE_LOGIT_PRUNING
            import dataclasses

            bundle = dataclasses.replace(bundle, model=two_output_twin(bundle.model))
        try:
            return self._trained(data).supports(bundle, data)
        except AuditorError as exc:
            return str(exc)

    def _write(self, model: nn.Module, params: dict[str, torch.Tensor], k: int = 0) -> None:
        write_params(model, {n: t[k] for n, t in params.items()})

    exact_on_one_logit: ClassVar[bool] = True  # does the edit's requirement survive reading two rows back as one?

    def _edit(self, model, data, requirements, device, callback, *, log, **kw):
        twin = two_output_twin(model)
        if twin is None:
            return self._edit_mlp(model, data, requirements, device, callback, log=log, **kw)
        out = self._edit_mlp(twin, data, requirements, device, callback, log=log, **kw)
        one_logit_back(twin, model)
        log.append({"step": "note", "message": "the model's one logit z was edited as the two-output MLP [0, z] the "
                    "population is made of, and written back as one logit (class 1 row minus class 0 row: the same "
                    "predictions and probabilities)"})
        return out

    def _edit_mlp(self, model, data, requirements, device, callback, *, log, **_):
        raise NotImplementedError


def _one_logit_layer(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """(name, layer) of a single-logit MLP's output layer (a Linear of one output, the last Linear), else None."""
    from ...models.custom import reads_single_logit

    if not reads_single_logit(model):
        return None
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear and linear[-1][1].out_features == 1 else None


def two_output_twin(model: nn.Module) -> nn.Module | None:
    """For a single-logit MLP (one logit z, read as [0, z]): a copy whose output layer has the two rows
    [0; w] and biases [0; b], an ordinary two-output MLP with the same logits, as the metanetworks' populations
    are made of. None for any other model."""
    import copy

    from ...models.custom import single_logit_base

    found = _one_logit_layer(model)
    if found is None:
        return None
    name, layer = found
    twin = single_logit_base(copy.deepcopy(model))
    parent = twin.get_submodule(name.rpartition(".")[0]) if "." in name else twin
    two = nn.Linear(layer.in_features, 2, bias=layer.bias is not None).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        two.weight.copy_(torch.cat([torch.zeros_like(layer.weight), layer.weight]))
        if layer.bias is not None:
            two.bias.copy_(torch.cat([torch.zeros_like(layer.bias), layer.bias]))
    setattr(parent, name.rpartition(".")[2], two)
    return twin


@torch.no_grad()
def one_logit_back(twin: nn.Module, model: nn.Module) -> None:
    """Write `two_output_twin`'s (edited) weights back into the single-logit `model` in place: every layer as
    it is, the output layer as row 1 minus row 0 (softmax of [a, b] depends on b - a alone)."""
    name, _ = _one_logit_layer(model)
    state = dict(twin.named_parameters())
    for n, p in model.named_parameters():
        p.copy_(state[n][1:2] - state[n][0:1] if n in (f"{name}.weight", f"{name}.bias") else state[n])


# ------------------------------------------------------------------------------------------------

@dataclass
class MetaNetFairnessHyper:
    target: float | None = field(default=None, metadata={
        "help": "fairness level to reach; None: from the requirement, else default_target"})
    default_target: float = field(default=0.03, metadata={
        "help": "fairness level aimed at when neither `target` nor a requirement says"})
    strength: float | None = field(default=None, metadata={
        "help": "fixed strength in [0, 1]: no calibration, no protected attribute read"})
    calibration_split: str = field(default="train", metadata={
        "help": "rows used to pick the strength (needs the protected attribute)",
        "choices": "split"})
    calibration_rows: int | None = field(default=6000, metadata={
        "help": "a fixed random subset of that split (None: all of it)"})
    margin: float = field(default=0.01, metadata={
        "help": "aim this far below the target on the calibration rows (0.01: the 95 % interval of the result "
                "on ~10 k audit rows usually clears the threshold, so the verdict can be signed)"})
    grid: int = field(default=8, metadata={"help": "strengths tried in one batch: (i / 7) ** 2 for i = 0..7"})
    shift_steps: int = field(default=20, metadata={
        "help": "output-bias shifts tried per strength: 2 * shift_steps + 1 in [-max_shift, max_shift]"})
    max_shift: float = field(default=2.0, metadata={"help": "logit units"})
    proxy_steps: int = field(default=12, metadata={
        "help": "multiples of the attribute-blind group proxy tried: proxy_steps + 1 in [0, max_proxy] (0: none)"})
    max_proxy: float = field(default=3.0, metadata={
        "help": "largest multiple of the group proxy (a unit-sd linear function of the output layer's inputs) "
                "subtracted from the class-1 logit"})
    refit_output: bool = field(default=True, metadata={
        "help": "first refit the output layer to the labels on the calibration rows (logistic regression)"})
    min_cell_rows: int = field(default=300, metadata={
        "help": "relay and output refit only when every group (demographic parity) or (group, label) cell "
                "(equalized odds) of the calibration rows has at least this many rows"})
    relay: bool = field(default=True, metadata={
        "help": "also try a proxy from the inputs, carried to the output by one hidden neuron per layer (the "
                "least important one, its mean contribution kept)"})
    weights: str | None = field(default=None, metadata={
        "help": "editor file (default: metanet_<task>_dp.safetensors on the editor search path)"})


class _FairnessMetaNet(_MetaNetEditor):
    targets = ()

    def _target(self, requirements) -> float:
        if self.hparams.target is not None:
            return float(self.hparams.target)
        for r in requirements:
            if r.metric == self.requirement and r.op == "<=":
                return float(r.threshold)
        return float(self.hparams.default_target)

    def _edit_mlp(self, model, data, requirements, device, callback, *, log, **_):
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
            log.append({"step": "metanet", "strength": t})
            return {"strength": t}
        target = self._target(requirements)
        aim = max(target - self.hparams.margin, 0.0)
        split = self.hparams.calibration_split
        sp = data.split(split)
        if attr not in sp.groups:
            raise AuditorError(f"calibrating {self.name!r} needs the protected attribute {attr!r} in the "
                               f"{split} split; or set a fixed strength (--set strength=0.8)")
        state = trained.encode(model, data, device)  # the one message-passing pass
        sp_X, sp_y, onehot = calibration_rows(data, split, attr, self.hparams.calibration_rows)
        G = max(2, int(self.hparams.grid))
        ts = [(i / (G - 1)) ** 2 for i in range(G)]  # denser at weak strengths, where accuracy is decided
        hp = self.hparams
        shifts = torch.linspace(-hp.max_shift, hp.max_shift, 2 * hp.shift_steps + 1) if hp.shift_steps > 0 \
            else torch.zeros(1)
        scales = torch.linspace(0.0, hp.max_proxy, hp.proxy_steps + 1) if hp.proxy_steps > 0 else None
        # the relay and the output refit widen the choice; on few rows per cell it stops carrying over to new rows
        cells = onehot if self.requirement == "demographic_parity" else \
            torch.cat([onehot * (sp_y == lab).unsqueeze(1) for lab in (0, 1)], 1)
        counts = cells.sum(0)
        rich = bool((counts[counts > 0] >= hp.min_cell_rows).all())
        with torch.no_grad():
            grid = trained.decode(state, ts)  # every strength from one pass of the heads
            pick = calibrate(model, grid, sp_X, sp_y, onehot, self.requirement, aim, shifts, scales,
                             hp.relay and rich, hp.refit_output and rich)
            self._write(model, pick["params"])
        best, best_v = ts[pick["k"]], pick["level"]
        log.append({"step": "calibrate", "split": split, "target": target, "aim": aim, "strength": best,
                    "output_shift": pick["shift"], "proxy": pick["proxy"], "proxy_scale": pick["proxy_scale"],
                    self.requirement: best_v, "accuracy": pick["accuracy"],
                    "tried": [{**r, "strength": ts[r.pop("strength_index")]} for r in pick["table"]]})
        if not pick["feasible"]:
            log.append({"step": "warning", "message": f"no strength reaches {aim:.4f} on {split}; the "
                                                      f"fairest edit has {best_v:.4f}"})
        if best == 0:  # said, not silent: the learned network's own change was not part of the edit
            log.append({"step": "note", "message": "the learned network's change was not used (strength 0 was "
                        "the most accurate choice that meets the aim): the edit is the output layer's "
                        + ("group proxy and bias shift" if pick["proxy"] != "none" else "bias shift") + " alone"})
        return {"editor_file": Path(trained.path).name if getattr(trained, "path", None) else None,
                "learned_change_used": best > 0,
                "strength": best, "output_shift": pick["shift"], "proxy": pick["proxy"],
                "proxy_scale": pick["proxy_scale"],
                f"{self.requirement}_{split}": best_v,
                f"accuracy_{split}": pick["accuracy"], "target": target}


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
    # equalized odds is judged on (group, label) cells, the smallest of which (Adult: women with the positive
    # label) are a few hundred of 6000 rows: the choice carried over to new rows only with every training row
    # (measured on held-out validation members)
    calibration_rows: int | None = field(default=None, metadata={
        "help": "a fixed random subset of that split (None: all of it)"})


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
    k: int | None = field(default=None, metadata={
        "help": "raw features to keep; None: from a `features_used <= k` requirement"})
    default_k: int = field(default=5, metadata={
        "help": "raw features to keep when neither `k` nor a `features_used <= k` requirement says"})
    weights: str | None = field(default=None, metadata={
        "help": "editor file (default: the shipped metanet_<task>_<kind>.safetensors on the editor search path)"})


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
        if k is None:  # as the baselines read it: a requirement above the features there are already holds
            req = next((int(r.threshold) for r in requirements if r.metric == "features_used" and r.op == "<="), None)
            k = min(req, n_features) if req is not None else max(1, min(self.hparams.default_k, n_features - 1))
        if not 1 <= int(k) <= n_features:
            raise AuditorError(f"k must be between 1 and {n_features} raw features, not {k}")
        return int(k)

    def _edit_mlp(self, model, data, requirements, device, callback, *, log, **_):
        k = self._k(requirements, len(data.feature_groups))
        trained = self._trained(data)
        self._write(model, trained.propose(model, data, [float(k)], device))
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        used = (first.weight != 0).any(0).cpu()
        kept = [f for f, cols in data.feature_groups.items() if bool(used[list(cols)].any())]
        log.append({"step": "metanet", "k": k, "kept": kept})
        return {"k": k, "kept_features": kept}


@dataclass
class MetaNetPruningHyper:
    sparsity: float | None = field(default=None, metadata={
        "help": "fraction of weights to zero; None: from a `sparsity >= s` requirement"})
    default_sparsity: float = field(default=0.9, metadata={
        "help": "fraction of zero weights when neither `sparsity` nor a `sparsity >=` requirement says"})
    weights: str | None = field(default=None, metadata={
        "help": "editor file (default: the shipped metanet_<task>_<kind>.safetensors on the editor search path)"})


@register_editor
class MetaNetPruning(_MetaNetEditor):
    """Pruning to an exact sparsity with learned keep scores and compensating residuals."""

    name = "metanet-pruning"
    description = "Learned editor (graph metanetwork): prune to a target sparsity in one forward pass"
    targets = ("sparsity",)
    requirement = "sparsity"
    Hyper = MetaNetPruningHyper
    exact_on_one_logit = False

    def _edit_mlp(self, model, data, requirements, device, callback, *, log, **_):
        s = self.hparams.sparsity
        if s is None:
            s = next((float(r.threshold) for r in requirements if r.metric == "sparsity" and r.op == ">="),
                     self.hparams.default_sparsity)
        if not 0.0 <= s < 1.0:
            raise AuditorError(f"sparsity must be in [0, 1), not {s}")
        self._write(model, self._trained(data).propose(model, data, [float(s)], device))
        log.append({"step": "metanet", "sparsity": s})
        return {"sparsity": s}
