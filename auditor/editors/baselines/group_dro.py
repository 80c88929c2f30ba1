"""`finetune-worst-group`: fine-tune the whole model with group DRO (Sagawa et al., 2020, "Distributionally
Robust Neural Networks"): the loss is a weighted sum of the protected groups' mean losses, the weights
moved towards the groups that do worst (exponentiated gradient). For `worst_group_accuracy >= t`, on
two classes or more; the protected attribute only weights the loss, it is never an input."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ...data.base import AuditData
from ...errors import AuditorError
from ...models.architectures import predict_logits
from ...requirements.metrics import eligible, group_sizes
from ..base import Editor
from ..registry import register_editor
from .common import ZerosKept, batches, find_requirement, group_codes, sample_rows, tabular_model_reason


@dataclass
class GroupDROHyper:
    eta: float = field(default=0.05, metadata={
        "help": "step of the groups' weights: each batch multiplies a group's weight by exp(eta * its mean loss)"})
    attribute: str | None = field(default=None, metadata={
        "help": "protected attribute; None: the requirement's, else every protected attribute (the worst group "
                "over all of them, as worst_group_accuracy takes it)", "choices": "protected"})
    target: float | None = field(default=None, metadata={
        "help": "None: the requirement's threshold; no target: run all epochs"})
    confidence: float = field(default=0.95, metadata={
        "help": "stop once every group's accuracy on `check_split` is at least the target at the low end of "
                "its Wilson interval of this confidence (so that it holds on rows the fine-tune never saw; "
                "0: the point estimate)"})
    epochs: int = field(default=8, metadata={"help": "at most this many passes over the training rows"})
    checks_per_epoch: int = field(default=8, metadata={"help": "how often the target is checked"})
    check_split: str = field(default="val", metadata={
        "help": "rows the target is checked on and the kept state chosen by (held out: the training rows, which "
                "the loss fits, would show gains that do not carry over)", "choices": "split"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (Adam)"})
    batch_size: int = field(default=512, metadata={"help": "rows per training batch"})
    rows: int | None = field(default=None, metadata={"help": "training rows used (None: all)"})
    min_group: int = field(default=30, metadata={
        "help": "groups with fewer rows are left out of the check, as the audit's metric leaves them out "
                "(--min-group); all are kept when fewer than two are large enough"})
    min_accuracy: float | None = field(default=None, metadata={
        "help": "accuracy floor on `check_split`: training stops at, and goes back to, the last check above it; "
                "None: the requirement's (e.g. 'accuracy >= 0.8'), else no floor"})
    seed: int = field(default=0, metadata={"help": "random seed (row order, sampling)"})


@register_editor
class GroupDROFineTune(Editor):
    """Fine-tune every weight on sum_g q_g * loss_g over the protected groups g (group DRO): after each
    batch q_g grows by exp(eta * loss_g) and is renormalised, so the worst-served groups weigh most.
    With a target (`worst_group_accuracy >= 0.83`) training stops once every group of `check_split` meets
    it at the low end of its Wilson interval; else the state with the best worst group is kept. An
    accuracy floor stops training when the check accuracy falls under it.

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> r = get_editor("finetune-worst-group").edit(load_model("sample_models/adult_mlp.safetensors"),
    ...     load_data("adult"), ["worst_group_accuracy >= 0.83"])  # doctest: +SKIP
    """

    name = "finetune-worst-group"
    description = "Fine-tune with group DRO: the worst-served protected group's loss weighs most (baseline)"
    kind = "baseline"
    targets = ("worst_group_accuracy",)
    Hyper = GroupDROHyper

    def supports(self, bundle, data) -> str | None:
        reason = tabular_model_reason(bundle, data)
        if reason:
            return reason
        if not data.protected:
            return f"data set {data.name!r} names no protected attribute (its groups are what the loss weighs)"
        return None

    def _edit(self, model, data: AuditData, requirements, device, callback, *, log, **_):
        hp = self.hparams
        if hp.eta < 0 or hp.epochs < 1 or not 0 <= hp.confidence < 1:
            raise AuditorError(f"finetune-worst-group: eta must be >= 0, epochs >= 1 and 0 <= confidence < 1; got "
                               f"{hp.eta}, {hp.epochs}, {hp.confidence}")
        req = find_requirement(requirements, ("worst_group_accuracy",), ">=")
        attrs = ([hp.attribute] if hp.attribute else [req.attribute] if req is not None and req.attribute
                 else list(data.protected))
        target = hp.target if hp.target is not None else (req.threshold if req is not None else None)
        floor_req = find_requirement(requirements, ("accuracy",), ">=")
        floor = hp.min_accuracy if hp.min_accuracy is not None else (floor_req.threshold if floor_req else None)
        gen = torch.Generator().manual_seed(hp.seed)
        tr = data.train
        rows = sample_rows(len(tr), hp.rows, gen)
        X, y = tr.X[rows].to(device), tr.y[rows].to(device)
        # one column of group codes per attribute, offset so every (attribute, group) has its own weight
        codes, names, offset = [], [], 0
        for a in attrs:
            c, n = group_codes(data, a, "train")
            codes.append(c[rows] + offset)
            names += [f"{a}={g}" for g in n]
            offset += len(n)
        G = torch.stack(codes, 1).to(device)  # (rows, attributes)
        q = torch.full((offset,), 1.0 / offset, device=device, dtype=torch.float64)
        checked = data.split(hp.check_split)
        vX, vy = checked.X, checked.y.numpy()
        vgroups = {a: np.asarray(checked.groups[a]).astype(str) for a in attrs}

        def check() -> tuple[float, str, float, float]:
            """The worst group's accuracy as the audit takes it (small groups left out), which group, the overall
            accuracy, and the lowest low end of a group's Wilson interval."""
            from scipy.stats import binomtest

            pred = predict_logits(model, vX).argmax(1).numpy()
            worst, which, low = 1.0, "", 1.0
            for a, g in vgroups.items():
                for v in eligible(group_sizes(vy, g), "accuracy", hp.min_group):
                    right, n = int((pred[g == v] == vy[g == v]).sum()), int((g == v).sum())
                    if right / n < worst:
                        worst, which = right / n, f"{a}={v}"
                    low = min(low, right / n if hp.confidence <= 0 else float(
                        binomtest(right, n).proportion_ci(hp.confidence, method="wilson").low))
            return worst, which, float((pred == vy).mean()), low

        worst0, which0, acc0, low0 = check()
        log.append({"step": 0, "attributes": attrs, "groups": len(names), "check_split": hp.check_split,
                    "check_worst_group_accuracy": worst0, "worst_group": which0, "check_accuracy": acc0,
                    "target": target, "accuracy_floor": floor})
        if target is None:
            log.append({"step": "note", "message": "no target for worst_group_accuracy (no 'worst_group_accuracy "
                                                   f">= ...' requirement and no target setting): all {hp.epochs} "
                                                   "epochs run"})
        elif low0 >= target:
            log.append({"step": "note", "message": f"nothing to fine-tune: on the {hp.check_split} rows the worst "
                                                   f"group ({which0}) already has {100 * worst0:.2f} % accuracy, "
                                                   f"at least {100 * target:.2f} %"
                                                   + ("" if hp.confidence <= 0 else
                                                      f" at the low end of its {100 * hp.confidence:g} % interval")})
            return {"attributes": attrs, "target": target, "check_worst_group_accuracy": worst0, "steps": 0,
                    "reached": True}
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
        zeros = ZerosKept(model.parameters())
        n_batches = math.ceil(len(X) / hp.batch_size)
        check_every = max(1, n_batches // max(1, hp.checks_per_epoch))
        steps, reached, floored = 0, False, False
        worst, which, acc = worst0, which0, acc0
        best = (worst0, kept)  # the state with the best worst group that keeps the floor
        model.train()
        for epoch in range(hp.epochs):
            for b, idx in enumerate(batches(len(X), hp.batch_size, gen)):
                losses = nn.functional.cross_entropy(model(X[idx]), y[idx], reduction="none")
                g = G[idx]
                total = torch.zeros(offset, device=device, dtype=losses.dtype).index_add_(
                    0, g.flatten(), losses.repeat_interleave(g.shape[1]))
                count = torch.zeros(offset, device=device).index_add_(0, g.flatten(), torch.ones(g.numel(),
                                                                                                 device=device))
                present = count > 0
                mean = torch.where(present, total / count.clamp(min=1), torch.zeros_like(total))
                with torch.no_grad():
                    q = q * torch.exp(hp.eta * mean.detach().double() * present)
                    q = q / q.sum()
                loss = (q.to(mean.dtype) * mean).sum() / max(float(q[present].sum()), 1e-12)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                zeros()
                steps += 1
                if (b + 1) % check_every == 0 or b + 1 == n_batches:
                    worst, which, acc, low = check()
                    model.train()
                    if floor is not None and acc < floor:
                        floored = True
                        break
                    if worst > best[0]:
                        best = (worst, {k: v.detach().clone() for k, v in model.state_dict().items()})
                    if target is not None and low >= target:
                        reached = True
                        break
            top = sorted(zip(q.tolist(), names), reverse=True)[:3]
            log.append({"step": steps, "epoch": epoch + 1, "check_worst_group_accuracy": worst, "worst_group": which,
                        "check_accuracy": acc, "loss": float(loss.detach()),
                        "heaviest_groups": [(n, round(w, 3)) for w, n in top]})
            callback((epoch + 1) / hp.epochs, f"epoch {epoch + 1}/{hp.epochs}: {hp.check_split} worst group "
                                              f"{which} {worst:.3f}")
            if floored or reached:
                break
        if not reached:  # the best state seen (above the floor), not wherever training stopped
            model.load_state_dict(best[1])
            worst, which, acc, _ = check()
            if best[1] is kept:
                log.append({"step": "note", "message": f"no state of the fine-tune raised the worst group on "
                                                       f"{hp.check_split} ({which0} {worst0:.3f}): the model is left "
                                                       "as it was (a group whose labels the inputs do not explain "
                                                       "cannot be lifted by reweighting)"})
            if floored:
                log.append({"step": "note", "message": f"stopped at the accuracy floor {floor:g}; the state with the "
                                                       f"best worst group above it is kept ({hp.check_split}: "
                                                       f"{which} {worst:.3f}, accuracy {acc:.3f})"})
        model.eval()
        for prm in model.parameters():
            prm.grad = None
        return {"attributes": attrs, "target": target, "check_worst_group_accuracy": worst, "worst_group": which,
                "check_accuracy": acc, "steps": steps, "reached": reached if target is not None else None,
                "stopped_at_floor": floored}

