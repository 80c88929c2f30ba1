"""The runtime of a trained metanetwork editor: requirement kinds, editor files (`save_metanet`,
`load_metanet` -> `TrainedMetaNet`), reading a model as a graph with its reference rows, and the
calibration the fairness editors use. The registered editors (`editors.py`) import this, never
`train.py`.

An editor file is one safetensors file: the metanetwork's weights plus, in the metadata key
`auditor.metanet`, the JSON `info` (task, requirement, network config, the model family it was
trained on, training and validation figures).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call, vmap

from ...data.base import AuditData
from ...errors import AuditorError
from ...models import ModelBundle
from ...requirements.surrogates import fairness_gap, group_codes, positive_probability
from .graph import batch, mlp_layers, not_an_mlp, prepare
from .net import MetaNet, NetConfig, assemble

FORMAT = "auditor-metanet/1"
# how much wider than the widest training member a model may be: message passing averages over a neuron's
# edges, so it reads any width; the fairness editors then check the result on calibration rows
WIDTH_FACTOR = 8
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


def reference_index(data: AuditData, n: int, seed: int = 0) -> torch.Tensor:
    """The fixed rows of the training split whose activations describe a model's neurons."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(data.train), generator=g)[:min(n, len(data.train))].sort().values


def reference_rows(data: AuditData, n: int, seed: int = 0) -> torch.Tensor:
    """The inputs of `reference_index`'s rows."""
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
    """A short digest of the input feature names (an editor reads only the encoding it was trained on)."""
    names = data_or_names.feature_names if isinstance(data_or_names, AuditData) else list(data_or_names)
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()[:16]


def edited_logits(template: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Logits (K, n, classes) of the K edited versions of `template` (functional_call, vmapped over K)."""
    return vmap(lambda p: functional_call(template, p, (X,)))(params)


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


def last_layer_name(template: nn.Module) -> str:
    """Name (in the state dict) of the MLP's output Linear layer."""
    return mlp_layers(template)[-1][0]


@torch.no_grad()
def layer_activations(template: nn.Module, params: dict[str, torch.Tensor],
                      X: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Inputs of every Linear layer of the K edited models, [(K, n, d_in)] (the first is X), and their
    logits (K, n, classes)."""
    names = [n for n, _ in mlp_layers(template)]
    K = params[names[0] + ".weight"].shape[0]
    a = X.unsqueeze(0).expand(K, *X.shape)
    acts = []
    for i, name in enumerate(names):
        acts.append(a)
        z = torch.baddbmm(params[name + ".bias"].unsqueeze(1), a, params[name + ".weight"].transpose(1, 2))
        a = z.relu() if i < len(names) - 1 else z
    return acts, z


@torch.no_grad()
def penultimate(template: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """What the output layer of each of the K edited models reads: (K, n, d) (the inputs for a one-layer MLP)."""
    return layer_activations(template, params, X)[0][-1]


PROXY_FIT_ROWS = 3000  # calibration rows the group proxies are fitted on (the choice among candidates uses all)


@torch.no_grad()
def group_proxy(h: torch.Tensor, dz: torch.Tensor, y: torch.Tensor, group: torch.Tensor, n_groups: int,
                metric: str, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribute-blind group signal of each edited model: a linear function u_k(h) = h @ w_k + c_k of
    some of its activations `h` (K, n, d), fitted (ridge least squares on the calibration rows) to how far
    the row's group's positive rate (demographic parity; equalized odds: the mean of its true- and
    false-positive rate) sits above the overall one, scaled to unit standard deviation. Returns
    (w (K, d), c (K,))."""
    K, n, d = h.shape
    pred = (dz > 0).to(h.dtype)  # (K, n)
    onehot = nn.functional.one_hot(group, n_groups).to(h.dtype)  # (n, G)
    if metric == "demographic_parity":
        rate = (pred @ onehot) / onehot.sum(0).clamp_min(1)  # (K, G)
        dev = rate - pred.mean(1, keepdim=True)
    else:
        dev = 0.0
        for lab in (0, 1):
            cell = onehot * (y == lab).to(h.dtype).unsqueeze(1)
            rate = (pred @ cell) / cell.sum(0).clamp_min(1)
            overall = (pred * (y == lab).to(h.dtype)).sum(1, keepdim=True) / (y == lab).sum().clamp_min(1)
            dev = dev + 0.5 * (rate - overall)
    r = dev @ onehot.T  # (K, n): each row's group deviation
    mu = h.mean(1, keepdim=True)
    sd = h.std(1, keepdim=True).clamp_min(1e-6)
    hs = (h - mu) / sd
    A = hs.transpose(1, 2) @ hs / n + ridge * torch.eye(d, dtype=h.dtype, device=h.device)
    w = torch.linalg.solve(A, hs.transpose(1, 2) @ (r - r.mean(1, keepdim=True)).unsqueeze(-1) / n).squeeze(-1)
    u = (hs @ w.unsqueeze(-1)).squeeze(-1)  # (K, n), zero mean
    scale = u.std(1).clamp_min(1e-9)
    w = w / sd.squeeze(1) / scale.unsqueeze(1)
    c = -(mu.squeeze(1) * w).sum(1)
    return w, c


@torch.no_grad()
def refit_output(h: torch.Tensor, dz: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3,
                 steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression of the labels on the output layer's inputs h (K, n, d), started from the
    current logit difference `dz`'s output weights and pulled towards them by `ridge` (Newton steps).
    Returns the change (dv (K, d), dc (K,)) to add to the class-1 row of the output layer."""
    K, n, d = h.shape
    Xh = torch.cat([h, h.new_ones(K, n, 1)], 2).double()  # (K, n, d + 1)
    yd = y.double().unsqueeze(0)
    delta = Xh.new_zeros(K, d + 1)
    eye = torch.eye(d + 1, dtype=torch.float64, device=h.device)
    base = dz.double()
    for _ in range(steps):
        p = torch.sigmoid(base + (Xh @ delta.unsqueeze(-1)).squeeze(-1))
        grad = (Xh.transpose(1, 2) @ (p - yd).unsqueeze(-1)).squeeze(-1) / n + ridge * delta
        hess = (Xh.transpose(1, 2) * (p * (1 - p)).unsqueeze(1)) @ Xh / n + ridge * eye
        delta = delta - torch.linalg.solve(hess, grad)
    delta = delta.to(h.dtype)
    return delta[:, :d], delta[:, d]


@torch.no_grad()
def relay(template: nn.Module, params: dict[str, torch.Tensor], acts: list[torch.Tensor], w_in: torch.Tensor,
          c_in: float) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Edited models whose least important hidden neuron of every layer carries ReLU(x @ w_in + c_in), an
    attribute-blind group estimate from the inputs, unchanged up to the output layer (each relay neuron
    reads only the previous one, with weight 1). The neurons' old contributions are replaced by their
    mean on the calibration rows (`acts`), and the output layer does not read the relay yet: returns
    (params, index of the last relay neuron per model); writing -scale there into the class-1 row
    subtracts scale * estimate from the class-1 logit. For MLPs with hidden layers only."""
    names = [n for n, _ in mlp_layers(template)]
    out = {n: t.clone() for n, t in params.items()}
    K = params[names[0] + ".weight"].shape[0]
    # per hidden layer: the neuron whose output matters least (activation sd times outgoing weight norm)
    rows = slice(0, min(acts[0].shape[1], PROXY_FIT_ROWS))
    chosen = [(acts[i][:, rows].std(1) * params[names[i] + ".weight"].norm(dim=1)).argmin(1).tolist()
              for i in range(1, len(names))]
    means = [acts[i].mean(1) for i in range(1, len(names))]
    last_idx = []
    for k in range(K):
        prev = None
        for i in range(1, len(names)):  # layer i reads hidden layer i - 1's relay neuron
            W_next = out[names[i] + ".weight"][k]
            j = chosen[i - 1][k]
            W_here, b_here = out[names[i - 1] + ".weight"][k], out[names[i - 1] + ".bias"][k]
            W_here[j] = 0
            if prev is None:
                W_here[j] = w_in
                b_here[j] = c_in
            else:
                W_here[j, prev] = 1.0
                b_here[j] = 0.0
            out[names[i] + ".bias"][k] += W_next[:, j] * means[i - 1][k, j]  # the old neuron's mean contribution
            W_next[:, j] = 0
            prev = j
        last_idx.append(prev)
    return out, last_idx


@torch.no_grad()
def calibrate(template: nn.Module, params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor,
              onehot: torch.Tensor, metric: str, aim: float, shifts: torch.Tensor,
              proxy_scales: torch.Tensor | None = None, use_relay: bool = True, refit: bool = False) -> dict:
    """Pick the most accurate edit on the calibration rows whose fairness gap is at most `aim` (else the
    fairest), never one that predicts the same class for every row, among: K edited models (`params`,
    one per strength), each minus multiples `proxy_scales` of an attribute-blind group proxy in the
    class-1 logit (a linear function of the output layer's inputs, `group_proxy`; with `use_relay`, also
    of the inputs carried by a relay of hidden neurons, `relay`), each with output-bias shifts `shifts`.

    Proxies and shifts only change the output layer, so the candidates cost one batched forward per set
    (plain, relayed). Returns {"params" (the chosen edit, {name: (1, ...)}), "k", "shift", "proxy" ("none",
    "output" or "relay"), "proxy_scale", "level", "accuracy", "feasible", "table"}."""
    dev = next(iter(params.values())).device
    Xd = X.to(dev)
    acts, logits = layer_activations(template, params, Xd)
    h = acts[-1]
    last = last_layer_name(template)
    dz = logits[..., 1] - logits[..., 0]  # (K, n)
    K, n = dz.shape
    group = onehot.argmax(1).to(dev)
    y = y.to(dev)
    fit = slice(0, min(n, PROXY_FIT_ROWS))  # calibration rows are a fixed random subset, so the first are too
    if refit:  # the output layer refitted to the labels first (it may be under-trained)
        params = {nm: t.clone() for nm, t in params.items()}
        dv, dc = refit_output(h[:, fit], dz[:, fit], y[fit])
        params[last + ".weight"][:, 1] += dv
        params[last + ".bias"][:, 1] += dc
        dz = dz + (h @ dv.unsqueeze(-1)).squeeze(-1) + dc.unsqueeze(1)
    scales = proxy_scales.to(dz.dtype).to(dev) if proxy_scales is not None else dz.new_zeros(1)
    A = len(scales)
    cands = [dz.unsqueeze(1).expand(K, A, n) if A == 1 else None]
    kinds = [("output", k, a) for k in range(K) for a in range(A)]
    if A > 1:
        pw, pc = group_proxy(h[:, fit], dz[:, fit], y[fit], group[fit], onehot.shape[1], metric)
        u = (h @ pw.unsqueeze(-1)).squeeze(-1) + pc.unsqueeze(1)  # (K, n)
        cands = [dz.unsqueeze(1) - scales.view(1, -1, 1) * u.unsqueeze(1)]
    relayed = None
    if A > 1 and use_relay and len(acts) > 1:
        wi, ci = group_proxy(Xd[fit].unsqueeze(0), dz[:1, fit], y[fit], group[fit], onehot.shape[1], metric)
        ux = Xd @ wi[0] + ci[0]
        lo = float(torch.quantile(ux[fit], 0.01))
        r = (ux - lo).relu()  # (n,)
        rp, last_idx = relay(template, params, acts, wi[0], float(ci[0]) - lo)
        dzr = layer_activations(template, rp, Xd)[1]
        dzr = dzr[..., 1] - dzr[..., 0]
        cands.append(dzr.unsqueeze(1) - scales[1:].view(1, -1, 1) * r.view(1, 1, -1))
        kinds += [("relay", k, a) for k in range(K) for a in range(1, A)]
        relayed = (rp, last_idx)
    dz_all = torch.cat([c.reshape(-1, n) for c in cands]).cpu()
    group, y = group.cpu(), y.cpu()
    C = dz_all.shape[0]
    S = len(shifts)
    # positives per (group, label) cell for every candidate and shift: a row is positive when
    # dz + shift > 0, i.e. for the shifts from index t on, t = #{shifts <= -dz}; a histogram of t and
    # its running sum count them without materialising predictions
    order = torch.argsort(shifts)
    srt_shifts = shifts[order].to(dz_all.dtype).contiguous()
    t = torch.searchsorted(srt_shifts, (-dz_all).contiguous(), right=True)  # (C, n) in [0, S]
    offset = (torch.arange(C) * (S + 1)).unsqueeze(1)
    pos, size = {}, {}
    for g in range(onehot.shape[1]):
        for lab in (0, 1):
            cell = (group == g) & (y == lab)
            size[g, lab] = int(cell.sum())
            counts = torch.bincount((t[:, cell] + offset).reshape(-1), minlength=C * (S + 1)).reshape(C, S + 1)
            in_order = counts.cumsum(1)[:, :S].to(dz_all.dtype)  # positives at the sorted shifts
            pos[g, lab] = torch.empty_like(in_order)
            pos[g, lab][:, order] = in_order
    groups = [g for g in range(onehot.shape[1]) if size[g, 0] + size[g, 1] > 0]
    acc = sum(pos[g, 1] + size[g, 0] - pos[g, 0] for g in groups) / n  # (C, S)

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
    # a candidate that predicts one class for every row is fair by construction and useless: never chosen
    positives = sum(pos[g, 0] + pos[g, 1] for g in groups).reshape(-1)
    useful = (positives > 0) & (positives < n)
    if not bool(useful.any()):
        useful = torch.ones_like(useful)
    ok = (level <= aim) & useful
    if bool(ok.any()):
        score = torch.where(ok, acc, torch.full_like(acc, -1.0))
        best = int(score.argmax())  # the first (weakest strength, no proxy, lowest shift) among equals
    else:
        best = int(torch.where(useful, level, torch.full_like(level, float("inf"))).argmin())
    c, j = divmod(best, S)
    kind, k, a = kinds[c]
    scale = float(scales[a])
    shift = float(shifts[j])
    if kind == "relay":
        rp, last_idx = relayed
        chosen = {nm: t[k:k + 1].clone() for nm, t in rp.items()}
        chosen[last + ".weight"][0, 1, last_idx[k]] = -scale
    else:
        chosen = {nm: t[k:k + 1].clone() for nm, t in params.items()}
        if scale:
            chosen[last + ".weight"][0, 1] -= scale * pw[k]
            chosen[last + ".bias"][0, 1] -= scale * pc[k]
    chosen[last + ".bias"][0, 1] += shift  # moves the decision threshold of class 1
    mid = int((shifts.abs()).argmin())
    table = [{"strength_index": i, "level": float(level[i * A * S + mid]), "accuracy": float(acc[i * A * S + mid])}
             for i in range(K)]  # unshifted, no proxy: for the log
    return {"params": chosen, "k": k, "shift": shift, "proxy": kind if scale else "none", "proxy_scale": scale,
            "level": float(level[best]), "accuracy": float(acc[best]), "feasible": bool(ok.any()), "table": table}


# ------------------------------------------------------------------------------------------------
# editor files and applying a trained metanetwork

def save_metanet(net: MetaNet, info: dict, path: str | Path) -> Path:
    """Write a trained metanetwork and its `info` as one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={INFO_KEY: json.dumps(info, sort_keys=True), "format": FORMAT})
    return path


def load_metanet(path: str | Path) -> TrainedMetaNet:
    """Load an editor file written by `save_metanet` (no code runs: safetensors + JSON)."""
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
        same_rows = fam.get("data_sha") == data.sha256  # trained on a population of these very rows
        reason = not_an_mlp(bundle.model)  # before any advice to build a population: they are of such MLPs
        if reason:
            return reason
        if data.name != fam["data"] and not same_rows:
            from ...zoo import TASKS, train_hint_for

            how = (f"train one with `auditor editor train --task {data.name}`" if data.name in TASKS else
                   train_hint_for(data, self.info.get("requirement", "demographic_parity")))
            return f"it was trained on models of task {fam['data']!r}, not {data.name!r}; {how}"
        if spec.data not in (None, fam["data"]) and not same_rows:
            return f"the model was trained on {spec.data!r}, this editor on {fam['data']!r}"
        try:
            layers = mlp_layers(bundle.model)
        except AuditorError as exc:
            return str(exc)
        n_in = layers[0][1].in_features
        if n_in != fam["n_inputs"] or data.n_inputs != fam["n_inputs"]:
            return f"it reads MLPs with {fam['n_inputs']} inputs; this model has {n_in}"
        if layers[-1][1].out_features != fam["n_classes"]:
            return (f"it reads binary classifiers ({fam['n_classes']} outputs); this model has "
                    f"{layers[-1][1].out_features}")
        if features_digest(data) != fam["features_sha"]:
            return "the data's input encoding differs from the one the editor was trained on"
        if spec.input.get("features") and features_digest(spec.input["features"]) != fam["features_sha"]:
            return "the model's input features differ from the ones the editor was trained on"
        depth = len(layers)
        if depth not in fam["depths"]:
            return (f"it was trained on MLPs with {fam['depths']} Linear layers; this model has {depth}: train one "
                    f"on a population that includes that depth (`auditor zoo build --data DATA --like MODEL --depths "
                    f"{depth - 1}`: hidden layers, one less than Linear layers; then `auditor editor train --zoo "
                    "NAME`)")
        widest = max((m.out_features for _, m in layers[:-1]), default=0)
        if widest > WIDTH_FACTOR * fam["max_width"]:
            return (f"hidden layers up to {WIDTH_FACTOR * fam['max_width']} wide are supported; this model has "
                    f"{widest}")
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
