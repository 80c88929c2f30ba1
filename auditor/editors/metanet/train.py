"""Training a metanetwork editor on a population, and the editor file it writes.

Loss per (model, requirement strength): Jensen-Shannon divergence between the edited and the
original model's outputs on a batch of training rows (utility), plus the requirement's
differentiable surrogate from `auditor.requirements.surrogates` (the demographic-parity or
equalized-odds gap weighted by the strength; for minimisation and pruning, where hard masks meet
the budget by construction, a small budget term on the soft masks keeps them decisive).

Runs in one process or under `torchrun` with DistributedDataParallel (gloo on CPU, NCCL on GPU);
each rank draws its own models and rows, gradients are averaged, rank 0 writes the file:

    torchrun --nproc_per_node 2 -m auditor.cli editor train --task adult --requirement demographic_parity

An editor file is one safetensors file: the metanetwork's weights plus, in the metadata key
`auditor.metanet`, the JSON `info` (task, requirement, network config, the model family it was
trained on, training and validation figures).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call, vmap

from ... import zoo
from ...data.base import AuditData
from ...errors import AuditorError
from ...models import ModelBundle
from ...requirements.surrogates import (feature_budget_gap, fairness_gap, group_codes, js_divergence,
                                        positive_probability, sparsity_gap)
from .graph import Member, batch, mlp_layers, prepare
from .net import MetaNet, NetConfig, assemble

FORMAT = "auditor-metanet/1"
INFO_KEY = "auditor.metanet"


@dataclass(frozen=True)
class RequirementKind:
    """A requirement a metanetwork can be trained for."""

    metric: str  # metric name in auditor.requirements.METRICS
    mode: str  # NetConfig.mode
    stem: str  # file name part: metanet_<task>_<stem>.safetensors
    condition: str  # what the strength means


KINDS: dict[str, RequirementKind] = {
    "demographic_parity": RequirementKind("demographic_parity", "residual", "dp",
                                          "fairness strength t in [0, 1] (loss weight t * fairness_weight)"),
    "equalized_odds": RequirementKind("equalized_odds", "residual", "eo",
                                      "fairness strength t in [0, 1] (loss weight t * fairness_weight)"),
    "features_used": RequirementKind("features_used", "gate", "minimisation", "raw features to keep, k"),
    "sparsity": RequirementKind("sparsity", "prune", "pruning", "fraction of weights set to zero"),
}
ALIASES = {"dp": "demographic_parity", "fairness": "demographic_parity", "eo": "equalized_odds",
           "minimisation": "features_used", "minimization": "features_used", "features": "features_used",
           "pruning": "sparsity"}


def requirement_kind(name: str) -> RequirementKind:
    key = ALIASES.get(name, name)
    if key not in KINDS:
        raise AuditorError(f"no metanetwork requirement {name!r}; choose one of "
                           f"{', '.join(list(KINDS) + list(ALIASES))}")
    return KINDS[key]


def cond_features(mode: str, values: torch.Tensor, n_features: int) -> torch.Tensor:
    """Requirement strength -> conditioning vector (..., 2) fed to the heads."""
    v = values.float()
    if mode == "residual":
        return torch.stack([v, v.clamp_min(0).sqrt()], -1)
    if mode == "gate":
        f = v / n_features
        return torch.stack([f, f.clamp_min(0).sqrt()], -1)
    return torch.stack([v, -torch.log1p(-v.clamp(0, 0.999)) / 5], -1)


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


def reference_index(data: AuditData, n: int, seed: int = 0) -> torch.Tensor:
    """The fixed rows of the training split whose activations describe a model's neurons."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(data.train), generator=g)[:min(n, len(data.train))].sort().values


def reference_rows(data: AuditData, n: int, seed: int = 0) -> torch.Tensor:
    return data.train.X[reference_index(data, n, seed)]


def make_probes(mode: str, metric: str, data: AuditData, n: int, seed: int, attribute: str | None,
                temperature: float, groups: list[str] | None = None) -> list:
    """Gradient probes on the reference rows (fairness editors: the soft gap, the cross-entropy with the
    labels and the overall positive rate)."""
    if mode != "residual":
        return []
    idx = reference_index(data, n, seed)
    y = data.train.y[idx]
    codes, _ = group_codes(data.train.groups[attribute].iloc[idx.numpy()], groups)

    def gap(logits):
        return fairness_gap(metric, positive_probability(logits, temperature), y.to(logits.device),
                            codes.to(logits.device))

    def ce(logits):
        return nn.functional.cross_entropy(logits, y.to(logits.device))

    def rate(logits):  # the overall positive rate: lets the editor move the gap without moving the rate
        return positive_probability(logits, temperature).mean()

    return [gap, ce, rate]


def group_index_of(data: AuditData) -> torch.Tensor:
    """Raw-feature index of every input (-1 when an input belongs to no feature group)."""
    idx = torch.full((data.n_inputs,), -1, dtype=torch.long)
    for f, cols in enumerate(data.feature_groups.values()):
        idx[list(cols)] = f
    return idx


def features_digest(data_or_names) -> str:
    names = data_or_names.feature_names if isinstance(data_or_names, AuditData) else list(data_or_names)
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]


def edited_logits(template: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Logits (K, n, classes) of the K edited versions of `template` (functional_call, vmapped over K)."""
    return vmap(lambda p: functional_call(template, p, (X,)))(params)


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
                 callback: Callable[[float, str], None] | None = None,
                 device: str | torch.device | None = None) -> dict:
    """Train a metanetwork for `settings.requirement` on `settings.task`'s population.

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
    torch.manual_seed(s.seed)
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
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, s.steps) / s.steps)))
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
    for step in range(s.steps):
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
            if v < best[0]:
                best = (v, step + 1, {k: t.detach().clone() for k, t in net.state_dict().items()})
        if rank == 0 and (step % 10 == 0 or step == s.steps - 1):
            recent = np.array(history[-10:])
            callback((step + 1) / s.steps, f"step {step + 1}/{s.steps} loss {recent[:, 0].mean():.4f} "
                                           f"(js {recent[:, 1].mean():.4f}, requirement {recent[:, 2].mean():.4f}) "
                                           f"{time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    if best[2] is not None:
        net.load_state_dict(best[2])
    info = {"format": FORMAT, "task": s.task, "requirement": kind.metric, "mode": kind.mode,
            "condition": kind.condition, "net": asdict(cfg), "protected": attr, "groups": group_names,
            "family": {"data": data.name, "n_inputs": data.n_inputs, "n_classes": 2,
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
                         "best_step": best[1], "val_loss": [[st_, round(v, 6)] for st_, v in val_curve]}}
    if rank == 0:
        net.eval()
        callback(1.0, "validating on held-out validation members")
        info["validation"] = validate(net.cpu(), info, data, s) if s.val_limit else []
        if out is not None:
            save_editor(net, info, out)
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
                reqs.append(hard_fairness(edited, data, "val", info["requirement"], info["protected"]))
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


def hard_fairness(model: nn.Module, data: AuditData, split: str, metric: str, attribute: str) -> float:
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


_CALIB: dict[tuple, tuple] = {}


def calibration_rows(data: AuditData, split: str, attribute: str, n: int | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X, y, one-hot group matrix (n, groups)) of a split, or of a fixed random subset of `n` of its
    rows; cached per data set."""
    key = (data.sha256, split, attribute, n, seed)
    if key not in _CALIB:
        sp = data.split(split)
        idx = np.arange(len(sp))
        if n is not None and n < len(sp):
            idx = np.sort(np.random.default_rng(seed).choice(len(sp), n, replace=False))
        codes, names = group_codes(sp.groups[attribute].iloc[idx])
        _CALIB[key] = (sp.X[idx], sp.y[idx], nn.functional.one_hot(codes, len(names)).float())
    return _CALIB[key]


@torch.no_grad()
def batched_fairness(template: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor,
                     onehot: torch.Tensor, metric: str) -> torch.Tensor:
    """Hard demographic parity / equalized odds difference of K edited models at once -> (K,)."""
    dev = next(iter(params.values())).device
    pred = edited_logits(template, params, X.to(dev)).argmax(-1).float()  # (K, n)
    onehot, y = onehot.to(dev), y.to(dev)

    def gap(mask):
        oh = onehot if mask is None else onehot[mask]
        pr = pred if mask is None else pred[:, mask]
        counts = oh.sum(0)
        present = counts > 0
        rates = (pr @ oh)[:, present] / counts[present]
        return rates.max(1).values - rates.min(1).values

    if metric == "demographic_parity":
        return gap(None).cpu()
    return torch.maximum(gap(y == 1), gap(y == 0)).cpu()


@torch.no_grad()
def calibrate(template: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor,
              onehot: torch.Tensor, metric: str, aim: float, shifts: torch.Tensor) -> dict:
    """Pick, among K edited models (`params`, one per strength) and output-bias shifts, the most
    accurate on the calibration rows whose fairness gap is at most `aim` (else the fairest).

    One batched forward of the K models; the shifts only move the decision threshold of the logit
    difference, so they cost no extra forward. Returns {"k", "shift", "level", "accuracy", "table"}."""
    dev = next(iter(params.values())).device
    logits = edited_logits(template, params, X.to(dev))  # (K, n, 2)
    dz = (logits[..., 1] - logits[..., 0]).cpu()  # (K, n)
    K, n = dz.shape
    S = len(shifts)
    # positives per (group, label) cell for every strength and shift: a row is positive when
    # dz + shift > 0; sorted scores and searchsorted count them without materialising predictions
    group = onehot.argmax(1).cpu()
    y = y.cpu()
    thresholds = (-shifts).to(dz.dtype).contiguous().expand(K, S).contiguous()
    pos, size = {}, {}
    for g in range(onehot.shape[1]):
        for lab in (0, 1):
            cell = (group == g) & (y == lab)
            size[g, lab] = int(cell.sum())
            if size[g, lab]:
                srt = dz[:, cell].sort(1).values.contiguous()
                pos[g, lab] = size[g, lab] - torch.searchsorted(srt, thresholds, right=True).to(dz.dtype)
            else:
                pos[g, lab] = dz.new_zeros(K, S)
    groups = [g for g in range(onehot.shape[1]) if size[g, 0] + size[g, 1] > 0]
    acc = sum(pos[g, 1] + size[g, 0] - pos[g, 0] for g in groups) / n  # (K, S)

    def spread(rates):
        r = torch.stack(rates, -1)
        return r.max(-1).values - r.min(-1).values

    if metric == "demographic_parity":
        level = spread([(pos[g, 0] + pos[g, 1]) / (size[g, 0] + size[g, 1]) for g in groups])
    else:
        tpr = spread([pos[g, 1] / size[g, 1] for g in groups if size[g, 1]])
        fpr = spread([pos[g, 0] / size[g, 0] for g in groups if size[g, 0]])
        level = torch.maximum(tpr, fpr)
    acc, level = acc.reshape(-1), level.reshape(-1)
    ok = level <= aim
    if bool(ok.any()):
        score = torch.where(ok, acc, torch.full_like(acc, -1.0))
        best = int(score.argmax())  # the first (weakest strength, lowest shift) among equals
    else:
        best = int(level.argmin())
    k, j = divmod(best, S)
    mid = int((shifts.abs()).argmin())
    table = [{"strength_index": i // S, "shift": float(shifts[i % S]), "level": float(level[i]),
              "accuracy": float(acc[i])} for i in range(mid, K * S, S)]  # unshifted rows, for the log
    return {"k": k, "shift": float(shifts[j]), "level": float(level[best]), "accuracy": float(acc[best]),
            "feasible": bool(ok.any()), "table": table}


# ------------------------------------------------------------------------------------------------
# editor files and applying a trained metanetwork

def save_editor(net: MetaNet, info: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={INFO_KEY: json.dumps(info, sort_keys=True), "format": FORMAT})
    return path


def load_editor(path: str | Path) -> "TrainedMetaNet":
    """Load an editor file written by `save_editor` (no code runs: safetensors + JSON)."""
    path = Path(path)
    if not path.exists():
        raise AuditorError(f"metanetwork editor file not found: {path}; rebuild it with "
                           "`python sample_models/build_editors.py` or `auditor editor train`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT or INFO_KEY not in meta:
        raise AuditorError(f"{path.name} is not a metanetwork editor file ({FORMAT})")
    info = json.loads(meta[INFO_KEY])
    known = {f.name for f in dataclasses.fields(NetConfig)}
    net = MetaNet(NetConfig(**{k: v for k, v in info["net"].items() if k in known}))
    net.load_state_dict(state)
    return TrainedMetaNet(net.eval(), info, str(path))


class TrainedMetaNet:
    """A trained metanetwork plus what it was trained on; edits one MLP for given strengths."""

    def __init__(self, net: MetaNet, info: dict, path: str = ""):
        self.net, self.info, self.path = net, info, path
        self._ref_cache: dict[str, torch.Tensor] = {}
        self._gidx_cache: dict[str, torch.Tensor] = {}

    @property
    def mode(self) -> str:
        return self.info["mode"]

    def supports(self, bundle: ModelBundle, data: AuditData) -> str | None:
        """None when the model belongs to the family this editor was trained on, else why not."""
        fam = self.info["family"]
        spec = bundle.spec
        if data.kind != "tabular":
            return f"it was trained on tabular {fam['data']!r} MLPs; {data.name!r} is {data.kind} data"
        if data.name != fam["data"]:
            return (f"it was trained on models of task {fam['data']!r}, not {data.name!r} "
                    f"(train one with `auditor editor train --task {data.name}` if a population exists)")
        if spec.data not in (None, fam["data"]):
            return f"the model was trained on {spec.data!r}, this editor on {fam['data']!r}"
        try:
            layers = mlp_layers(bundle.model)
        except AuditorError as exc:
            return str(exc)
        n_in = layers[0][1].in_features
        if n_in != fam["n_inputs"] or data.n_inputs != fam["n_inputs"]:
            return f"it reads MLPs with {fam['n_inputs']} inputs; this model has {n_in}"
        if layers[-1][1].out_features != fam["n_classes"]:
            return f"it reads binary classifiers ({fam['n_classes']} outputs); this model has {layers[-1][1].out_features}"
        if features_digest(data) != fam["features_sha"]:
            return "the data's input encoding differs from the one the editor was trained on"
        if spec.input.get("features") and features_digest(spec.input["features"]) != fam["features_sha"]:
            return "the model's input features differ from the ones the editor was trained on"
        depth = len(layers)
        if depth not in fam["depths"]:
            return f"it was trained on MLPs with {fam['depths']} Linear layers; this model has {depth}"
        widest = max((m.out_features for _, m in layers[:-1]), default=0)
        if widest > 2 * fam["max_width"]:
            return f"hidden layers up to {2 * fam['max_width']} wide are supported; this model has {widest}"
        return None

    def _reference(self, data: AuditData) -> torch.Tensor:
        key = data.sha256
        if key not in self._ref_cache:
            ref = self.info["reference"]
            self._ref_cache[key] = reference_rows(data, ref["rows"], ref["seed"])
        return self._ref_cache[key]

    def _probes(self, data: AuditData) -> list:
        pr = self.info.get("probes") or {}
        if not pr.get("gradient_features"):
            return []
        ref = self.info["reference"]
        attr = self.info["protected"]
        if attr not in data.train.groups:
            raise AuditorError(f"this editor reads the protected attribute {attr!r} of the training rows; "
                               f"{data.name!r} has none")
        return make_probes(self.mode, self.info["requirement"], data, ref["rows"], ref["seed"], attr,
                           pr["temperature"], self.info["groups"])

    def _group_index(self, data: AuditData) -> torch.Tensor:
        key = data.sha256
        if key not in self._gidx_cache:
            self._gidx_cache[key] = group_index_of(data)
        return self._gidx_cache[key]

    @torch.no_grad()
    def encode(self, model: nn.Module, data: AuditData, device: torch.device | None = None) -> tuple:
        """Read `model` as a graph and run the message passing (once per model)."""
        dev = device or next(model.parameters()).device
        if next(self.net.parameters()).device != dev:
            self.net.to(dev)
        net = self.net
        member = prepare(model, self._reference(data).to(dev), self._probes(data))
        cfg = net.cfg
        g = batch([member], cfg.n_inputs, cfg.n_classes, cfg.max_depth)
        return (g, *net.encode(g), self._group_index(data).to(dev))

    @torch.no_grad()
    def decode(self, state: tuple, values: list[float]) -> dict[str, torch.Tensor]:
        """Edited parameters {name: (len(values), ...)} for strengths `values` from `encode`'s state."""
        g, h, e, gidx = state
        cfg = self.net.cfg
        targets = torch.tensor([values], dtype=torch.float32, device=h.device)
        outs = self.net.heads(g, h, e, cond_features(cfg.mode, targets, cfg.n_features))
        return assemble(cfg, g, outs, targets, gidx)[0]["params"]

    def propose(self, model: nn.Module, data: AuditData, values: list[float],
                device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Edited parameters for every strength in `values`: {name: (len(values), ...)} (one pass)."""
        return self.decode(self.encode(model, data, device), values)

    def edit_model(self, model: nn.Module, data: AuditData, values: list[float]) -> list[nn.Module]:
        """Edited copies of `model`, one per strength (for validation and sweeps)."""
        import copy
        params = self.propose(model, data, values)
        outs = []
        for k in range(len(values)):
            m = copy.deepcopy(model)
            write_params(m, {n: t[k] for n, t in params.items()})
            outs.append(m.eval())
        return outs


@torch.no_grad()
def write_params(model: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy edited tensors into `model` in place (names as in its state dict)."""
    state = dict(model.named_parameters())
    for name, value in params.items():
        state[name].copy_(value.to(state[name].device, state[name].dtype))
