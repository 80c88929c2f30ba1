"""The editor contract: `Editor.edit(bundle, data, requirements, ...) -> EditResult`.

An editor never modifies the bundle it is given: it edits a copy. The `WeightDelta` in the
result holds the original values of every changed tensor, so reverting is bit-exact.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

from ..backend import describe_device, pick_device
from ..data.base import AuditData
from ..errors import AuditorError
from ..models.files import ModelBundle
from ..requirements import Fixes, Requirement, parse_requirements

Callback = Callable[[float, str], None]


def _noop(fraction: float, message: str) -> None:
    pass


@dataclass
class WeightDelta:
    """Original and edited values of every changed parameter (name -> tensor, on CPU)."""

    before: dict[str, torch.Tensor] = field(default_factory=dict)
    after: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def between(cls, original: nn.Module, edited: nn.Module) -> "WeightDelta":
        old = original.state_dict()
        delta = cls()
        for name, new in edited.state_dict().items():
            a, b = old[name].detach().cpu(), new.detach().cpu()
            if a.shape != b.shape or not torch.equal(a, b):
                delta.before[name] = a.clone()
                delta.after[name] = b.clone()
        return delta

    def _load(self, model: nn.Module, values: dict[str, torch.Tensor]) -> nn.Module:
        state = model.state_dict()
        with torch.no_grad():
            for name, value in values.items():
                state[name].copy_(value.to(state[name].device))
        return model

    def apply(self, model: nn.Module) -> nn.Module:
        return self._load(model, self.after)

    def revert(self, model: nn.Module) -> nn.Module:
        return self._load(model, self.before)

    @property
    def layers(self) -> list[str]:
        return sorted({name.rsplit(".", 1)[0] for name in self.before})

    def changes(self) -> list[dict]:
        """Per changed tensor: Frobenius norm of the change, its relative size and numerical rank."""
        rows = []
        for name in self.before:
            d = (self.after[name].double() - self.before[name].double())
            mat = d.reshape(d.shape[0], -1) if d.dim() > 1 else d.reshape(1, -1)
            rank = int(torch.linalg.matrix_rank(mat, rtol=1e-6).item()) if mat.numel() else 0
            base = float(self.before[name].double().norm())
            rows.append({"parameter": name, "layer": name.rsplit(".", 1)[0], "norm": float(d.norm()),
                         "relative_norm": float(d.norm()) / base if base else float("inf"), "rank": rank,
                         "changed_fraction": float((d != 0).double().mean())})
        return rows


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
        return {"editor": self.editor, "hyperparameters": self.hyperparameters, "layers": self.layers,
                "changes": self.changes, "seconds": self.seconds, "device": self.device, "log": self.log,
                "model_sha256": self.bundle.sha256, "extras": self.extras}


class Editor:
    """Base class. Subclasses set `name`, `description`, `Hyper` (a dataclass) and implement `_edit`,
    which modifies `model` (already a copy, on `device`) in place and may append to `self.log`."""

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
        self.log: list[dict] = []

    def supports(self, bundle: ModelBundle, data: AuditData) -> str | None:
        """None when this editor can edit this model on this data, else the reason it cannot."""
        return None

    def edit(self, bundle: ModelBundle, data: AuditData, requirements=(), *, device=None,
             callback: Callback | None = None, fixes: Fixes | None = None) -> EditResult:
        reason = self.supports(bundle, data)
        if reason:
            raise AuditorError(f"editor {self.name!r} cannot edit this model: {reason}")
        reqs: list[Requirement] = parse_requirements(requirements)
        dev = pick_device(device) if not isinstance(device, torch.device) else device
        callback = callback or _noop
        self.log = []
        edited = bundle.copy()
        edited.model.to(dev)
        start = time.perf_counter()
        extras = self._edit(edited.model, data, reqs, dev, callback, fixes=fixes, bundle=edited) or {}
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        edited.model.cpu().eval()
        delta = WeightDelta.between(bundle.model, edited.model)
        hp = dataclasses.asdict(self.hparams) if self.hparams is not None else {}
        edited.history.append({"editor": self.name, "hyperparameters": hp, "layers": delta.layers,
                               "requirements": [r.expr for r in reqs], "seconds": seconds})
        callback(1.0, "done")
        return EditResult(edited, delta, self.name, hp, seconds, describe_device(dev), list(self.log), extras)

    def _edit(self, model: nn.Module, data: AuditData, requirements: list[Requirement], device: torch.device,
              callback: Callback, *, fixes: Fixes | None = None, bundle: ModelBundle | None = None) -> dict | None:
        raise NotImplementedError
