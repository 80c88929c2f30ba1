"""The editor contract: `Editor.edit(bundle, data, requirements, ...) -> EditResult`.

An editor never modifies the bundle it is given: it edits a copy. The `WeightDelta` in the
result holds the original values of every changed tensor, so reverting is bit-exact. An edit
that changes nothing says so (`EditResult.changed` is False, and its log ends with a note).

Settings are a dataclass per editor (`Hyper`); each field carries its help text and, where the
value is one of a few, its choices in `field(metadata=...)`:

    samples: int = field(default=1, metadata={"help": "clean samples from `split`"})
    split: str = field(default="train", metadata={"help": "where the pairs come from", "choices": "split"})

`"choices"` is a list of allowed values or one of the tokens in `CHOICE_TOKENS`, resolved
against the model and data by the front-end: "layer" (the model's editable layers), "split"
(train/val/test), "protected" (the data's protected attributes), "attribution" (the localize
methods). `auditor.editors.testing.check_editor` checks an editor against this contract.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..backend import Callback, describe_device, pick_device
from ..data.base import AuditData
from ..errors import AuditorError
from ..layers import inherit_digests
from ..models.architectures import editable_layers
from ..models.files import ModelBundle
from ..models.precision import half_dtype, round_to
from ..requirements import Fixes, Requirement, parse_requirements

CHOICE_TOKENS = ("layer", "split", "protected", "attribution")  # choices resolved against the model and data


def _noop(fraction: float, message: str) -> None:
    pass


def owner_layer(tensor_name: str) -> str:
    """The layer a tensor belongs to: `fc1.weight` -> `fc1`; a parametrized weight's own tensors too
    (`fc1.parametrizations.weight.original0` -> `fc1`)."""
    if ".parametrizations." in tensor_name:
        return tensor_name.split(".parametrizations.")[0]
    return tensor_name.rsplit(".", 1)[0]


@dataclass
class WeightDelta:
    """Original and edited values of every changed parameter (name -> tensor, on CPU)."""

    before: dict[str, torch.Tensor] = field(default_factory=dict)
    after: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def between(cls, original: nn.Module, edited: nn.Module) -> WeightDelta:
        """A tensor the edit added (an adapter's, e.g. a codebook's) counts as grown from 0 rows."""
        old = original.state_dict()
        delta = cls()
        for name, new in edited.state_dict().items():
            b = new.detach().cpu()
            a = old[name].detach().cpu() if name in old else b.new_zeros((0, *b.shape[1:]))
            if a.shape != b.shape or not torch.equal(a, b):
                delta.before[name] = a.clone()
                delta.after[name] = b.clone()
        return delta

    def _load(self, model: nn.Module, values: dict[str, torch.Tensor]) -> nn.Module:
        state = model.state_dict()
        with torch.no_grad():
            for name, value in values.items():
                if name in state and state[name].shape == value.shape:
                    state[name].copy_(value.to(state[name].device))
                    continue
                owner, _, attr = name.rpartition(".")  # an adapter's tensor that grows or shrinks
                resize = getattr(model.get_submodule(owner) if owner else model, "resize_tensor", None)
                if resize is None:
                    raise AuditorError(f"cannot restore {name}: its shape differs and its layer cannot resize it")
                resize(attr, value)
        return model

    def apply(self, model: nn.Module) -> nn.Module:
        return self._load(model, self.after)

    def revert(self, model: nn.Module) -> nn.Module:
        return self._load(model, self.before)

    @property
    def layers(self) -> list[str]:
        return sorted({owner_layer(name) for name in self.before})

    def changes(self) -> list[dict]:
        """Per changed tensor: Frobenius norm of the change, its relative size and numerical rank."""
        rows = []
        for name in self.before:
            if name.endswith(COUNTERS):  # a BatchNorm's batch counter: no weight, restored on undo all the same
                continue
            a, b = self.before[name].double(), self.after[name].double()
            if a.shape != b.shape:  # an adapter's tensor that grew or shrank: the rows it gained or lost
                d = b.clone() if len(b) >= len(a) else a.clone()
                common = min(len(a), len(b))
                d[:common] = b[:common] - a[:common]
            else:
                d = b - a
            mat = d.reshape(d.shape[0], -1) if d.dim() > 1 else d.reshape(1, -1)
            rank = int(torch.linalg.matrix_rank(mat, rtol=1e-6).item()) if mat.numel() else 0
            base = float(self.before[name].double().norm())
            row = {"parameter": name, "layer": owner_layer(name), "norm": float(d.norm()),
                   "relative_norm": float(d.norm()) / base if base else None, "rank": rank,
                   "changed_fraction": float((d != 0).double().mean())}
            if a.shape != b.shape:
                row.update(entries_before=int(len(a)), entries_after=int(len(b)))
            if name.endswith(STATISTICS):
                row["statistics"] = True  # a running statistic (BatchNorm), not a parameter
            rows.append(row)
        return rows


STATISTICS = (".running_mean", ".running_var")  # BatchNorm's running statistics: buffers, not parameters
COUNTERS = (".num_batches_tracked",)


def parameters_changed(delta: WeightDelta) -> int:
    """How many parameter entries an edit changed, entry by entry (a tensor whose shape changed, as an
    adapter's, counted whole; BatchNorm's running statistics and counters, which are no parameters, left out)."""
    total = 0
    for k, v in delta.before.items():
        if k.endswith(STATISTICS + COUNTERS):
            continue
        w = delta.after[k]
        total += int((v != w).sum()) if v.shape == w.shape else max(v.numel(), w.numel())
    return total


@dataclass
class EditResult:
    """An edited copy of the model, how to undo it, and what it cost."""

    bundle: ModelBundle
    delta: WeightDelta
    editor: str
    hyperparameters: dict
    seconds: float
    device: str
    log: list[dict] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return self.delta.layers

    @property
    def changed(self) -> bool:
        """False when the edit left every weight as it was (the log says why)."""
        return bool(self.delta.before)

    @property
    def changes(self) -> list[dict]:
        return self.delta.changes()

    def reverted(self) -> ModelBundle:
        """A copy of the edited bundle with the edit undone (bit-exact)."""
        out = self.bundle.copy()
        self.delta.revert(out.model)
        if out.history:
            out.history.pop()
        return out

    def to_dict(self) -> dict:
        return {"editor": self.editor, "hyperparameters": self.hyperparameters, "changed": self.changed,
                "layers": self.layers, "changes": self.changes, "seconds": self.seconds, "device": self.device,
                "log": self.log, "model_sha256": self.bundle.sha256, "extras": self.extras}


def _round_to_file_precision(edited: ModelBundle, delta: WeightDelta, log: list[dict]) -> WeightDelta | None:
    """Round an edit of a model stored in float16 or bfloat16 to that precision (what its file, written in it,
    keeps), log how far rounding moved the change, and return the change that is left (None: nothing rounded)."""
    half = half_dtype(edited.spec)
    if half is None or not delta.before or not round_to(edited.model, half):
        return None
    state = {k: v.detach().cpu() for k, v in edited.model.state_dict().items()}
    moved = total = 0.0
    for k, before in delta.before.items():
        if delta.after[k].shape == before.shape:
            moved += float((state[k].double() - delta.after[k].double()).norm()) ** 2
            total += float((delta.after[k].double() - before.double()).norm()) ** 2
    error = (moved / total) ** 0.5 if total else 0.0
    name = edited.spec.weights_dtype
    log.append({"step": "note", "action": "rounded", "dtype": name, "rounding_error": error,
                "message": f"the edited weights were rounded to {name}, the model file's precision, which moved the "
                           f"change by {100 * error:.1f} % of its size"
                           + (" (the edit is mostly lost to rounding: a stronger edit keeps more of it, or audit a "
                              "float32 copy of the model)" if error > 0.5 else "")})
    changed = [k for k, v in delta.before.items() if not torch.equal(state[k], v)]
    return WeightDelta({k: delta.before[k] for k in changed}, {k: state[k].clone() for k in changed})


class Editor:
    """Base class. Subclasses set `name`, `description`, `kind`, `targets`, `Hyper` (a dataclass whose
    fields carry `metadata={"help": ..., "choices": ...}`) and implement `_edit`, which modifies
    `model` (already a copy, on `device`) in place and appends what it did to `log`. An instance
    keeps no state between edits (one instance may edit from several threads at once); `supports`
    says why a model or data set cannot be edited. Checked by `auditor.editors.testing.check_editor`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[str] = "baseline"  # "learned", "rank-one" or "baseline"
    targets: ClassVar[tuple[str, ...]] = ()  # metrics this editor tries to satisfy
    Hyper: ClassVar[type] = None

    def __init__(self, hparams=None, **overrides):
        if hparams is None:
            hparams = self.Hyper() if self.Hyper else None
        if overrides:
            if hparams is None:
                raise AuditorError(f"editor {self.name!r} takes no settings")
            valid = {f.name for f in dataclasses.fields(hparams)}
            bad = sorted(set(overrides) - valid)
            if bad:
                raise AuditorError(f"editor {self.name!r} has no setting {bad}; its settings: {sorted(valid)}")
            hparams = dataclasses.replace(hparams, **overrides)
        self.hparams = hparams

    @classmethod
    def hyper_from_dict(cls, values: dict):
        """The `Hyper` instance for `values` (as in `EditResult.hyperparameters`, e.g. read back from JSON)."""
        if cls.Hyper is None:
            if values:
                raise AuditorError(f"editor {cls.name!r} takes no settings")
            return None
        return cls.Hyper(**values)

    def supports(self, bundle: ModelBundle, data: AuditData) -> str | None:
        """None when this editor can edit this model on this data, else the reason it cannot.
        (The default: the model has a Linear or Conv2d layer to edit.)"""
        if bundle is not None and not editable_layers(bundle.model):
            return "the model has no Linear or Conv2d layer to edit"
        return None

    def edit(self, bundle: ModelBundle, data: AuditData, requirements=(), *, device=None,
             callback: Callback | None = None, fixes: Fixes | None = None) -> EditResult:
        reason = self.supports(bundle, data)
        if reason:
            raise AuditorError(f"editor {self.name!r} cannot edit this model: {reason}")
        reqs: list[Requirement] = parse_requirements(requirements)
        dev = pick_device(device) if not isinstance(device, torch.device) else device
        callback = callback or _noop
        log: list[dict] = []
        edited = bundle.copy()
        edited.model.to(dev)
        inherit_digests(bundle.model, edited.model)  # what is cached by its weights is found without rehashing
        start = time.perf_counter()
        extras = self._edit(edited.model, data, reqs, dev, callback, log=log, fixes=fixes, bundle=edited) or {}
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        edited.model.cpu().eval()
        delta = WeightDelta.between(bundle.model, edited.model)
        rounded = _round_to_file_precision(edited, delta, log)
        if rounded is not None:
            delta = rounded
        if not delta.before:
            message = "the edit left every weight as it was (nothing to change, or nothing it could)"
            if rounded is not None:
                message = (f"the edit's change was smaller than {edited.spec.weights_dtype} (the model file's "
                           "precision) can hold: rounding it undid every change")
            log.append({"step": "result", "action": "unchanged", "changed": False, "message": message})
        hp = dataclasses.asdict(self.hparams) if self.hparams is not None else {}
        edited.history.append({"editor": self.name, "hyperparameters": hp, "layers": delta.layers,
                               "requirements": [r.expr for r in reqs], "seconds": seconds,
                               "sha_before": bundle.sha256})
        callback(1.0, "done")
        return EditResult(edited, delta, self.name, hp, seconds, describe_device(dev), log, extras)

    def _edit(self, model: nn.Module, data: AuditData, requirements: list[Requirement], device: torch.device,
              callback: Callback, *, log: list[dict], fixes: Fixes | None = None,
              bundle: ModelBundle | None = None) -> dict | None:
        """Edit `model` (the copy, on `device`) in place; append steps to `log`; return extras (JSON-able)."""
        raise NotImplementedError
