"""The MEND gradient editor network: (u, delta) of each edited Linear layer -> (u~, delta~).

One small residual MLP is shared by every edited layer: each layer's standardised u and delta
are zero-padded to common widths and concatenated, and every block computes
`h + silu((U V h + b) * scale[layer] + shift[layer])`. U starts at zero, so the network is the
identity at initialisation; `scale` (init 1) and `shift` (init 0) are per layer (MEND's shared
editor with a per-layer "mode"). The edit of layer l is `W_l -= exp(log_lr[l]) * sum_b delta~_b u~_b^T`
with a learned step per layer (MEND's edit_lrs).

Standardisation uses statistics of many sampled edits: delta is divided by its per-unit
spread, u is PCA-whitened, `u P` with `P = V diag(lambda)^-1/2` from the eigendecomposition of
its second moment C. The edited factors are mapped back (delta~ times the spread, u~ times
`diag(key_gain[l]) P^T`), so at initialisation the edit is the fine-tuning gradient
preconditioned by C^-1 (the key of the rank-one edit that disturbs other inputs least).
`key_gain` (init 1) is a learned gain per principal direction of each layer's input: training
can trade the locality of the whitened key for generality (equivalent inputs differ from the
edited one mostly along some directions) where the edit distribution asks for it.
`reset_to_identity` gives the untrained editor (the ablation).
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import AuditorError
from .hooks import capture_factors, margin_loss

METADATA_KEY = "auditor.mend"
FORMAT = "auditor-mend/2"
FORMATS = ("auditor-mend/1", FORMAT)  # /1: symmetric (ZCA) whitening, no key_gain: loads the same


class LowRankBlock(nn.Module):
    """h + silu((U V h + b) * scale[mode] + shift[mode]), U zero-initialised (identity at init)."""

    def __init__(self, dim: int, rank: int, n_modes: int):
        super().__init__()
        self.V = nn.Parameter(torch.randn(rank, dim) / dim ** 0.5)
        self.U = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:
        z = (h @ self.V.T) @ self.U.T + self.bias
        return h + F.silu(z * self.scale[mode] + self.shift[mode])


class GradientEditor(nn.Module):
    """Maps each layer's gradient factors to edited factors and returns weight changes.

    `layers` lists (name, in_features, out_features) per edited layer, in order (the order picks
    each layer's scale and shift). Standardisation statistics are buffers set by `set_stats`
    before training and stored with the weights.
    """

    def __init__(self, layers: list[tuple[str, int, int]], rank: int = 32, n_blocks: int = 2,
                 init_lr: float = 1e-2, ridge: float = 1e-2):
        super().__init__()
        self.layer_names = [name for name, _, _ in layers]
        self.dims = {name: (int(a), int(b)) for name, a, b in layers}
        self.max_in = max(a for a, _ in self.dims.values())
        self.max_out = max(b for _, b in self.dims.values())
        self.rank, self.n_blocks, self.ridge = rank, n_blocks, ridge
        n = len(self.layer_names)
        self.blocks = nn.ModuleList(LowRankBlock(self.max_in + self.max_out, rank, n) for _ in range(n_blocks))
        self.log_lr = nn.Parameter(torch.full((n,), math.log(init_lr)))
        self.key_gain = nn.Parameter(torch.ones(n, self.max_in))
        self.register_buffer("u_whiten", torch.eye(self.max_in).repeat(n, 1, 1))
        self.register_buffer("d_scale", torch.ones(n, self.max_out))

    def config(self) -> dict:
        return {"layers": [[k, *self.dims[k]] for k in self.layer_names], "rank": self.rank,
                "n_blocks": self.n_blocks, "ridge": self.ridge}

    @torch.no_grad()
    def set_stats(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """PCA whitening of u (`V diag(lambda)^-1/2` of C plus a small ridge) and the spread of delta, from
        sampled edits."""
        for i, name in enumerate(self.layer_names):
            u, d = factors[name]
            u, d = u.double(), d.double()
            C = u.T @ u / len(u)
            ridge = self.ridge * float(C.diagonal().mean().clamp_min(1e-12))
            C += ridge * torch.eye(len(C), dtype=C.dtype, device=C.device)
            evals, evecs = torch.linalg.eigh(C)
            n_in, n_out = self.dims[name]
            self.u_whiten[i, :n_in, :n_in] = (evecs * evals.rsqrt()).float()
            sd = d.pow(2).mean(0).sqrt()
            self.d_scale[i, :n_out] = sd.clamp_min(max(float(sd.mean()) * 1e-2, 1e-12)).float()

    def transform(self, name: str, u: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) for one layer's factors u (rows, in) and delta (rows, out): the edited
        factors mapped back to the layer's coordinates."""
        i = self.layer_names.index(name)
        n_in, n_out = self.dims[name]
        if u.shape[1] != n_in or d.shape[1] != n_out:
            raise AuditorError(f"MEND editor expects layer {name!r} of shape in={n_in}, out={n_out}; "
                               f"got in={u.shape[1]}, out={d.shape[1]} (was it trained for this model?)")
        white = self.u_whiten[i, :n_in, :n_in]
        scale = self.d_scale[i, :n_out]
        h = torch.cat([F.pad(u @ white, (0, self.max_in - n_in)), F.pad(d / scale, (0, self.max_out - n_out))], 1)
        for block in self.blocks:
            h = block(h, i)
        key = (h[:, :n_in] * self.key_gain[i, :n_in]) @ white.T
        return key, h[:, self.max_in:self.max_in + n_out] * scale

    @torch.no_grad()
    def reset_to_identity(self, log_lr: float | None = None) -> GradientEditor:
        """Undo training: the identity MLP, unit key gains (and the step `log_lr` when given); the
        standardisation statistics stay. The untrained ablation of a trained editor."""
        for block in self.blocks:
            block.U.zero_()
            block.bias.zero_()
            block.scale.fill_(1.0)
            block.shift.zero_()
        self.key_gain.fill_(1.0)
        if log_lr is not None:
            self.log_lr.fill_(float(log_lr))
        return self

    def keys_values(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple]:
        """{layer: (key, value)}: the edited factors of every layer."""
        return {name: self.transform(name, *factors[name]) for name in self.layer_names}

    def changes(self, kv: dict[str, tuple], row_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{layer: weight change}: minus the learned step times sum_b row_scale_b value_b key_b^T."""
        out = {}
        for i, name in enumerate(self.layer_names):
            key, value = kv[name]
            if row_scale is not None:
                value = value * row_scale.to(value.dtype)[:, None]
            out[name] = -self.log_lr[i].exp() * (value.T @ key)
        return out

    def forward(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                row_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{layer: weight change} for these gradient factors."""
        return self.changes(self.keys_values(factors), row_scale)


def save_gradient_editor(editor: GradientEditor, path: str | Path, info: dict) -> None:
    """One safetensors file: the editor's tensors, its shape and `info` (the model it was trained for,
    training settings, validation figures) as JSON metadata."""
    meta = {"format": FORMAT, **editor.config(), **info}
    state = {k: v.detach().cpu().contiguous() for k, v in editor.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def read_editor_info(path: str | Path) -> dict | None:
    """The JSON metadata of a saved MEND editor, or None when the file is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # not a safetensors file
        return None
    if METADATA_KEY not in meta:
        return None
    info = json.loads(meta[METADATA_KEY])
    return info if info.get("format") in FORMATS else None


def load_gradient_editor(path: str | Path) -> tuple[GradientEditor, dict]:
    """Rebuild a saved editor (tensors only: loading runs no code)."""
    info = read_editor_info(path)
    if info is None:
        raise AuditorError(f"{path} is not a MEND editor file (no {METADATA_KEY!r} metadata); "
                           "train one with `train_mend` (in a source checkout: `python sample_models/build_mend.py`)")
    editor = GradientEditor([tuple(v) for v in info["layers"]], info["rank"], info["n_blocks"],
                            ridge=info.get("ridge", 1e-2))
    state = load_file(str(path))
    try:
        missing = editor.load_state_dict(state, strict=info["format"] == FORMAT).missing_keys
        if set(missing) - {"key_gain"}:
            raise RuntimeError(f"missing tensors {missing}")
    except RuntimeError as exc:
        raise AuditorError(f"MEND editor file {path} does not match its own metadata: {exc}") from None
    return editor.eval(), info


def row_scales(margin_at, n_rows: int, search: int = 3, start: int = -2) -> torch.Tensor:
    """Per-row step multipliers 2^(k_b/2): every k_b starts at `start` (half the learned step);
    rows still short of the margin step up by sqrt(2) (to at most 2^search) until all win. A row
    whose loss grew with its last step goes back one step and stays (a longer step would not fix
    it). `margin_at(scales)` gives the per-row margin loss of the edit with those multipliers."""
    k = torch.full((n_rows,), start, dtype=torch.float64)
    frozen = torch.zeros(n_rows, dtype=torch.bool)
    last, grow = None, None
    for _ in range(2 * search - start + 1):
        loss = margin_at(2.0 ** (k / 2)).double()
        if last is not None:
            worse = grow & (loss > last)
            k[worse] -= 1
            frozen |= worse
        last = loss
        grow = (loss > 0) & (k < 2 * search) & ~frozen
        if not bool(grow.any()):
            break
        k[grow] += 1
    return (2.0 ** (k / 2)).float()


def _head(model: nn.Module, first: str) -> nn.Module | None:
    """The part of an `nn.Sequential` from layer `first` on (its input is that layer's u), else None."""
    if isinstance(model, nn.Sequential):
        names = [n for n, _ in model.named_children()]
        if first in names:
            return model[names.index(first):]
    return None


def apply_editor(model: nn.Module, editor: GradientEditor, X: torch.Tensor, y: torch.Tensor,
                 margin: float = 0.0, search: int = 3, rounds: int = 4) -> torch.Tensor:
    """Edit `model` in place so that X gets labels y; returns each row's step multiplier.

    One gradient evaluation gives the editor's edit, a sum of one rank-one term per row (MEND).
    With `search` = 0 that is the edit (the learned step). Otherwise each row's term is scaled by
    the smallest power of sqrt 2 (from 1/2 up to 2^search) at which every row wins by `margin`
    (log-prob), so easy fixes move the weights little and hard ones get there. Rows still short
    after that get another round from the edited weights (at most `rounds` in all); a round that
    does not fix more rows than before it is undone.
    """
    modules = dict(model.named_modules())
    head = _head(model, editor.layer_names[0])
    total = torch.zeros(len(y))
    for round_ in range(max(rounds, 1) if search > 0 else 1):
        factors, logits = capture_factors(model, editor.layer_names, X, y)
        short = margin_loss(logits, y, margin) > 0
        if search > 0 and not bool(short.any()):
            break
        fixed_before = int((logits.argmax(1) == y).sum())
        feats = factors[editor.layer_names[0]][0]
        forward = partial(head, feats) if head is not None and len(feats) == len(X) else partial(model, X)
        pick = short.cpu() if search > 0 and bool(total.any()) else torch.ones(len(y), dtype=torch.bool)
        if not bool(pick.all()):  # a later round: only the rows still short
            factors = {n: (u[short], d[short]) for n, (u, d) in factors.items()}
        with torch.no_grad():
            original = {n: modules[n].weight.detach().clone() for n in editor.layer_names}
            kv = editor.keys_values(factors)

            def margin_at(scales: torch.Tensor, kv=kv, original=original, forward=forward, pick=pick) -> torch.Tensor:
                for n, c in editor.changes(kv, scales.to(X.device)).items():
                    modules[n].weight.copy_(original[n] + c.to(original[n].dtype))
                return margin_loss(forward(), y, margin).cpu()[pick]

            rows = int(pick.sum())
            scales = row_scales(margin_at, rows, search) if search > 0 else torch.ones(rows)
            margin_at(scales)
            if round_ > 0 and int((model(X).argmax(1) == y).sum()) <= fixed_before:
                for n in editor.layer_names:  # this round did not help: undo it and stop
                    modules[n].weight.copy_(original[n])
                break
        total[pick] += scales
    return total
