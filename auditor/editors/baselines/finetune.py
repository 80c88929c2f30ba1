"""Baselines for Trojans and spurious cues on the same n clean samples as the rank-one editors:
fine-tuning the whole model and fine-tuning the last layer only (the static rank-one edit of the
last layer, `static-rank-one-last`, lives with the rank-one editors).

Fine-tuning trains on the n clean samples and their corrupted twins, both with the clean label
(the same information the rank-one editors get), with Adam on cross-entropy, full batch, in eval
mode (dropout off, batch-norm statistics frozen: a handful of samples would wreck them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import AuditorError
from ...models.architectures import editable_layers
from ..base import Editor
from ..rank_one import needs_pairs
from ..registry import register_editor
from .common import ZerosKept


@dataclass
class FineTuneHyper:
    samples: int = field(default=20, metadata={"help": "clean samples (each with its corrupted twin) from `split`"})
    seed: int = field(default=0, metadata={"help": "which samples"})
    steps: int = field(default=100, metadata={"help": "full-batch Adam steps"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (Adam)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    use_corrupted: bool = field(default=True, metadata={
        "help": "also train on the corrupted twins, labelled with the clean label"})
    split: str = field(default="train", metadata={"help": "where the clean samples come from", "choices": "split"})


@register_editor
class FineTune(Editor):
    """Fine-tune every parameter on n clean samples (and their corrupted twins with the clean label)."""

    name = "finetune"
    description = "Fine-tune the whole model on n clean samples (baseline)"
    kind = "baseline"
    targets = ("attack_success_rate", "cue_gap", "cue_accuracy", "worst_group_accuracy")
    Hyper = FineTuneHyper

    def supports(self, bundle, data) -> str | None:
        return needs_pairs(bundle, data, "fine-tuning against a Trojan or cue")

    def _parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.is_floating_point()]

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        hp = self.hparams
        if hp.samples < 1 or hp.steps < 0:
            raise AuditorError(f"samples must be >= 1 and steps >= 0; got samples={hp.samples}, steps={hp.steps}")
        clean, corrupted, labels = data.pairs(hp.samples, hp.seed, split=hp.split)
        X, y = (torch.cat([clean, corrupted]), torch.cat([labels, labels])) if hp.use_corrupted else (clean, labels)
        X, y = X.to(device), y.to(device)
        params = self._parameters(model)
        trainable = {id(p) for p in params}
        frozen = [p for p in model.parameters() if id(p) not in trainable and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        zeros = ZerosKept(params)
        loss_fn = nn.CrossEntropyLoss()
        model.eval()
        loss = torch.tensor(float("nan"))
        try:
            for step in range(hp.steps):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(X), y)
                loss.backward()
                opt.step()
                zeros()
                if (step + 1) % max(1, hp.steps // 10) == 0:
                    callback((step + 1) / max(hp.steps, 1), f"step {step + 1}/{hp.steps}")
        finally:
            for p in frozen:
                p.requires_grad_(True)
            for p in model.parameters():
                p.grad = None
        log.append({"step": hp.steps, "action": "fine-tune", "loss": float(loss.detach()),
                    "rows": int(len(X)), "parameters": int(sum(p.numel() for p in params))})
        return {"samples": int(len(clean)), "final_loss": float(loss.detach())}


@register_editor
class FineTuneLastLayer(FineTune):
    """Fine-tune only the last Linear/Conv2d layer on n clean samples (and their corrupted twins)."""

    name = "finetune-last-layer"
    description = "Fine-tune the last layer only on n clean samples (baseline)"

    def _parameters(self, model: nn.Module) -> list[nn.Parameter]:
        layers = editable_layers(model)
        if not layers:
            raise AuditorError("the model has no Linear or Conv2d layer to fine-tune")
        return list(layers[-1][1].parameters(recurse=False))
