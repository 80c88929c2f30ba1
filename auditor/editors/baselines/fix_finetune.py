"""Baseline: fine-tune on the mistakes themselves until they are fixed (what users would do)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import AuditorError
from ..base import Editor
from ..mend.hooks import margin_loss, resolve_layers
from ..registry import register_editor
from .common import ZerosKept


@dataclass
class FinetuneFixHyper:
    lr: float = field(default=1e-3, metadata={"help": "Adam"})
    max_steps: int = field(default=100, metadata={"help": "at most this many Adam steps"})
    margin: float = field(default=0.5, metadata={
        "help": "stop once every requested label wins by this log-prob margin (as mend and enn)"})
    layers: list[str] | None = field(default=None, metadata={
        "help": "None: every parameter; else these Linear layers only",
        "choices": "layer"})


@register_editor
class FinetuneFix(Editor):
    """Adam steps on the cross-entropy of the given examples, stopping as soon as all are fixed."""

    name = "finetune-fix"
    description = "Fine-tune on the given mistakes (--fix ROW=LABEL) until they are fixed (baseline)"
    kind = "baseline"
    targets = ("edit_success",)
    Hyper = FinetuneFixHyper

    def _edit(self, model, data, requirements, device, callback, *, log, fixes=None, bundle=None):
        if fixes is None or len(fixes.y) == 0:
            raise AuditorError("finetune-fix fixes given mistakes: pass fixes (CLI: --fix ROW=LABEL)")
        hp = self.hparams
        if hp.layers:
            modules = dict(model.named_modules())
            params = [p for name in resolve_layers(model, hp.layers) for p in modules[name].parameters()]
        else:
            params = list(model.parameters())
        X, y = fixes.X.to(device), fixes.y.to(device)
        opt = torch.optim.Adam(params, lr=hp.lr)
        zeros = ZerosKept(params)
        model.eval()  # no dropout or batch-norm updates: only the weights change
        steps = 0
        for steps in range(hp.max_steps + 1):
            logits = model(X)
            if bool((margin_loss(logits.detach(), y, hp.margin) <= 0).all()) or steps == hp.max_steps:
                break
            opt.zero_grad()
            torch.nn.functional.cross_entropy(logits, y).backward()
            opt.step()
            zeros()
        with torch.no_grad():
            fixed = int((model(X).argmax(1) == y).sum())
        log.append({"step": "finetune", "steps": steps, "examples": len(y), "fixed": fixed})
        return {"steps": steps, "fixed": fixed, "examples": len(y)}
