"""`finetune-fairness`: fine-tune the whole MLP with cross-entropy plus a differentiable
demographic-parity or equalized-odds penalty. The protected attribute is used only to compute the
penalty during training; it is never an input, so the edited model does not need it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from ...data.base import AuditData
from ...errors import AuditorError
from ...models.architectures import predict_logits
from ...requirements import surrogates
from ...requirements.metrics import gap_over, group_sizes, group_table
from ..base import Editor
from ..registry import register_editor
from .common import (
    FAIRNESS_METRICS,
    ZerosKept,
    batches,
    fairness_reason,
    find_requirement,
    group_codes,
    sample_rows,
)


@dataclass
class FairFineTuneHyper:
    strength: float = field(default=0.5, metadata={"help": "weight of the fairness penalty against cross-entropy"})
    metric: str | None = field(default=None, metadata={
        "help": "demographic_parity / equalized_odds; None: every fairness requirement's gap at once (one that "
                "already holds too, so closing another cannot open it)",
        "choices": ["demographic_parity", "equalized_odds"]})
    target: float | None = field(default=None, metadata={
        "help": "None: the requirement's threshold; no target: run all epochs"})
    attribute: str | None = field(default=None, metadata={
        "help": "protected attribute; None: the requirement's, else the data's first",
        "choices": "protected"})
    epochs: int = field(default=8, metadata={"help": "at most this many passes over the training rows"})
    checks_per_epoch: int = field(default=8, metadata={"help": "how often the target is checked"})
    margin: float = field(default=0.8, metadata={
        "help": "stop once the gap on `check_split` is at most margin * target"})
    check_split: str = field(default="train", metadata={
        "help": "rows the target is checked on: the 10x larger training split varies less than the validation split (a"
                " gap between ~100 positive rows of a group is noisy)",
        "choices": "split"})
    adapt: float = field(default=1.5, metadata={
        "help": "multiply the strength by this after an epoch that did not reach the target (1: fixed)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (Adam)"})
    batch_size: int = field(default=512, metadata={"help": "rows per training batch"})
    rows: int | None = field(default=None, metadata={"help": "training rows used (None: all)"})
    min_group_rows: int = field(default=5, metadata={
        "help": "groups with fewer rows in a batch are left out of that batch's penalty"})
    min_group: int = field(default=30, metadata={
        "help": "groups with fewer rows (positives or negatives for equalized odds) are left out of the check "
                "that decides when the gap is met, as the audit's metric leaves them out (--min-group)"})
    seed: int = field(default=0, metadata={"help": "random seed (row order, sampling, initialisation)"})
    min_accuracy: float | None = field(default=None, metadata={
        "help": "accuracy floor on `check_split`: training stops at, and goes back to, the last check above it; "
                "None: the requirement's (e.g. 'accuracy >= 0.65'), else no floor"})


@register_editor
class FairnessFineTune(Editor):
    """Fine-tune every weight on cross-entropy + strength * (group gaps of the positive probability).

    The protected attribute only weights the training loss; it is never an input. With targets (every
    fairness requirement, e.g. `demographic_parity <= 0.05` and `equalized_odds[race] <= 0.1`, each gap in
    the penalty) training stops as soon as `check_split` meets `margin * target` on each, raising the
    strength (x `adapt`) after an epoch that did not; when they all hold from the start, nothing is changed
    and the log says so.

    >>> from auditor import load_model, load_data
    >>> from auditor.editors import get_editor
    >>> r = get_editor("finetune-fairness").edit(load_model("sample_models/adult_mlp.safetensors"),
    ...     load_data("adult"), ["demographic_parity <= 0.05"])  # doctest: +SKIP
    """

    name = "finetune-fairness"
    description = "Fine-tune with cross-entropy + a demographic-parity / equalized-odds penalty (baseline)"
    kind = "baseline"
    targets = FAIRNESS_METRICS
    Hyper = FairFineTuneHyper

    def supports(self, bundle, data) -> str | None:
        return fairness_reason(bundle, data)

    def _targets(self, data: AuditData, requirements) -> list[tuple[str, float | None, str]]:
        """(metric, target, attribute) of every gap to close: each "<=" fairness requirement (a requirement that
        already holds is kept too, so closing another gap cannot open it), or the one `metric` chosen by hand."""
        hp = self.hparams
        reqs = [r for r in requirements if r.metric in ((hp.metric,) if hp.metric else FAIRNESS_METRICS)
                and r.op == "<="]
        if hp.metric and hp.metric not in FAIRNESS_METRICS:
            raise AuditorError(f"finetune-fairness: metric {hp.metric!r} is not one of {FAIRNESS_METRICS}")
        if not reqs:  # no requirement on the metric: its gap, toward `target` when one is set
            return [(hp.metric or "demographic_parity", hp.target, hp.attribute or data.protected[0])]
        out = []
        for r in reqs:
            key = (r.metric, hp.target if hp.target is not None else r.threshold,
                   hp.attribute or r.attribute or data.protected[0])
            if key not in out:
                out.append(key)
        return out

    def _edit(self, model, data, requirements, device, callback, *, log, **_):
        hp = self.hparams
        targets = self._targets(data, requirements)
        if hp.strength < 0 or hp.epochs < 1 or not 0 < hp.margin <= 1:
            raise AuditorError("finetune-fairness: strength must be >= 0, epochs >= 1 and 0 < margin <= 1; "
                               f"got {hp.strength}, {hp.epochs}, {hp.margin}")
        gen = torch.Generator().manual_seed(hp.seed)
        tr = data.train
        rows = sample_rows(len(tr), hp.rows, gen)
        X, y = tr.X[rows].to(device), tr.y[rows].to(device)
        checked = data.split(hp.check_split)
        vX, vy = checked.X, checked.y.numpy()
        codes, seen = {}, {}  # per attribute: training rows' group codes and count; check rows' groups and sizes
        for _m, _t, attribute in targets:
            if attribute not in codes:
                g_all, names = group_codes(data, attribute, "train")
                codes[attribute] = (g_all[rows].to(device), len(names))
                vg = pd.Series(checked.groups[attribute]).astype(str).to_numpy()
                seen[attribute] = (vg, group_sizes(vy, vg))
        has_target = all(t is not None for _m, t, _a in targets)

        def check() -> tuple[list[float], float]:
            """Each target's gap as the audit's metric takes it (groups under `min_group` left out, all kept when
            fewer than two are large enough), and the accuracy, on the check rows."""
            pred = predict_logits(model, vX).argmax(1).numpy()
            gaps = []
            for metric, _t, attribute in targets:
                vg, sizes = seen[attribute]
                table = group_table(vy, pred, vg)
                rates = (("selection_rate",) if metric == "demographic_parity"
                         else ("true_positive_rate", "false_positive_rate"))
                gaps.append(max(gap_over(table, sizes, r, hp.min_group) for r in rates))
            return gaps, float((pred == vy).mean())

        def met(gaps) -> bool:
            return has_target and all(g <= hp.margin * t for g, (_m, t, _a) in zip(gaps, targets))

        def named(gaps) -> dict:
            return {f"{m}[{a}]": g for g, (m, _t, a) in zip(gaps, targets)}

        gaps0, acc0 = check()
        metric, target, attribute = targets[0]
        if not has_target:
            log.append({"step": "note", "message": f"no target for {metric} (no '{metric} <= ...' requirement and no "
                                                   f"target setting): all {hp.epochs} epochs run at a fixed strength"})
        floor_req = find_requirement(requirements, ("accuracy",), ">=")
        floor = hp.min_accuracy if hp.min_accuracy is not None else (floor_req.threshold if floor_req else None)
        log.append({"step": 0, "metric": metric, "attribute": attribute, "check_split": hp.check_split,
                    "check_gap": gaps0[0], "check_gaps": named(gaps0), "check_accuracy": acc0,
                    "strength": hp.strength, "accuracy_floor": floor})
        kept = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the last state above the floor
        floored = False

        def under_floor(acc: float) -> bool:
            """At a check: keep this state when it is above the floor; else go back to the last one that was."""
            nonlocal kept
            if floor is None or acc >= floor:
                kept = {k: v.detach().clone() for k, v in model.state_dict().items()} if floor is not None else kept
                return False
            model.load_state_dict(kept)
            return True
        if met(gaps0):
            said = ", ".join(f"{k} {100 * g:.2f} pp" for k, g in named(gaps0).items())
            log.append({"step": "note", "message": f"nothing to fine-tune: on the {hp.check_split} rows every gap is "
                                                   f"already within {hp.margin:g} x its target ({said})"})
            return {"metric": metric, "attribute": attribute, "target": target, "check_gap": gaps0[0],
                    "check_gaps": named(gaps0), "check_accuracy": acc0, "steps": 0, "strength": hp.strength,
                    "reached": True}
        opt = torch.optim.Adam(model.parameters(), lr=hp.lr)
        zeros = ZerosKept(model.parameters())  # pruned or dropped inputs stay out
        if zeros.count:
            log.append({"step": "note", "message": f"{zeros.count} weights that were exactly zero (pruned, or inputs "
                                                   "an earlier edit dropped) are kept at zero"})
        n_batches = math.ceil(len(X) / hp.batch_size)
        check_every = max(1, n_batches // max(1, hp.checks_per_epoch))
        strength, steps, reached = float(hp.strength), 0, False
        gaps, acc = gaps0, acc0
        model.train()
        for epoch in range(hp.epochs):
            for b, idx in enumerate(batches(len(X), hp.batch_size, gen)):
                logits = model(X[idx])
                p = surrogates.positive_probability(logits)
                penalty = 0.0
                for metric_i, _t, attribute_i in targets:  # every gap, so closing one cannot open another
                    g, n_groups = codes[attribute_i]
                    extra = {"min_count": max(1, hp.min_group_rows)}
                    if metric_i == "equalized_odds":
                        extra["reduce"] = "sum"  # gradients reach both the TPR and the FPR gap at every step
                    penalty = penalty + surrogates.fairness_gap(metric_i, p, y[idx], g[idx], n_groups, **extra)
                loss = nn.functional.cross_entropy(logits, y[idx]) + strength * penalty
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                zeros()
                steps += 1
                if has_target and ((b + 1) % check_every == 0 or b + 1 == n_batches):
                    gaps, acc = check()
                    model.train()
                    if under_floor(acc):
                        floored = True
                        break
                    if met(gaps):
                        reached = True
                        break
            if not has_target:
                gaps, acc = check()
                model.train()
                floored = under_floor(acc)
            log.append({"step": steps, "epoch": epoch + 1, "check_gap": gaps[0], "check_gaps": named(gaps),
                        "check_accuracy": acc, "strength": strength, "loss": float(loss.detach())})
            callback((epoch + 1) / hp.epochs, f"epoch {epoch + 1}/{hp.epochs}: {hp.check_split} {metric} {gaps[0]:.3f}")
            if floored:
                gaps, acc = check()
                log.append({"step": "note", "message": f"stopped at the accuracy floor {floor:g}: the check accuracy "
                                                       f"fell under it, so the last state above it is kept ("
                                                       f"{hp.check_split} {metric} {gaps[0]:.3f}, accuracy {acc:.3f})"})
                break
            if reached:
                break
            if has_target:
                strength *= max(1.0, float(hp.adapt))
        model.eval()
        for prm in model.parameters():
            prm.grad = None
        return {"metric": metric, "attribute": attribute, "target": target, "check_gap": gaps[0],
                "check_gaps": named(gaps), "check_accuracy": acc, "steps": steps, "strength": strength,
                "accuracy_floor": floor, "stopped_at_floor": floored, "reached": reached if has_target else None}
