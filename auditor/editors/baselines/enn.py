"""Editable training baseline (ENN, Sinitsin et al. 2020, code xtinkt/editable).

The editor is a few in-graph optimiser steps on some layers: plain SGD, or RMSProp as in the
paper's CIFAR-10 setup (`IngraphRMSProp`, lr 1e-3, learnable decay beta initialised at 0.5),
stopping as soon as every requested label wins by `margin` in log-probability (the contrastive
edit loss is zero) or after `max_steps` (10 in the paper). The base model is trained so that this
editor works: `editable_training` minimises

    CE(batch) + c_stab * CE(softmax before || after the edit, on the batch) + c_edit * edit loss at the end

where the edit (a random training row with a random wrong label) is run *inside* the graph, with the
same stopping rule as at edit time, and the loss is differentiated through every editor step
(`torch.func.functional_call`). The result records its editor (layers, optimiser, step, beta,
margin, max_steps) in the spec's provenance (`editable_training`); the `enn` editor reads it. On a
model without that record it is plain gradient descent on the last two Linear layers.

Why the drawdown stays above the paper's on small models: a gradient step on a Linear layer with
input u_e changes the output of every input u in proportion to u . u_e, and post-ReLU inputs are
non-negative, so they all overlap. Editable training lowers that overlap (the features become less
alike) but cannot remove it in a layer of 32 or 256 units; MEND's whitened key (C^-1 u_e) is what
makes its single edits local on the same layers.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ...backend import Callback, seeded_global_rng
from ...data.base import AuditData
from ...errors import AuditorError
from ...models.files import ModelBundle
from ..base import Editor
from ..mend.hooks import default_layers, margin_loss
from ..registry import register_editor

PROVENANCE_KEY = "editable_training"
OPTIMISERS = ("sgd", "rmsprop")
RMS_EPS = 1e-6  # as IngraphRMSProp's default epsilon


def editable_modules(model: nn.Module, layers: list[str] | None) -> list[str]:
    """Check that each named module exists and has parameters of its own (default: the last two Linear layers)."""
    if not layers:
        return default_layers(model, 2)
    modules = dict(model.named_modules())
    for name in layers:
        m = modules.get(name)
        if m is None or not list(m.parameters(recurse=False)):
            own = [k for k, v in modules.items() if k and list(v.parameters(recurse=False))]
            raise AuditorError(f"layer {name!r} is not a layer with parameters of this model; layers: {own}")
    return list(layers)


def parameter_names(model: nn.Module, layers: list[str]) -> list[str]:
    """Full names of the parameters of `layers` (what the editor changes)."""
    modules = dict(model.named_modules())
    return [f"{name}.{p}" for name in layers for p, _ in modules[name].named_parameters(recurse=False)]


@dataclass
class EditorSettings:
    """The in-graph editor: `optimiser` steps of size `lr` on `layers` until every label wins by `margin`."""
    layers: list[str]
    optimiser: str = "sgd"
    lr: float = 0.01
    beta: float = 0.5  # RMSProp decay of the squared-gradient average
    margin: float = 0.0
    max_steps: int = 10


def run_editor(model: nn.Module, params: dict[str, torch.Tensor], names: list[str], X: torch.Tensor,
               y: torch.Tensor, s: EditorSettings, lr: torch.Tensor | float, beta: torch.Tensor | float,
               differentiable: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """ENN's edit: optimiser steps on `names` of `params` until the contrastive loss of (X, y) is zero
    or `max_steps` steps are done. (edited params, final mean edit loss, steps). `differentiable`
    keeps the graph through every step (training)."""
    edited = dict(params)
    ewma: list[torch.Tensor] | None = None
    steps = 0
    for steps in range(s.max_steps + 1):
        with torch.enable_grad():
            loss = margin_loss(functional_call(model, edited, (X,)), y, s.margin)
            if bool((loss <= 0).all()) or steps == s.max_steps:
                return edited, loss.mean(), steps
            # summed over rows: each row of a batch gets the step it would get alone (a single edit, as trained,
            # is the paper's mean over its one row)
            grads = torch.autograd.grad(loss.sum(), [edited[n] for n in names], create_graph=differentiable)
        if s.optimiser == "rmsprop":
            sq = [g * g for g in grads]
            ewma = sq if ewma is None else [beta * e + (1 - beta) * q for e, q in zip(ewma, sq)]
            grads = [g / torch.sqrt(e + RMS_EPS) for g, e in zip(grads, ewma)]
        for n, g in zip(names, grads):
            edited[n] = edited[n] - lr * g
    return edited, loss.mean(), steps


def settings_from(record: dict, model: nn.Module) -> EditorSettings:
    """The editor an editable-trained model was trained for (its provenance record); plain SGD otherwise."""
    if not record:
        return EditorSettings(layers=default_layers(model, 2), optimiser="sgd", lr=0.01, margin=0.5)
    return EditorSettings(layers=list(record["layers"]), optimiser=record.get("optimiser", "sgd"),
                          lr=float(record["lr"]), beta=float(record.get("beta", 0.5)),
                          margin=float(record.get("margin", 0.5)), max_steps=int(record.get("max_steps", 10)))


@torch.no_grad()
def feature_overlap(model: nn.Module, layers: list[str], X: torch.Tensor) -> dict[str, float]:
    """{layer: mean cosine similarity between the inputs of that layer for different rows of X}: how much a
    gradient step that fixes one row moves every other row (1: all alike, 0: orthogonal)."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0].detach()))
               for n in layers]
    try:
        model(X)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in layers:
        u = seen[n].reshape(len(X), -1)
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        S = u @ u.T
        out[n] = float((S.sum() - S.diagonal().sum()) / max(len(X) * (len(X) - 1), 1))
    return out


@dataclass
class EnnHyper:
    layers: list[str] | None = field(default=None, metadata={
        "help": "None: from the model's editable-training record, else the last two Linear",
        "choices": "layer"})
    lr: float | None = field(default=None, metadata={
        "help": "editor step; None: the one in the model's record, else 0.01 (SGD)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "at most this many editor steps (None: the record's, else 10 as in the paper)"})
    margin: float | None = field(default=None, metadata={
        "help": "stop once every label wins by this log-prob margin (None: the record's, else 0.5)"})


@register_editor
class Enn(Editor):
    """Optimiser steps on the given mistakes, for models trained to be editable (editable training)."""

    name = "enn"
    description = "Editable training: a few optimiser steps on some layers of an editable-trained model"
    kind = "baseline"
    targets = ("edit_success",)
    Hyper = EnnHyper

    def _settings(self, model, bundle: ModelBundle | None) -> tuple[EditorSettings, bool]:
        record = (bundle.spec.provenance.get(PROVENANCE_KEY) if bundle is not None else None) or {}
        s = settings_from(record, model)
        h = self.hparams
        s.layers = editable_modules(model, h.layers or s.layers)
        s.lr = h.lr if h.lr is not None else s.lr
        s.margin = h.margin if h.margin is not None else s.margin
        s.max_steps = h.max_steps if h.max_steps is not None else s.max_steps
        return s, bool(record)

    def _edit(self, model, data, requirements, device, callback, *, log, fixes=None, bundle=None):
        if fixes is None or len(fixes.y) == 0:
            raise AuditorError("the enn editor fixes given mistakes: pass fixes (CLI: --fix ROW=LABEL)")
        s, editable = self._settings(model, bundle)
        model.eval()
        names = parameter_names(model, s.layers)
        X, y = fixes.X.to(device), fixes.y.to(device)
        params = {n: p.detach() for n, p in model.named_parameters()}
        for n in names:
            params[n] = params[n].clone().requires_grad_()
        edited, _, steps = run_editor(model, params, names, X, y, s, s.lr, s.beta, differentiable=False)
        with torch.no_grad():
            own = dict(model.named_parameters())
            for n in names:
                own[n].copy_(edited[n].detach())
            fixed = int((model(X).argmax(1) == y).sum())
        log.append({"step": "enn", "layers": s.layers, "optimiser": s.optimiser, "lr": s.lr, "margin": s.margin,
                    "steps": steps, "editable_trained": editable, "examples": len(y), "fixed": fixed})
        return {"steps": steps, "fixed": fixed, "examples": len(y), "editable_trained": editable}


@dataclass
class EditableConfig:
    layers: list[str] | None = None  # editable layers (default: the last two Linear layers)
    optimiser: str = "rmsprop"  # the in-graph editor: "rmsprop" (paper, CIFAR-10) or "sgd"
    edit_lr: float = 1e-3  # its step (paper: RMSProp lr 1e-3)
    learn_edit_lr: bool = False  # paper: fixed step, learned beta
    beta: float = 0.5  # RMSProp decay, learned (paper: nn.Parameter init 0.5)
    max_steps: int = 10  # editor steps at most (paper: 10), also during training
    margin: float = 0.0  # the contrastive edit loss's margin (paper: 0: the label wins)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3  # Adam on the base model (paper: Adam defaults)
    c_stab: float = 0.01  # paper: 0.01
    c_edit: float = 0.01  # paper: 0.01
    max_norm: float = 10.0  # gradient clipping (paper: 10)
    from_scratch: bool = False  # re-initialise the weights first (the paper trains from scratch)
    seed: int = 0


def editable_training(bundle: ModelBundle, data: AuditData, config: EditableConfig | None = None,
                      callback: Callback | None = None) -> tuple[ModelBundle, dict]:
    """A copy of `bundle` fine-tuned to be editable with the paper's objective, and a record of the training."""
    config = config or EditableConfig()
    if config.optimiser not in OPTIMISERS:
        raise AuditorError(f"optimiser must be one of {OPTIMISERS}, got {config.optimiser!r}")
    callback = callback or (lambda f, m: None)
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    out = bundle.copy()
    model = out.model.cpu()
    gen = torch.Generator()
    with seeded_global_rng(config.seed):  # the draws below continue from here, whatever other threads do
        if config.from_scratch:
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        gen.set_state(torch.get_rng_state())
    layers = editable_modules(model, config.layers)
    names = parameter_names(model, layers)
    s = EditorSettings(layers=layers, optimiser=config.optimiser, lr=config.edit_lr, beta=config.beta,
                       margin=config.margin, max_steps=config.max_steps)
    log_lr = torch.tensor(math.log(config.edit_lr), requires_grad=config.learn_edit_lr)
    beta = torch.tensor(config.beta, requires_grad=config.optimiser == "rmsprop")
    meta = [t for t in (log_lr, beta) if t.requires_grad]
    opt = torch.optim.Adam([*model.parameters(), *meta], lr=config.lr)
    X, y = data.train.X, data.train.y
    k = len(data.class_names)
    n_batches = math.ceil(len(X) / config.batch_size)
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(X), generator=gen)
        totals = np.zeros(5)
        for i in range(n_batches):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            model.train()
            base = F.cross_entropy(model(X[idx]), y[idx])
            model.eval()  # the edit and the stability term as at edit time (paper: training_mode(False))
            params = dict(model.named_parameters())
            logits = functional_call(model, params, (X[idx],))
            row = torch.as_tensor(rng.integers(len(X), size=1))
            target = (y[row] + torch.as_tensor(rng.integers(1, k, size=1))) % k  # a random wrong label
            edited, edit_loss, steps = run_editor(model, params, names, X[row], target, s, log_lr.exp(),
                                                  beta.clamp(0.0, 1.0), differentiable=True)
            post = functional_call(model, edited, (X[idx],))
            stab = -(logits.detach().softmax(-1) * post.log_softmax(-1)).sum(-1).mean()
            total = base + config.c_stab * stab + config.c_edit * edit_loss
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_([*model.parameters(), *meta], config.max_norm)
            opt.step()
            totals += [float(total.detach()), float(base.detach()), float(stab.detach()),
                       float(edit_loss.detach()), steps]
        row = dict(zip(["loss", "base", "stability", "edit", "editor_steps"], (totals / n_batches).round(5).tolist()))
        history.append({"epoch": epoch + 1, "edit_lr": float(log_lr.detach().exp()),
                        "beta": float(beta.detach().clamp(0, 1)), **row})
        callback((epoch + 1) / config.epochs, f"epoch {epoch + 1}/{config.epochs}: {row}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    record = {"layers": layers, "optimiser": config.optimiser, "lr": float(log_lr.detach().exp()),
              "beta": float(beta.detach().clamp(0, 1)), "margin": config.margin, "max_steps": config.max_steps,
              "config": asdict(config), "base_model_sha256": bundle.sha256}
    name = bundle.spec.provenance.get("name", bundle.name)
    out.spec.provenance = {**out.spec.provenance, "name": f"{name}_editable", PROVENANCE_KEY: record,
                           "trained_by": "sample_models/build_mend.py"}
    out.history = []
    return out, {"record": record, "history": history, "seconds": time.perf_counter() - start}
