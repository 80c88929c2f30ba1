"""Training a metanetwork editor on a population, and the editor file it writes.

Loss per (model, requirement strength): Jensen-Shannon divergence between the edited and the
original model's outputs on a batch of training rows (utility), plus the requirement's
differentiable surrogate from `auditor.requirements.surrogates` (the demographic-parity or
equalized-odds gap weighted by the strength; for minimisation and pruning, where hard masks meet
the budget by construction, a small budget term on the soft masks keeps them decisive).

Runs in one process or under `torchrun` with DistributedDataParallel (gloo on CPU, NCCL on GPU);
each rank draws its own models and rows, gradients are averaged, rank 0 writes the file:

    torchrun --nproc_per_node 2 -m auditor.cli editor train --task adult --requirement demographic_parity

The file it writes is read by `runtime.load_metanet`; the editors never import this module.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ... import zoo
from ...backend import Callback, seeded_global_rng
from ...data.base import AuditData
from ...errors import AuditorError
from ...requirements.surrogates import (
    fairness_gap,
    feature_budget_gap,
    group_codes,
    js_divergence,
    positive_probability,
    sparsity_gap,
)
from .graph import Member, batch, prepare
from .net import MetaNet, NetConfig, assemble
from .runtime import (
    FORMAT,
    RequirementKind,
    TrainedMetaNet,
    cond_features,
    edited_logits,
    features_digest,
    group_index_of,
    make_probes,
    reference_rows,
    requirement_kind,
    save_metanet,
)


@dataclass
class TrainSettings:
    """Settings of `train_editor`; the defaults are the shipped editors' (see sample_models/build_editors.py)."""

    task: str = "adult"
    requirement: str = "demographic_parity"
    steps: int = 300
    models_per_step: int = 8  # per process
    conditions: int = 4  # strengths per model per step
    rows: int = 512  # data rows per step
    ref_rows: int = 512  # reference rows for node statistics (also used at edit time)
    lr: float = 3e-3
    hidden: int = 32
    layers: int = 3
    fairness_weight: float = 3.0  # loss weight of the fairness gap at strength 1
    fairness_temperature: float = 0.2  # sigmoid temperature of the soft prediction in the gap
    refit: bool = True  # pruning, minimisation: least-squares refit of masked layers (net.assemble)
    match_moments: bool = True  # pruning without refit: closed-form mean/std compensation
    gradient_features: bool = True  # fairness: gradients of the gap, cross-entropy and rate as features
    label_weight: float = 0.0  # weight of cross-entropy with the labels, added to the divergence
    rate_weight: float = 10.0  # fairness: weight of the squared change of the overall positive rate
    mask_weight: float = 0.1  # weight of the soft-mask budget term (pruning, minimisation)
    sparsity_low: float = 0.5
    sparsity_high: float = 0.97
    n_models: int = zoo.DEFAULT_SIZE
    train_limit: int | None = None  # use only the first N training members (tiny runs, tests)
    val_limit: int | None = 8  # validation members evaluated at the end
    eval_every: int = 40  # validation loss every N steps; the best checkpoint (step 0 included) is kept
    seed: int = 0
    threads: int = 1  # torch threads per process


def sample_targets(s: TrainSettings, mode: str, n_features: int, B: int, K: int, gen: torch.Generator) -> torch.Tensor:
    if mode == "residual":
        return torch.rand(B, K, generator=gen)
    if mode == "gate":
        return torch.randint(1, n_features, (B, K), generator=gen).float()
    u = torch.rand(B, K, generator=gen)
    return s.sparsity_low + (s.sparsity_high - s.sparsity_low) * u.sqrt()  # more mass near high sparsity


def _dist_setup():
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1, None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist, dist.get_rank(), dist.get_world_size(), device


def train_editor(settings: TrainSettings, out: str | Path | None = None,
                 callback: Callback | None = None,
                 device: str | torch.device | None = None, *, minutes: float | None = None,
                 patience: int | None = None, should_stop=None) -> dict:
    """Train a metanetwork for `settings.requirement` on `settings.task`'s population (a named task or a
    user's population `user-<hash12>`, see `auditor.zoo`).

    `minutes`: a wall-clock budget; after a few steps the number of steps (and the learning-rate
    schedule with it) is cut to what fits, keeping time for the final validation. `patience`: stop when
    that many validations in a row did not improve on the best (the best checkpoint is kept).
    `should_stop()`: polled every step, True stops early the same way (a cancelled job).
    The callback gets the fraction done and "step i/n, loss, val, time left".
    Returns the `info` dict that is stored in the editor file (written to `out` by rank 0)."""
    from ...backend import pick_device

    callback = callback or (lambda f, m: None)
    s = settings
    kind = requirement_kind(s.requirement)
    torch.set_num_threads(max(1, s.threads))
    dist, rank, world, ddev = _dist_setup()
    dev = ddev or pick_device(device if isinstance(device, str) or device is None else str(device))
    start = time.perf_counter()

    data = zoo.task_data(s.task)
    if data.kind != "tabular" or len(data.class_names) != 2:
        raise AuditorError("metanetwork editors are trained on binary tabular tasks")
    attr = data.primary_protected
    if kind.mode == "residual" and not attr:
        raise AuditorError(f"task {s.task!r} has no protected attribute to train a fairness editor on")
    if world > 1:  # build missing members once, sharded across ranks
        zoo.build_population(s.task, s.n_models, splits=("train",), limit=s.train_limit)
        zoo.build_population(s.task, s.n_models, splits=("val",), limit=s.val_limit)
    train_bundles = zoo.load_population(s.task, "train", s.n_models, limit=s.train_limit)
    X_ref = reference_rows(data, s.ref_rows)
    codes, group_names = group_codes(data.train.groups[attr]) if attr else (None, [])
    probes = make_probes(kind.mode, kind.metric, data, s.ref_rows, 0, attr, s.fairness_temperature, group_names) \
        if s.gradient_features else []
    members = [prepare(b.model, X_ref, probes) for b in train_bundles]
    templates = [b.model for b in train_bundles]
    n_feat = len(data.feature_groups)
    gidx = group_index_of(data).to(dev)
    X_all, y_all = data.train.X.to(dev), data.train.y.to(dev)
    codes = codes.to(dev) if codes is not None else None
    max_depth = max(4, max(m.st.depth for m in members))
    cfg = NetConfig(n_inputs=data.n_inputs, n_classes=2, n_features=n_feat, mode=kind.mode, hidden=s.hidden,
                    layers=s.layers, max_depth=max_depth, n_probes=len(probes),
                    match_moments=kind.mode == "prune" and s.match_moments and not s.refit,
                    refit=kind.mode in ("prune", "gate") and s.refit)
    with seeded_global_rng(s.seed):  # its initialisation, the same whatever other threads do
        net = MetaNet(cfg).to(dev)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    for m, t in zip(members, templates):
        _to(m, dev)
        t.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=0.0)
    warm = max(1, s.steps // 20)
    total = [s.steps]  # steps to run: cut to the time budget after the first steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, total[0]) / total[0])))
    deadline = start + 60 * minutes if minutes else None
    stopped, since_best = "", 0
    gen = torch.Generator().manual_seed(s.seed * 7919 + rank)
    history = []
    B = min(s.models_per_step, len(members))
    # early stopping on held-out validation members (fixed strengths and rows); step 0 is a candidate
    val_curve: list[tuple[int, float]] = []
    best: tuple = (float("inf"), 0, None)
    if rank == 0 and s.eval_every:
        vb = zoo.load_population(s.task, "val", s.n_models, limit=s.val_limit or 4)
        v_members = [prepare(b.model, X_ref, probes) for b in vb]
        for m, b in zip(v_members, vb):
            _to(m, dev)
            b.model.to(dev)
        vg = batch(v_members, cfg.n_inputs, cfg.n_classes, cfg.max_depth)
        grid = torch.tensor(default_grid(kind.mode, n_feat), dtype=torch.float32)
        v_targets = grid.unsqueeze(0).expand(len(v_members), -1).to(dev)
        v_cond = cond_features(kind.mode, v_targets, n_feat)
        vrows = torch.randperm(len(data.val), generator=torch.Generator().manual_seed(1))[:2048]
        vX, vy = data.val.X[vrows].to(dev), data.val.y[vrows].to(dev)
        vcodes = group_codes(data.val.groups[attr].iloc[vrows.numpy()], group_names)[0].to(dev) if attr else None

        def val_loss() -> float:
            net.eval()
            with torch.no_grad():
                v = _batch_loss(net, cfg, kind, s, vg, [b.model for b in vb], v_targets, v_cond, vX, vy, vcodes,
                                len(group_names), gidx)[0]
            net.train()
            return float(v)

        best = (val_loss(), 0, {k: t.detach().clone() for k, t in net.state_dict().items()})
        val_curve.append((0, best[0]))
    loop_start = time.perf_counter()
    for step in range(s.steps):
        if step >= total[0]:
            break
        pick = torch.randperm(len(members), generator=gen)[:B].tolist()
        g = batch([members[i] for i in pick], cfg.n_inputs, cfg.n_classes, cfg.max_depth)
        targets = sample_targets(s, kind.mode, n_feat, B, s.conditions, gen).to(dev)
        cond = cond_features(kind.mode, targets, n_feat)
        rows = torch.randint(len(X_all), (s.rows,), generator=gen).to(dev)
        X, y = X_all[rows], y_all[rows]
        loss, js_sum, req_sum = _batch_loss(model, cfg, kind, s, g, [templates[i] for i in pick], targets, cond,
                                            X, y, codes[rows] if codes is not None else None, len(group_names), gidx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append((float(loss.detach()), js_sum, req_sum))
        if rank == 0 and s.eval_every and ((step + 1) % s.eval_every == 0 or step == s.steps - 1):
            v = val_loss()
            val_curve.append((step + 1, v))
            since_best += 1
            if v < best[0]:
                best, since_best = (v, step + 1, {k: t.detach().clone() for k, t in net.state_dict().items()}), 0
            if patience and since_best >= patience:
                stopped = f"early stop: no better validation loss in {patience} checks"
        now = time.perf_counter()
        if deadline is not None and step % 10 == 4 and not stopped:  # fit the schedule to the budget
            per_step = (now - loop_start) / (step + 1)  # validations included, as they will recur
            keep = 0.1 * (deadline - start) + (8 if s.val_limit else 0)  # final validation and writing
            fits = step + 1 + int(max(0.0, deadline - now - keep) / max(per_step, 1e-6))
            total[0] = max(step + 1, min(s.steps, fits))
        if deadline is not None and now > deadline and not stopped:
            stopped = f"time budget of {minutes:g} min spent"
        if should_stop is not None and not stopped and should_stop():
            stopped = "stopped on request"
        if world > 1:  # every rank stops (and cuts its schedule) with rank 0
            flags = [stopped, total[0]]
            dist.broadcast_object_list(flags, src=0)
            stopped, total[0] = flags
        if rank == 0 and (step % 10 == 0 or step == total[0] - 1 or stopped):
            recent = np.array(history[-10:])
            done = (step + 1) / total[0]
            left = (now - loop_start) / (step + 1) * (total[0] - step - 1)
            val = f" val {val_curve[-1][1]:.4f} (best {best[0]:.4f})" if val_curve else ""
            callback(min(done, 0.99), f"step {step + 1}/{total[0]} loss {recent[:, 0].mean():.4f} "
                                      f"(js {recent[:, 1].mean():.4f}, requirement {recent[:, 2].mean():.4f}){val} "
                                      f"{now - start:.0f} s, ~{left:.0f} s left")
        if stopped:
            break
    seconds = time.perf_counter() - start
    if best[2] is not None:
        net.load_state_dict(best[2])
    info = {"format": FORMAT, "task": s.task, "requirement": kind.metric, "mode": kind.mode,
            "condition": kind.condition, "net": asdict(cfg), "protected": attr, "groups": group_names,
            "family": {"data": data.name, "data_sha": data.sha256, "n_inputs": data.n_inputs, "n_classes": 2,
                       "features_sha": features_digest(data), "feature_groups": list(data.feature_groups),
                       "max_depth": cfg.max_depth,
                       "depths": sorted({m.st.depth for m in members}),
                       "max_width": max(max(m.sizes[1:-1], default=0) for m in members),
                       "n_members": len(members)},
            "reference": {"split": "train", "rows": s.ref_rows, "seed": 0},
            "probes": {"gradient_features": bool(probes), "temperature": s.fairness_temperature},
            "training": {**asdict(s), "seconds": round(seconds, 1), "world_size": world, "device": str(dev),
                         "final_loss": float(np.mean([h[0] for h in history[-20:]])),
                         "final_js": float(np.mean([h[1] for h in history[-20:]])),
                         "final_requirement_term": float(np.mean([h[2] for h in history[-20:]])),
                         "best_step": best[1], "val_loss": [[st_, round(v, 6)] for st_, v in val_curve],
                         "steps_done": len(history),
                         "stopped": stopped or ("all steps run" if len(history) >= s.steps else
                                                f"schedule fitted to the time budget: {len(history)} of "
                                                f"{s.steps} steps")}}
    if rank == 0:
        net.eval()
        callback(1.0, "validating on held-out validation members")
        info["validation"] = validate(net.cpu(), info, data, s) if s.val_limit else []
        if out is not None:
            save_metanet(net, info, out)
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    return info


def _batch_loss(model, cfg: NetConfig, kind: RequirementKind, s: TrainSettings, g, templates: list, targets, cond,
                X, y, codes, n_groups: int, gidx) -> tuple:
    """Mean over members and strengths of divergence (+ label term) + requirement term; with floats."""
    outs = model(g, cond)
    results = assemble(cfg, g, outs, targets, gidx)
    B = len(templates)
    loss, js_sum, req_sum = 0.0, 0.0, 0.0
    for j, (template, res) in enumerate(zip(templates, results)):
        with torch.no_grad():
            base = template(X)
        logits = edited_logits(template, res["params"], X)  # (K, n, 2)
        js = torch.stack([js_divergence(base, lk) for lk in logits])
        if s.label_weight:  # optional: cross-entropy with the labels as a second utility term
            js = js + s.label_weight * torch.stack([nn.functional.cross_entropy(lk, y) for lk in logits])
        if kind.mode == "residual":
            p = positive_probability(logits.reshape(-1, 2), s.fairness_temperature).reshape(len(logits), -1)
            gaps = torch.stack([fairness_gap(kind.metric, pk, y, codes, n_groups,
                                             **({"reduce": "sum"} if kind.metric == "equalized_odds" else {}))
                                for pk in p])
            req = s.fairness_weight * targets[j] * gaps
            if s.rate_weight:  # keep the overall positive rate: equalise by moving rows, not by
                # pushing everyone below the threshold (which the gap alone would reward)
                p0 = positive_probability(base, s.fairness_temperature).mean()
                req = req + s.rate_weight * (p.mean(1) - p0) ** 2
        elif kind.mode == "prune":
            req = s.mask_weight * torch.stack([sparsity_gap(res["soft"][:, k], float(targets[j, k]))
                                               for k in range(targets.shape[1])])
        else:
            req = s.mask_weight * torch.stack([feature_budget_gap(res["soft"][:, k], float(targets[j, k]))
                                               for k in range(targets.shape[1])])
        loss = loss + (js + req).mean() / B
        js_sum += float(js.detach().mean()) / B
        req_sum += float(req.detach().mean()) / B
    return loss, js_sum, req_sum


def _to(m: Member, dev: torch.device) -> None:
    if m.node_x.device == dev:
        return
    for f in ("node_x", "edge_x"):
        setattr(m, f, getattr(m, f).to(dev))
    for f in ("weights", "biases", "act_mean", "act_std", "pre_mean", "pre_std"):
        if getattr(m, f) is not None:
            setattr(m, f, [t.to(dev) for t in getattr(m, f)])
    if m.X_ref is not None:
        m.X_ref = m.X_ref.to(dev)


def default_grid(mode: str, n_features: int) -> list[float]:
    if mode == "residual":
        return [0.0, 0.25, 0.5, 0.75, 1.0]
    if mode == "gate":
        return [float(k) for k in (1, 3, 5, 7, 9)]
    return [0.5, 0.7, 0.8, 0.9, 0.95]


@torch.no_grad()
def validate(net: MetaNet, info: dict, data: AuditData, s: TrainSettings) -> list[dict]:
    """Hard metrics of edited validation members on the validation rows, per strength."""
    from ...requirements.metrics import features_used, sparsity
    editor = TrainedMetaNet(net, info)
    bundles = zoo.load_population(s.task, "val", s.n_models, limit=s.val_limit)
    grid = default_grid(info["mode"], len(data.feature_groups))
    rows = []
    for v in grid:
        accs, base_accs, reqs = [], [], []
        for b in bundles:
            model = b.model
            edited = editor.edit_model(model, data, [v])[0]
            accs.append(_accuracy(edited, data.val))
            base_accs.append(_accuracy(model, data.val))
            if info["mode"] == "residual":
                reqs.append(split_fairness(edited, data, "val", info["requirement"], info["protected"]))
            elif info["mode"] == "gate":
                reqs.append(features_used(edited, data.feature_groups))
            else:
                reqs.append(sparsity(edited))
        rows.append({"condition": v, "accuracy": float(np.mean(accs)), "accuracy_before": float(np.mean(base_accs)),
                     info["requirement"]: float(np.mean(reqs)), f"{info['requirement']}_max": float(np.max(reqs))})
    return rows


def _accuracy(model: nn.Module, split) -> float:
    return float((model(split.X).argmax(1) == split.y).float().mean())


_CODES: dict[tuple, torch.Tensor] = {}


def split_fairness(model: nn.Module, data: AuditData, split: str, metric: str, attribute: str) -> float:
    """Demographic parity or equalized odds difference of `model` on a split (fairlearn's definition)."""
    from ...requirements.surrogates import demographic_parity_gap, equalized_odds_gap
    sp = data.split(split)
    with torch.no_grad():
        pred = model(sp.X.to(next(model.parameters()).device)).argmax(1).double().cpu()
    key = (data.sha256, split, attribute)
    if key not in _CODES:
        _CODES[key] = group_codes(sp.groups[attribute])[0]
    codes = _CODES[key]
    if metric == "demographic_parity":
        return float(demographic_parity_gap(pred, codes))
    return float(equalized_odds_gap(pred, sp.y, codes))
