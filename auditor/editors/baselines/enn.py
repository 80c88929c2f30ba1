"""Editable training baseline (ENN, Sinitsin et al. 2020): the editor is a few plain gradient steps
on the last Linear layers, and the base model is trained so that those steps fix a mistake
without disturbing the rest.

`editable_training` fine-tunes a model with
`CE(batch) + c_stab * KL(before || after the edit, on the batch) + c_edit * edit loss after the
edit (on the edited example and its equivalents)`, differentiating through `inner_steps` gradient
SGD steps (with a learned step size) via `torch.func.functional_call`. The result records its
editable layers and step size in the spec's provenance (`editable_training`); the `enn` editor
reads them. On a model without that record it is plain gradient descent on those layers.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ...backend import Callback
from ...data.base import AuditData
from ...errors import AuditorError
from ...fixes import equivalents
from ...models.files import ModelBundle
from ..base import Editor
from ..mend.hooks import margin_loss, resolve_layers
from ..registry import register_editor

PROVENANCE_KEY = "editable_training"


@dataclass
class EnnHyper:
    layers: list[str] | None = field(default=None, metadata={
        "help": "None: from the model's editable-training record, else the last two Linear",
        "choices": "layer"})
    lr: float | None = field(default=None, metadata={
        "help": "SGD step; None: the learned one in the model's record, else 0.01"})
    max_steps: int = field(default=10, metadata={"help": "at most this many gradient steps"})
    margin: float | None = field(default=None, metadata={
        "help": "stop once every label wins by this log-prob margin (None: the record's, else 0.5)"})


@register_editor
class Enn(Editor):
    """Gradient steps on the given mistakes, for models trained to be editable (editable training)."""

    name = "enn"
    description = "Editable training: a few gradient steps on the last layers of an editable-trained model"
    kind = "baseline"
    targets = ("edit_success",)
    Hyper = EnnHyper

    def _settings(self, model, bundle: ModelBundle | None) -> tuple[list[str], float, float, bool]:
        record = (bundle.spec.provenance.get(PROVENANCE_KEY) if bundle is not None else None) or {}
        layers = resolve_layers(model, self.hparams.layers or record.get("layers"))
        lr = self.hparams.lr if self.hparams.lr is not None else float(record.get("lr", 0.01))
        margin = self.hparams.margin if self.hparams.margin is not None else float(record.get("margin", 0.5))
        return layers, lr, margin, bool(record)

    def _edit(self, model, data, requirements, device, callback, *, log, fixes=None, bundle=None):
        if fixes is None or len(fixes.y) == 0:
            raise AuditorError("the enn editor fixes given mistakes: pass fixes (CLI: --fix ROW=LABEL)")
        layers, lr, margin, editable = self._settings(model, bundle)
        modules = dict(model.named_modules())
        params = [p for name in layers for p in modules[name].parameters()]
        X, y = fixes.X.to(device), fixes.y.to(device)
        model.eval()
        steps = 0
        for steps in range(self.hparams.max_steps + 1):
            with torch.enable_grad():
                loss = margin_loss(model(X), y, margin)
                if bool((loss <= 0).all()) or steps == self.hparams.max_steps:
                    break
                grads = torch.autograd.grad(loss.mean(), params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(lr * g)
        with torch.no_grad():
            fixed = int((model(X).argmax(1) == y).sum())
        log.append({"step": "enn", "layers": layers, "lr": lr, "margin": margin, "steps": steps,
                    "editable_trained": editable,
                    "examples": len(y), "fixed": fixed})
        return {"steps": steps, "fixed": fixed, "examples": len(y), "editable_trained": editable}


@dataclass
class EditableConfig:
    layers: list[str] | None = None  # default: the last two Linear layers
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4  # Adam on the base model
    inner_steps: int = 3  # differentiable SGD steps of the edit during training
    init_edit_lr: float = 0.01
    c_stab: float = 1.0
    c_edit: float = 0.3
    margin: float = 0.5
    max_batch: int = 1  # edits per training step: 1..max_batch rows with random wrong labels (1 as in ENN)
    seed: int = 0


def editable_training(bundle: ModelBundle, data: AuditData, config: EditableConfig | None = None,
                      callback: Callback | None = None) -> tuple[ModelBundle, dict]:
    """A copy of `bundle` fine-tuned to be editable, and a record of the training."""
    config = config or EditableConfig()
    callback = callback or (lambda f, m: None)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    out = bundle.copy()
    model = out.model.cpu().train()
    layers = resolve_layers(model, config.layers)
    edit_names = [f"{name}.{p}" for name in layers for p, _ in dict(model.named_modules())[name].named_parameters()]
    log_lr = torch.tensor(math.log(config.init_edit_lr), requires_grad=True)
    opt = torch.optim.Adam([*model.parameters(), log_lr], lr=config.lr)
    X, y = data.train.X, data.train.y
    k = len(data.class_names)
    n_batches = math.ceil(len(X) / config.batch_size)
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(X))
        totals = np.zeros(4)
        for i in range(n_batches):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            params = dict(model.named_parameters())
            logits = functional_call(model, params, (X[idx],))
            base = F.cross_entropy(logits, y[idx])
            rows = torch.as_tensor(rng.choice(len(X), size=int(rng.integers(1, config.max_batch + 1)), replace=False))
            with torch.no_grad():
                pred = model(X[rows]).argmax(1)
            target = (pred + torch.as_tensor(rng.integers(1, k, size=len(rows)))) % k
            edited = dict(params)
            lr = log_lr.exp()
            for _ in range(config.inner_steps):
                loss = margin_loss(functional_call(model, edited, (X[rows],)), target, config.margin).mean()
                grads = torch.autograd.grad(loss, [edited[n] for n in edit_names], create_graph=True)
                for n, g in zip(edit_names, grads):
                    edited[n] = edited[n] - lr * g
            X_eq, src = equivalents(data, X[rows], seed=int(rng.integers(1 << 30)))
            post_edit = functional_call(model, edited, (torch.cat([X[rows], X_eq]),))
            edit_loss = F.cross_entropy(post_edit, torch.cat([target, target[src]]))
            post = functional_call(model, edited, (X[idx],))
            stab = F.kl_div(post.log_softmax(-1), logits.detach().log_softmax(-1), log_target=True,
                            reduction="batchmean")
            total = base + config.c_stab * stab + config.c_edit * edit_loss
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_([*model.parameters(), log_lr], 10.0)
            opt.step()
            totals += [float(t.detach()) for t in (total, base, stab, edit_loss)]
        row = dict(zip(["loss", "base", "stability", "edit"], (totals / n_batches).round(5).tolist()))
        history.append({"epoch": epoch + 1, "edit_lr": float(log_lr.detach().exp()), **row})
        callback((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs}: {row}")
    model.eval()
    record = {"layers": layers, "lr": float(log_lr.detach().exp()), "margin": config.margin,
              "config": asdict(config), "base_model_sha256": bundle.sha256}
    name = bundle.spec.provenance.get("name", bundle.name)
    out.spec.provenance = {**out.spec.provenance, "name": f"{name}_editable", PROVENANCE_KEY: record,
                           "trained_by": "sample_models/build_mend.py"}
    out.history = []
    return out, {"record": record, "history": history, "seconds": time.perf_counter() - start}
