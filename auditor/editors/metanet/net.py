"""The graph metanetwork: message passing over an MLP's neurons and weights, and its edit heads.

`MetaNet(graph, cond)` reads a batch of MLP graphs (`graph.GraphBatch`) and, for K requirement
strengths per model (`cond`, shape (B, K, C)), returns per-edge and per-node head outputs:
weight residuals `dw`, bias residuals `db`, and when the task needs them per-weight keep scores
(`keep`, pruning) or per-input gate scores (`gate`, data minimisation). `assemble` turns them
into edited parameters with hard masks that meet the structural requirement exactly.

The body runs once per model; the strength enters only the (cheap) heads, so one pass gives a
whole trade-off curve. Every operation is per node, per edge, or a mean over a neuron's edges,
so permuting the hidden neurons of a layer permutes the outputs the same way (tested).
Residual heads are multiplied by learnable scales that start at 0.01 (fairness: also by the
strength, so strength 0 is exactly the identity) and the mask heads start at zero, so masks
start from activation-weighted magnitude (|w| * std of the input, pruning) and first-layer column
norms (minimisation). With `refit`, the masked layers are then refitted in closed form (ridge least
squares on reference rows, layer by layer) before the residuals are added.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .graph import EDGE_FEATURES, NODE_FEATURES, GraphBatch, Member

MODES = ("residual", "prune", "gate")  # what the edit may do besides residuals: nothing, prune weights, drop features


@dataclass
class NetConfig:
    n_inputs: int
    n_classes: int
    n_features: int  # raw features (groups of inputs)
    mode: str = "residual"  # "residual" (fairness), "prune" (sparsity) or "gate" (minimisation)
    cond_dim: int = 2
    hidden: int = 32
    layers: int = 3
    max_depth: int = 4  # Linear layers
    n_probes: int = 0  # gradient features per node and edge (see graph.prepare)
    init_scale: float = 0.01
    mask_temperature: float = 1.0
    fold_means: bool = False  # add the mean contribution of removed weights to the next bias (measured: hurts)
    match_moments: bool = False  # after pruning, rescale each neuron to its original mean and std (see assemble)
    refit: bool = False  # masks then least-squares refit of the masked layers on the reference rows
    refit_ridge: float = 1e-4


class MPLayer(nn.Module):
    """Edge update from (edge, source node, target node); node update from the means of its incoming
    and outgoing edges. Pre-norm residual blocks."""

    def __init__(self, d: int):
        super().__init__()
        self.norm_h, self.norm_e = nn.LayerNorm(d), nn.LayerNorm(d)
        self.e_self, self.e_src, self.e_dst = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.e_out = nn.Linear(d, d)
        self.h_norm = nn.LayerNorm(3 * d)
        self.h_mlp = nn.Sequential(nn.Linear(3 * d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, h: torch.Tensor, e: torch.Tensor, g: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hn, en = self.norm_h(h), self.norm_e(e)
        e = e + self.e_out(F.relu(self.e_self(en) + self.e_src(hn)[g.src] + self.e_dst(hn)[g.dst]))
        zero = h.new_zeros(h.shape)
        agg_in = zero.index_add(0, g.dst, e) * g.inv_deg_in
        agg_out = zero.index_add(0, g.src, e) * g.inv_deg_out
        h = h + self.h_mlp(self.h_norm(torch.cat([h, agg_in, agg_out], 1)))
        return h, e


class EdgeHead(nn.Module):
    def __init__(self, d: int, n_out: int):
        super().__init__()
        self.pe, self.ps, self.pd = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, n_out)

    def forward(self, h, e, g: GraphBatch, zc: torch.Tensor) -> torch.Tensor:
        u = self.pe(e) + self.ps(h)[g.src] + self.pd(h)[g.dst]  # (E, d)
        return self.out(F.relu(u.unsqueeze(1) + zc[g.edge_member]))  # (E, K, n_out)


class NodeHead(nn.Module):
    def __init__(self, d: int, n_out: int):
        super().__init__()
        self.p = nn.Linear(d, d)
        self.out = nn.Linear(d, n_out)

    def forward(self, h, g: GraphBatch, zc: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.p(h).unsqueeze(1) + zc[g.node_member]))  # (N, K, n_out)


class MetaNet(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        d, P = cfg.hidden, cfg.max_depth + 1
        self.node_in = nn.Linear(NODE_FEATURES + cfg.n_probes, d)
        self.edge_in = nn.Linear(EDGE_FEATURES + cfg.n_probes, d)
        self.node_pos = nn.Embedding(cfg.n_inputs + cfg.n_classes + P * P, d)
        self.edge_pos = nn.Embedding(P * P, d)
        self.cond = nn.Sequential(nn.Linear(cfg.cond_dim, d), nn.ReLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(MPLayer(d) for _ in range(cfg.layers))
        self.norm_h, self.norm_e = nn.LayerNorm(d), nn.LayerNorm(d)
        n_edge_out = 2 if cfg.mode == "prune" else 1
        n_node_out = 2 if cfg.mode == "gate" else 1
        self.edge_head = EdgeHead(d, n_edge_out)
        self.node_head = NodeHead(d, n_node_out)
        # residual scales per layer position; mask score heads start at exactly zero
        self.dw_scale = nn.Parameter(torch.full((P * P,), cfg.init_scale))
        self.db_scale = nn.Parameter(torch.full((P * P + 1,), cfg.init_scale))
        with torch.no_grad():
            if cfg.mode == "prune":
                self.edge_head.out.weight[1].zero_()
                self.edge_head.out.bias[1].zero_()
            if cfg.mode == "gate":
                self.node_head.out.weight[1].zero_()
                self.node_head.out.bias[1].zero_()

    def forward(self, g: GraphBatch, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """`cond`: (B, K, cond_dim). Returns dw (E, K), db (N, K) and keep (E, K) / gate (N, K)."""
        return self.heads(g, *self.encode(g), cond)

    def encode(self, g: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Message passing: final node and edge features (independent of the requirement strength)."""
        h = self.node_in(g.node_x) + self.node_pos(g.node_pos)
        e = self.edge_in(g.edge_x) + self.edge_pos(g.edge_pos)
        for layer in self.layers:
            h, e = layer(h, e, g)
        return self.norm_h(h), self.norm_e(e)

    def heads(self, g: GraphBatch, h: torch.Tensor, e: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs for the strengths in `cond` (cheap: run once per strength grid)."""
        zc = self.cond(cond)  # (B, K, d)
        eo = self.edge_head(h, e, g, zc)
        no = self.node_head(h, g, zc)
        # bias scale per hidden-layer position; outputs (and inputs, unused) share the last entry
        off = self.cfg.n_inputs + self.cfg.n_classes
        sid = torch.where(g.node_pos >= off, g.node_pos - off, torch.full_like(g.node_pos, self.db_scale.numel() - 1))
        node_scale = self.db_scale[sid]
        out = {"dw": eo[..., 0] * self.dw_scale[g.edge_pos].unsqueeze(1),
               "db": no[..., 0] * node_scale.unsqueeze(1)}
        if self.cfg.mode == "prune":
            out["keep"] = eo[..., 1]
        if self.cfg.mode == "gate":
            out["gate"] = no[..., 1]
        return out


def _ste_topk(scores: torch.Tensor, n_keep: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard mask keeping the `n_keep[k]` highest scores of column k (exactly that many), with the
    gradient of a sigmoid around the threshold (straight-through). scores (M, K) -> (mask, soft)."""
    M, K = scores.shape
    order = scores.detach().argsort(0, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(0, order, torch.arange(M, device=scores.device).unsqueeze(1).expand(M, K))
    hard = (ranks < n_keep.unsqueeze(0)).to(scores.dtype)
    sorted_scores = scores.detach().gather(0, order)
    hi = sorted_scores.gather(0, (n_keep - 1).clamp(0, M - 1).unsqueeze(0))
    lo = sorted_scores.gather(0, n_keep.clamp(0, M - 1).unsqueeze(0))
    thr = torch.where(n_keep.unsqueeze(0) >= M, sorted_scores[-1:] - 1.0,
                      torch.where(n_keep.unsqueeze(0) <= 0, sorted_scores[:1] + 1.0, (hi + lo) / 2))
    soft = torch.sigmoid((scores - thr) / temperature)
    return hard + soft - soft.detach(), soft


def prune_prior(m: Member) -> torch.Tensor:
    """Activation-weighted magnitude |w| * std(source activation), in log space, for every edge."""
    return torch.cat([(W.abs() * s.unsqueeze(0)).reshape(-1) for W, s in zip(m.weights, m.act_std)]).add(1e-6).log()


def gate_prior(m: Member, group_index: torch.Tensor, n_features: int) -> torch.Tensor:
    """Per raw feature: log of the summed (first-layer column norm * input std) over its inputs."""
    col = m.weights[0].norm(dim=0) * m.act_std[0]
    valid = group_index >= 0
    tot = col.new_zeros(n_features).index_add(0, group_index[valid], col[valid])
    return tot.add(1e-6).log()


def _match_moments(m: Member, Ws: list[torch.Tensor], bs: list[torch.Tensor]) -> tuple[list, list]:
    """Layer by layer on the reference rows, scale each neuron's (already masked) incoming weights and
    set its bias so its pre-activation has the original model's mean and standard deviation: a
    closed-form compensation for the weights pruned before it. Zeros stay zeros (exact sparsity)."""
    h = m.X_ref.unsqueeze(0)
    out_W, out_b = [], []
    for li, (W, b) in enumerate(zip(Ws, bs)):
        z = torch.einsum("kni,koi->kno", h.expand(W.shape[0], -1, -1) if h.shape[0] == 1 else h, W) + b.unsqueeze(1)
        scale = (m.pre_std[li] / (z.std(1) + 1e-6)).clamp(1e-3, 10.0)  # (K, out)
        shift = m.pre_mean[li] - scale * z.mean(1)
        out_W.append(W * scale.unsqueeze(2))
        out_b.append(b * scale + shift)
        z = z * scale.unsqueeze(1) + shift.unsqueeze(1)
        h = z.relu()
    return out_W, out_b


def _refit(m: Member, masks: list, dws: list, dbs: list, ridge: float) -> tuple[list, list]:
    """Layer-wise reconstruction: for every masked layer, in forward order, the kept weights and the bias
    of each neuron are the ridge least-squares fit of the original model's pre-activations on the
    reference rows, from the edited network's own inputs to that layer (so each layer compensates for
    what was removed before it). The predicted residuals are added on top; masked entries stay exactly
    zero. Differentiable (batched `torch.linalg.solve`); the masks' straight-through gradient enters only
    through the final product, as in plain masking."""
    K = dws[0].shape[0]
    n = m.X_ref.shape[0]
    h = m.X_ref.unsqueeze(0).expand(K, -1, -1)
    ho = m.X_ref
    Ws, bs = [], []
    for li, (W, b) in enumerate(zip(m.weights, m.biases)):
        z_orig = ho @ W.T + b  # (n, out)
        M = masks[li]
        if M is None:
            Wl, bl = W.unsqueeze(0) + dws[li], b.unsqueeze(0) + dbs[li]
        elif M.shape[1] == 1:  # one mask for every neuron (dropped inputs): one solve, many right-hand sides
            Ha = torch.cat([h, h.new_ones(K, n, 1)], 2)
            Ma = torch.cat([M[:, 0].detach(), M.new_ones(K, 1)], 1)  # (K, in + 1)
            reg = torch.cat([ridge * n * Ma[:, :-1], Ma.new_zeros(K, 1)], 1)
            A = (Ha.transpose(1, 2) @ Ha) * Ma.unsqueeze(2) * Ma.unsqueeze(1) + torch.diag_embed((1 - Ma) + reg)
            rhs = (Ha.transpose(1, 2) @ z_orig) * Ma.unsqueeze(2)  # (K, in + 1, out)
            sol = torch.linalg.solve(A, rhs) * Ma.unsqueeze(2)
            Wl = (sol[:, :-1].transpose(1, 2) + dws[li]) * M
            bl = sol[:, -1] + dbs[li]
        else:
            Ha = torch.cat([h, h.new_ones(K, n, 1)], 2)  # (K, n, in + 1)
            G = Ha.transpose(1, 2) @ Ha  # (K, in + 1, in + 1)
            Ma = torch.cat([M.detach(), M.new_ones(K, M.shape[1], 1)], 2)  # (K, out, in + 1): bias always kept
            reg = torch.cat([ridge * n * Ma[..., :-1], Ma.new_zeros(K, M.shape[1], 1)], 2)
            A = G.unsqueeze(1) * Ma.unsqueeze(3) * Ma.unsqueeze(2) + torch.diag_embed((1 - Ma) + reg)
            rhs = (Ha.transpose(1, 2) @ z_orig).transpose(1, 2) * Ma  # (K, out, in + 1)
            sol = torch.linalg.solve(A, rhs.unsqueeze(-1)).squeeze(-1) * Ma
            Wl = (sol[..., :-1] + dws[li]) * M
            bl = sol[..., -1] + dbs[li]
        Ws.append(Wl)
        bs.append(bl)
        z = torch.einsum("kni,koi->kno", h, Wl) + bl.unsqueeze(1)
        h, ho = z.relu(), z_orig.relu()
    return Ws, bs


def assemble(net_cfg: NetConfig, g: GraphBatch, out: dict[str, torch.Tensor], targets: torch.Tensor,
             group_index: torch.Tensor | None = None) -> list[dict]:
    """Edited parameters of every member for every condition.

    `targets` (B, K): the structural target per condition: sparsity in [0, 1) for mode "prune",
    the number of raw features to keep for mode "gate", unused for "residual". `group_index`
    (n_inputs,): raw-feature index of every input (-1: not in any group, always kept).
    Returns, per member, {"params": {name: (K, ...)}, "soft": soft-mask tensor or None,
    "hard_kept": per-condition count kept}. Pruned weights and dropped first-layer columns are
    exactly zero (with `fold_means`, the mean contribution of what was removed goes into the next bias;
    with `match_moments`, neurons are rescaled to their original pre-activation mean and std; with
    `refit`, masked layers are refitted by least squares, see `_refit`)."""
    results = []
    T = net_cfg.mask_temperature
    for b, m in enumerate(g.members):
        st, eo, no = m.st, g.edge_offsets[b], g.node_offsets[b]
        K = out["dw"].shape[1]
        dws, dbs = [], []
        for li in range(1, st.depth + 1):
            n_in, n_out = st.sizes[li - 1], st.sizes[li]
            dws.append(out["dw"][eo + st.edge_offsets[li - 1]:eo + st.edge_offsets[li]].T.reshape(K, n_out, n_in))
            dbs.append(out["db"][no + st.node_offsets[li]:no + st.node_offsets[li + 1]].T)
        if net_cfg.mode == "residual":  # the strength scales the edit: strength 0 is the identity
            t = targets[b].to(out["dw"].dtype)
            dws = [dW * t.view(K, 1, 1) for dW in dws]
            dbs = [db * t.view(K, 1) for db in dbs]
        Ws = [W.unsqueeze(0) + dW for W, dW in zip(m.weights, dws)]
        bs = [bias.unsqueeze(0) + db for bias, db in zip(m.biases, dbs)]
        soft, kept = None, None
        masks: list[torch.Tensor | None] = [None] * st.depth
        if net_cfg.mode == "prune":
            scores = prune_prior(m).unsqueeze(1) + out["keep"][eo:eo + st.n_edges]
            n_total = st.n_edges
            n_prune = torch.ceil(targets[b].to(scores.dtype) * n_total - 1e-6).long().clamp(0, n_total)
            mask, soft = _ste_topk(scores, n_total - n_prune, T)
            kept = n_total - n_prune
            for li in range(st.depth):
                M = mask[st.edge_offsets[li]:st.edge_offsets[li + 1]].T.reshape(K, *m.weights[li].shape)
                masks[li] = M
                if net_cfg.fold_means:
                    bs[li] = bs[li] + torch.einsum("koi,oi,i->ko", 1 - M, m.weights[li], m.act_mean[li])
                Ws[li] = Ws[li] * M
        elif net_cfg.mode == "gate":
            if group_index is None:
                raise ValueError("mode 'gate' needs group_index")
            F_ = net_cfg.n_features
            valid = group_index >= 0
            gin = out["gate"][no:no + st.sizes[0]]  # (n_inputs, K)
            counts = torch.bincount(group_index[valid], minlength=F_).clamp_min(1).to(gin.dtype)
            gscore = gin.new_zeros(F_, K).index_add(0, group_index[valid], gin[valid]) / counts.unsqueeze(1)
            gscore = gscore + gate_prior(m, group_index, F_).unsqueeze(1)
            n_keep = targets[b].round().long().clamp(0, F_)
            gmask, soft = _ste_topk(gscore, n_keep, T)  # (F, K)
            kept = n_keep
            ones = gmask.new_ones(1, K)
            M_in = torch.where(valid.unsqueeze(1), gmask[group_index.clamp_min(0)], ones)  # (n_inputs, K)
            if net_cfg.fold_means:
                bs[0] = bs[0] + torch.einsum("ki,oi,i->ko", 1 - M_in.T, m.weights[0], m.act_mean[0])
            Ws[0] = Ws[0] * M_in.T.unsqueeze(1)
            masks[0] = M_in.T.unsqueeze(1)  # (K, 1, n_inputs): the same for every first-layer neuron
        if net_cfg.refit and m.X_ref is not None and any(M is not None for M in masks):
            Ws, bs = _refit(m, masks, dws, dbs, net_cfg.refit_ridge)
        elif net_cfg.match_moments and m.X_ref is not None:
            Ws, bs = _match_moments(m, Ws, bs)
        params = {}
        for name, W, bias in zip(m.names, Ws, bs):
            params[f"{name}.weight"] = W
            params[f"{name}.bias"] = bias
        results.append({"params": params, "soft": soft, "kept": kept})
    return results
